"""Nothing lost: a training run killed with SIGKILL resumes where it stopped; a killed evaluation leaves whole files.

Real ``python -m monai.bundle`` processes and real signals.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import BUNDLE, TINY, WITHOUT_MODEL, run_bundle

from pipeline.engine.checkpoint import AtomicDiskSaver
from pipeline.engine.resume import latest_state
from pipeline.utils.errors import InputError


def _copy_bundle(dest: Path) -> Path:
    shutil.copytree(BUNDLE, dest, ignore=WITHOUT_MODEL)
    return dest


def _train_args(bundle: Path, cohort: Path, epochs: int) -> list[str]:
    return [
        "run", "training", "--config_file", str(bundle / "configs" / "train.json"), "--bundle_root", str(bundle),
        "--dataset_dir", str(cohort), *TINY, "--epochs", str(epochs),
    ]  # fmt: skip


def _popen(args: list[str], log: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "monai.bundle", *args],
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
    )


def _kill_when(proc: subprocess.Popen, path: Path, timeout: float = 300) -> None:
    """SIGKILL ``proc`` as soon as ``path`` exists (polled every 5 ms)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, f"the run ended (status {proc.returncode}) before {path.name} appeared"
        assert time.monotonic() < deadline, f"{path.name} did not appear"
        time.sleep(0.005)
    os.kill(proc.pid, signal.SIGKILL)
    assert proc.wait(timeout=60) == -signal.SIGKILL


def _curves(bundle: Path) -> list[dict[str, float]]:
    with open(bundle / "logs" / "learning_curves.csv") as f:
        return [{k: float(v) for k, v in row.items()} for row in csv.DictReader(f)]


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_ends_where_an_uninterrupted_run_ends(tmp_path, tiny_cohort, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # two runs side by side on a small CI machine
    whole, killed = _copy_bundle(tmp_path / "whole"), _copy_bundle(tmp_path / "killed")
    proc = _popen(_train_args(whole, tiny_cohort, 4), tmp_path / "whole.log")  # runs beside the killed run
    victim = _popen(_train_args(killed, tiny_cohort, 4), tmp_path / "killed.log")
    _kill_when(victim, killed / "logs" / "state_checkpoint_epoch=2.pt")
    assert latest_state(killed / "logs").name == "state_checkpoint_epoch=2.pt", "killed during epoch 3"
    assert [r["epoch"] for r in _curves(killed)] == [1, 2]

    resumed = run_bundle(*_train_args(killed, tiny_cohort, 4), "--resume", "true")
    assert "resuming from" in resumed.stdout and "state_checkpoint_epoch=2.pt" in resumed.stdout
    assert proc.wait(timeout=600) == 0, (tmp_path / "whole.log").read_text()[-3000:]

    a, b = _curves(whole), _curves(killed)
    assert [r["epoch"] for r in a] == [r["epoch"] for r in b] == [1, 2, 3, 4]
    for ra, rb in zip(a, b):
        assert ra.keys() == rb.keys()
        for key in ra:
            assert ra[key] == pytest.approx(rb[key], rel=1e-5, abs=1e-6), (ra["epoch"], key)
    for name in ("models/model.pt", "logs/state_checkpoint_epoch=4.pt"):
        wa, wb = (torch.load(p / name, weights_only=True) for p in (whole, killed))
        wa, wb = (w.get("model", w) for w in (wa, wb))
        assert wa.keys() == wb.keys()
        for key in wa:
            torch.testing.assert_close(wa[key], wb[key], rtol=1e-5, atol=1e-6, msg=f"{name}: {key}")


def test_resume_without_a_state_file_is_refused(tmp_path):
    with pytest.raises(InputError, match="nothing to resume"):
        latest_state(tmp_path)
    for epoch in (2, 10, 9):
        (tmp_path / f"state_checkpoint_epoch={epoch}.pt").write_bytes(b"")
    assert latest_state(tmp_path).name == "state_checkpoint_epoch=10.pt"


@pytest.mark.slow
def test_sigkill_during_evaluation_leaves_no_half_written_file(tmp_path, tiny_cohort, untrained_bundle):
    bundle = untrained_bundle
    configs = bundle / "configs"
    out = tmp_path / "eval"
    args = [
        "run", "--config_file", f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']",
        "--bundle_root", str(bundle), "--dataset_dir", str(tiny_cohort), "--output_dir", str(out), *TINY,
    ]  # fmt: skip
    # killed the moment the predictions appear: metrics.json is being computed or written
    _kill_when(_popen(args, tmp_path / "eval.log"), out / "predictions.csv")
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert len(rows) == 24, "predictions.csv is whole"
    if (out / "metrics.json").exists():
        assert json.loads((out / "metrics.json").read_text())["n"] == 24


def test_atomic_disk_saver_removes_the_replaced_checkpoint_only_after_the_new_one_is_whole(tmp_path):
    saver = AtomicDiskSaver(tmp_path)
    saver({"w": torch.ones(2)}, "state_checkpoint_epoch=1.pt")
    saver.remove("state_checkpoint_epoch=1.pt")  # what ignite calls before saving epoch 2
    assert (tmp_path / "state_checkpoint_epoch=1.pt").exists(), "still there until the new one is written"
    saver({"w": torch.zeros(2)}, "state_checkpoint_epoch=2.pt")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["state_checkpoint_epoch=2.pt"]
    fixed = AtomicDiskSaver(tmp_path / "models", filename="model.pt")
    for value in (1.0, 2.0):
        fixed.remove("anything.pt")
        fixed({"w": torch.full((2,), value)}, "net_key_metric=0.5.pt")
        assert torch.load(tmp_path / "models" / "model.pt", weights_only=True)["w"][0] == value
    assert [p.name for p in (tmp_path / "models").iterdir()] == ["model.pt"]
