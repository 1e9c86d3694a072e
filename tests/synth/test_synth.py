"""Tests of the synthetic chest-CT phantom and cohort writer (tiny matrices, few slices)."""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from pipeline.__main__ import main
from pipeline.synth.generate import MANIFEST, MARKER, generate_cohort, write_montage
from pipeline.synth.lesions import PRIMARY_RATES
from pipeline.synth.phantom import (
    ANATOMY_RANGES,
    CATEGORY_BANDS,
    LESION_KEYS,
    SCANNERS,
    check_matrix,
    draw_nuisance,
    generate_study,
)
from pipeline.transforms.plausibility import CheckChestCT, aerated_fraction
from pipeline.utils.errors import InputError

FAST = {"matrix": 64, "_n_slices": 33}


def _tissue_hu(image: np.ndarray, body: np.ndarray) -> dict[str, float]:
    """Median HU of lung, fat and soft tissue and the 99.9th percentile (bone) inside ``body``."""
    values = image[body].astype(float)
    soft = values[(values >= -30) & (values < 150)]
    return {
        "lung": float(np.median(values[(values > -1000) & (values < -500)])),
        "fat": float(np.median(values[(values > -200) & (values < -30)])),
        "soft": float(np.median(soft)),
        "bone": float(np.percentile(values, 99.9)),
    }


def _body(image: np.ndarray) -> np.ndarray:
    """Largest connected region above -500 HU with each axial slice's holes (lungs, airways) filled."""
    labels, _ = ndimage.label(image > -500)
    largest = labels == np.argmax(np.bincount(labels.ravel())[1:]) + 1
    return np.stack([ndimage.binary_fill_holes(largest[..., k]) for k in range(image.shape[2])], axis=2)


@pytest.mark.parametrize("matrix", [32, 64])
def test_geometry(matrix: int) -> None:
    study = generate_study("CT-2", 3, matrix=matrix, _n_slices=34)
    assert study.image.shape == (matrix, matrix, 34)
    assert study.image.dtype == np.int16 and study.mask.dtype == np.uint8
    assert study.mask.shape == study.image.shape
    assert nib.aff2axcodes(study.affine) == ("L", "A", "S")
    spacing = np.abs(np.diag(study.affine)[:3])
    assert spacing[2] == 8.0
    assert 0.58 * 512 / matrix <= spacing[0] == spacing[1] <= 1.15 * 512 / matrix


def test_default_slice_count_and_spacing_follow_mosmed() -> None:
    for seed in range(4):
        study = generate_study("CT-0", seed, matrix=32)
        assert 33 <= study.image.shape[2] <= 54
        assert 0.58 <= study.params["fov_mm"] / 512 <= 1.15


def test_hu_of_tissues_match_real_chest_ct(real_chest_crop: Path) -> None:
    real = np.asanyarray(nib.load(real_chest_crop).dataobj)
    ref = _tissue_hu(real, np.ones(real.shape, bool))  # the real crop lies inside the body
    for seed in range(3):
        study = generate_study("CT-0", seed, **FAST)
        body = _body(study.image)
        got = _tissue_hu(study.image, body)
        assert abs(got["lung"] - ref["lung"]) < 100, (got, ref)
        assert abs(got["fat"] - ref["fat"]) < 40, (got, ref)
        assert abs(got["soft"] - ref["soft"]) < 40, (got, ref)
        assert got["bone"] > 500 and ref["bone"] > 500, (got, ref)
        outside = study.image[~body & (study.image > -1500)]  # air inside the scan field
        assert abs(np.median(outside) + 1000) < 30
        assert (study.image == study.params["padding_hu"]).any()  # corners outside the field


@pytest.mark.parametrize("category", list(CATEGORY_BANDS))
def test_lesion_fraction_within_band(category: str) -> None:
    lo, hi = CATEGORY_BANDS[category]
    for seed in range(2):
        study = generate_study(category, seed, **FAST)
        fraction = study.mask.sum() / study.params["lung_voxels"]
        assert study.lesion_fraction == pytest.approx(fraction)
        if category == "CT-0":
            assert not study.mask.any()
        else:
            assert lo < study.lesion_fraction < hi


