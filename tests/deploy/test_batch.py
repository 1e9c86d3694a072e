"""Batches go on past bad studies: ``refused`` rows with reasons, predictions for the rest, a "partial" status."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
from conftest import TINY, chest, infer, run_bundle, write_nifti

from pipeline.utils.guard import EXIT_BAD_INPUT, EXIT_PARTIAL


def bad_and_good(folder):
    """Two good chest CTs, one file refused on its header and one on its content; returns name -> problem."""
    for seed in (0, 1):
        write_nifti(folder / f"good_{seed}.nii.gz", *chest(seed=seed))
    (folder / "text.nii.gz").write_text("patient list, not an image\n")
    volume, affine = chest(seed=2)
    write_nifti(folder / "constant.nii.gz", np.full(volume.shape, -1000, np.int16), affine)
    return {"text.nii.gz": "not gzip-compressed", "constant.nii.gz": "constant"}


@pytest.mark.slow
def test_inference_predicts_the_good_studies_and_refuses_each_bad_one(tmp_path, untrained_bundle):
    bad = bad_and_good(tmp_path / "batch")
    proc = infer(untrained_bundle, tmp_path / "batch", tmp_path / "out")
    assert proc.returncode == EXIT_PARTIAL, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    for name, problem in bad.items():
        assert f"error: {tmp_path / 'batch' / name}: " in proc.stderr and problem in proc.stderr
    assert "partial: 2 of 4 studies refused" in proc.stderr
    with open(tmp_path / "out" / "predictions.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = {r["study_id"]: r for r in reader}
    assert reader.fieldnames[:4] == ["study_id", "image", "label", "category"]
    assert reader.fieldnames[-2:] == ["status", "reason"]
    for seed in (0, 1):
        row = rows[f"good_{seed}"]
        assert row["status"] == "ok" and row["reason"] == "" and 0 <= float(row["prob_pneumonia"]) <= 1
    for name, problem in bad.items():
        row = rows[name.removesuffix(".nii.gz")]
        assert (row["status"], row["prob_pneumonia"], row["prediction"]) == ("refused", "", "")
        assert problem in row["reason"]


@pytest.mark.slow
def test_a_batch_of_bad_studies_only_is_refused(tmp_path, untrained_bundle):
    bad = bad_and_good(tmp_path / "batch")
    for seed in (0, 1):
        (tmp_path / "batch" / f"good_{seed}.nii.gz").unlink()
    proc = infer(untrained_bundle, tmp_path / "batch", tmp_path / "out")
    assert proc.returncode == EXIT_BAD_INPUT, proc.stderr[-3000:]
    assert "refused: 2 of 2 studies refused" in proc.stderr
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert sorted(r["image"].rsplit("/", 1)[-1] for r in rows if r["status"] == "refused") == sorted(bad)


@pytest.mark.slow
def test_evaluation_scores_the_good_studies_and_lists_the_refused(tmp_path, untrained_bundle):
    bad = bad_and_good(tmp_path / "cohort" / "CT-0")
    for seed, category in ((2, "CT-2"), (3, "CT-2"), (4, "CT-0")):
        write_nifti(tmp_path / "cohort" / category / f"good_{seed}.nii.gz", *chest(seed=seed, category=category))
    configs = untrained_bundle / "configs"
    proc = run_bundle(
        "run", "--config_file", f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']",
        "--bundle_root", str(untrained_bundle), "--dataset_dir", str(tmp_path / "cohort"),
        "--output_dir", str(tmp_path / "eval"), *TINY, check=False,
    )  # fmt: skip
    assert proc.returncode == EXIT_PARTIAL, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    statuses = {r["study_id"]: r["status"] for r in rows}
    assert statuses == {**{f"good_{i}": "ok" for i in range(5)}, "text": "refused", "constant": "refused"}
    assert all(problem in proc.stderr for problem in bad.values())
    assert json.loads((tmp_path / "eval" / "metrics.json").read_text())["n"] == 5
