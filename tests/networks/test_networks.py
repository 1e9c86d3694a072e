"""Tests for pipeline.networks.nets: shapes, parameter and FLOP counts, TorchScript, ONNX, training."""

from __future__ import annotations

import io

import pytest
import torch
from torch import nn

from pipeline.networks.nets import (
    NETWORKS,
    ChestNet,
    SeedNet,
    build_network,
    count_flops,
    count_parameters,
)

pytestmark = pytest.mark.filterwarnings("ignore:`torch.jit.script` is deprecated:DeprecationWarning")


@pytest.fixture(autouse=True)
def _one_thread() -> None:
    torch.set_num_threads(1)
    torch.manual_seed(0)


@pytest.mark.parametrize(
    ("name", "spatial"),
    [
        ("chestnet", (64, 64, 32)),
        ("chestnet", (96, 96, 40)),
        ("chestnet", (33, 47, 9)),
        ("chestnet", (1, 1, 1)),
        ("seed", (46, 46, 46)),
        ("seed", (64, 64, 48)),
        ("seed", (61, 50, 47)),
    ],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape(name: str, spatial: tuple[int, int, int], batch: int) -> None:
    model = build_network(name).eval()
    with torch.no_grad():
        out = model(torch.randn(batch, 1, *spatial))
    assert out.shape == (batch, 2)
    assert torch.isfinite(out).all()


def test_in_channels_and_num_classes() -> None:
    for name in NETWORKS:
        model = build_network(name, in_channels=3, num_classes=5).eval()
        with torch.no_grad():
            assert model(torch.randn(2, 3, 48, 48, 48)).shape == (2, 5)


def test_chestnet_options() -> None:
    model = build_network("chestnet", channels=[8, 16], stem_stride=[2, 2, 1]).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 40, 40, 20)).shape == (1, 2)
    assert count_flops(model, (1, 1, 40, 40, 20)) > count_flops(build_network(channels=[8, 16]), (1, 1, 40, 40, 20))
    with pytest.raises(ValueError, match="at least the stem width"):
        ChestNet(channels=())


def test_seed_rejects_too_small_volume() -> None:
    with pytest.raises(ValueError, match=r">= 46, got \[96, 96, 40\]"):
        SeedNet()(torch.randn(1, 1, 96, 96, 40))


def test_seed_parameter_count_matches_keras_tutorial() -> None:
    # Keras tutorial model: 1,351,873 trainable parameters with one sigmoid unit (Dense 512 -> 1);
    # two logits add one more row of 512 weights and one bias.
    assert count_parameters(SeedNet()) == 1_351_873 + 512 + 1 == 1_352_386


def test_default_network_and_registry() -> None:
    assert isinstance(build_network(), ChestNet)
    assert NETWORKS["chestnet"] is ChestNet and NETWORKS["seed"] is SeedNet
    assert build_network("chestnet", dropout=0.5).dropout.p == 0.5


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown network 'resnet'; valid names: chestnet, seed"):
        build_network("resnet")


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(TypeError, match="filters"):
        build_network("chestnet", filters=3)


def test_flops_and_parameters_at_full_size() -> None:
    shape = (1, 1, 128, 128, 64)
    seed, default = SeedNet(), build_network()
    seed_flops, default_flops = count_flops(seed, shape), count_flops(default, shape)
    assert seed_flops == 32_450_804_736
    assert default_flops < seed_flops / 5
    assert count_parameters(default) == 883_986


def test_count_flops_is_per_volume_and_keeps_mode() -> None:
    model = build_network().train()
    assert count_flops(model, (3, 1, 32, 32, 16)) == count_flops(model, (1, 1, 32, 32, 16))
    assert model.training
    conv = nn.Conv3d(1, 1, 3, padding=1, bias=False)  # 2 FLOPs per weight per voxel
    assert count_flops(conv, (2, 1, 4, 4, 4)) == 2 * 27 * 64


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_scripted_matches_eager(name: str) -> None:
    model = build_network(name).eval()
    scripted = torch.jit.script(model)
    for spatial in [(48, 48, 48), (50, 61, 47)]:
        x = torch.randn(2, 1, *spatial)
        with torch.no_grad():
            torch.testing.assert_close(scripted(x), model(x), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_onnx_export(name: str) -> None:
    onnx = pytest.importorskip("onnx")
    buffer = io.BytesIO()
    torch.onnx.export(
        build_network(name).eval(),
        (torch.randn(1, 1, 48, 48, 48),),
        buffer,
        dynamo=False,
        input_names=["image"],
        output_names=["pred"],
        dynamic_axes={"image": {0: "batch", 2: "h", 3: "w", 4: "d"}, "pred": {0: "batch"}},
    )
    onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()))


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_training_step_reduces_loss(name: str) -> None:
    """A few steps on a trivially separable toy problem (bright vs dark volumes) lower the loss."""
    model = build_network(name, dropout=0.0).train()
    x = torch.cat([torch.full((2, 1, 48, 48, 48), -1.0), torch.full((2, 1, 48, 48, 48), 1.0)])
    x = x + 0.1 * torch.randn_like(x)
    y = torch.tensor([0, 0, 1, 1])
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        loss.backward()
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters()))


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_eval_is_deterministic_for_batch_of_one(name: str) -> None:
    model = build_network(name)
    model.train()(torch.randn(2, 1, 48, 48, 48))  # update BatchNorm running statistics once
    model.eval()
    x = torch.randn(1, 1, 48, 48, 48)
    with torch.no_grad():
        first, second = model(x), model(x)
        batched = model(torch.cat([x, torch.randn_like(x)]))
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    torch.testing.assert_close(first, batched[:1], rtol=1e-5, atol=1e-5)
