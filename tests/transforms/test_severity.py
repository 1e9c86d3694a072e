"""Tests for pipeline.transforms.severity and the chain's lesion mode: involvement, category, scan geometry."""

from __future__ import annotations

import math

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose
from monai.utils import convert_to_tensor

from pipeline.synth.generate import nifti_bytes
from pipeline.synth.phantom import generate_study
from pipeline.transforms.augment import train_augmentation
from pipeline.transforms.chain import deterministic_transforms
from pipeline.transforms.hounsfield import voxel_ml
from pipeline.transforms.severity import (
    CATEGORIES,
    Involvementd,
    SplitOutputsd,
    category,
    involvement,
    lesion_evidence,
    to_scan_geometry,
)

CHAIN = {"spatial_size": (48, 48, 24), "pixdim": (4.0, 4.0, 8.0)}


@pytest.fixture(scope="module")
def study_files(tmp_path_factory) -> dict[str, str]:
    """A synthetic CT-3 study and its lesion mask as NIfTI files (int16 HU, uint8 mask)."""
    study = generate_study("CT-3", 3, matrix=96)
    folder = tmp_path_factory.mktemp("study")
    (folder / "image.nii.gz").write_bytes(nifti_bytes(study.image.astype(np.int16), study.affine))
    (folder / "mask.nii.gz").write_bytes(nifti_bytes(study.mask.astype(np.uint8), study.affine))
    return {
        "image": str(folder / "image.nii.gz"),
        "mask": str(folder / "mask.nii.gz"),
        "fraction": study.lesion_fraction,
    }


def test_involvement_counts_lesion_inside_the_lung() -> None:
    lung = torch.zeros(1, 10, 10, 10)
    lung[:, :5] = 1.0
    lesion = torch.zeros_like(lung)
    lesion[:, :2] = 0.9  # 2 of the 5 lung slabs
    lesion[:, 7:] = 1.0  # outside the lung: not counted
    assert involvement(lesion, lung) == pytest.approx(0.4)
    assert involvement(lesion, torch.zeros_like(lung)) == 0.0
    assert involvement(np.full((4, 4), 0.49), np.ones((4, 4))) == 0.0


@pytest.mark.parametrize(
    ("prob", "fraction", "expected"),
    [
        (0.2, 0.6, "CT-0"),  # not called pneumonia: CT-0 whatever the map says
        (0.9, 0.0, "CT-1"),  # called pneumonia: at least CT-1
        (0.9, 0.249, "CT-1"),
        (0.9, 0.25, "CT-2"),
        (0.9, 0.5, "CT-3"),
        (0.9, 0.74, "CT-3"),
        (0.9, 0.75, "CT-4"),
        (0.9, 1.0, "CT-4"),
    ],
)
def test_category_follows_mosmed_bands(prob: float, fraction: float, expected: str) -> None:
    assert category(prob, fraction, threshold=0.5) == expected
    assert CATEGORIES == ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")


def test_lesion_evidence_in_millilitres() -> None:
    """Two separate foci of 8 and 27 voxels of 2 x 2 x 4 mm (0.016 mL) in the lung, one outside it."""
    assert voxel_ml(np.diag([-2.0, 2.0, 4.0, 1.0])) == pytest.approx(0.016)
    lung = torch.zeros(1, 12, 12, 12)
    lung[:, :, :, :10] = 1.0
    lesion = torch.zeros_like(lung)
    lesion[:, 0:2, 0:2, 0:2] = 0.8  # 8 voxels
    lesion[:, 5:8, 5:8, 5:8] = 0.6  # 27 voxels
    lesion[:, 0:3, 0:3, 11] = 1.0  # outside the lung
    evidence = lesion_evidence(lesion, lung, 0.016)
    assert evidence["lesion_ml"] == pytest.approx(35 * 0.016)
    assert evidence["focus_ml"] == pytest.approx(27 * 0.016)
    assert evidence["involvement"] == pytest.approx(involvement(lesion, lung)) == pytest.approx(35 / 1440)
    lesion[:, 2, 2, 2] = 0.9  # touches both foci at a corner: one 26-connected focus
    lesion[:, 3:5, 3:5, 3:5] = 0.9
    assert lesion_evidence(lesion, lung, 0.016)["focus_ml"] == pytest.approx(evidence["lesion_ml"] + 9 * 0.016)
    empty = lesion_evidence(torch.zeros_like(lung), lung, 0.016)
    assert empty == {"involvement": 0.0, "lesion_ml": 0.0, "focus_ml": 0.0}


def test_split_outputs_and_involvement() -> None:
    lung = MetaTensor(torch.ones(1, 4, 4, 4), affine=torch.diag(torch.tensor([2.0, 2.0, 4.0, 1.0])))
    mask = torch.zeros(1, 4, 4, 4)
    mask[:, :1] = 1.0
    logits = torch.tensor([0.1, 0.9])
    lesion = torch.full((1, 4, 4, 4), -5.0)
    lesion[:, :2] = 5.0
    post = Compose([SplitOutputsd(), Involvementd()])
    item = {"pred": {"pred": logits, "lesion": torch.sigmoid(lesion)}, "label": {"label": torch.tensor(1)}}
    out = post({**item, "lung": lung, "mask": mask, "has_mask": torch.tensor(1.0)})
    assert torch.equal(out["pred"], logits) and int(out["label"]) == 1
    assert out["involvement"] == pytest.approx(0.5) and out["involvement_true"] == pytest.approx(0.25)
    assert out["lesion_ml"] == pytest.approx(32 * 0.016) and out["focus_ml"] == pytest.approx(32 * 0.016)
    with pytest.raises(ValueError, match="must be a MetaTensor, or the item carry 'voxel_ml'"):
        Involvementd()({"lesion": torch.ones(1, 4, 4, 4), "lung": torch.ones(1, 4, 4, 4), "mask": mask})
    out = post({**item, "lung": lung, "mask": torch.zeros_like(mask), "has_mask": torch.tensor(0.0)})
    assert math.isnan(out["involvement_true"])
    plain = post({"pred": logits, "label": torch.tensor(0)})  # a classifier's output passes unchanged
    assert torch.equal(plain["pred"], logits) and "involvement" not in plain