def test_opacities_are_denser_than_lung_and_only_difference_between_categories() -> None:
    normal = generate_study("CT-0", 7, **FAST)
    sick = generate_study("CT-3", 7, **FAST)
    # same seed: same patient and scanner; only lung voxels (and partial volume at their border)
    # change, mostly inside the mask
    lungs = _body(normal.image) & (normal.image < -500)
    changed = normal.image != sick.image
    assert not (changed & ~ndimage.binary_dilation(lungs, np.ones((5, 5, 3)))).any()
    assert changed[sick.mask == 1].mean() > 0.95
    assert changed[(sick.mask == 0) & lungs].mean() < 0.2
    lesion = sick.image[sick.mask == 1].astype(float)
    # faint ground glass (down to -750 HU) lifts an inspired lung by 100-150 HU, patchy ground glass by more
    assert np.median(lesion) > np.median(normal.image[sick.mask == 1]) + 100
    assert -750 < np.median(lesion) < 60
    nuisance = {k: v for k, v in normal.params.items() if k not in LESION_KEYS}
    assert all(sick.params[k] == v for k, v in nuisance.items())


@pytest.mark.parametrize(("category", "least"), [("CT-0", 0.06), ("CT-3", 0.04), ("CT-4", 0.03)])
def test_aerated_fraction_is_that_of_a_chest_ct(category: str, least: float) -> None:
    """Lungs fill most slices and a real share of the body, so even CT-4 passes the chest-CT check."""
    for seed in range(3):
        study = generate_study(category, seed, matrix=64)
        assert aerated_fraction(study.image) >= least, (category, seed)
        assert CheckChestCT()(study.image, affine=study.affine) is study.image


def test_same_seed_same_study_other_seed_differs() -> None:
    a = generate_study("CT-1", np.random.SeedSequence(5), **FAST)
    b = generate_study("CT-1", np.random.SeedSequence(5), **FAST)
    c = generate_study("CT-1", 6, **FAST)
    assert np.array_equal(a.image, b.image) and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.image, c.image)


def _files(root: Path) -> dict[str, bytes]:
    return {p.relative_to(root).as_posix(): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_cohort_bytes_deterministic_and_independent_of_workers(tmp_path: Path) -> None:
    kw = {"per_category": 1, "categories": "CT-0,CT-4", "matrix": 32, "progress": False, "_n_slices": 33}
    generate_cohort(tmp_path / "a", seed=1, workers=1, **kw)
    generate_cohort(tmp_path / "b", seed=1, workers=2, **kw)
    generate_cohort(tmp_path / "c", seed=2, workers=1, **kw)
    a, b, c = (_files(tmp_path / n) for n in "abc")
    assert a == b
    assert a.keys() == c.keys()
    assert a["studies/CT-0/study_0001.nii.gz"] != c["studies/CT-0/study_0001.nii.gz"]
    assert not any(".part" in name for name in a)


def test_manifest_contents(tmp_path: Path) -> None:
    manifest = generate_cohort(
        tmp_path, per_category=2, categories="CT-3,CT-0", seed=4, matrix=32, progress=False, _n_slices=33
    )
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["study_id"] for r in rows] == [f"study_{i:04d}" for i in range(1, 5)]
    assert [r["category"] for r in rows] == ["CT-0", "CT-0", "CT-3", "CT-3"]
    for row in rows:
        image = nib.load(tmp_path / row["study_file"])
        mask = nib.load(tmp_path / row["mask_file"])
        assert row["study_file"] == f"studies/{row['category']}/{row['study_id']}.nii.gz"
        assert row["orientation"] == "LAS" == "".join(nib.aff2axcodes(image.affine))
        assert row["shape"] == "x".join(map(str, image.shape)) == "32x32x33"
        assert [float(s) for s in row["spacing"].split("x")] == pytest.approx(image.header.get_zooms(), abs=1e-4)
        assert image.header.get_data_dtype() == np.int16 and mask.header.get_data_dtype() == np.uint8
        assert int(image.header["qform_code"]) == 1 and int(image.header["sform_code"]) == 1
        lo, hi = CATEGORY_BANDS[row["category"]]
        fraction = float(row["lesion_fraction"])
        assert fraction == 0.0 if row["category"] == "CT-0" else lo < fraction < hi
        assert row["kernel"] in {"smooth", "standard", "sharp"} and 5 <= float(row["noise_hu"]) <= 18
        assert row["scanner"] == "mosmed"
        again = generate_study(row["category"], int(row["seed"]), matrix=32, _n_slices=33)
        assert np.array_equal(again.image, np.asanyarray(image.dataobj))


