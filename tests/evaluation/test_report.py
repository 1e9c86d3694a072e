"""The HTML report and ``python -m pipeline report``: content, self-containment, errors, a real browser."""

from __future__ import annotations

import base64
import csv
import io
import json
import re
import shutil
import subprocess
from pathlib import Path

import matplotlib.image
import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.evaluation.metrics import category_agreement, classification_metrics, involvement_agreement
from pipeline.evaluation.report import (
    COLUMNS,
    metrics_from_predictions,
    metrics_from_rows,
    metrics_path,
    read_predictions,
    write_report,
)
from pipeline.utils.errors import InputError

CHROMIUM = shutil.which("chromium")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def write_predictions(path: Path, n: int = 40, seed: int = 0, single_class: bool = False) -> Path:
    """A prediction table like the bundle's: CT-0 normal, CT-2/CT-3 pneumonia, one unlabelled row."""
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        label = 0 if single_class or i % 2 == 0 else 1
        prob = float(np.clip(rng.normal(0.3 + 0.4 * label, 0.2), 0, 1))
        category = "CT-0" if label == 0 else ("CT-2" if i % 4 == 1 else "CT-3")
        rows.append(
            [f"s{i:03d}", f"studies/{category}/s{i:03d}.nii.gz", label, category, 1 - prob, prob, int(prob >= 0.5)]
        )
    rows.append(["u000", "unknown/u000.nii.gz", "", "", 0.4, 0.6, 1])
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([COLUMNS, *rows])
    return path


@pytest.fixture
def predictions(tmp_path):
    return write_predictions(tmp_path / "predictions.csv")


def images_of(page: str) -> list[bytes]:
    """Decoded bytes of every <img> of an HTML page; fails on any source that is not a PNG data URI."""
    sources = re.findall(r"<img [^>]*src='([^']*)'", page)
    assert len(sources) == page.count("<img ")
    prefix = "data:image/png;base64,"
    assert all(s.startswith(prefix) for s in sources)
    return [base64.b64decode(s[len(prefix) :], validate=True) for s in sources]


def test_metrics_from_predictions_uses_labelled_rows(predictions):
    rows = read_predictions(predictions)
    assert len(rows) == 41 and rows[-1]["label"] is None and isinstance(rows[0]["prob_pneumonia"], float)
    m = metrics_from_predictions(predictions, threshold=0.4, n_bootstrap=50)
    expected = classification_metrics(
        [r["label"] for r in rows[:-1]],
        [r["prob_pneumonia"] for r in rows[:-1]],
        threshold=0.4,
        categories=[r["category"] for r in rows[:-1]],
        n_bootstrap=50,
    )
    assert m == {**expected, "n_unlabelled": 1, "n_refused": 0}
    assert "severity" not in m and "status" not in rows[0] and "involvement" not in rows[0]
    assert set(m["per_category"]) == {"CT-0", "CT-2", "CT-3"}


def test_report_is_self_contained(predictions, tmp_path):
    metrics = metrics_from_predictions(predictions, n_bootstrap=100)
    first = write_report(predictions, metrics, tmp_path / "first.html")
    png = images_of(first.read_text())[0]  # any PNG will do as a gallery panel
    out = write_report(
        predictions,
        metrics,
        tmp_path / "out" / "report.html",
        saliency_panels=[("TP s001 <p=0.91>", png), ("FN s003", png)],
        title="Test & report",
        info={"model": "chestnet <v1>", "cohort": "synthetic"},
    )
    page = out.read_text()
    assert not re.search(r"https?://|<script|<link|@import|url\(", page)
    images = images_of(page)
    assert len(images) == 4 + 2  # ROC, confusion, reliability, histograms + the gallery
    for data in images:
        assert data.startswith(PNG_SIGNATURE)
        assert matplotlib.image.imread(io.BytesIO(data)).shape[2] in (3, 4)
    assert "Test &amp; report" in page and "chestnet &lt;v1&gt;" in page and "TP s001 &lt;p=0.91&gt;" in page
    assert f"{metrics['auc']:.3f}" in page and f"[{metrics['auc_ci95'][0]:.3f}, " in page and "DeLong" in page
    for key in ("accuracy", "sensitivity", "specificity", "ppv", "npv"):  # Wilson intervals in the table
        lo, hi = metrics[f"{key}_ci95"]
        assert f"<td class=num>{metrics[key]:.3f}</td><td class=num>[{lo:.3f}, {hi:.3f}]</td>" in page, key
    assert "Saliency" in page and page.count("<tr><td>CT-") == 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no temporary file left
    assert "Saliency" not in first.read_text()


def test_report_with_one_class(tmp_path):
    path = write_predictions(tmp_path / "normals.csv", n=10, single_class=True)
    metrics = metrics_from_predictions(path)
    assert metrics["auc"] is None and metrics["sensitivity"] is None
    page = write_report(path, metrics, tmp_path / "r.html").read_text()
    assert len(images_of(page)) == 4 and "n/a" in page and "no interval: one class only" in page


