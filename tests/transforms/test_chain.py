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
from monai.transforms import Compose, CropForegroundd

from pipeline.data.refusal import REFUSED, RefusingDataset
from pipeline.engine.record import read, resolve
from pipeline.networks.nets import build_network
from pipeline.synth.phantom import SCANNERS, generate_study
from pipeline.transforms import lung, plausibility
from pipeline.transforms.chain import RECORDED, SEGMENTATION, deterministic_transforms, in_channels, lung_or_all
from pipeline.transforms.lung import segment_lungs
from pipeline.utils.errors import InputError, find_input_error

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


def until_the_crop(**params) -> Compose:
    """The chain (``lesion=True``: the lesion mask ``"mask"`` rides with the image) up to the lung crop."""
    chain = deterministic_transforms(lesion=True, **params)
    return Compose(chain[: next(i for i, t in enumerate(chain) if isinstance(t, CropForegroundd))])


@pytest.mark.parametrize("scanner", list(SCANNERS))
@pytest.mark.parametrize(
    "category,patterns",
    [("CT-0", None), ("CT-2", None), ("CT-4", None), ("CT-4", ("patchy_ggo",)), ("CT-3", ("diffuse_reticular",))],
)
def test_the_true_lung_is_in_the_mask_on_the_chains_grid(tmp_path, scanner, category, patterns):
    """The true lung, carried to the 2 x 2 x 4 mm grid as the chain carries a lesion mask (a fraction of each voxel,
    read at 0.5), lies in the chain's lung mask: the lungs are found on the scan's grid and carried with it (also
    with ground glass or reticulation forced through both lungs)."""
    study = generate_study(category, 1, matrix=128, scanner=scanner, patterns=patterns)
    image, lung = tmp_path / "image.nii.gz", tmp_path / "lung.nii.gz"
    nib.save(nib.Nifti1Image(study.image.astype(np.int16), study.affine), str(image))
    nib.save(nib.Nifti1Image(study.lung.astype(np.uint8), study.affine), str(lung))
    out = until_the_crop()({"image": str(image), "mask": str(lung)})
    assert out["lung"].shape == out["image"].shape and np.allclose(out["lung"].pixdim, (2.0, 2.0, 4.0), atol=0.05)
    mask, truth = out["lung"][0].numpy() > 0, out["mask"][0].numpy() >= 0.5
    assert (mask & truth).sum() >= 0.97 * truth.sum(), (mask & truth).sum() / truth.sum()
    assert (mask & ~truth).sum() < 0.2 * mask.sum()
    before = until_the_crop(lung_grid="pixdim")({"image": str(image)})["lung"][0].numpy() > 0
    assert mask.shape == before.shape  # the same grid, the mask found on another


def white_chest(tmp_path, name: str) -> str:
    """A synthetic chest (CT-0, matrix 128) whose lungs are soft tissue but for their top 15 %, as NIfTI: aerated
    lung enough for :class:`~pipeline.transforms.plausibility.CheckChestCT`, too little for the chest."""
    study = generate_study("CT-0", 0, matrix=128)
    from_top = np.cumsum(study.lung.sum(axis=(0, 1))[::-1])[::-1]
    white = study.lung & (from_top > 0.15 * from_top[0])[None, None, :]
    image = study.image.copy()
    image[white] = 30
    path = tmp_path / name
    nib.save(nib.Nifti1Image(image, study.affine), str(path))
    return str(path)


def test_a_chest_whose_lungs_are_lost_is_refused_and_the_batch_goes_on(tmp_path, scan):
    bad = white_chest(tmp_path, "white.nii.gz")
    with pytest.raises(RuntimeError) as err:  # Compose wraps the InputError of its LungMaskd
        Compose(deterministic_transforms(**SMALL))({"image": bad})
    refused = find_input_error(err.value)
    assert refused.path == bad and "lungs implausibly small for the chest in view" in refused.problem
    items = RefusingDataset([{"image": str(scan)}, {"image": bad}], Compose(deterministic_transforms(**SMALL)))
    assert REFUSED not in items[0] and items[0]["image"].shape == (1, 32, 32, 16)
    assert "lungs implausibly small" in items[1][REFUSED]["reason"]


def test_the_lung_grid_is_recorded_and_checked():
    assert "lung_grid" in RECORDED
    with pytest.raises(ValueError, match="lung_grid"):
        deterministic_transforms(lung_grid="native")


def test_the_lungs_are_segmented_once_a_study(scan, monkeypatch):
    """The chest check's lung segmentation is the lung mask's (``SEGMENTATION``), not a second one."""
    calls = []

    def counted(*args):
        calls.append(args[0].shape)
        return segment_lungs(*args)

    monkeypatch.setattr(lung, "segment_lungs", counted)
    monkeypatch.setattr(plausibility, "segment_lungs", counted)
    out = Compose(deterministic_transforms(**SMALL))({"image": str(scan)})
    assert len(calls) == 1 and SEGMENTATION not in out and out["image"].shape == (1, 32, 32, 16)
    calls.clear()
    Compose(deterministic_transforms(**SMALL, lung_grid="pixdim"))({"image": str(scan)})
    assert len(calls) == 2  # the check's on the scan's grid, the mask's on the pixdim grid
