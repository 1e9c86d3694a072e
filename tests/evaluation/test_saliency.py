"""Grad-CAM montages on tiny real networks, and the choice of gallery cases."""

from __future__ import annotations

import io

import matplotlib.image
import pytest
import torch
from torch import nn

from pipeline.evaluation.saliency import last_conv_layer, pick_examples, saliency_montage
from pipeline.networks.nets import ChestNet, LesionChestNet

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def tiny_net() -> nn.Sequential:
    """Conv3d/ReLU/pool/linear classifier with two logits, in-place ReLU included."""
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv3d(1, 4, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.MaxPool3d(2),
        nn.Conv3d(4, 8, 3, padding=1),
        nn.ReLU(inplace=True),
        nn.AdaptiveAvgPool3d(1),
        nn.Flatten(),
        nn.Linear(8, 2),
    )


@pytest.fixture
def volume() -> torch.Tensor:
    """(1, 32, 32, 16) volume in [0, 1] with a bright blob."""
    torch.manual_seed(1)
    image = torch.rand(1, 32, 32, 16) * 0.2
    image[:, 8:16, 10:20, 4:10] = 0.9
    return image


def decode(png: bytes):
    assert png.startswith(PNG_SIGNATURE)
    return matplotlib.image.imread(io.BytesIO(png))


@pytest.mark.parametrize(
    ("make", "layer"),
    [(tiny_net, "3"), (lambda: ChestNet(channels=(4, 8, 16)), "stages.1.body.3")],
)
def test_montage_is_a_png_and_leaves_the_network_alone(volume, make, layer):
    torch.set_num_threads(1)
    net = make().train()
    inplace = [m.inplace for m in net.modules() if hasattr(m, "inplace")]
    assert last_conv_layer(net) == layer  # ChestNet: the 1x1x1 shortcut projection is passed over
    png = saliency_montage(net, volume, n_slices=4)
    pixels = decode(png)
    assert pixels.ndim == 3 and pixels.shape[1] > pixels.shape[0] > 100  # one row of slices
    rgb = pixels[..., :3]
    assert (rgb.max(axis=-1) - rgb.min(axis=-1) > 0.2).mean() > 0.05  # the coloured CAM overlay shows
    assert net.training and inplace == [m.inplace for m in net.modules() if hasattr(m, "inplace")]
    assert any(inplace)
    assert not net._forward_hooks and all(not m._forward_hooks for m in net.modules())


def test_multitask_montage_adds_the_lesion_row(volume):
    torch.set_num_threads(1)

    def lesion_net(prior: float) -> LesionChestNet:
        """P(lesion) = ``prior`` in every voxel: the head's weights zeroed, its bias the prior's logit."""
        net = LesionChestNet(channels=(4, 8, 16), lesion_prior=prior).eval()
        nn.init.zeros_(net.lesion_head.weight)
        return net

    net = lesion_net(0.9)
    rows = decode(saliency_montage(net, volume, n_slices=4))
    single = decode(saliency_montage(ChestNet(channels=(4, 8, 16)).eval(), volume, n_slices=4))
    assert rows.shape[1] == single.shape[1] and rows.shape[0] > 1.6 * single.shape[0]  # two rows of slices
    clear = decode(saliency_montage(lesion_net(0.1), volume, n_slices=4))

    def red(pixels) -> float:
        lower = pixels[int(0.6 * pixels.shape[0]) :, :, :3]
        return float(((lower[..., 0] - lower[..., 2]) > 0.1).mean())

    assert red(rows) > 0.01 and red(clear) < 0.1 * red(rows)  # the lesion overlay shows where P(lesion) >= 0.5
    assert not net._forward_hooks and all(not m._forward_hooks for m in net.modules())


def test_explicit_layer_and_bad_inputs(volume):
    net = tiny_net()
    decode(saliency_montage(net, volume, target_layer="0", n_slices=2, title="first conv"))
    with pytest.raises(ValueError, match=r"\(C, H, W, D\)"):
        saliency_montage(net, volume[0])
    with pytest.raises(ValueError, match=r"no nn\.Conv3d"):
        last_conv_layer(nn.Sequential(nn.Flatten(), nn.Linear(4, 2)))


def test_pick_examples():
    rows = [
        {"study_id": "tp1", "label": 1, "prob_pneumonia": 0.7},
        {"study_id": "tp2", "label": 1, "prob_pneumonia": 0.95},
        {"study_id": "tp3", "label": 1, "prob_pneumonia": 0.5},  # on the threshold: positive
        {"study_id": "fn1", "label": 1, "prob_pneumonia": 0.2},
        {"study_id": "fp1", "label": 0, "prob_pneumonia": 0.6},
        {"study_id": "tn1", "label": 0, "prob_pneumonia": 0.3},
        {"study_id": "tn2", "label": 0, "prob_pneumonia": 0.05},
        {"study_id": "unknown", "label": None, "prob_pneumonia": 0.99},
    ]
    picked = {k: [r["study_id"] for r in v] for k, v in pick_examples(rows, k=2).items()}
    assert picked == {"TP": ["tp2", "tp1"], "FP": ["fp1"], "FN": ["fn1"], "TN": ["tn2", "tn1"]}
    picked = {k: [r["study_id"] for r in v] for k, v in pick_examples(rows, k=1, threshold=0.8).items()}
    assert picked == {"TP": ["tp2"], "FP": [], "FN": ["fn1"], "TN": ["tn2"]}
