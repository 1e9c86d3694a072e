"""Networks for 3D chest CT: the tutorial's CNN (``seed``), the classifier ``chestnet_cls`` and the default
``chestnet``, which adds a lesion-segmentation output to that classifier (multi-task).

All take ``(B, C, H, W, D)`` volumes (``D`` the slice axis; the bundle resizes to 128x128x64). ``seed`` and
``chestnet_cls`` return ``(B, num_classes)`` logits (class 0 normal, class 1 pneumonia); ``chestnet`` returns
``{"pred": (B, num_classes) logits, "lesion": (B, 1, H, W, D) lesion logits}`` (:data:`CLASS_KEY`,
:data:`LESION_KEY`; :func:`split_output` reads either form). All are TorchScript-scriptable and
ONNX-exportable. Numbers below are for one volume of 128x128x64 with ``in_channels=1``, ``num_classes=2``;
FLOPs are forward FLOPs as counted by :func:`count_flops` (one multiply-add = 2).

============ ============ ================
name         parameters   GFLOPs / volume
============ ============ ================
seed         1,352,386    32.45
chestnet_cls   883,986     2.52
chestnet       946,707     3.59
============ ============ ================
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = [
    "CLASS_KEY",
    "LESION_KEY",
    "NETWORKS",
    "ChestNet",
    "ClassLogits",
    "LesionChestNet",
    "SeedNet",
    "build_network",
    "count_flops",
    "count_parameters",
    "has_lesion_output",
    "split_output",
]

#: Keys of a multi-task network's output.
CLASS_KEY, LESION_KEY = "pred", "lesion"


class SeedNet(nn.Module):
    """The CNN of the Keras tutorial "3D image classification from CT scans", in PyTorch.

    Four blocks of ``Conv3d(kernel 3, no padding) -> ReLU -> MaxPool3d(2) -> BatchNorm3d`` with
    64-64-128-256 filters, global average pooling, ``Linear(256, 512) -> ReLU -> Dropout -> Linear``.
    The Keras model ends in one sigmoid unit; this one returns ``num_classes`` logits.

    Input ``(B, in_channels, H, W, D)`` with every spatial size >= ``min_size`` = 46 (smaller inputs
    vanish in the unpadded convolutions; they raise ``ValueError``); output ``(B, num_classes)``.
    1,352,386 parameters and 32.45 GFLOPs per 128x128x64 volume.

    Args:
        in_channels: channels of the input volume.
        num_classes: number of output logits.
        dropout: dropout probability before the last layer (0.3 in the tutorial).
    """

    def __init__(self, in_channels: int = 1, num_classes: int = 2, dropout: float = 0.3) -> None:
        super().__init__()
        self.min_size = 46  # smallest spatial size that survives the four unpadded conv + pool blocks
        layers: list[nn.Module] = []
        channels = in_channels
        for filters in (64, 64, 128, 256):
            layers += [
                nn.Conv3d(channels, filters, kernel_size=3),
                nn.ReLU(inplace=True),
                nn.MaxPool3d(2),
                nn.BatchNorm3d(filters),
            ]
            channels = filters
        self.features = nn.Sequential(*layers)
        self.head = nn.Sequential(
            nn.Linear(channels, 512), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(512, num_classes)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W, D)`` volumes to ``(B, num_classes)`` logits."""
        if not torch.jit.is_tracing() and min(x.shape[2:]) < self.min_size:  # tracing: ONNX export
            raise ValueError(f"seed network needs every spatial size >= {self.min_size}, got {list(x.shape[2:])}")
        return self.head(self.features(x).mean(dim=(2, 3, 4)))


class ResidualBlock3d(nn.Module):
    """Two 3x3x3 convolutions with BatchNorm and a shortcut (1x1x1 convolution when the shape changes).

    Input ``(B, in_channels, H, W, D)``; output ``(B, out_channels, ceil(H/s), ceil(W/s), ceil(D/s))``
    for stride ``s``.
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv3d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm3d(out_channels),
            nn.ReLU(inplace=True),
            nn.Conv3d(out_channels, out_channels, 3, padding=1, bias=False),
            nn.BatchNorm3d(out_channels),
        )
        if stride == 1 and in_channels == out_channels:
            self.shortcut: nn.Module = nn.Identity()
        else:
            self.shortcut = nn.Sequential(
                nn.Conv3d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm3d(out_channels),
            )
        self.act = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Return ``relu(body(x) + shortcut(x))``."""
        return self.act(self.body(x) + self.shortcut(x))


