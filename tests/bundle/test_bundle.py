"""The bundle end to end with ``python -m monai.bundle``: train, evaluate, infer (NIfTI and DICOM)."""

from __future__ import annotations

import csv
import json

import nibabel as nib
import numpy as np
import pytest
from conftest import run_bundle, run_evaluation

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
    proc = run_evaluation(trained_bundle, tiny_cohort, tmp_path)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["n"] == 5  # the test split of the training cohort (20 %)
    for key in ("auc", "accuracy", "sensitivity", "specificity"):
        assert 0.0 <= metrics[key] <= 1.0
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    assert len(rows) == 5 and {r["category"] for r in rows} == {"CT-0", "CT-2", "CT-3"}
    assert metrics["n_positive"] == sum(r["category"] != "CT-0" for r in rows)
    for r in rows:
        assert abs(float(r["prob_normal"]) + float(r["prob_pneumonia"]) - 1) < 1e-5
        # the multi-task default: involvement against the generator's mask, category, the lesion map on disk
        assert 0.0 <= float(r["involvement"]) <= 1.0 and 0.0 <= float(r["involvement_true"]) <= 1.0
        assert (float(r["involvement_true"]) == 0.0) == (r["category"] == "CT-0")
        assert r["category_pred"] in ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
        assert (r["category_pred"] == "CT-0") == (r["prediction"] == "normal")
    severity = metrics["severity"]
    assert severity["involvement"]["n"] == 5 and severity["category"]["n"] == 5
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
    assert f"{100 * first['involvement']:.1f} % of the lung involved, {first['category_pred']}" in proc.stdout
    assert first["involvement_true"] == ""  # no mask given
    lesion_map, scan = nib.load(first["lesion_map"]), nib.load(first["image"])
    assert lesion_map.shape == scan.shape and np.allclose(lesion_map.affine, scan.affine)  # the scan's own grid
    assert lesion_map.get_data_dtype() == np.uint8 and lesion_map.get_fdata().max() <= 100  # percent
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
    assert nib.load(row["lesion_map"]).shape[2] == len(list(dicom.glob("*.dcm")))  # one map slice per DICOM slice
