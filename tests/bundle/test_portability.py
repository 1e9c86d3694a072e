"""The bundle folder travels alone: it runs from a copy, and its TorchScript model gives the checkpoint's scores."""

from __future__ import annotations

import json
import shutil
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
    assert json.loads((bundle / "eval" / "metrics.json").read_text())["n"] == 5  # the training cohort's test split
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


def test_torchscript_route_gives_the_checkpoints_probabilities(real_chest_crop, trained_bundle, tmp_path) -> None:
    """``model.ts`` with ``inference_torchscript.json``: the same chain (from the checkpoint's record), the same scores.

    The chain's lung mask is this package's transform, so the TorchScript route needs the package too; what it
    spares is the network's Python class.
    """
    bundle = copy_bundle_alone(trained_bundle, tmp_path / "elsewhere")
    run_bundle(
        "ckpt_export", "network_def", "--filepath", "models/model.ts", "--ckpt_file", "models/model.pt",
        "--meta_file", "configs/metadata.json", "--config_file", "configs/inference.json",
        cwd=bundle,
    )  # fmt: skip
    scans = tmp_path / "scans"  # a folder of NIfTI files: a real chest CT
    scans.mkdir()
    shutil.copy(real_chest_crop, scans)
    outputs = {}
    for route, configs in (("checkpoint", "configs/inference.json"), ("torchscript", TORCHSCRIPT_CONFIGS)):
        run_bundle(
            "run", "--config_file", configs, "--dataset_dir", str(scans), "--output_dir", str(tmp_path / route),
            *SPATIAL, cwd=bundle,
        )  # fmt: skip
        rows = json.loads((tmp_path / route / "predictions.json").read_text())
        outputs[route] = {row["image"]: [row["prob_normal"], row["prob_pneumonia"]] for row in rows}
    assert sorted(outputs["torchscript"]) == sorted(outputs["checkpoint"]) and outputs["checkpoint"]
    for image, probabilities in outputs["torchscript"].items():
        assert probabilities == pytest.approx(outputs["checkpoint"][image], abs=1e-4)