class ChestNet(nn.Module):
    """The default classifier: a strided stem and one residual block per resolution.

    Layout for the default ``channels=(16, 32, 64, 128)`` at 128x128x64:

    - stem ``Conv3d(in_channels, 16, 3, stride 2) -> BN -> ReLU``: 64x64x32;
    - one :class:`ResidualBlock3d` of stride 2 per further width: 32 at 32x32x16,
      64 at 16x16x8, 128 at 8x8x4;
    - global average and global max pooling, concatenated (256 features), dropout, linear to logits.

    Input ``(B, in_channels, H, W, D)`` of any spatial size (odd sizes included); output
    ``(B, num_classes)``. 883,986 parameters and 2.52 GFLOPs per 128x128x64 volume
    (12.9x fewer than :class:`SeedNet`).

    Args:
        in_channels: channels of the input volume.
        num_classes: number of output logits.
        channels: widths of the stem and of each residual stage; each stage halves every spatial size.
        stem_stride: stride of the stem convolution, per spatial axis or one for all.
        dropout: dropout probability before the last layer.
    """

    def __init__(
        self,
        in_channels: int = 1,
        num_classes: int = 2,
        channels: Sequence[int] = (16, 32, 64, 128),
        stem_stride: int | Sequence[int] = 2,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if len(channels) < 1:
            raise ValueError("channels must name at least the stem width")
        self.stem = nn.Sequential(
            nn.Conv3d(in_channels, channels[0], 3, stride=stem_stride, padding=1, bias=False),
            nn.BatchNorm3d(channels[0]),
            nn.ReLU(inplace=True),
        )
        self.stages = nn.Sequential(
            *(ResidualBlock3d(c_in, c_out, stride=2) for c_in, c_out in itertools.pairwise(channels))
        )
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(2 * channels[-1], num_classes)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The features of every resolution: the stem's, then each stage's (coarsest last)."""
        features = [self.stem(x)]
        for stage in self.stages:
            features.append(stage(features[-1]))
        return features

    def classify(self, features: torch.Tensor) -> torch.Tensor:
        """Global average and max pooling of the coarsest ``features``, dropout, linear: ``(B, num_classes)``."""
        pooled = torch.cat([features.mean(dim=(2, 3, 4)), features.amax(dim=(2, 3, 4))], dim=1)
        return self.classifier(self.dropout(pooled))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Map ``(B, C, H, W, D)`` volumes to ``(B, num_classes)`` logits."""
        return self.classify(self.encode(x)[-1])


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv3d(in_channels, out_channels, 3, padding=1, bias=False),
        nn.BatchNorm3d(out_channels),
        nn.ReLU(inplace=True),
    )


