"""Shared fixtures: tiny real NIfTI volumes and cohorts on disk."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "chest_ct_pneumonia_classification"
TESTING_DATA = Path(__file__).resolve().parent / "testing_data"
REALCT = TESTING_DATA / "realct"

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


def run_bundle(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle ARGS`` as a user would; returns the finished process (output captured)."""
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"monai.bundle {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


#: Overrides that make a bundle run tiny: 32x32x16 volumes, 2 epochs.
TINY = ("--spatial_size", "[32,32,16]", "--epochs", "2", "--cache_workers", "1")


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """A synthetic cohort of 8 studies in each of CT-0, CT-2 and CT-3 at a 64 matrix."""
    from pipeline.synth.generate import generate_cohort

    out = tmp_path_factory.mktemp("cohort") / "synthetic"
    generate_cohort(out, per_category=8, categories=["CT-0", "CT-2", "CT-3"], seed=7, matrix=64, progress=False)
    return out


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, tiny_cohort) -> Path:
    """A copy of the bundle trained for 2 epochs on :func:`tiny_cohort` (``models/model.pt`` written)."""
    bundle = tmp_path_factory.mktemp("bundle") / BUNDLE.name
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("eval", "logs", "*.pt", "*.ts", "*.onnx"))
    run_bundle(
        "run",
        "training",
        "--config_file",
        str(bundle / "configs" / "train.json"),
        "--bundle_root",
        str(bundle),
        "--dataset_dir",
        str(tiny_cohort),
        *TINY,
    )
    assert (bundle / "models" / "model.pt").is_file()
    return bundle
