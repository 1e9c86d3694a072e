"""Shared fixtures: tiny real NIfTI volumes and cohorts on disk."""

from __future__ import annotations

from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "chest_ct_pneumonia_classification"
REALCT = Path(__file__).resolve().parent / "data" / "realct"

#: MosMedData's orientation: x to the left, y anterior, z superior (qfac -1).
LAS = np.diag([-0.8, 0.8, 8.0, 1.0])


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = LAS) -> Path:
    """Save ``data`` as a NIfTI file (gzipped when the name ends with .gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture
def nifti(tmp_path):
    """Factory: ``nifti("a.nii.gz", shape=(16, 16, 8))`` writes a small int16 HU volume."""

    def make(name: str = "study_0001.nii.gz", shape=(16, 16, 8), dtype=np.int16, value=None) -> Path:
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        data = rng.integers(-1000, 400, size=shape).astype(dtype) if value is None else np.full(shape, value, dtype)
        return write_nifti(tmp_path / name, data)

    return make


@pytest.fixture
def mosmed_layout(tmp_path):
    """A tiny cohort in the MosMedData layout: 4 studies in each of CT-0, CT-1, CT-2, CT-3."""
    root = tmp_path / "cohort"
    n = 0
    for cat in ("CT-0", "CT-1", "CT-2", "CT-3"):
        for _ in range(4):
            n += 1
            write_nifti(root / "studies" / cat / f"study_{n:04d}.nii.gz", np.zeros((8, 8, 4), np.int16))
    return root
