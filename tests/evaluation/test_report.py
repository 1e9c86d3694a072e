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
from pipeline.evaluation.metrics import classification_metrics
from pipeline.evaluation.report import COLUMNS, metrics_from_predictions, read_predictions, write_report
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
    assert m == {**expected, "n_unlabelled": 1}
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
    assert f"{metrics['auc']:.3f}" in page and f"[{metrics['auc_ci95'][0]:.3f}, " in page
    assert "Saliency" in page and page.count("<tr><td>CT-") == 3
    assert sorted(p.name for p in out.parent.iterdir()) == ["report.html"]  # no temporary file left
    assert "Saliency" not in first.read_text()


def test_report_with_one_class(tmp_path):
    path = write_predictions(tmp_path / "normals.csv", n=10, single_class=True)
    metrics = metrics_from_predictions(path)
    assert metrics["auc"] is None and metrics["sensitivity"] is None
    page = write_report(path, metrics, tmp_path / "r.html").read_text()
    assert len(images_of(page)) == 4 and "n/a" in page


def test_cli_writes_report_and_metrics_json(predictions, tmp_path, capsys):
    out = tmp_path / "rep" / "report.html"
    argv = ["report", str(predictions), "--out", str(out), "--threshold", "0.6", "--n-bootstrap", "100"]
    assert main([*argv, "--info", "model=chestnet"]) == 0
    written = json.loads((out.parent / "metrics.json").read_text())
    assert written == metrics_from_predictions(predictions, threshold=0.6, n_bootstrap=100)
    assert "AUC" in capsys.readouterr().out and "chestnet" in out.read_text()


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