class LesionChestNet(ChestNet):
    """:class:`ChestNet` with a light lesion decoder on its encoder (multi-task, the bundle's default).

    The decoder is a feature pyramid over the stages: ``1x1x1`` lateral convolutions to ``decoder_width``
    channels, coarse-to-fine upsampling and addition, one ``3x3x3`` convolution at each resolution down to
    ``1 / (2 * stem_stride)`` of the input (32x32x16 for 128x128x64), then a ``1x1x1`` convolution to one
    lesion logit per voxel, upsampled (trilinear) to the input size. The classifier reads the same encoder.

    ``forward(x (B, C, H, W, D))`` returns ``{"pred": (B, num_classes), "lesion": (B, 1, H, W, D)}`` logits;
    ``sigmoid(lesion)`` is P(lesion) per voxel. :attr:`gradcam_layer` names the encoder's last convolution
    (the decoder's convolutions come after it in ``named_modules``).

    Args:
        decoder_width: channels of the decoder.
        lesion_prior: initial P(lesion) of every voxel (the head's bias), small as lesions are.
        kwargs: :class:`ChestNet`'s arguments; ``channels`` needs at least three widths.
    """

    def __init__(self, *args: object, decoder_width: int = 32, lesion_prior: float = 0.02, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        widths = [self.stem[0].out_channels] + [stage.body[0].out_channels for stage in self.stages]
        if len(widths) < 3:
            raise ValueError("the lesion decoder needs channels of at least three widths")
        self.laterals = nn.ModuleList(nn.Conv3d(w, decoder_width, 1) for w in widths[1:])
        self.smooth = nn.ModuleList(_conv_bn_relu(decoder_width, decoder_width) for _ in widths[2:])
        self.lesion_head = nn.Conv3d(decoder_width, 1, 1)
        nn.init.constant_(self.lesion_head.bias, float(torch.logit(torch.tensor(lesion_prior))))
        self.gradcam_layer = f"stages.{len(self.stages) - 1}.body.3"

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Lesion logits ``(B, 1, h, w, d)`` at the resolution of the first stage from :meth:`encode`'s features."""
        laterals: list[torch.Tensor] = []
        for i, lateral in enumerate(self.laterals):
            laterals.append(lateral(features[i + 1]))
        out = laterals[-1]
        for i, smooth in enumerate(self.smooth):
            skip = laterals[-2 - i]
            out = smooth(skip + F.interpolate(out, size=skip.shape[2:], mode="trilinear", align_corners=False))
        return self.lesion_head(out)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:  # type: ignore[override]
        """Map ``(B, C, H, W, D)`` volumes to class logits and lesion logits of the input's size."""
        features = self.encode(x)
        lesion = F.interpolate(self.decode(features), size=x.shape[2:], mode="trilinear", align_corners=False)
        return {"pred": self.classify(features[-1]), "lesion": lesion}  # CLASS_KEY, LESION_KEY (TorchScript)


class ClassLogits(nn.Module):
    """``network`` seen as a classifier: its class logits ``(B, num_classes)`` alone (e.g. for Grad-CAM).

    The view starts in ``network``'s mode (train or eval): tools that put a model back into the mode they found
    it in (MONAI's ``GradCAM``) must not switch an evaluated network to training through its wrapper.
    """

    def __init__(self, network: nn.Module) -> None:
        super().__init__()
        self.network = network
        self.train(network.training)
        layer = getattr(network, "gradcam_layer", None)
        if layer is not None:
            self.gradcam_layer = f"network.{layer}"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return split_output(self.network(x))[0]


def split_output(output: torch.Tensor | Mapping[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(class logits, lesion logits or None)`` from a network's output, a tensor or a multi-task dict."""
    if isinstance(output, Mapping):
        return output[CLASS_KEY], output.get(LESION_KEY)
    return output, None


NETWORKS: dict[str, type[nn.Module]] = {"chestnet": LesionChestNet, "chestnet_cls": ChestNet, "seed": SeedNet}
DEFAULT_NETWORK = "chestnet"


def has_lesion_output(name: str) -> bool:
    """Whether the network registered as ``name`` also segments lesions (so its data carries lesion masks)."""
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid names: {', '.join(sorted(NETWORKS))}")
    return issubclass(NETWORKS[name], LesionChestNet)


def build_network(
    name: str = DEFAULT_NETWORK, in_channels: int = 1, num_classes: int = 2, **kwargs: object
) -> nn.Module:
    """Build the network registered as ``name`` in :data:`NETWORKS`.

    Args:
        name: a key of :data:`NETWORKS` (``"chestnet"``, the default, ``"chestnet_cls"`` or ``"seed"``).
        in_channels: channels of the input volume.
        num_classes: number of output logits.
        kwargs: further arguments of the network's constructor (e.g. ``dropout``).

    Raises:
        ValueError: ``name`` is not registered.
    """
    if name not in NETWORKS:
        raise ValueError(f"unknown network {name!r}; valid names: {', '.join(sorted(NETWORKS))}")
    return NETWORKS[name](in_channels=in_channels, num_classes=num_classes, **kwargs)


def count_parameters(model: nn.Module) -> int:
    """Number of trainable parameters of ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def count_flops(model: nn.Module, input_shape: tuple[int, ...]) -> int:
    """Forward FLOPs per volume of ``model`` in eval mode (one multiply-add counts as 2 FLOPs).

    Args:
        model: the network; its training mode is restored afterwards.
        input_shape: full input shape ``(B, C, H, W, D)``; the count is divided by ``B``.
    """
    was_training = model.training
    model.eval()
    param = next(model.parameters(), None)
    x = torch.zeros(input_shape, dtype=torch.float32, device=None if param is None else param.device)
    counter = FlopCounterMode(display=False)
    try:
        with torch.no_grad(), counter:
            model(x)
    finally:
        model.train(was_training)
    return counter.get_total_flops() // input_shape[0]
