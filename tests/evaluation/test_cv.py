"""Cross-validation: the fold summary (``cv-summary``) and, end to end, a fold trained, evaluated and ensembled."""

from __future__ import annotations

import json
import statistics

import pytest
from conftest import TINY, run_bundle

from pipeline.__main__ import main
from pipeline.evaluation.cv import SUMMARY_KEYS, read_metrics, summarize, summarize_values
from pipeline.synth.generate import generate_cohort


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
def test_nested_folds_summary_and_ensemble(trained_bundle, tiny_cohort, tmp_path):
    """Folds 0 and 1 of 5, nested (each outer fold tests, an inner split validates and picks a Youden threshold);
    each evaluated on its own outer fold; their summary; the 2-fold ensemble with TTA, its threshold chosen on
    its predictions for a cohort neither fold trained on."""
    configs, models = trained_bundle / "configs", tmp_path / "models"
    bundle = ("--bundle_root", str(trained_bundle), *TINY)
    common = (*bundle, "--dataset_dir", str(tiny_cohort))
    evaluate = f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']"
    for k in (0, 1):
        run_bundle(
            "run", "training", "--config_file", str(configs / "train.json"), *common, "--fold", str(k),
            "--threshold_method", "youden", "--ckpt_dir", str(models / f"fold{k}"),
            "--output_dir", str(tmp_path / f"logs{k}"),
        )  # fmt: skip
        split = json.loads((models / f"fold{k}" / "split.json").read_text())
        assert len(split["test"]) == 5 and len(split["validation"]) == 6  # 24 studies: fold of 5, 30 % of 19
        stored = json.loads((models / f"fold{k}" / "threshold.json").read_text())
        assert stored["method"] == "youden" and stored["n"] == 6  # chosen on the inner validation split
        run_bundle(
            "run", "--config_file", evaluate, *common, "--fold", str(k), "--ckpt_dir", str(models / f"fold{k}"),
            "--output_dir", str(tmp_path / f"eval{k}"),
        )  # fmt: skip
        metrics = json.loads((tmp_path / f"eval{k}" / "metrics.json").read_text())
        assert metrics["n"] == 5 and metrics["threshold"] == pytest.approx(stored["threshold"])
        scored = {r["study_id"] for r in json.loads((tmp_path / f"eval{k}" / "predictions.json").read_text())}
        assert scored == set(split["test"])  # the outer fold, never the studies it trained or validated on
    summary = tmp_path / "cv.json"
    assert main(["cv-summary", str(tmp_path / "eval0"), str(tmp_path / "eval1"), "--out", str(summary)]) == 0
    auc = json.loads(summary.read_text())["metrics"]["auc"]
    assert auc["values"] == [json.loads((tmp_path / f"eval{k}" / "metrics.json").read_text())["auc"] for k in (0, 1)]

    files = [str(models / "fold0" / "model.pt"), str(models / "fold1" / "model.pt")]
    unseen = tmp_path / "unseen"  # the ensemble's validation: a cohort neither member saw
    generate_cohort(unseen, per_category=3, categories=["CT-0", "CT-2", "CT-3"], seed=8, matrix=64, progress=False)
    proc = run_bundle(
        "run", "--config_file", evaluate, *bundle, "--dataset_dir", str(unseen), "--ckpt_files", repr(files),
        "--output_dir", str(tmp_path / "ensemble_val"), check=False,
    )  # fmt: skip
    assert proc.returncode == 2 and "ensemble-threshold" in proc.stderr  # members chose theirs: not averaged
    run_bundle(
        "run", "--config_file", evaluate, *bundle, "--dataset_dir", str(unseen), "--ckpt_files", repr(files),
        "--threshold", "0.5", "--output_dir", str(tmp_path / "ensemble_val"),
    )  # fmt: skip
    val = tmp_path / "ensemble_val" / "predictions.csv"
    assert main(["ensemble-threshold", str(val), "--ckpt-files", *files, "--method", "youden"]) == 0
    chosen = json.loads((models / "threshold_ensemble.json").read_text())
    assert chosen["chosen_on"] == str(val) and len(chosen["members"]) == 2
    rows = {}
    for name, ckpt_files in (("m0", files[:1]), ("m1", files[1:]), ("ens", files), ("tta", files)):
        out = tmp_path / "infer" / name
        run_bundle(
            "run", "--config_file", str(configs / "inference.json"), "--bundle_root", str(trained_bundle),
            "--dataset_dir", str(tiny_cohort / "studies" / "CT-0"), "--output_dir", str(out),
            "--spatial_size", "[32,32,16]", "--ckpt_files", repr(ckpt_files), "--tta", str(name == "tta"),
        )  # fmt: skip
        rows[name] = json.loads((out / "predictions.json").read_text())
    # the ensemble averages its members' outputs (the heads' P here), then applies the first member's decision
    probs = {name: [r["prob_classifier"] for r in table] for name, table in rows.items()}
    assert probs["ens"] == pytest.approx([(a + b) / 2 for a, b in zip(probs["m0"], probs["m1"])], abs=1e-5)
    assert len(probs["tta"]) == 8 and probs["tta"] != pytest.approx(probs["ens"], abs=1e-6)
    threshold = chosen["threshold"]  # the ensemble's own, not the mean of the members' thresholds
    for r in rows["ens"] + rows["tta"]:
        assert r["prediction"] == ("pneumonia" if r["prob_pneumonia"] >= threshold else "normal")
        assert 0.0 <= r["involvement"] <= 1.0 and r["category_pred"] in ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
