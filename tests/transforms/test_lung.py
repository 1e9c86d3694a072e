"""lung_mask / LungMask / LungMaskd: the true lung inside the mask for every category and scanner, nothing below the
diaphragm, lungs too small for their chest refused, real chests found without their soft tissue, odd inputs."""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest
import torch
from conftest import SHARED_REALCT
from monai.data import MetaTensor
from monai.transforms import LoadImage, Orientation
from scipy import ndimage

from pipeline.synth.phantom import SCANNERS, generate_study
from pipeline.transforms.hounsfield import voxel_spacing
from pipeline.transforms.lung import (
    MIN_RIB_CONTACT,
    LungMask,
    LungMaskd,
    lung_mask,
    lung_volume_ml,
    segment_lungs,
)
from pipeline.utils.errors import InputError

REALCT = SHARED_REALCT
CATEGORIES = ("CT-1", "CT-2", "CT-3", "CT-4")
SEEDS = (0, 1, 2)
#: The studies the true-lung coverage test runs on, as ``(category, forced patterns)``: the generator's own draws
#: of each category, and CT-4 / CT-3 with one pattern forced through both lungs (``generate_study(patterns=)``):
#: diffuse reticulation and patchy ground glass, still aerated enough for the mask to hold them.
PATTERNS = (
    *((category, None) for category in ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")),
    ("CT-4", ("patchy_ggo",)),
    ("CT-4", ("diffuse_reticular",)),
    ("CT-3", ("diffuse_reticular",)),
)
#: White lungs: lobar consolidation (-30..+50 HU, air bronchograms) over at least 75 % of both lungs. The mask
#: cannot hold them (it keeps 0.12-0.42 of the true lung): they are refused (``test_white_lungs...``).
WHITE_LUNG = ("CT-4", ("lobar",))


@cache
def phantom(category: str, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
    """A 128-matrix synthetic study turned RAS: ``(image, lesion mask, spacing, true lung voxels)``."""
    study = generate_study(category, seed, matrix=128)
    flip = 1 if np.diag(study.affine)[0] > 0 else -1  # MosMedData is LAS: reverse axis 0
    image = np.ascontiguousarray(study.image[::flip])
    lesion = np.ascontiguousarray(study.mask[::flip]).astype(bool)
    return image, lesion, np.abs(np.diag(study.affine)[:3]), int(study.params["lung_voxels"])


@cache
def true_lung(
    scanner: str, category: str, seed: int, patterns: tuple[str, ...] | None = None, matrix: int = 128
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A ``matrix`` study of ``scanner`` (with ``patterns`` forced, if given) turned RAS: ``(image, true lung,
    affine)``."""
    study = generate_study(category, seed, matrix=matrix, scanner=scanner, patterns=patterns)
    flip = tuple(slice(None, None, -1) if study.affine[i, i] < 0 else slice(None) for i in range(3))  # LAS, LPS
    return np.ascontiguousarray(study.image[flip]), np.ascontiguousarray(study.lung[flip]), study.affine


def coverage(mask: np.ndarray, lung: np.ndarray) -> tuple[float, float]:
    """``(|mask & lung| / |lung|, |mask - lung| / |mask|)``: the share of the true lung found, and what is not lung."""
    return float((mask & lung).sum() / lung.sum()), float((mask & ~lung).sum() / max(mask.sum(), 1))


def gas_under_the_right_dome(image: np.ndarray, lung: np.ndarray, spacing, radius_mm: float = 30.0) -> np.ndarray:
    """The voxels of a gas pocket (stomach or colon) under the right hemidiaphragm of a RAS ``image``: a ball
    centred on the dome an eighth of the way up the right lung, kept 6 mm (the diaphragm) off the true lung."""
    right = lung.copy()
    right[: lung.shape[0] // 2] = False  # RAS: axis 0 runs towards the patient's right
    slices = np.flatnonzero(right.any(axis=(0, 1)))
    k = int(slices[0] + max(1, len(slices) // 8))
    ringed = ndimage.binary_fill_holes(right[..., k])
    dome = ringed & ~right[..., k]
    cx, cy = np.argwhere(dome if dome.any() else ringed).mean(axis=0)
    x, y, z = np.ogrid[: image.shape[0], : image.shape[1], : image.shape[2]]
    ball = ((x - cx) * spacing[0]) ** 2 + ((y - cy) * spacing[1]) ** 2 + ((z - k) * spacing[2]) ** 2 < radius_mm**2
    return ball & (ndimage.distance_transform_edt(~lung, sampling=spacing) > 6.0)


@cache
def real(name: str) -> tuple[np.ndarray, np.ndarray]:
    """A volume of ../shared/realct loaded as the pipeline does (LoadImage, RAS): ``(X, Y, Z) HU, spacing``."""
    path = REALCT / name
    if not path.exists():
        pytest.skip(f"{path} is absent (real CT is read from ../shared/realct, never copied into the repo)")
    img = Orientation(axcodes="RAS")(LoadImage(image_only=True, ensure_channel_first=True)(str(path)))
    return img[0].numpy(), np.asarray(img.pixdim, dtype=float)


def components_ml(mask: np.ndarray, spacing: np.ndarray) -> list[tuple[float, float]]:
    """``(volume mL, centroid x in voxels)`` of the connected components of ``mask``, largest first."""
    labels, n = ndimage.label(mask)
    sizes = np.bincount(labels.ravel())[1:]
    centres = ndimage.center_of_mass(mask, labels, range(1, n + 1))
    found = [(float(s * np.prod(spacing) / 1000.0), float(c[0])) for s, c in zip(sizes, centres, strict=True)]
    return sorted(found, reverse=True)


# --- synthetic studies --------------------------------------------------------------------------------------


@pytest.mark.parametrize("category", CATEGORIES)
def test_lesions_lie_inside_the_mask_in_every_category(category):
    inside = total = 0
    for seed in SEEDS:
        image, lesion, spacing, _ = phantom(category, seed)
        mask = lung_mask(image, spacing)
        study_cover = (mask & lesion).sum() / max(lesion.sum(), 1)
        assert study_cover > 0.85, (category, seed, study_cover)
        inside, total = inside + (mask & lesion).sum(), total + lesion.sum()
    assert inside / total >= 0.95, (category, inside / total)


@pytest.mark.parametrize("seed", SEEDS)
def test_healthy_lungs_are_not_much_larger_than_the_true_lungs(seed):
    image, _, spacing, lung_voxels = phantom("CT-0", seed)
    mask = lung_mask(image, spacing)
    assert 0.9 < mask.sum() / lung_voxels < 1.25
    assert len([c for c in components_ml(mask, spacing) if c[0] > 100]) == 2


#: The most of the mask that may lie outside the true lung (heart, mediastinum, chest wall, the partial volume of
#: the lung's edge at 2.3-4.6 mm pixels), per profile: 0.062-0.080 (mosmed), 0.051-0.071 (shifted), 0.068-0.106
#: (foreign) over ``PATTERNS`` and ``SEEDS``; 0.065-0.097, 0.053-0.091 and 0.075-0.132 while the closing and the fill
#: could take the mediastinum.
NOT_LUNG_MAX = {"mosmed": 0.09, "shifted": 0.085, "foreign": 0.12}


@pytest.mark.parametrize("scanner", list(SCANNERS))
@pytest.mark.parametrize("category,patterns", PATTERNS)
def test_the_true_lung_is_in_the_mask_for_every_study(scanner, category, patterns):
    for seed in SEEDS:
        image, lung, affine = true_lung(scanner, category, seed, patterns)
        mask = LungMask(voxel_spacing(affine))(image[None])[0] > 0  # not refused
        found, not_lung = coverage(mask, lung)
        # 0.982-0.999 today; 0.993-0.999 while the closing could take the mediastinum and with it dense lung there
        assert found >= 0.97, (scanner, category, patterns, seed, found)
        assert not_lung < NOT_LUNG_MAX[scanner], (scanner, category, patterns, seed, not_lung)
        # without dependent consolidation, the dependent rule changes 0-108 voxels of the mask (at most 0.9 %)
        left = segment_lungs(image, voxel_spacing(affine), hold_dependent=False).mask
        assert (mask ^ left).sum() < 0.01 * left.sum(), (scanner, category, patterns, seed, (mask ^ left).sum())


def as_meta(image: np.ndarray, affine: np.ndarray, name: str) -> MetaTensor:
    """``image`` as a channel-first float MetaTensor named ``name`` with the (RAS) voxel sizes of ``affine``."""
    img = MetaTensor(torch.from_numpy(image[None].astype(np.float32)), affine=torch.as_tensor(np.abs(affine)))
    img.meta["filename_or_obj"] = name
    return img


@pytest.mark.parametrize("scanner", list(SCANNERS))
@pytest.mark.parametrize("seed", SEEDS)
def test_white_lungs_the_mask_cannot_hold_are_refused(scanner, seed):
    # lobar white lungs: the mask keeps 0.12-0.42 of the true lung and 0.05-0.16 of the cavity, where normal foreign
    # chests fill 0.17-0.37; the aerated lung reaches the ribs on 0.06-0.31 of the rib cage, normal lungs 0.59-0.80
    image, lung, affine = true_lung(scanner, WHITE_LUNG[0], seed, WHITE_LUNG[1])
    found = segment_lungs(image, voxel_spacing(affine))
    assert coverage(found.mask, lung)[0] < 0.7  # the mask does not hold it
    assert found.rib_contact < MIN_RIB_CONTACT  # whatever its share of the cavity
    with pytest.raises(InputError, match="lungs implausibly small for the chest in view") as err:
        LungMask()(as_meta(image, affine, "white.nii.gz"))
    assert err.value.path == "white.nii.gz"
    assert LungMask(min_cavity_share=None, min_rib_contact=None)(as_meta(image, affine, "w")).sum() > 0


#: Lobar consolidation of CT-2 / CT-3 against the mediastinum: three draws of the training cohort (``make train``'s
#: seed 0: studies 0221, 0253 and 0313), generated at its matrix.
LOBAR_DRAWS = (("CT-2", 146489205632331343), ("CT-3", 8915716481816759701), ("CT-3", 7334964684354535732))


@pytest.mark.xfail(
    strict=True,
    raises=AssertionError,
    reason="known gap (issue 21): a consolidated lobe joined broadly to the mediastinum is taken for it; at matrix "
    "256 the mask keeps 0.55-0.79 of the true lung and 0.29-0.37 of the lesion (0.43-0.73 and 0.13-0.28 without "
    "the dependent rule, 0.56-0.83 of the lung before the mediastinum rule), and the aerated lung still reaches "
    "0.47-0.62 of the rib cage, so the study is not refused",
)
@pytest.mark.parametrize("category,seed", LOBAR_DRAWS)
def test_lobar_consolidation_is_held_or_refused(category, seed):
    image, lung, affine = true_lung("mosmed", category, seed, matrix=256)
    try:
        mask = LungMask()(as_meta(image, affine, "lobar.nii.gz"))[0].numpy() > 0
    except InputError:
        return  # refused: the chain predicts nothing on it
    assert coverage(mask, lung)[0] >= 0.97


@pytest.mark.parametrize("scanner", list(SCANNERS))
def test_dependent_consolidation_the_mediastinum_took_is_held(scanner):
    # lobar consolidation of CT-2 / CT-3 lying lowest, against the posterior ribs and joined to the mediastinum:
    # the dependent rule gives back 0.00-0.15 of the true lung a study, 0.63-1.00 of what it adds is true lung
    # (0.81-0.92 a profile), and it never costs more than 0.02 of the lung found
    found = {True: 0, False: 0}
    added = added_lung = 0
    for category in ("CT-2", "CT-3"):
        for seed in SEEDS:
            image, lung, affine = true_lung(scanner, category, seed, ("lobar",))
            masks = {h: segment_lungs(image, voxel_spacing(affine), hold_dependent=h).mask for h in (True, False)}
            assert coverage(masks[True], lung)[0] > coverage(masks[False], lung)[0] - 0.02, (category, seed)
            for h, mask in masks.items():
                found[h] += int((mask & lung).sum())
            more = masks[True] & ~masks[False]
            added, added_lung = added + int(more.sum()), added_lung + int((more & lung).sum())
    assert found[True] > 1.03 * found[False]  # 1.043-1.058 times the true lung found without the rule
    assert added_lung > 0.75 * added  # 0.81-0.92


@pytest.mark.parametrize("scanner", list(SCANNERS))
def test_gas_under_the_diaphragm_is_not_lung(scanner):
    for category, seed in (("CT-0", 0), ("CT-3", 1)):
        image, lung, affine = true_lung(scanner, category, seed)
        spacing = voxel_spacing(affine)
        gas = gas_under_the_right_dome(image, lung, spacing)
        assert gas.sum() * np.prod(spacing) > 10_000.0  # over 10 mL of gas
        with_gas = image.copy()
        with_gas[gas] = -1000
        mask = lung_mask(with_gas, spacing)
        assert (mask & gas).sum() < 0.02 * gas.sum(), (scanner, category, (mask & gas).sum() / gas.sum())  # was 45-90 %
        assert coverage(mask, lung)[0] >= 0.97


def white_below_the_apices(image: np.ndarray, lung: np.ndarray) -> np.ndarray:
    """``image`` with both lungs soft tissue (30 HU and noise) below their top two slices: a chest whose lungs the
    mask cannot find on most slices."""
    top = np.flatnonzero(lung.any(axis=(0, 1)))[-2]
    white = lung.copy()
    white[..., top:] = False
    out = image.astype(np.float32)
    out[white] = 30.0 + np.random.default_rng(0).normal(0.0, 15.0, int(white.sum()))
    return out


@pytest.mark.parametrize("scanner", list(SCANNERS))
def test_lungs_too_small_for_their_chest_are_refused(scanner):
    image, lung, affine = true_lung(scanner, "CT-0", 0)
    img = as_meta(image, affine, "white.nii.gz")
    normal = segment_lungs(image, voxel_spacing(affine))
    assert normal.lung_ml > 0.2 * normal.cavity_ml  # 0.33-0.39 (mosmed, shifted), 0.28 (foreign) on CT-0 seed 0
    assert LungMask()(img).shape == img.shape
    white = MetaTensor(torch.from_numpy(white_below_the_apices(image, lung)[None]), meta=img.meta, affine=img.affine)
    with pytest.raises(InputError, match="lungs implausibly small for the chest in view") as err:
        LungMask()(white)
    assert err.value.path == "white.nii.gz"
    assert LungMask(min_cavity_share=None, min_rib_contact=None)(white).shape == img.shape  # the checks can be off


def test_deterministic():
    image, _, spacing, _ = phantom("CT-3", 0)
    assert np.array_equal(lung_mask(image, spacing), lung_mask(image.copy(), spacing))


# --- real scans (../shared/realct) ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,litres",
    [
        ("dicom/Lung_Dx-A0001_chest_5mm", (2.0, 8.0)),
        ("dicom/Lung_Dx-A0002_thorax_8mm_B40f", (2.0, 8.0)),
        ("nifti/chest_cta_crop.nii.gz", (1.0, 8.0)),  # a crop through both lungs: part of them
    ],
)
def test_real_chests_have_two_lungs_either_side_of_the_midline(name, litres):
    volume, spacing = real(name)
    mask = LungMask(spacing)(volume[None])[0] > 0  # not refused
    (big, x_big), (second, x_second) = components_ml(mask, spacing)[:2]
    assert second > 0.3 * big
    centre = (volume.shape[0] - 1) / 2
    assert (x_big - centre) * (x_second - centre) < 0
    assert litres[0] < lung_volume_ml(mask, spacing) / 1000.0 < litres[1]


#: Real scans without pneumonia (no dense disease in the lungs): their lung masks hold little soft tissue.
REAL_NORMALS = (
    "dicom/Lung_Dx-A0001_chest_5mm",
    "dicom/Lung_Dx-A0002_thorax_8mm_B40f",
    *(f"ricord_slabs/covid_negative/patient_{i}" for i in (2, 3, 4, 5)),
)


def between_the_lungs(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` above -100 HU (soft tissue, not partial volume with air) that lie, on their row (axis 0
    at fixed y and z), between the innermost aerated (below -500 HU) voxels of the mask on either side of the
    volume's centre: the mediastinum between the two lungs."""
    nx = volume.shape[0]
    x = np.arange(nx)[:, None, None]
    aerated = mask & (volume < -500)
    left = np.where(aerated & (x < (nx - 1) / 2), x, -1).max(axis=0)
    right = np.where(aerated & (x > (nx - 1) / 2), x, nx).min(axis=0)
    gap = (x > left) & (x < right) & ((left >= 0) & (right < nx))[None]
    return mask & gap & (volume > -100)


@pytest.mark.parametrize("name", REAL_NORMALS)
def test_real_lungs_hold_little_soft_tissue_and_fill_their_chest(name):
    volume, spacing = real(name)
    found = segment_lungs(volume, spacing)
    # soft tissue (above -100 HU) in lungs without dense disease is vessels, airway walls, fissures and the
    # partial volume at their edge: mediastinum, heart, chest wall or liver in the mask add far more
    soft = float((found.mask & (volume > -100)).sum() / found.mask.sum())
    assert soft < 0.08, soft  # 0.040-0.073 today; 0.062-0.136 while the closing took the mediastinum
    assert found.lung_ml > 0.3 * found.cavity_ml  # 0.37-0.68: far from the refusal at 0.12
    assert found.rib_contact > 0.6  # 0.80-0.96: far from the refusal at 0.4
    assert LungMask(spacing)(volume[None]).shape == (1, *volume.shape)  # not refused


@pytest.mark.parametrize("name", (*REAL_NORMALS, "nifti/chest_cta_crop.nii.gz"))
def test_real_mediastinum_between_the_lungs_is_not_in_the_mask(name):
    volume, spacing = real(name)
    mask = lung_mask(volume, spacing)
    between = float(between_the_lungs(volume, mask).sum() / mask.sum())
    assert between < 0.015, between  # 0.003-0.010 today; 0.019-0.062 while the closing took the hila and heart


#: A RICORD slab with COVID-19 consolidation in both dorsal lungs, joined to the mediastinum beside the spine.
DORSAL_COVID = "ricord_slabs/covid_positive/patient_1"


@pytest.mark.parametrize("name", (*REAL_NORMALS, "nifti/chest_cta_crop.nii.gz", DORSAL_COVID))
def test_real_dependent_consolidation_is_held_and_nothing_else(name):
    volume, spacing = real(name)
    held = segment_lungs(volume, spacing).mask
    left = segment_lungs(volume, spacing, hold_dependent=False).mask
    assert not (left & ~held).any()
    more_ml = lung_volume_ml(held & ~left, spacing)
    if name == DORSAL_COVID:
        # COVID-19 consolidation in both dorsal lungs, beside the spine: 47 mL more of it held, 94 % above -100 HU
        assert more_ml > 30.0
        assert (held & ~left & (volume > -100)).sum() > 0.85 * (held & ~left).sum()
    else:
        assert more_ml < 2.0, more_ml  # 0.0-0.8 mL


def test_real_abdomen_has_almost_no_lung_and_no_bowel_gas():
    volume, spacing = real("nifti/abdomen_ct.nii.gz")
    mask = lung_mask(volume, spacing)
    assert lung_volume_ml(mask, spacing) < 400.0  # the lung bases in the top slices at most
    assert not mask[..., : int(0.75 * volume.shape[2])].any()  # bowel gas fills the rest of the scan


@pytest.mark.parametrize(
    "patient", [f"covid_positive/patient_{i}" for i in (1, 2, 3)] + [f"covid_negative/patient_{i}" for i in range(1, 6)]
)
def test_ricord_slabs_have_both_lungs_with_their_opacities(patient):
    volume, spacing = real(f"ricord_slabs/{patient}")
    mask = LungMask(spacing)(volume[None])[0] > 0  # not refused: opacities leave the lung against the ribs
    (_, x_big), (second, x_second) = components_ml(mask, spacing)[:2]
    centre = (volume.shape[0] - 1) / 2
    assert second > 100.0 and (x_big - centre) * (x_second - centre) < 0
    # the aerated lung next to the mask is in it: nothing of the lungs is left out beside their opacities
    aerated = (volume < -600) & ndimage.binary_dilation(mask, iterations=3)
    assert (mask & aerated).sum() > 0.97 * aerated.sum()


# --- the transforms and odd inputs -----------------------------------------------------------------------------


def test_transform_keeps_the_type_and_meta_data():
    image, _, spacing, _ = phantom("CT-2", 1)
    affine = np.diag([*spacing, 1.0])
    img = MetaTensor(torch.from_numpy(image[None].astype(np.float32)), affine=affine, meta={"filename_or_obj": "a"})
    out = LungMask()(img)
    assert isinstance(out, MetaTensor) and out.dtype == torch.uint8 and out.shape == img.shape
    assert np.allclose(out.affine, affine) and out.meta["filename_or_obj"] == "a"
    expected = lung_mask(image, spacing)
    assert np.array_equal(out[0].numpy() > 0, expected)
    array_out = LungMask(spacing)(image[None])
    assert isinstance(array_out, np.ndarray) and array_out.dtype == np.uint8
    assert np.array_equal(array_out[0] > 0, expected)
    d = LungMaskd("image")({"image": img})
    assert np.array_equal(d["lung"][0].numpy() > 0, expected) and d["image"] is img
    d = LungMaskd("image", mask_key="m")({"image": image[None], "image_meta_dict": {"affine": affine}})
    assert np.array_equal(d["m"][0] > 0, expected)


def test_bad_inputs_are_refused_naming_the_file():
    with pytest.raises(InputError, match="no voxel spacing"):
        LungMask()(np.zeros((1, 8, 8, 8), np.float32))
    img = MetaTensor(torch.zeros(8, 8, 8), meta={"filename_or_obj": "scan.nii.gz"})
    with pytest.raises(InputError, match="channel-first") as err:
        LungMask()(img)
    assert err.value.path == "scan.nii.gz"
    with pytest.raises(InputError, match="spacing"):
        lung_mask(np.zeros((8, 8, 8)), (1.0, 1.0))


@pytest.mark.parametrize(
    "volume",
    [
        np.full((32, 32, 8), -1000.0),  # air only
        np.zeros((32, 32, 8), np.int16),  # water only
        np.random.default_rng(0).integers(-1000, 400, (16, 16, 8)).astype(np.int16),  # tiny noise
        np.full((1, 1, 1), -800.0),
    ],
)
def test_no_lungs_gives_an_empty_mask(volume):
    mask = lung_mask(volume, (0.8, 0.8, 8.0))
    assert mask.shape == volume.shape and mask.dtype == bool and not mask.any()


def test_volume_in_millilitres():
    mask = np.zeros((1, 10, 10, 10), np.uint8)
    mask[0, :5] = 1
    assert lung_volume_ml(mask, (2.0, 2.0, 5.0)) == pytest.approx(500 * 20 / 1000)
    assert lung_volume_ml(torch.from_numpy(mask), (2.0, 2.0, 5.0)) == pytest.approx(10.0)


def test_coarse_scans_are_not_judged_against_their_cavity():
    """Ribs are not resolved at matrix 64 (4.6-9.2 mm pixels): the cavity is not judged there, at matrix 128 it is
    (a share no chest reaches is asked for, so the judged one is refused)."""
    strict = LungMask(min_cavity_share=0.99)
    for matrix, judged in ((64, False), (128, True)):
        study = generate_study("CT-0", 0, matrix=matrix)
        flip = slice(None, None, -1) if study.affine[0, 0] < 0 else slice(None)
        image = np.ascontiguousarray(study.image[flip])[None]
        spacing = voxel_spacing(study.affine)
        if judged:
            with pytest.raises(InputError, match="implausibly small"):
                strict(image, spacing)
        else:
            assert strict(image, spacing).sum() > 0