def test_cli_end_to_end_with_montage(tmp_path: Path) -> None:
    out, png = tmp_path / "cohort", tmp_path / "montage.png"
    argv = ["synth", str(out), "--per-category", "1", "--categories", "CT-0,CT-2", "--matrix", "32"]
    assert main([*argv, "--no-progress", "--montage", str(png)]) == 0
    assert (out / MANIFEST).is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in (out / "studies").rglob("*.nii.gz")) == ["study_0001.nii.gz", "study_0002.nii.gz"]
    # a rerun into the same cohort replaces it (fewer categories leave no stale studies)
    assert main(["synth", str(out), "--categories", "CT-2", "--matrix", "32", "--per-category", "1"]) == 0
    assert [p.name for p in (out / "studies").rglob("*.nii.gz")] == ["study_0001.nii.gz"]
    assert write_montage(out / MANIFEST, png) == png


def test_refuses_foreign_folder_and_bad_options(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a synthetic cohort"):
        generate_cohort(tmp_path, per_category=1, matrix=32, progress=False)
    assert [p.name for p in tmp_path.iterdir()] == ["notes.txt"]
    empty = tmp_path / "new"
    assert main(["synth", str(empty), "--categories", "CT-0,CT-7", "--matrix", "32"]) == 2
    assert "CT-7" in capsys.readouterr().err
    assert main(["synth", str(empty), "--matrix", "100"]) == 2
    assert "matrix" in capsys.readouterr().err
    assert main(["synth", str(tmp_path), "--matrix", "32"]) == 2
    assert not empty.exists()
    with pytest.raises(ValueError, match="unknown category"):
        generate_study("CT-5", 0, matrix=32)


def test_default_scanner_profile_is_mosmed() -> None:
    """The default profile keeps the MosMedData ranges that existing cohorts were drawn from."""
    mosmed = SCANNERS["mosmed"]
    assert (mosmed.slice_mm, mosmed.orientation, mosmed.matrix) == ((8.0, 8.0), "LAS", 512)
    assert mosmed.kernels == ("smooth", "standard", "sharp") and mosmed.kernel_p is None
    assert mosmed.noise_hu == (5.0, 18.0) and mosmed.padding_hu == (-3024, -2048, -2000, -1024)
    study = generate_study("CT-0", 1, matrix=32, _n_slices=4)
    assert study.params["scanner"] == "mosmed" and study.params["slice_mm"] == 8.0


def test_shifted_scanner_geometry_and_settings() -> None:
    shifted = SCANNERS["shifted"]
    for seed in range(4):
        study = generate_study("CT-0", seed, matrix=32, scanner="shifted")
        p = study.params
        assert nib.aff2axcodes(study.affine) == ("R", "A", "S")
        spacing = np.abs(np.diag(study.affine)[:3])
        assert 2.5 <= spacing[2] <= 5.0 and spacing[2] == pytest.approx(p["slice_mm"], abs=1e-3)
        assert 0.58 * 512 / 32 <= spacing[0] == spacing[1] <= 1.15 * 512 / 32
        # the MosMedData coverage, cut into thin slices
        assert 33 * 8 <= p["coverage_mm"] <= 54 * 8
        assert abs(study.image.shape[2] * spacing[2] - p["coverage_mm"]) <= spacing[2] / 2
        assert study.image.shape[2] > 54
        assert p["kernel"] in shifted.kernels and 5 <= p["noise_hu"] <= 15
        assert p["padding_hu"] in shifted.padding_hu and (study.image == p["padding_hu"]).any()
        assert CheckChestCT()(study.image, affine=study.affine) is study.image


def test_ras_stores_the_same_world_as_las() -> None:
    """RAS output is the LAS volume mirrored along x, and its affine puts every voxel at the same place."""
    ras = dataclasses.replace(SCANNERS["mosmed"], orientation="RAS")
    las_study = generate_study("CT-2", 3, matrix=48, _n_slices=34)
    ras_study = generate_study("CT-2", 3, matrix=48, _n_slices=34, scanner=ras)
    assert nib.aff2axcodes(ras_study.affine) == ("R", "A", "S")
    assert np.array_equal(ras_study.image, las_study.image[::-1]) and np.array_equal(
        ras_study.mask, las_study.mask[::-1]
    )
    ijk = np.array([[0, 0, 0, 1], [5, 7, 2, 1], [47, 20, 33, 1]], float)
    mirrored = ijk.copy()
    mirrored[:, 0] = 47 - ijk[:, 0]
    np.testing.assert_allclose(las_study.affine @ ijk.T, ras_study.affine @ mirrored.T)


@pytest.mark.parametrize("category", list(CATEGORY_BANDS))
def test_shifted_lesion_fraction_within_band(category: str) -> None:
    lo, hi = CATEGORY_BANDS[category]
    study = generate_study(category, 11, matrix=32, scanner="shifted")
    assert study.lesion_fraction == pytest.approx(study.mask.sum() / study.params["lung_voxels"])
    assert not study.mask.any() if category == "CT-0" else lo < study.lesion_fraction < hi


def test_shifted_matrix_384_and_unknown_scanner() -> None:
    assert check_matrix(384) == 2
    study = generate_study("CT-0", 0, scanner="shifted", _n_slices=2)
    assert study.image.shape == (384, 384, 2)  # the profile's default matrix
    assert generate_study("CT-0", 0, matrix=48, scanner="shifted", _n_slices=2).image.shape == (48, 48, 2)
    with pytest.raises(ValueError, match="unknown scanner"):
        generate_study("CT-0", 0, matrix=32, scanner="ge")


def test_shifted_cohort_deterministic_with_scanner_recorded(tmp_path: Path) -> None:
    kw = {"per_category": 1, "categories": "CT-0,CT-3", "matrix": 32, "progress": False, "scanner": "shifted"}
    manifest = generate_cohort(tmp_path / "a", seed=1, workers=1, **kw)
    generate_cohort(tmp_path / "b", seed=1, workers=2, **kw)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert json.loads((tmp_path / "a" / MARKER).read_text())["scanner"] == "shifted"
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        image = nib.load(tmp_path / "a" / row["study_file"])
        assert row["scanner"] == "shifted" and row["orientation"] == "RAS" == "".join(nib.aff2axcodes(image.affine))
        assert 2.5 <= float(row["spacing"].split("x")[2]) <= 5.0
        again = generate_study(row["category"], int(row["seed"]), matrix=32, scanner="shifted")
        assert np.array_equal(again.image, np.asanyarray(image.dataobj))


def test_cli_scanner_option(tmp_path: Path) -> None:
    argv = ["synth", str(tmp_path), "--per-category", "1", "--categories", "CT-1", "--matrix", "32", "--no-progress"]
    assert main([*argv, "--scanner", "shifted"]) == 0
    assert json.loads((tmp_path / MARKER).read_text())["scanner"] == "shifted"
    with pytest.raises(SystemExit):
        main([*argv, "--scanner", "ge"])


def test_normal_lungs_span_inspiration_levels() -> None:
    """CT-0 lungs reach full inspiration: their median HU over the true lung spans the real normals' -880..-760."""
    medians = []
    for seed in range(12):
        study = generate_study("CT-0", seed, matrix=128)  # 3 mm pixels: small vessels stay small
        medians.append(float(np.median(study.image[study.lung])))
    assert min(medians) < -840 and max(medians) > -790, medians
    assert -900 < min(medians) and max(medians) < -720, medians


def test_gas_under_the_diaphragm_is_neither_lung_nor_lesion() -> None:
    """Stomach and colon gas lie in the body below the lung bases; they are never lung and never lesion."""
    seed = next(
        s
        for s in range(100)
        if draw_nuisance(np.random.default_rng(np.random.SeedSequence(s, spawn_key=(0,))), 64)["stomach_gas"]
    )
    study = generate_study("CT-2", seed, matrix=64)
    k0 = int(np.flatnonzero(study.lung.any(axis=(0, 1)))[0])
    below = study.image[..., : k0 + 1]
    body = _body(study.image)[..., : k0 + 1]
    gas = body & (below < -900) & ~study.lung[..., : k0 + 1]
    assert gas.sum() > 20
    assert not study.mask[..., : k0 + 1][gas].any()


def test_foreign_profile_is_unlike_the_training_generator() -> None:
    """``foreign``: 5 mm LPS slices, its own kernels, noise and padding, other patients and another lesion mix;
    ``mosmed`` and ``shifted`` keep the same patients and lesions."""
    foreign = SCANNERS["foreign"]
    assert foreign.orientation == "LPS" and foreign.slice_mm == (5.0, 5.0)
    assert set(foreign.anatomy) <= set(ANATOMY_RANGES) and foreign.anatomy
    for name in ("mosmed", "shifted"):
        profile = SCANNERS[name]
        assert not profile.anatomy and profile.lesion_rates is None and profile.lesion_hu_shift == (0.0, 0.0)
    for category, rates in foreign.lesion_rates.items():
        assert sum(rates.values()) == pytest.approx(1.0) and rates != PRIMARY_RATES[category]
    for seed in range(3):
        study = generate_study("CT-3", seed, matrix=64, scanner="foreign")
        p = study.params
        assert nib.aff2axcodes(study.affine) == ("L", "P", "S") and p["slice_mm"] == 5.0
        assert p["kernel"] in foreign.kernels and 15 <= p["noise_hu"] <= 35 and p["padding_hu"] in foreign.padding_hu
        assert 1.05 <= p["heart_scale"] <= 1.35 and p["scanner"] == "foreign"
        lo, hi = CATEGORY_BANDS["CT-3"]
        assert lo < study.lesion_fraction < hi
        assert CheckChestCT()(study.image, affine=study.affine) is study.image
    # LPS stores the LAS volume mirrored front to back, every voxel at the same place in the world
    lps = dataclasses.replace(SCANNERS["mosmed"], orientation="LPS")
    las_study = generate_study("CT-2", 3, matrix=48, _n_slices=34)
    lps_study = generate_study("CT-2", 3, matrix=48, _n_slices=34, scanner=lps)
    assert np.array_equal(lps_study.image, las_study.image[:, ::-1]) and np.array_equal(
        lps_study.lung, las_study.lung[:, ::-1]
    )
    ijk = np.array([[0, 0, 0, 1], [5, 7, 2, 1]], float)
    mirrored = ijk.copy()
    mirrored[:, 1] = 47 - ijk[:, 1]
    np.testing.assert_allclose(las_study.affine @ ijk.T, lps_study.affine @ mirrored.T)
    with pytest.raises(ValueError, match="unknown anatomy"):
        dataclasses.replace(SCANNERS["mosmed"], anatomy={"tail_mm": (1.0, 2.0)})


def test_foreign_cohort_through_the_cli(tmp_path: Path) -> None:
    argv = ["synth", str(tmp_path), "--per-category", "1", "--categories", "CT-0,CT-4", "--matrix", "32"]
    assert main([*argv, "--no-progress", "--scanner", "foreign"]) == 0
    with open(tmp_path / MANIFEST, newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["scanner"] for r in rows] == ["foreign", "foreign"] and {r["orientation"] for r in rows} == {"LPS"}
    assert rows[1]["patterns"] != "none" and rows[0]["patterns"] == "none"