def test_chain_carries_the_mask_with_the_image(study_files) -> None:
    chain = Compose(deterministic_transforms(**CHAIN, lesion=True))
    with_mask = chain({"image": study_files["image"], "mask": study_files["mask"]})
    without = chain({"image": study_files["image"]})
    for item in (with_mask, without):
        assert {k: tuple(item[k].shape) for k in ("image", "lung", "mask")} == dict.fromkeys(
            ("image", "lung", "mask"), (1, 48, 48, 24)
        )
    for key in ("lung", "mask"):  # a byte a voxel in the cache, read at 0.5
        assert with_mask[key].dtype == torch.uint8 and set(with_mask[key].unique().tolist()) == {0, 1}
    assert with_mask["image"].dtype == torch.float16
    assert float(with_mask["has_mask"]) == 1.0 and float(without["has_mask"]) == 0.0
    assert float(without["mask"].sum()) == 0.0
    normal = chain({"image": study_files["image"], "label": 0})  # labelled normal: no lesions, known
    assert float(normal["has_mask"]) == 1.0 and float(normal["mask"].sum()) == 0.0
    assert float(chain({"image": study_files["image"], "label": 1})["has_mask"]) == 0.0
    torch.testing.assert_close(with_mask["image"], without["image"], rtol=0, atol=0)
    # the mask lies in the lungs and covers about the share of them the generator drew (CT-3: 50-75 %)
    measured = involvement(with_mask["mask"], with_mask["lung"])
    assert 0.4 < measured < 0.8
    assert measured == pytest.approx(study_files["fraction"], abs=0.15)
    # the image alone is what the classifier chain gives
    plain = Compose(deterministic_transforms(**CHAIN))({"image": study_files["image"]})
    assert set(plain) == {"image"}
    torch.testing.assert_close(plain["image"], with_mask["image"], rtol=0, atol=0)
    with pytest.raises(ValueError, match="needs the lung mask"):
        deterministic_transforms(**CHAIN, outside_lung="keep", lesion=True)


def test_evidence_survives_a_disk_cache(study_files) -> None:
    """A disk cache (``PersistentDataset``) keeps tensors, not their affines: the chain's ``voxel_ml`` gives the
    lesion evidence in mL the same as the lung mask's affine does."""
    item = Compose(deterministic_transforms(**CHAIN, lesion=True))({"image": study_files["image"]})
    assert float(item["voxel_ml"]) == pytest.approx(voxel_ml(item["lung"].affine))
    lesion = {"lesion": item["lung"].float() * 0.9}
    fresh = Involvementd()({**item, **lesion})
    cached = Involvementd()({**convert_to_tensor({**item, **lesion}, track_meta=False)})
    assert not isinstance(cached["lung"], MetaTensor)
    for key in ("lesion_ml", "focus_ml", "involvement"):
        assert cached[key] == pytest.approx(fresh[key]) and fresh[key] > 0


def test_lesion_map_goes_back_to_the_scan_grid(study_files) -> None:
    """The chain's mask, resampled onto the file's grid with the output's affine, overlaps the original mask."""
    item = Compose(deterministic_transforms(**CHAIN, lesion=True))(
        {"image": study_files["image"], "mask": study_files["mask"]}
    )
    meta = item["image"].meta
    back = to_scan_geometry(item["mask"].float(), item["image"].affine, meta["original_affine"], meta["spatial_shape"])
    original = np.asanyarray(nib.load(study_files["mask"]).dataobj) > 0
    assert back.shape == original.shape and back.dtype == np.float32
    restored = back >= 0.5
    dice = 2 * (restored & original).sum() / (restored.sum() + original.sum())
    assert dice > 0.85


def test_augmentation_moves_the_mask_with_the_image() -> None:
    image = torch.zeros(1, 24, 24, 12)
    image[:, 2:8, 4:10, 3:9] = 1.0
    data = {"image": image.clone(), "mask": image.clone()}
    for seed in range(5):
        transforms = Compose(train_augmentation("hospital", mask_keys=["mask"]))
        transforms.set_random_state(seed)
        out = transforms(dict(data))
        moved = torch.as_tensor(out["mask"]) >= 0.5
        bright = torch.as_tensor(out["image"]) >= 0.5
        overlap = (moved & bright).sum() / max(int(moved.sum()), 1)
        assert overlap > 0.8, f"seed {seed}"
    assert set(Compose(train_augmentation("hospital"))({"image": image})) == {"image"}  # masks are optional
    cached = {"image": image.half(), "mask": (image > 0).to(torch.uint8)}
    for seed in range(4):  # a batch collates whichever transforms fired: the masks always come out float32
        transforms = Compose(train_augmentation("hospital", mask_keys=["mask"]))
        transforms.set_random_state(seed)
        assert torch.as_tensor(transforms(dict(cached))["mask"]).dtype == torch.float32