def test_report_with_one_study_in_a_class(tmp_path):
    rows = [{"label": y, "prob_pneumonia": p, "category": ""} for y, p in ((0, 0.3), (1, 0.2), (1, 0.8), (1, 0.9))]
    metrics = metrics_from_rows(rows, "one normal")
    assert metrics["auc"] == pytest.approx(2 / 3)
    page = write_report(rows, metrics, tmp_path / "r.html").read_text()  # was scipy's bootstrap ValueError
    assert len(images_of(page)) >= 1 and "AUC" in page


def test_degenerate_auc_interval_is_flagged_in_the_report(tmp_path):
    rows = [{"label": y, "prob_pneumonia": p, "category": ""} for y, p in ((0, 0.1), (0, 0.2), (1, 0.8), (1, 0.9))]
    metrics = metrics_from_rows(rows, "perfect")
    assert metrics["auc"] == 1.0 and metrics["auc_ci95"] is None and metrics["auc_ci_degenerate"]
    page = write_report(rows, metrics, tmp_path / "r.html").read_text()
    assert "no interval: perfect separation" in page and "[1.000, 1.000]" not in page


def severity_table(path: Path) -> Path:
    """A table with refused studies and the severity columns of a network with a lesion output."""
    header = [*COLUMNS, "involvement", "involvement_true", "category_pred", "lesion_map", "status", "reason"]
    rows = [
        ["s0", "a.nii", 0, "CT-0", 0.9, 0.1, "normal", 0.0, 0.0, "CT-0", "", "ok", ""],
        ["s1", "b.nii", 1, "CT-1", 0.4, 0.6, "pneumonia", 0.12, 0.10, "CT-1", "maps/s1.nii.gz", "ok", ""],
        ["s2", "c.nii", 1, "CT-2", 0.3, 0.7, "pneumonia", 0.35, 0.41, "CT-2", "", "ok", ""],
        ["s3", "d.nii", 1, "CT-3", 0.2, 0.8, "pneumonia", 0.45, 0.62, "CT-2", "", "ok", ""],
        ["s4", "e.nii", 1, "CT-4", 0.1, 0.9, "pneumonia", 0.81, 0.86, "CT-4", "", "ok", ""],
        ["s5", "f.nii", 0, "CT-0", 0.7, 0.3, "normal", 0.02, "", "CT-0", "", "ok", ""],
        ["s6", "g.nii", 1, "CT-2", "", "", "", "", "", "", "", "refused", "not a chest CT"],
    ]
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([header, *rows])
    return path


def test_severity_metrics_and_refused_studies(tmp_path):
    path = severity_table(tmp_path / "predictions.csv")
    rows = read_predictions(path)
    assert rows[-1]["prob_pneumonia"] is None and rows[-1]["reason"] == "not a chest CT"
    assert rows[5]["involvement_true"] is None and rows[1]["involvement"] == 0.12 and rows[1]["lesion_map"]
    m = metrics_from_predictions(path, n_bootstrap=0)
    assert (m["n"], m["n_refused"], m["n_unlabelled"]) == (6, 1, 0)  # the refused study is in no metric
    scored = rows[:-1]
    assert m["severity"]["involvement"] == involvement_agreement(
        [r["involvement"] for r in scored], [r["involvement_true"] for r in scored]
    )
    assert m["severity"]["involvement"]["n"] == 5 and m["severity"]["involvement"]["n_without_truth"] == 1
    assert m["severity"]["involvement"]["mae_pp"] == pytest.approx(100 * (0.02 + 0.06 + 0.17 + 0.05) / 5)
    category = m["severity"]["category"]
    assert category == category_agreement([r["category_pred"] for r in scored], [r["category"] for r in scored])
    assert category["n"] == 6 and category["confusion"][3] == [0, 0, 1, 0, 0]  # the CT-3 called CT-2
    json.dumps(m, allow_nan=False)

    page = write_report(path, m, tmp_path / "r.html").read_text()
    assert len(images_of(page)) == 5  # the four figures and the involvement scatter
    assert "Severity" in page and "quadratic-weighted κ" in page and f"{category['kappa_quadratic']:.3f}" in page
    assert "studies refused: 1" in page


def test_rows_in_memory_with_severity_columns():
    """The rows PredictionWriter hands over: involvement as floats, an unknown truth as an empty string."""
    rows = [
        {"label": 1, "prob_pneumonia": 0.8, "category": "CT-2", "involvement": 0.3, "involvement_true": 0.35},
        {"label": 0, "prob_pneumonia": 0.2, "category": "CT-0", "involvement": 0.0, "involvement_true": ""},
        {"label": 1, "prob_pneumonia": 0.6, "category": "CT-1", "involvement": 0.1, "involvement_true": 0.2},
    ]
    severity = metrics_from_rows(rows, "memory", n_bootstrap=0)["severity"]
    assert set(severity) == {"involvement"} and severity["involvement"]["n"] == 2
    assert severity["involvement"]["mae_pp"] == pytest.approx(7.5)


