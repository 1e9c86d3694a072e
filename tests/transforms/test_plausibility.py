"""CheckChestCT / CheckChestCTd: real chest CTs and synthetic chests pass, everything else is refused."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import shared_source
from monai.data import MetaTensor
from monai.transforms import Compose, LoadImaged, Orientationd

from pipeline.synth.phantom import generate_study
from pipeline.transforms import hounsfield
from pipeline.transforms.lung import LungMaskd, LungSegmentation, lung_mask
from pipeline.transforms.plausibility import (
    MIN_AERATED_CAVITY_SHARE,
    MIN_AERATED_ML,
    MIN_SHORT_AERATED_ML,
    CheckChestCT,
    CheckChestCTd,
    aerated_fraction,
    aerated_lung_ml,
    chest_ct_problem,
    voxel_spacing,
)
from pipeline.utils.errors import InputError

#: Voxels of the drawn phantom: 48 x 7 mm = 34 cm wide, 12 x 10 mm = 12 cm long, like an adult chest.
DRAWN = np.diag([7.0, 7.0, 10.0, 1.0])


def chest_phantom(shape=(48, 48, 12), lungs: bool = True) -> np.ndarray:
    """An elliptic soft-tissue body (40 HU) in air (-1000 HU), with two -850 HU lungs, on a -900 HU mattress."""
    x, y = np.meshgrid(np.linspace(-1, 1, shape[0]), np.linspace(-1, 1, shape[1]), indexing="ij")
    plane = np.full(shape[:2], -1000.0)
    plane[(x / 0.9) ** 2 + (y / 0.6) ** 2 < 1] = 40.0
    if lungs:
        for cx in (-0.4, 0.4):
            plane[((x - cx) / 0.3) ** 2 + (y / 0.4) ** 2 < 1] = -850.0
    plane[:, (y[0] < -0.62) & (y[0] > -0.8)] = -900.0  # foam mattress under the body, outside it
    return np.repeat(plane[..., None], shape[2], axis=2).astype(np.float32)


def load(path) -> dict:
    return Compose([LoadImaged("image", ensure_channel_first=True, image_only=True)])({"image": str(path)})


def test_real_chest_dicom_fixture_accepted(real_series):
    data = load(real_series)
    assert data["image"].shape == (1, 128, 128, 30)
    assert CheckChestCTd("image")(data)["image"] is data["image"]
    assert aerated_fraction(data["image"][0].numpy()) > 0.1


@pytest.mark.parametrize("fixture", ["real_chest_crop"])  # every real chest CT in NIfTI
def test_real_chest_nifti_accepted(fixture, request):
    path = request.getfixturevalue(fixture)
    CheckChestCTd("image")(load(path))


def test_abdomen_refused_naming_the_file(real_abdomen):
    with pytest.raises(InputError, match="not a chest CT") as err:
        CheckChestCTd("image")(load(real_abdomen))
    assert err.value.path == str(real_abdomen)


#: A 30 mm slab of real COVID-19 lungs with consolidation: 178 mL of aerated lung, under a whole chest's minimum.
SHORT_DISEASED_CHEST = "ricord_slabs/covid_positive/patient_2"


def test_short_scan_of_real_diseased_lungs_is_a_chest(shared_realct):
    """A slab with little aerated lung is still a chest: its aerated lung fills a chest's share of the rib cage."""
    image = load(shared_source(shared_realct, SHORT_DISEASED_CHEST))["image"]
    found = CheckChestCT().segment(image)
    aerated = aerated_lung_ml(image[0].numpy(), image.affine)
    assert MIN_SHORT_AERATED_ML < aerated < MIN_AERATED_ML  # refused by a whole chest's minimum
    assert aerated / found.cavity_ml > MIN_AERATED_CAVITY_SHARE
    with pytest.raises(InputError, match=r"only 178 mL of aerated lung \(.*\), 17 % of the \d+ mL thoracic cavity"):
        CheckChestCT(min_cavity_share=1.0)(image)  # without the short-scan rule


