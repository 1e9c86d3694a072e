"""Tests for pipeline.networks.nets: shapes, parameter and FLOP counts, TorchScript, ONNX, training."""

from __future__ import annotations

import io

import pytest
import torch
from monai.visualize import GradCAM
from torch import nn

from pipeline.engine.multitask import MultiTaskLoss
from pipeline.networks.nets import (
    NETWORKS,
    ChestNet,
    ClassLogits,
    LesionChestNet,
    SeedNet,
    build_network,
    count_flops,
    count_parameters,
    has_lesion_output,
    split_output,
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
        ("chestnet", (33, 47, 9)),
        ("chestnet", (1, 1, 1)),
        ("chestnet_cls", (96, 96, 40)),
        ("chestnet_cls", (1, 1, 1)),
        ("seed", (46, 46, 46)),
        ("seed", (64, 64, 48)),
        ("seed", (61, 50, 47)),
    ],
)
@pytest.mark.parametrize("batch", [1, 3])
def test_output_shape(name: str, spatial: tuple[int, int, int], batch: int) -> None:
    model = build_network(name).eval()
    with torch.no_grad():
        logits, lesion = split_output(model(torch.randn(batch, 1, *spatial)))
    assert logits.shape == (batch, 2)
    assert torch.isfinite(logits).all()
    if has_lesion_output(name):
        assert lesion is not None and lesion.shape == (batch, 1, *spatial)
        assert torch.isfinite(lesion).all()
    else:
        assert lesion is None


def test_in_channels_and_num_classes() -> None:
    for name in NETWORKS:
        model = build_network(name, in_channels=3, num_classes=5).eval()
        with torch.no_grad():
            assert split_output(model(torch.randn(2, 3, 48, 48, 48)))[0].shape == (2, 5)


def test_chestnet_options() -> None:
    model = build_network("chestnet_cls", channels=[8, 16], stem_stride=[2, 2, 1]).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 1, 40, 40, 20)).shape == (1, 2)
    smaller = build_network("chestnet_cls", channels=[8, 16])
    assert count_flops(model, (1, 1, 40, 40, 20)) > count_flops(smaller, (1, 1, 40, 40, 20))
    with pytest.raises(ValueError, match="at least the stem width"):
        ChestNet(channels=())
    with pytest.raises(ValueError, match="at least three widths"):
        LesionChestNet(channels=(8, 16))


def test_lesion_head_starts_at_its_prior_and_shares_the_encoder() -> None:
    model = LesionChestNet(lesion_prior=0.02).eval()
    with torch.no_grad():
        out = model(torch.zeros(1, 1, 32, 32, 16))
    torch.testing.assert_close(torch.sigmoid(out["lesion"]).mean(), torch.tensor(0.02), atol=0.02, rtol=0)
    classifier = ChestNet()
    classifier.load_state_dict(model.state_dict(), strict=False)  # the encoder and classifier are ChestNet's
    x = torch.randn(1, 1, 32, 32, 16)
    with torch.no_grad():
        torch.testing.assert_close(classifier.eval()(x), model(x)["pred"])
        torch.testing.assert_close(ClassLogits(model)(x), model(x)["pred"])
    assert dict(model.named_modules())[model.gradcam_layer] is model.stages[-1].body[3]


def test_class_view_keeps_an_evaluated_network_in_eval_mode():
    """MONAI's GradCAM restores the mode it found its module in: the view must not report training."""
    model = LesionChestNet(channels=(4, 8, 16)).eval()
    view = ClassLogits(model)
    assert not view.training
    GradCAM(nn_module=view, target_layers=view.gradcam_layer)(torch.randn(1, 1, 16, 16, 8), class_idx=1)
    assert not model.training and not any(m.training for m in model.modules())
    assert ClassLogits(LesionChestNet(channels=(4, 8, 16)).train()).training


def test_seed_rejects_too_small_volume() -> None:
    with pytest.raises(ValueError, match=r">= 46, got \[96, 96, 40\]"):
        SeedNet()(torch.randn(1, 1, 96, 96, 40))


def test_seed_parameter_count_matches_keras_tutorial() -> None:
    # Keras tutorial model: 1,351,873 trainable parameters with one sigmoid unit (Dense 512 -> 1);
    # two logits add one more row of 512 weights and one bias.
    assert count_parameters(SeedNet()) == 1_351_873 + 512 + 1 == 1_352_386


def test_default_network_and_registry() -> None:
    assert isinstance(build_network(), LesionChestNet) and has_lesion_output("chestnet")
    assert NETWORKS["chestnet_cls"] is ChestNet and NETWORKS["seed"] is SeedNet
    assert not has_lesion_output("chestnet_cls") and not has_lesion_output("seed")
    assert build_network("chestnet", dropout=0.5).dropout.p == 0.5
    with pytest.raises(ValueError, match="unknown network 'resnet'"):
        has_lesion_output("resnet")


def test_unknown_name_lists_valid_names() -> None:
    with pytest.raises(ValueError, match=r"unknown network 'resnet'; valid names: chestnet, chestnet_cls, seed"):
        build_network("resnet")


