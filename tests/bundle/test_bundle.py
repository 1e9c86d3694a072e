"""The bundle end to end with ``python -m monai.bundle``: train, evaluate, infer (NIfTI and DICOM)."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import TINY, run_bundle

pytestmark = pytest.mark.slow


def test_training_writes_checkpoint_logs_and_curves(trained_bundle):
    logs = trained_bundle / "logs"
    assert (trained_bundle / "models" / "model.pt").stat().st_size > 0
    assert list(logs.glob("events.out.tfevents.*")), "TensorBoard logs"
    rows = list(csv.DictReader(open(logs / "learning_curves.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert {"train_loss", "train_acc", "train_auc", "val_loss", "val_acc", "val_auc"} <= set(rows[0])
    assert (logs / "learning_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert list(logs.glob("state_checkpoint_epoch=2.pt")), "resumable full state of the last epoch"


def test_evaluate_on_a_cohort(trained_bundle, tiny_cohort, tmp_path):
    configs = trained_bundle / "configs"
    proc = run_bundle(
        "run",
        "--config_file",
        f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']",
        "--bundle_root",
        str(trained_bundle),
        "--dataset_dir",
        str(tiny_cohort),
        "--output_dir",
        str(tmp_path),
        *TINY,
    )
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n"] == 24 and metrics["n_positive"] == 16
    for key in ("auc", "accuracy", "sensitivity", "specificity"):
        assert 0.0 <= metrics[key] <= 1.0
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert len(rows) == 24 and {r["category"] for r in rows} == {"CT-0", "CT-2", "CT-3"}
    for r in rows:
        assert abs(float(r["prob_normal"]) + float(r["prob_pneumonia"]) - 1) < 1e-5
    assert "metrics.json" in proc.stdout


def test_infer_on_nifti_folder_and_real_dicom(real_series, trained_bundle, tiny_cohort, tmp_path):
    inference = str(trained_bundle / "configs" / "inference.json")
    proc = run_bundle(
        "run",
        "--config_file",
        inference,
        "--bundle_root",
        str(trained_bundle),
        "--dataset_dir",
        str(tiny_cohort / "studies" / "CT-3"),
        "--output_dir",
        str(tmp_path / "nifti"),
        "--spatial_size",
        "[32,32,16]",
    )
    rows = json.loads((tmp_path / "nifti" / "predictions.json").read_text())
    assert len(rows) == 8
    first = rows[0]
    assert f"{first['study_id']}: {100 * first['prob_normal']:.1f} % normal" in proc.stdout
    dicom = real_series
    run_bundle(
        "run",
        "--config_file",
        inference,
        "--bundle_root",
        str(trained_bundle),
        "--dataset_dir",
        str(dicom),
        "--output_dir",
        str(tmp_path / "dicom"),
        "--spatial_size",
        "[32,32,16]",
    )
    (row,) = list(csv.DictReader(open(tmp_path / "dicom" / "predictions.csv")))
    assert row["study_id"] == dicom.name and row["prediction"] in ("normal", "pneumonia")