@pytest.mark.parametrize("block", [1, 3])  # 3 mm as stored, and block-averaged to 9 mm slices
def test_real_abdomen_refused_by_the_share_of_its_rib_cage(shared_realct, block):
    """The abdomen's lung bases fill 2-3 % of the cavity its lower ribs enclose: no short chest, whatever the
    slice thickness, even where partial volume lifts its aerated lung over the short scan's minimum."""
    path = shared_source(shared_realct, "nifti/abdomen_ct.nii.gz")
    loaded = load(path)["image"]
    image = loaded[0].numpy()
    image = image[..., : image.shape[-1] // block * block].reshape(*image.shape[:2], -1, block).mean(-1)
    affine = loaded.affine.numpy() @ np.diag([1.0, 1.0, block, 1.0])
    found = CheckChestCT(min_aerated_ml=0.0).segment(image, affine=affine)
    aerated = aerated_lung_ml(image, affine)
    assert aerated / found.cavity_ml < MIN_AERATED_CAVITY_SHARE / 3
    with pytest.raises(InputError, match="not a chest CT"):
        CheckChestCT()(image, filename=str(path), affine=affine)


@pytest.mark.parametrize("category,seed", [("CT-0", 0), ("CT-0", 1), ("CT-2", 2), ("CT-3", 3)])
def test_synthetic_chest_accepted(category, seed):
    study = generate_study(category, seed, matrix=64)
    CheckChestCT()(MetaTensor(torch.from_numpy(study.image[None].astype(np.float32)), affine=study.affine))


def test_chest_accepted_in_every_layout_and_when_cropped_through_the_lungs():
    study = generate_study("CT-0", 4, matrix=64)
    chest = study.image.astype(np.float32)
    for img in (chest, chest[None], torch.from_numpy(chest[None])):
        assert CheckChestCT()(img, affine=study.affine) is img
    crop = chest[12:52, 16:48]  # lungs cut by the field of view: still filled as inside the body
    assert aerated_fraction(crop) > aerated_fraction(chest) > 0.1
    CheckChestCT()(crop, affine=study.affine)
    drawn = chest_phantom()
    assert aerated_fraction(drawn[8:40, 12:36]) > aerated_fraction(drawn) > 0.3


def test_body_without_lungs_refused_despite_mattress():
    with pytest.raises(InputError, match=r"only 0 mL of aerated lung"):
        CheckChestCT()(chest_phantom(lungs=False), filename="belly.nii.gz", affine=DRAWN)


def test_chest_ct_problem_is_the_checks_reason_or_none():
    study = generate_study("CT-0", 6, matrix=64)
    assert chest_ct_problem(study.image.astype(np.float32), study.affine) is None
    problem = chest_ct_problem(chest_phantom(lungs=False), DRAWN)
    with pytest.raises(InputError) as err:
        CheckChestCT()(chest_phantom(lungs=False), affine=DRAWN)
    assert problem == err.value.problem and problem.startswith("not a chest CT")


def test_the_same_lungs_count_in_millilitres_whatever_the_voxel_size():
    study = generate_study("CT-0", 5, matrix=64)
    chest = study.image.astype(np.float32)
    fine = np.repeat(chest, 2, axis=2)  # half the slice spacing, twice the slices
    half_z = study.affine @ np.diag([1.0, 1.0, 0.5, 1.0])
    assert aerated_lung_ml(fine, half_z) == pytest.approx(aerated_lung_ml(chest, study.affine), rel=0.1)
    with pytest.raises(InputError, match="not a chest CT"):  # the same voxels at 1 mm: 490 times less lung
        CheckChestCT()(chest)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_chest_with_90_percent_of_its_lung_consolidated_is_accepted(seed):
    study = generate_study("CT-0", seed, matrix=64)
    volume = study.image.astype(np.float32)
    lung = lung_mask(volume, voxel_spacing(study.affine))
    anterior = np.broadcast_to(np.arange(volume.shape[1])[None, :, None], volume.shape)  # RAS: y grows anteriorly
    dense = lung & (anterior < np.percentile(anterior[lung], 90))  # all but the most anterior tenth, both lungs
    volume[dense] = 40.0 + np.random.default_rng(seed).normal(0.0, 20.0, int(dense.sum()))
    assert dense.sum() / lung.sum() > 0.85
    assert aerated_fraction(volume) < 0.04  # at or under the former rule's 3 % of the body
    CheckChestCT()(MetaTensor(torch.from_numpy(volume[None]), affine=study.affine))
    assert MIN_AERATED_ML < aerated_lung_ml(volume, study.affine)
    whole = CheckChestCT().segment(volume, affine=study.affine)
    assert aerated_lung_ml(volume, study.affine) / whole.cavity_ml < MIN_AERATED_CAVITY_SHARE * 0.6  # not short
    white = lung & (anterior < np.percentile(anterior[lung], 97))
    volume[white] = 40.0  # lungs almost without air: no short scan either, and the reason says so
    with pytest.raises(InputError, match=r"not a chest CT, or lungs almost without air: only \d+ mL"):
        CheckChestCT()(volume, affine=study.affine)


@pytest.mark.parametrize("stored,intercept", [(-2048, 0), (-3024, 0), (-32768, -1024)])
def test_padding_is_masked_before_the_checks(stored, intercept):
    """Padding outside a round field of view, named by PixelPaddingValue or not: -32768 - 1024 is not refused."""
    study = generate_study("CT-0", 0, matrix=64)
    hu = study.image.astype(np.float32)
    x, y = np.meshgrid(np.linspace(-1, 1, 64), np.linspace(-1, 1, 64), indexing="ij")
    hu[(x**2 + y**2) > 1] = stored + intercept
    meta = {"filename_or_obj": "padded", "00280120": {"vr": "SS", "Value": [stored]}, "00281052": intercept}
    CheckChestCT()(MetaTensor(torch.from_numpy(hu[None]), affine=study.affine, meta=meta))
    CheckChestCT()(MetaTensor(torch.from_numpy(hu[None]), affine=study.affine))


def _with(value_at_corner: float) -> np.ndarray:
    chest = chest_phantom()
    chest[0, 0, 0] = value_at_corner
    return chest


@pytest.mark.parametrize(
    "volume,problem",
    [
        (_with(np.nan), "NaN or infinite"),
        (_with(np.inf), "NaN or infinite"),
        (np.full((16, 16, 8), -1000.0), "constant"),
        (chest_phantom() + 1000.0, "no air"),  # MR-like / stored values without the rescale: nothing below 0
        ((chest_phantom() + 1000.0) / 500.0 - 1.0, "no air"),  # normalised to about [-1, 1]
        (_with(1e6), "not Hounsfield units"),
        (np.full((16, 16, 8), -3024.0), "every voxel is padding"),
        (chest_phantom()[:, :, 0], "expected a 3D volume"),
        (np.stack([chest_phantom()] * 2), "expected a 3D volume"),
        (chest_phantom()[None, :, :, :1], "single slice"),
    ],
    ids=["nan", "inf", "constant", "mr-like", "normalised", "huge", "all-padding", "2d", "two-channels", "one-slice"],
)
def test_bad_volume_refused(volume, problem):
    img = MetaTensor(torch.from_numpy(np.ascontiguousarray(volume)), meta={"filename_or_obj": "/data/bad.nii.gz"})
    with pytest.raises(InputError, match=problem) as err:
        CheckChestCT()(img)
    assert err.value.path == "/data/bad.nii.gz"


def test_dict_transform_names_file_from_meta_dict_for_plain_arrays():
    data = {"image": np.full((1, 8, 8, 8), 5.0), "image_meta_dict": {"filename_or_obj": "x.nii"}}
    with pytest.raises(InputError, match=r"^x\.nii: the volume is constant"):
        CheckChestCTd("image")(data)


def test_the_lung_mask_stands_below_the_plausibility_checks():
    """No import circle: the lung mask and the checks share their constants from a module below both."""
    code = (
        "import sys; import pipeline.transforms.lung; "
        "assert 'pipeline.transforms.plausibility' not in sys.modules, 'lung imports plausibility'"
    )
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[2])
    assert voxel_spacing is hounsfield.voxel_spacing


@pytest.mark.parametrize("scanner", ["mosmed", "foreign"])  # LAS with -3024..-2000 HU padding, LPS
def test_the_dict_check_hands_its_lung_segmentation_to_the_lung_mask(scanner):
    """The chest check's segmentation (on the volume turned RAS, padding as air) is the lung mask's: ``LungMaskd``
    takes it out of the item and gives the mask it would have found itself."""
    study = generate_study("CT-3", 1, matrix=128, scanner=scanner)
    img = MetaTensor(torch.from_numpy(study.image[None].astype(np.float32)), affine=torch.as_tensor(study.affine))
    checked = CheckChestCTd("image", segmentation_key="seg")({"image": img})
    assert isinstance(checked["seg"], LungSegmentation) and checked["image"] is img
    oriented = Orientationd("image", axcodes="RAS")(checked)
    handed = LungMaskd("image", segmentation_key="seg")(oriented)
    assert "seg" not in handed
    found = LungMaskd("image")({"image": oriented["image"]})["lung"]
    assert torch.equal(handed["lung"], found) and handed["lung"].sum() > 0
    assert "seg" not in CheckChestCTd("image")({"image": img})  # only when asked