def test_unknown_keyword_is_refused() -> None:
    with pytest.raises(TypeError, match="filters"):
        build_network("chestnet", filters=3)


def test_flops_and_parameters_at_full_size() -> None:
    shape = (1, 1, 128, 128, 64)
    seed, classifier, default = SeedNet(), build_network("chestnet_cls"), build_network()
    seed_flops, default_flops = count_flops(seed, shape), count_flops(default, shape)
    assert seed_flops == 32_450_804_736
    assert default_flops < seed_flops / 5
    assert count_parameters(classifier) == 883_986
    assert count_parameters(default) == 946_707


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
            torch.testing.assert_close(split_output(scripted(x)), split_output(model(x)), rtol=0, atol=0)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_onnx_export(name: str) -> None:
    onnx = pytest.importorskip("onnx")
    onnxruntime = pytest.importorskip("onnxruntime")
    model, buffer = build_network(name).eval(), io.BytesIO()
    outputs = ["pred", "lesion"] if has_lesion_output(name) else ["pred"]
    spatial = {0: "batch", 2: "h", 3: "w", 4: "d"}
    torch.onnx.export(
        model,
        (torch.randn(1, 1, 48, 48, 48),),
        buffer,
        dynamo=False,
        input_names=["image"],
        output_names=outputs,
        dynamic_axes={"image": spatial, "pred": {0: "batch"}} | ({"lesion": spatial} if len(outputs) > 1 else {}),
    )
    onnx.checker.check_model(onnx.load_from_string(buffer.getvalue()))
    x = torch.randn(2, 1, 48, 56, 50)
    got = onnxruntime.InferenceSession(buffer.getvalue()).run(None, {"image": x.numpy()})
    with torch.no_grad():
        expected = [t for t in split_output(model(x)) if t is not None]
    for array, tensor in zip(got, expected, strict=True):
        torch.testing.assert_close(torch.from_numpy(array), tensor, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("name", sorted(NETWORKS))
def test_training_step_reduces_loss(name: str) -> None:
    """A few steps on a trivially separable toy problem (bright vs dark volumes) lower the loss."""
    model = build_network(name, dropout=0.0).train()
    x = torch.cat([torch.full((2, 1, 48, 48, 48), -1.0), torch.full((2, 1, 48, 48, 48), 1.0)])
    x = x + 0.1 * torch.randn_like(x)
    y = torch.tensor([0, 0, 1, 1])
    target = {"label": y, "mask": (x > 0.5).float(), "has_mask": torch.ones(4)} if has_lesion_output(name) else y
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    before = [p.detach().clone() for p in model.parameters()]
    losses = []
    for _ in range(3):
        optimizer.zero_grad()
        loss = MultiTaskLoss()(model(x), target)
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
    first, second, batched = split_output(first), split_output(second), split_output(batched)
    torch.testing.assert_close(first, second, rtol=0, atol=0)
    for one, many in zip(first, batched):
        if one is not None:
            torch.testing.assert_close(one, many[:1], rtol=1e-5, atol=1e-5)


def test_multitask_loss_learns_where_the_lesions_are() -> None:
    """Dice + CE on the studies with a mask, CE alone on the others; a few steps fit a toy lesion."""
    model = LesionChestNet(channels=(8, 16, 32), dropout=0.0).train()
    x = 0.1 * torch.randn(4, 1, 32, 32, 16)
    mask = torch.zeros(4, 1, 32, 32, 16)
    mask[2:, :, 8:20, 8:20, 4:12] = 1.0
    x = x + mask  # the lesion is bright
    target = {"label": torch.tensor([0, 0, 1, 1]), "mask": mask, "has_mask": torch.tensor([1.0, 0.0, 1.0, 1.0])}
    loss_fn = MultiTaskLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(40):  # BatchNorm's running statistics need a few dozen steps for eval mode
        optimizer.zero_grad()
        loss = loss_fn(model(x), target)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]
    with torch.no_grad():
        lesion = torch.sigmoid(model.eval()(x)["lesion"]) >= 0.5
    dice = 2 * (lesion[2:] & (mask[2:] > 0)).sum() / (lesion[2:].sum() + mask[2:].sum())
    assert dice > 0.8
    assert not lesion[:2].any()  # none in the normal studies


def test_multitask_loss_without_masks_is_cross_entropy() -> None:
    logits = torch.randn(3, 2)
    label = torch.tensor([0, 1, 1])
    lesion = torch.randn(3, 1, 4, 4, 4)
    ce = nn.functional.cross_entropy(logits, label)
    loss_fn = MultiTaskLoss()
    torch.testing.assert_close(loss_fn(logits, label), ce)
    none_known = {"label": label, "mask": torch.ones(3, 1, 4, 4, 4), "has_mask": torch.zeros(3)}
    torch.testing.assert_close(loss_fn({"pred": logits, "lesion": lesion}, none_known), ce)
    one_known = {**none_known, "has_mask": torch.tensor([0.0, 1.0, 0.0])}
    assert loss_fn({"pred": logits, "lesion": lesion}, one_known) > ce
