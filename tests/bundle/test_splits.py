"""Held-out test split: written at training, scored by default, seen studies refused or marked; resume guarded."""

from __future__ import annotations

import csv
import json

import pytest
from conftest import TINY, refused, run_bundle

from pipeline.data.cohort import cohort_fingerprint, discover, to_items, write_datalist

pytestmark = pytest.mark.slow


def _evaluate(bundle, out, *args: str, check: bool = True):
    configs = bundle / "configs"
    evaluate = f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']"
    return run_bundle(
        "run", "--config_file", evaluate, "--bundle_root", str(bundle), "--output_dir", str(out), *TINY, *args,
        check=check,
    )  # fmt: skip


def test_evaluation_defaults_to_the_test_split_and_refuses_seen_studies(trained_bundle, tiny_cohort, tmp_path):
    split = json.loads((trained_bundle / "models" / "split.json").read_text())
    items = to_items(discover(tiny_cohort))
    assert split["fingerprint"] == cohort_fingerprint(items) and split["test_fraction"] == 0.2
    assert sorted(split["training"] + split["validation"] + split["test"]) == sorted(it["study_id"] for it in items)
    assert len(split["test"]) == 5  # 20 % of 24, stratified

    _evaluate(trained_bundle, tmp_path / "test", "--dataset_dir", str(tiny_cohort))  # the training cohort
    rows = list(csv.DictReader(open(tmp_path / "test" / "predictions.csv")))
    assert sorted(r["study_id"] for r in rows) == split["test"]
    assert json.loads((tmp_path / "test" / "metrics.json").read_text())["n"] == 5

    seen = [it for it in items if it["study_id"] in split["training"][:3] or it["study_id"] in split["test"]]
    datalist = write_datalist({"testing": seen}, tiny_cohort / "mixed.json")  # another cohort with 3 seen studies
    proc = _evaluate(trained_bundle, tmp_path / "mixed", "--datalist", str(datalist), check=False)
    refused(proc, ["3 of the 8 studies", *split["training"][:3], "--allow_seen true"])
    assert not (tmp_path / "mixed" / "predictions.csv").exists()

    _evaluate(trained_bundle, tmp_path / "all", "--datalist", str(datalist), "--allow_seen", "true")
    rows = list(csv.DictReader(open(tmp_path / "all" / "predictions.csv")))
    assert len(rows) == 8
    marked = {r["study_id"] for r in rows if r["seen_in_training"] == "True"}
    assert marked == set(split["training"][:3])  # each seen row says so, and the metrics count them
    assert json.loads((tmp_path / "all" / "metrics.json").read_text())["seen_in_training"] == 3


def test_resume_under_another_configuration_is_refused(trained_bundle, tiny_cohort):
    configs = trained_bundle / "configs"
    args = ["run", "training", "--config_file", str(configs / "train.json"), "--bundle_root", str(trained_bundle)]
    args += ["--dataset_dir", str(tiny_cohort), *TINY, "--epochs", "3", "--resume", "true"]
    refused(run_bundle(*args, "--learning_rate", "0.01", check=False), ["learning_rate: saved 0.001, this run 0.01"])
    refused(run_bundle(*args, "--seed", "1", check=False), ["seed: saved 0, this run 1", "cohort or split"])
