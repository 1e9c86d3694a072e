"""Lesions painted into real scans without pneumonia (``synth --backgrounds``), on small versions of the real
normals in ``../shared/realct`` (skipped where absent): a DICOM series at 128x128 and a NIfTI CTA crop at 3 mm."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from conftest import downsample_nifti

from pipeline.__main__ import main
from pipeline.synth.backgrounds import find_backgrounds, load_background
from pipeline.synth.generate import MANIFEST, MARKER, generate_from_backgrounds
from pipeline.synth.lesions import CATEGORY_BANDS
from pipeline.transforms.lung import lung_mask
from pipeline.utils.errors import InputError


@pytest.fixture(scope="module")
def backgrounds(real_series: Path, shared_realct: Path, tmp_path_factory) -> Path:
    """A folder with one DICOM series and one NIfTI file, both real normals."""
    folder = tmp_path_factory.mktemp("backgrounds")
    (folder / "series").symlink_to(real_series, target_is_directory=True)
    downsample_nifti(shared_realct / "nifti" / "chest_cta_crop.nii.gz", folder / "cta.nii.gz")
    return folder


@pytest.fixture(scope="module")
def cohort(backgrounds: Path, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("bg_cohort")
    generate_from_backgrounds(out, backgrounds, per_category=1, categories="CT-0,CT-1,CT-3", seed=2, progress=False)
    return out


def _rows(cohort: Path) -> list[dict]:
    with open(cohort / MANIFEST, newline="") as f:
        return list(csv.DictReader(f))


def test_backgrounds_found_and_bad_folders_refused(backgrounds: Path, tmp_path: Path) -> None:
    assert [p.name for p in find_backgrounds(backgrounds)] == ["cta.nii.gz", "series"]
    with pytest.raises(InputError, match="no NIfTI files"):
        find_backgrounds(tmp_path)
    with pytest.raises(InputError, match="not found"):
        find_backgrounds(tmp_path / "missing")


def test_background_cohort_layout_and_exact_masks(backgrounds: Path, cohort: Path) -> None:
    """Per background: the unmodified scan as CT-0, then CT-1 and CT-3 with lesions inside its lungs only;
    everything outside the mask is the background's HU, voxel for voxel."""
    rows = _rows(cohort)
    assert [r["category"] for r in rows] == ["CT-0", "CT-1", "CT-3"] * 2
    assert [r["background"] for r in rows] == ["cta.nii.gz"] * 3 + ["series"] * 3
    assert json.loads((cohort / MARKER).read_text())["backgrounds"] == ["cta.nii.gz", "series"]
    for name, group in (("cta.nii.gz", rows[:3]), ("series", rows[3:])):
        volume, affine = load_background(backgrounds / name)
        lung = lung_mask(volume, np.sqrt((affine[:3, :3] ** 2).sum(0)))
        normal = np.asanyarray(nib.load(cohort / group[0]["study_file"]).dataobj)
        assert np.array_equal(normal, np.rint(volume).astype(np.int16)) and group[0]["patterns"] == "none"
        for row in group[1:]:
            image = nib.load(cohort / row["study_file"])
            mask = np.asanyarray(nib.load(cohort / row["mask_file"]).dataobj).astype(bool)
            hu = np.asanyarray(image.dataobj)
            assert row["orientation"] == "RAS" and np.allclose(image.affine, affine)
            assert mask.any() and not (mask & ~lung).any()
            assert np.array_equal(hu[~mask], normal[~mask])
            assert (hu[mask] != normal[mask]).mean() > 0.95  # int16 rounding may hide the faintest change
            lo, hi = CATEGORY_BANDS[row["category"]]
            assert lo < float(row["lesion_fraction"]) < hi
            assert row["patterns"] != "none"


def test_background_cohort_deterministic_and_cli(backgrounds: Path, cohort: Path, tmp_path: Path) -> None:
    argv = ["synth", str(tmp_path), "--backgrounds", str(backgrounds), "--categories", "CT-0,CT-1,CT-3"]
    assert main([*argv, "--per-category", "1", "--seed", "2", "--no-progress"]) == 0
    for row in _rows(cohort):
        for key in ("study_file", "mask_file"):
            assert (tmp_path / row[key]).read_bytes() == (cohort / row[key]).read_bytes()
    assert main(["synth", str(tmp_path / "new"), "--backgrounds", str(tmp_path / "none")]) == 2
    assert main(["synth", str(tmp_path / "new"), "--backgrounds", str(backgrounds), "--matrix", "64"]) == 2
    assert not (tmp_path / "new").exists()
