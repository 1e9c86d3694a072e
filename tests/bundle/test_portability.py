"""The bundle folder travels alone: it runs from a copy, and its TorchScript model runs with MONAI only."""

from __future__ import annotations

import csv
import json
import os
import shutil
import site
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import TINY, run_bundle

pytestmark = pytest.mark.slow

SPATIAL = ("--spatial_size", "[32,32,16]")  # what trained_bundle was trained at
TORCHSCRIPT_CONFIGS = "['configs/inference.json','configs/inference_torchscript.json']"


def copy_bundle_alone(trained_bundle: Path, parent: Path) -> Path:
    """Copy the bundle folder (configs, docs, licence, trained ``models/``) without its run outputs."""
    bundle = parent / trained_bundle.name
    shutil.copytree(trained_bundle, bundle, ignore=shutil.ignore_patterns("eval", "logs"))
    return bundle


def test_bundle_trains_evaluates_and_infers_from_a_copy(trained_bundle, tiny_cohort, tmp_path) -> None:
    bundle = copy_bundle_alone(trained_bundle, tmp_path / "elsewhere")
    run_bundle(
        "run", "evaluating", "--config_file", "['configs/train.json','configs/evaluate.json']",
        "--dataset_dir", str(tiny_cohort), *TINY, cwd=bundle,
    )  # fmt: skip
    assert json.loads((bundle / "eval" / "metrics.json").read_text())["n"] == 24
    run_bundle(
        "run", "--config_file", "configs/inference.json", "--dataset_dir", str(tiny_cohort / "studies" / "CT-0"),
        "--output_dir", "predictions", *SPATIAL, cwd=bundle,
    )  # fmt: skip
    assert len(json.loads((bundle / "predictions" / "predictions.json").read_text())) == 8
    checkpoint = bundle / "models" / "model.pt"
    before = checkpoint.stat().st_mtime_ns
    run_bundle(
        "run", "training", "--config_file", str(bundle / "configs" / "train.json"), "--bundle_root", str(bundle),
        "--dataset_dir", str(tiny_cohort), *TINY, cwd=tmp_path,
    )  # fmt: skip
    assert checkpoint.stat().st_mtime_ns > before
    assert list((bundle / "logs").glob("state_checkpoint_epoch=2.pt"))


def monai_only_python(venv: Path) -> Path:
    """A virtual environment that sees this environment's packages (MONAI, torch, ...) but not this project.

    It lists this environment's site-packages in a ``.pth`` file: the folder joins ``sys.path``, but the
    ``.pth`` files inside it, among them the editable install's import hook for ``pipeline``, are not run.
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True, capture_output=True, text=True,
    ).stdout.strip()  # fmt: skip
    (Path(purelib) / "monai_environment.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return python


def test_torchscript_model_infers_with_monai_alone(real_chest_crop, trained_bundle, tmp_path) -> None:
    bundle = copy_bundle_alone(trained_bundle, tmp_path / "elsewhere")
    run_bundle(
        "ckpt_export", "network_def", "--filepath", "models/model.ts", "--ckpt_file", "models/model.pt",
        "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json", cwd=bundle,
    )  # fmt: skip
    scans = tmp_path / "scans"  # a folder of NIfTI files: a real chest CT (the DICOM reader is the package's)
    scans.mkdir()
    shutil.copy(real_chest_crop, scans)
    run_bundle(
        "run", "--config_file", "configs/inference.json", "--dataset_dir", str(scans),
        "--output_dir", str(tmp_path / "checkpoint"), *SPATIAL, cwd=bundle,
    )  # fmt: skip
    expected = {
        row["image"]: [row["prob_normal"], row["prob_pneumonia"]]
        for row in json.loads((tmp_path / "checkpoint" / "predictions.json").read_text())
    }

    python = monai_only_python(tmp_path / "venv")
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONWARNINGS"] = "ignore"
    probe = "import importlib.util as u, monai, torch; print(u.find_spec('pipeline') is None, monai.__version__)"
    found = subprocess.run([python, "-c", probe], cwd=bundle, env=env, capture_output=True, text=True, check=True)
    assert found.stdout.split() == ["True", "1.6.1"], f"the project must not be importable: {found.stdout}"
    proc = subprocess.run(
        [python, "-m", "monai.bundle", "run", "--config_file", TORCHSCRIPT_CONFIGS, "--dataset_dir", str(scans),
         "--output_dir", str(tmp_path / "torchscript"), *SPATIAL],
        cwd=bundle, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-5000:]
    rows = list(csv.reader(open(tmp_path / "torchscript" / "predictions.csv")))
    assert sorted(row[0] for row in rows) == sorted(expected)
    for image, *probabilities in rows:
        assert [float(p) for p in probabilities] == pytest.approx(expected[image], abs=1e-4)
