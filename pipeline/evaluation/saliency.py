"""Grad-CAM saliency montages of the pneumonia class, and the choice of cases worth showing.

:func:`saliency_montage` runs :class:`monai.visualize.GradCAM` on one preprocessed volume and
draws a row of axial slices with the map overlaid; :func:`pick_examples` picks the most confident
true/false positives/negatives of a prediction table for the report's gallery.
"""

from __future__ import annotations

import copy
import io
from collections.abc import Mapping, Sequence

import numpy as np
import torch
from matplotlib.figure import Figure
from monai.visualize import GradCAM
from torch import nn

from pipeline.networks.nets import ClassLogits, split_output

__all__ = ["last_conv_layer", "pick_examples", "saliency_montage"]

PNEUMONIA = 1
OUTCOMES = ("TP", "FP", "FN", "TN")


def last_conv_layer(network: nn.Module) -> str:
    """Name (as in ``network.named_modules()``) of the network's last ``nn.Conv3d``.

    1x1x1 convolutions (e.g. residual shortcut projections, which see one voxel each) are passed
    over unless the network has no other ``nn.Conv3d``.

    Raises:
        ValueError: the network has no ``nn.Conv3d``.
    """
    convs = [(name, m) for name, m in network.named_modules() if isinstance(m, nn.Conv3d)]
    if not convs:
        raise ValueError(f"{type(network).__name__} has no nn.Conv3d layer for Grad-CAM")
    spatial = [name for name, m in convs if any(k > 1 for k in m.kernel_size)]
    return spatial[-1] if spatial else convs[-1][0]


def _axial_slices(depth: int, n_slices: int) -> np.ndarray:
    """``n_slices`` distinct slice indices spread evenly inside ``[0, depth)``, ends excluded."""
    return np.unique(np.linspace(0, depth - 1, n_slices + 2)[1:-1].round().astype(int))


def saliency_montage(
    network: nn.Module,
    image: torch.Tensor,
    target_layer: str | None = None,
    n_slices: int = 6,
    title: str | None = None,
    alpha: float = 0.4,
) -> bytes:
    """A PNG of ``n_slices`` axial slices with the Grad-CAM map of the pneumonia class overlaid.

    For a network with a lesion output a second row shows the same slices with its lesion map (P(lesion)
    >= 0.5 in red), so what drove the class can be compared with where the network sees lesions.

    Args:
        network: a classifier mapping ``(B, C, H, W, D)`` to ``(B, 2)`` logits (class 1 pneumonia), or a
            multi-task network (:mod:`pipeline.networks.nets`); a copy of it runs in eval mode on its device,
            so ``network`` itself is left untouched.
        image: ``(C, H, W, D)`` preprocessed volume in [0, 1], ``D`` the axial (slice) axis; channel 0 is drawn
            (e.g. the CT when channel 1 is the lung mask).
        target_layer: module name for Grad-CAM; by default the network's ``gradcam_layer`` if it names one
            (the encoder's last convolution of a multi-task network), else :func:`last_conv_layer`.
        n_slices: number of axial slices, spread evenly through the volume.
        title: text above the montage; by default the predicted P(pneumonia).
        alpha: opacity of the ``jet`` overlay.

    Returns:
        PNG bytes. Slices are drawn with ``rot90``, i.e. the second array axis points up.
    """
    if image.ndim != 4:
        raise ValueError(f"image must be (C, H, W, D), got {tuple(image.shape)}")
    # GradCAM hooks its layer for good and in-place activations break its backward hooks: work on a copy
    model = ClassLogits(copy.deepcopy(network).eval())
    for module in model.modules():
        if getattr(module, "inplace", False) is True:
            module.inplace = False
    layer = f"network.{target_layer}" if target_layer else getattr(model, "gradcam_layer", None)
    layer = layer or last_conv_layer(model)
    x = image.detach().to(device=next(model.parameters()).device, dtype=torch.float32)[None]
    with torch.no_grad():
        logits, lesion = split_output(model.network(x))
        prob = torch.softmax(logits, dim=1)[0, PNEUMONIA].item()
    cam = GradCAM(nn_module=model, target_layers=layer)(x, class_idx=PNEUMONIA)
    volume = x[0, 0].cpu().numpy()
    overlays = [(cam[0, 0].detach().cpu().numpy(), "jet", 0.0)]
    if lesion is not None:
        overlays.append((torch.sigmoid(lesion[0, 0]).cpu().numpy(), "Reds", 0.5))
    slices = _axial_slices(volume.shape[-1], n_slices)

    fig = Figure(figsize=(2.0 * len(slices), 0.4 + 2.0 * len(overlays)), dpi=100)
    axes = fig.subplots(len(overlays), len(slices), squeeze=False)
    for row, (heat, cmap, floor) in zip(axes, overlays):
        for ax, k in zip(row, slices):
            ax.imshow(np.rot90(volume[..., k]), cmap="gray", vmin=0.0, vmax=1.0)
            shown = np.ma.masked_less(np.rot90(heat[..., k]), floor) if floor else np.rot90(heat[..., k])
            ax.imshow(shown, cmap=cmap, vmin=0.0, vmax=1.0, alpha=alpha)
            ax.set_title(f"slice {k}" + (", lesions" if cmap == "Reds" else ""), fontsize=8)
            ax.axis("off")
    fig.suptitle(title if title is not None else f"Grad-CAM, P(pneumonia) = {prob:.2f}", fontsize=9)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def pick_examples(rows: Sequence[Mapping], k: int = 2, threshold: float = 0.5) -> dict[str, list[Mapping]]:
    """The ``k`` most confident cases of each outcome: true/false positives and negatives.

    Args:
        rows: prediction rows with ``label`` (0, 1 or ``None`` when unknown: skipped) and
            ``prob_pneumonia`` (float), e.g. from :func:`pipeline.evaluation.report.read_predictions`.
        k: cases per outcome at most.
        threshold: a case is predicted pneumonia when ``prob_pneumonia >= threshold``.

    Returns:
        ``{"TP": [...], "FP": [...], "FN": [...], "TN": [...]}``: for predicted positives the
        highest probabilities first, for predicted negatives the lowest first (the errors the
        model was surest of); ties keep the order of ``rows``.
    """
    groups: dict[str, list[Mapping]] = {name: [] for name in OUTCOMES}
    for row in rows:
        if row["label"] is None:
            continue
        positive = row["prob_pneumonia"] >= threshold
        correct = positive == (int(row["label"]) == PNEUMONIA)
        groups[("T" if correct else "F") + ("P" if positive else "N")].append(row)
    for name, group in groups.items():
        sign = -1.0 if name.endswith("P") else 1.0
        group.sort(key=lambda r: sign * r["prob_pneumonia"])
        del group[k:]
    return groups
