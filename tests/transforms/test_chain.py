"""One deterministic chain: every bundle route feeds the network the same tensor; checkpoints record the chain."""

from __future__ import annotations

import shutil

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE, TINY_CHAIN, WITHOUT_MODEL, write_untrained_model
from ignite.engine import Engine
from monai.bundle import ConfigParser
from monai.transforms import Compose

from pipeline.engine.record import read, resolve
from pipeline.networks.nets import build_network
from pipeline.synth.phantom import generate_study
from pipeline.transforms.chain import deterministic_transforms, in_channels, lung_or_all
from pipeline.utils.errors import InputError

SMALL = TINY_CHAIN


@pytest.fixture(scope="module")
def scan(tmp_path_factory):
    """A synthetic CT-2 chest (matrix 128) as a NIfTI file."""
    study = generate_study("CT-2", 5, matrix=128)
    path = tmp_path_factory.mktemp("scan") / "study_0001.nii.gz"
    nib.save(nib.Nifti1Image(study.image.astype(np.int16), study.affine), str(path))
    return path


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    """A copy of the bundle whose ``model.pt`` (untrained chestnet) records the :data:`SMALL` chain."""
    root = tmp_path_factory.mktemp("bundle") / BUNDLE.name
    shutil.copytree(BUNDLE, root, ignore=WITHOUT_MODEL)
    network = build_network("chestnet", in_channels=1, num_classes=2)
    network.load_state_dict(torch.load(write_untrained_model(root, **SMALL), weights_only=True))
    torch.jit.script(network).save(str(root / "models" / "model.ts"))  # exported from the weights, as ckpt_export does
    return root


def route(bundle, files: list[str], key: str, **overrides):
    """The parsed preprocessing ``key`` of the configs ``files`` (merged in order) of ``bundle``."""
    parser = ConfigParser()
    parser.read_config([str(bundle / "configs" / f) for f in files])
    parser["bundle_root"] = str(bundle)
    for k, v in overrides.items():
        parser[k] = v
    return parser.get_parsed_content(key)


def test_every_route_gives_the_same_tensor(bundle, scan):
    routes = {
        "train (validation)": route(bundle, ["train.json"], "validate#preprocessing", **SMALL),
        "evaluate": route(bundle, ["train.json", "evaluate.json"], "validate#preprocessing", **SMALL),
        "inference": route(bundle, ["inference.json"], "preprocessing"),
        "torchscript": route(bundle, ["inference.json", "inference_torchscript.json"], "preprocessing"),
        "python": Compose(
            deterministic_transforms(**{**route(bundle, ["train.json"], "preprocessing_params"), **SMALL})
        ),
    }
    outputs = {name: chain({"image": str(scan)})["image"] for name, chain in routes.items()}
    reference = outputs.pop("train (validation)")
    assert reference.shape == (1, 32, 32, 16) and reference.dtype == torch.float16
    for name, out in outputs.items():  # inference casts the float16 chain output to float32 for the network
        assert torch.equal(torch.as_tensor(out).float(), torch.as_tensor(reference).float()), name


def test_outside_the_lungs_is_air_and_the_lungs_are_kept(scan):
    out = Compose(deterministic_transforms(**SMALL))({"image": str(scan)})["image"].float()
    assert float(out.min()) == 0.0  # air (-1000 HU) outside the lung mask
    assert 0.1 < float((out > 0).float().mean()) < 0.9  # the crop is mostly lung, not all of it
    two = Compose(deterministic_transforms(**SMALL, outside_lung="channel"))({"image": str(scan)})["image"]
    assert two.shape == (2, 32, 32, 16) and in_channels("channel") == 2
    assert set(torch.unique(two[1].float().round()).tolist()) <= {0.0, 1.0}


def test_empty_lung_mask_keeps_the_whole_volume():
    assert bool(lung_or_all(np.zeros((4, 4, 4))).all())
    mask = np.zeros((4, 4, 4))
    mask[1, 1, 1] = 1
    assert int(lung_or_all(mask).sum()) == 1


def test_checkpoint_records_the_chain_and_a_different_chain_is_refused(bundle):
    model = bundle / "models" / "model.pt"
    assert read(model)["preprocessing"]["spatial_size"] == [32, 32, 16]
    assert resolve(model, spatial_size=[32, 32, 16])["network_name"] == "chestnet"
    with pytest.raises(InputError, match=r"spatial_size: trained \[32, 32, 16\], this run \[96, 96, 48\]"):
        resolve(model, spatial_size=[96, 96, 48])
    with pytest.raises(InputError, match="network_name"):
        resolve(model, network_name="seed")
    evaluate_loader = route(
        bundle, ["train.json", "evaluate.json"], "validate#handlers", spatial_size=[96, 96, 48], pixdim=SMALL["pixdim"]
    )[0]
    with pytest.raises(InputError, match=str(model)):
        evaluate_loader(Engine(lambda engine, batch: None))
