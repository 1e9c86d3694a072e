"""Cross-validation: the fold summary (``cv-summary``) and, end to end, a fold trained, evaluated and ensembled."""

from __future__ import annotations

import json
import statistics

import pytest
from conftest import TINY, run_bundle

from pipeline.__main__ import main
from pipeline.evaluation.cv import SUMMARY_KEYS, read_metrics, summarize, summarize_values


def fold_metrics(auc, accuracy, ct2_sensitivity=None):
    metrics = {k: 0.5 for k in SUMMARY_KEYS}
    metrics.update(auc=auc, accuracy=accuracy, n=10)
    if ct2_sensitivity is not None:
        metrics["per_category"] = {"CT-2": {"n": 4, "sensitivity": ct2_sensitivity, "auc": None}}
    return metrics


def test_summarize_values_against_statistics():
    values = [0.81, 0.9, None, 0.77]
    s = summarize_values(values)
    assert s["mean"] == pytest.approx(statistics.mean([0.81, 0.9, 0.77]))
    assert s["sd"] == pytest.approx(statistics.stdev([0.81, 0.9, 0.77]))
    assert (s["min"], s["max"], s["n_defined"], s["values"]) == (0.77, 0.9, 3, values)
    assert summarize_values([0.7]) == {"mean": 0.7, "sd": None, "min": 0.7, "max": 0.7, "n_defined": 1, "values": [0.7]}
    assert summarize_values([None, None])["mean"] is None


def test_summarize_folds_and_categories():
    folds = [fold_metrics(0.8, 0.7, 1.0), fold_metrics(0.9, 0.75), fold_metrics(None, 0.8, 0.5)]
    s = summarize(folds, names=["a", "b", "c"])
    assert s["n_folds"] == 3 and s["folds"] == ["a", "b", "c"]
    assert s["metrics"]["auc"]["mean"] == pytest.approx(0.85) and s["metrics"]["auc"]["n_defined"] == 2
    assert s["metrics"]["accuracy"]["sd"] == pytest.approx(statistics.stdev([0.7, 0.75, 0.8]))
    ct2 = s["per_category"]["CT-2"]
    assert ct2["sensitivity"]["mean"] == pytest.approx(0.75) and ct2["sensitivity"]["n_defined"] == 2
    assert ct2["auc"]["mean"] is None and ct2["n"]["values"] == [4, 4]
    with pytest.raises(ValueError, match="no folds"):
        summarize([])


def test_cli_writes_summary(tmp_path, capsys):
    runs = []
    for k, (auc, acc) in enumerate([(0.8, 0.7), (0.9, 0.8)]):
        (tmp_path / f"eval{k}").mkdir()
        (tmp_path / f"eval{k}" / "metrics.json").write_text(json.dumps(fold_metrics(auc, acc)))
        runs.append(str(tmp_path / f"eval{k}"))
    runs[1] += "/metrics.json"  # a folder or the file itself
    out = tmp_path / "cv.json"
    assert main(["cv-summary", *runs, "--out", str(out)]) == 0
    written = json.loads(out.read_text())
    assert written == summarize([read_metrics(r) for r in runs], names=runs)
    assert f"auc: 0.850 ± {statistics.stdev([0.8, 0.9]):.3f} (2 of 2 folds)" in capsys.readouterr().out


@pytest.mark.parametrize(
    "content, problem",
    [(None, "metrics.json not found"), ("{", "not valid JSON"), ('{"accuracy": 1}', "expected an object with 'auc'")],
)
def test_cli_bad_input(tmp_path, capsys, content, problem):
    if content is not None:
        (tmp_path / "metrics.json").write_text(content)
    assert main(["cv-summary", str(tmp_path), "--out", str(tmp_path / "cv.json")]) == 2
    assert problem in capsys.readouterr().err and not (tmp_path / "cv.json").exists()


@pytest.mark.slow
def test_fold_training_evaluation_summary_and_ensemble(trained_bundle, tiny_cohort, tmp_path):
    """Fold 0 of 5 with a Youden threshold; its evaluation on its held-out fold; a 2-model ensemble with TTA."""
    configs, models = trained_bundle / "configs", tmp_path / "models"
    common = ("--bundle_root", str(trained_bundle), "--dataset_dir", str(tiny_cohort), *TINY)
    run_bundle(
        "run", "training", "--config_file", str(configs / "train.json"), *common, "--fold", "0",
        "--threshold_method", "youden", "--ckpt_dir", str(models / "fold0"), "--output_dir", str(tmp_path / "logs"),
    )  # fmt: skip
    stored = json.loads((models / "fold0" / "threshold.json").read_text())
    assert stored["method"] == "youden" and stored["n"] == 5  # 24 studies in 5 stratified folds: 5 in fold 0

    evaluate = f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']"
    for k, ckpt_dir in ((0, models / "fold0"), (1, trained_bundle / "models")):
        run_bundle(
            "run", "--config_file", evaluate, *common, "--fold", str(k), "--ckpt_dir", str(ckpt_dir),
            "--output_dir", str(tmp_path / f"eval{k}"),
        )  # fmt: skip
    metrics = json.loads((tmp_path / "eval0" / "metrics.json").read_text())
    assert metrics["n"] == 5 and metrics["threshold"] == pytest.approx(stored["threshold"])
    assert metrics["sensitivity"] == pytest.approx(stored["sensitivity"])  # same model, same cases, same threshold
    summary = tmp_path / "cv.json"
    assert main(["cv-summary", str(tmp_path / "eval0"), str(tmp_path / "eval1"), "--out", str(summary)]) == 0
    auc = json.loads(summary.read_text())["metrics"]["auc"]
    assert auc["values"] == [metrics["auc"], json.loads((tmp_path / "eval1" / "metrics.json").read_text())["auc"]]

    files = [str(models / "fold0" / "model.pt"), str(trained_bundle / "models" / "model.pt")]
    rows = {}
    for name, ckpt_files in (("m0", files[:1]), ("m1", files[1:]), ("ens", files), ("tta", files)):
        out = tmp_path / "infer" / name
        run_bundle(
            "run", "--config_file", str(configs / "inference.json"), "--bundle_root", str(trained_bundle),
            "--dataset_dir", str(tiny_cohort / "studies" / "CT-0"), "--output_dir", str(out),
            "--spatial_size", "[32,32,16]", "--ckpt_files", repr(ckpt_files), "--tta", str(name == "tta"),
        )  # fmt: skip
        rows[name] = json.loads((out / "predictions.json").read_text())
    probs = {name: [r["prob_pneumonia"] for r in table] for name, table in rows.items()}
    assert probs["ens"] == pytest.approx([(a + b) / 2 for a, b in zip(probs["m0"], probs["m1"])], abs=1e-5)
    assert len(probs["tta"]) == 8 and probs["tta"] != pytest.approx(probs["ens"], abs=1e-6)
    threshold = (stored["threshold"] + 0.5) / 2  # the mean of the members' thresholds (fold0 youden, fixed 0.5)
    for r in rows["ens"] + rows["tta"]:
        assert r["prediction"] == ("pneumonia" if r["prob_pneumonia"] >= threshold else "normal")