def test_cli_writes_report_and_its_metrics(predictions, tmp_path, capsys):
    out = tmp_path / "rep" / "report.html"
    argv = ["report", str(predictions), "--out", str(out), "--threshold", "0.6", "--n-bootstrap", "100"]
    assert main([*argv, "--info", "model=chestnet"]) == 0
    assert metrics_path(out) == out.parent / "report.metrics.json"
    written = json.loads(metrics_path(out).read_text())
    assert written == metrics_from_predictions(predictions, threshold=0.6, n_bootstrap=100)
    assert "AUC" in capsys.readouterr().out and "chestnet" in out.read_text()
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html", "report.metrics.json"]


@pytest.mark.parametrize("name", ["report.html", "metrics.html"])
def test_cli_never_overwrites_an_evaluations_metrics_json(predictions, tmp_path, name):
    """A report rebuilt in an evaluation's folder, at another threshold, leaves that evaluation's metrics.json alone."""
    evaluation = tmp_path / "eval"
    evaluation.mkdir()
    original = json.dumps(metrics_from_predictions(predictions, threshold=0.5, n_bootstrap=0))
    (evaluation / "metrics.json").write_text(original)
    argv = ["report", str(predictions), "--out", str(evaluation / name), "--threshold", "0.7", "--n-bootstrap", "0"]
    assert main(argv) == 0
    assert (evaluation / "metrics.json").read_text() == original
    assert json.loads(metrics_path(evaluation / name).read_text())["threshold"] == 0.7


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        (None, "not found"),
        ("", "empty file"),
        (",".join(COLUMNS) + "\n", "no prediction rows"),
        ("study_id,label,prob_pneumonia\ns1,1,0.5\n", "missing column(s) image, category, prob_normal, prediction"),
        (",".join(COLUMNS) + "\ns1,a.nii,1,CT-2,0.2,0.8,1\ns2,b.nii,0,CT-0,0.9,abc,0\n", "row 2: prob_pneumonia 'abc'"),
        (",".join(COLUMNS) + "\ns1,a.nii,1,CT-2,0.2,1.5,1\n", "row 1: prob_pneumonia '1.5' is not a probability"),
        (",".join(COLUMNS) + "\ns1,a.nii,yes,CT-2,0.2,0.8,1\n", "row 1: label 'yes'"),
        (",".join(COLUMNS) + "\ns1,a.nii,,CT-2,0.2,0.8,1\n", "no row has a label"),
        (",".join(COLUMNS) + ",involvement\ns1,a.nii,1,CT-2,0.2,0.8,1,35\n", "row 1: involvement '35' is not a prob"),
        (",".join(COLUMNS) + ",status\ns1,a.nii,1,CT-2,,,,ok\n", "row 1: prob_normal '' is not a number"),
        (",".join(COLUMNS) + ",status\ns1,a.nii,1,CT-2,,,,refused\n", "no row has a label"),
    ],
)
def test_bad_tables_are_refused(tmp_path, capsys, content, problem):
    path = tmp_path / "predictions.csv"
    if content is not None:
        path.write_text(content)
    with pytest.raises(InputError, match=re.escape(problem)) as err:
        metrics_from_predictions(path)
    assert err.value.path == str(path)
    assert main(["report", str(path), "--out", str(tmp_path / "r.html")]) == 2
    assert f"{path}: " in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def chromium(*args: str, user_dir: Path) -> subprocess.CompletedProcess:
    """Run headless Chromium offline with a throw-away profile."""
    command = [
        CHROMIUM,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--hide-scrollbars",
        f"--user-data-dir={user_dir}",
        *args,
    ]
    return subprocess.run(command, capture_output=True, text=True, timeout=120, check=True)


@pytest.mark.skipif(CHROMIUM is None, reason="chromium not installed (apt-get install -y chromium)")
def test_report_renders_in_a_browser(predictions, tmp_path):
    """Every picture decodes in Chromium (naturalWidth > 0) and the page draws as a non-blank screenshot."""
    report = write_report(predictions, metrics_from_predictions(predictions, n_bootstrap=100), tmp_path / "r.html")
    probe = tmp_path / "probe.html"  # the report itself has no script: add one to a copy
    script = (
        "<script>window.addEventListener('load', () => { const p = document.createElement('pre');"
        " p.id = 'img-check'; p.textContent = JSON.stringify([...document.images].map("
        "i => [i.complete, i.naturalWidth, i.naturalHeight])); document.body.appendChild(p); });</script>"
    )
    probe.write_text(report.read_text().replace("</body>", script + "</body>"))
    dom = chromium(
        "--run-all-compositor-stages-before-draw",
        "--virtual-time-budget=10000",
        "--dump-dom",
        probe.as_uri(),
        user_dir=tmp_path / "profile",
    ).stdout
    found = re.search(r"<pre id=\"img-check\">(.*?)</pre>", dom)
    assert found, "the probe script did not run"
    loaded = json.loads(found.group(1))
    assert len(loaded) == 4
    assert all(complete and width > 100 and height > 100 for complete, width, height in loaded), loaded

    shot = tmp_path / "shot.png"
    chromium("--window-size=1200,2400", f"--screenshot={shot}", report.as_uri(), user_dir=tmp_path / "profile")
    pixels = matplotlib.image.imread(shot)
    assert pixels.shape[:2] == (2400, 1200) and pixels[..., :3].std() > 0.05
