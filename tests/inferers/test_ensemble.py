"""Ensembles of checkpoints: averaged probabilities, safe loading, and errors naming the file."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import save_model
from monai.transforms import Activations
from torch import nn

from pipeline.inferers.ensemble import Ensemble, load_model_weights, mean_log_probs
from pipeline.networks.nets import build_network
from pipeline.utils.errors import InputError


def tiny_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv3d(1, 2, 3), nn.AdaptiveAvgPool3d(1), nn.Flatten(), nn.Linear(2, 2))


@pytest.fixture
def checkpoints(tmp_path):
    """Two trained-looking nets saved as the bundle saves them (plain weights, their record beside them)."""
    nets = [tiny_net(1), tiny_net(2)]
    save_model(nets[0].state_dict(), tmp_path / "fold0.pt", "tiny")
    save_model(nets[1].state_dict(), tmp_path / "fold1.pt", "tiny")
    return nets, [tmp_path / "fold0.pt", str(tmp_path / "fold1.pt")]


def test_softmax_of_output_is_the_mean_probability(checkpoints):
    nets, files = checkpoints
    x = torch.randn(3, 1, 8, 8, 8)
    ensemble = Ensemble(tiny_net(0), files).eval()
    with torch.no_grad():
        out = ensemble(x)
        expected = torch.stack([torch.softmax(n(x), dim=1) for n in nets]).mean(dim=0)
    assert out.shape == (3, 2)
    # the bundle's postprocessing: Activationsd(softmax=True) on each decollated (K,) output
    torch.testing.assert_close(torch.stack([Activations(softmax=True)(o) for o in out]).as_tensor(), expected)
    torch.testing.assert_close(
        torch.nn.functional.cross_entropy(out, torch.tensor([0, 1, 1])),
        torch.nn.functional.nll_loss(expected.log(), torch.tensor([0, 1, 1])),
    )
    assert ensemble.ckpt_files == [str(f) for f in files]


def test_one_member_gives_the_network_probabilities(checkpoints):
    nets, files = checkpoints
    x = torch.randn(2, 1, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(torch.softmax(Ensemble(tiny_net(5), files[:1])(x), 1), torch.softmax(nets[0](x), 1))


def test_mean_log_probs_is_stable_for_extreme_logits():
    logits = [torch.tensor([[1000.0, -1000.0]]), torch.tensor([[-1000.0, 1000.0]])]
    torch.testing.assert_close(torch.softmax(mean_log_probs(logits), 1), torch.tensor([[0.5, 0.5]]))


def test_members_are_independent_copies(checkpoints):
    _, files = checkpoints
    template = tiny_net(9)
    before = [p.clone() for p in template.parameters()]
    ensemble = Ensemble(template, files)
    assert all(torch.equal(a, b) for a, b in zip(before, template.parameters())), "template untouched"
    a, b = (next(iter(m.parameters())) for m in ensemble.members)
    assert a.data_ptr() != b.data_ptr() and not torch.equal(a, b)


def test_bad_checkpoints_name_the_file(tmp_path, checkpoints):
    _, files = checkpoints
    with pytest.raises(InputError, match=r"missing\.pt: checkpoint not found"):
        Ensemble(tiny_net(0), [files[0], tmp_path / "missing.pt"])
    save_model(build_network("seed", in_channels=1, num_classes=2).state_dict(), tmp_path / "other.pt", "tiny")
    with pytest.raises(InputError, match=r"other\.pt: does not fit this network"):
        load_model_weights(tiny_net(0), tmp_path / "other.pt")
    save_model({"model": Activations(softmax=True)}, tmp_path / "code.pt", "tiny")  # a pickled object, not weights
    with pytest.raises(InputError, match=r"code\.pt: refused to load"):
        Ensemble(tiny_net(0), [tmp_path / "code.pt"])


def test_every_member_needs_its_own_record_and_the_first_ones_chain(tmp_path, checkpoints):
    nets, files = checkpoints
    (tmp_path / "fold1.json").unlink()
    with pytest.raises(InputError, match=r"fold1\.json: missing: the weights .*fold1\.pt have no record"):
        Ensemble(tiny_net(0), files)
    (tmp_path / "fold1.json").write_text((tmp_path / "fold0.json").read_text())  # the record of other weights
    with pytest.raises(InputError, match=r"fold1\.json: describes other weights than .*fold1\.pt"):
        Ensemble(tiny_net(0), files)
    save_model(nets[1].state_dict(), tmp_path / "fold1.pt", "tiny", spatial_size=[64, 64, 32])
    with pytest.raises(InputError, match=r"fold1\.pt: an ensemble member .*fold0\.pt.*spatial_size: trained \[64"):
        Ensemble(tiny_net(0), files)
    assert json.loads((tmp_path / "fold1.json").read_text())["weights"] == "fold1.pt"


@pytest.mark.parametrize("files", [[], "models/model.pt"])
def test_ckpt_files_must_be_a_list(files):
    with pytest.raises(ValueError, match="non-empty list"):
        Ensemble(tiny_net(0), files)


def test_multitask_members_average_their_lesion_probabilities(tmp_path):
    nets = [build_network("chestnet", channels=(4, 8, 16)).eval() for _ in range(2)]
    files = []
    for k, net in enumerate(nets):
        torch.manual_seed(k)
        nn.init.normal_(net.lesion_head.weight)  # members that disagree
        files.append(save_model(net.state_dict(), tmp_path / f"m{k}.pt"))
    ensemble = Ensemble(build_network("chestnet", channels=(4, 8, 16)), files).eval()
    x = torch.randn(2, 1, 16, 16, 8)
    with torch.no_grad():
        out = ensemble(x)
        members = [n(x) for n in nets]
    assert set(out) == {"pred", "lesion"}
    expected = torch.stack([torch.softmax(m["pred"], 1) for m in members]).mean(0)
    torch.testing.assert_close(torch.softmax(out["pred"], 1), expected)
    lesion = torch.stack([torch.sigmoid(m["lesion"]) for m in members]).mean(0)
    torch.testing.assert_close(torch.sigmoid(out["lesion"]), lesion, atol=1e-5, rtol=0)
