"""Data-parallel training with torchrun on the CPU (gloo): one node with 2 processes, and 2 "nodes" on 127.0.0.1."""

from __future__ import annotations

import csv
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import BUNDLE, TINY, TINY_CHAIN
from monai.bundle import ConfigParser

from pipeline.engine.distributed import DistContext, shard
from pipeline.engine.handlers import set_data
from pipeline.inferers.ensemble import load_model_weights

WORKER_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _context(rank: int, world_size: int) -> DistContext:
    return DistContext(rank=rank, local_rank=rank, world_size=world_size, backend="gloo", device=torch.device("cpu"))


@pytest.mark.parametrize("n_items, world_size", [(7, 2), (6, 3), (5, 4)])
def test_validation_shards_hold_every_study_exactly_once(n_items, world_size):
    items = [{"image": f"study_{i}.nii.gz"} for i in range(n_items)]
    shards = [shard(items, _context(r, world_size)) for r in range(world_size)]
    seen = sorted(it["image"] for s in shards for it in s)
    assert seen == sorted(it["image"] for it in items)
    assert max(map(len, shards)) - min(map(len, shards)) <= 1


def test_too_few_items_for_the_processes():
    with pytest.raises(ValueError, match="2 items cannot be shared among 3 processes"):
        shard([{}, {}], _context(0, 3))


def test_context_device_ids():
    assert _context(1, 2).device_ids is None
    cuda = DistContext(rank=3, local_rank=1, world_size=4, backend="nccl", device=torch.device("cuda", 1))
    assert cuda.device_ids == [1] and not cuda.is_main and _context(0, 2).is_main


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _copy_bundle(dest: Path) -> Path:
    shutil.copytree(BUNDLE, dest, ignore=shutil.ignore_patterns("eval", "logs", "models", "*.pt", "*.ts", "*.onnx"))
    return dest


def _bundle_args(bundle: Path, cohort: Path) -> list[str]:
    configs = bundle / "configs"
    return [
        "-m", "monai.bundle", "run", "training",
        "--config_file", f"['{configs / 'train.json'}','{configs / 'multi_gpu_train.json'}']",
        "--bundle_root", str(bundle), "--dataset_dir", str(cohort), *TINY,
    ]  # fmt: skip


def _torchrun(*torchrun_args: str) -> subprocess.Popen:
    """Start ``torchrun ARGS`` with single-threaded workers; output captured."""
    cmd = [sys.executable, "-m", "torch.distributed.run", *torchrun_args]
    return subprocess.Popen(cmd, env=WORKER_ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _check(procs: list[subprocess.Popen]) -> str:
    """Wait for the processes; fail with their output if one failed; return rank 0's stdout."""
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs):
        assert p.returncode == 0, f"torchrun failed:\n{out[-3000:]}\n{err[-5000:]}"
    return "".join(out for out, _ in outs)


def _best_val_auc(bundle: Path) -> float:
    rows = list(csv.DictReader(open(bundle / "logs" / "learning_curves.csv")))
    return max(float(r["val_auc"]) for r in rows)


def _evaluate(bundle: Path, cohort: Path) -> float:
    """AUC of ``bundle/models/model.pt`` over the whole validation split, in this one process."""
    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    parser.update({"bundle_root": str(bundle), "dataset_dir": str(cohort), **TINY_CHAIN, "cache_workers": 1})
    parser["device"] = "$torch.device('cpu')"
    parser["validate#handlers"] = []
    network = parser.get_parsed_content("network")
    load_model_weights(network, bundle / "models" / "model.pt")
    evaluator = parser.get_parsed_content("validate#evaluator")
    set_data(evaluator, parser.get_parsed_content("validate#datalist"))
    evaluator.run()
    return float(evaluator.state.metrics["val_auc"])


def _assert_written_once(bundle: Path) -> None:
    """One best checkpoint, one set of TensorBoard events (both from rank 0's process), one state checkpoint."""
    written = sorted(p.name for p in (bundle / "models").iterdir())
    assert written == ["model.json", "model.pt", "split.json", "threshold.json"]
    logs = bundle / "logs"
    events = list(logs.glob("events.out.tfevents.*"))
    assert len(events) == 2, events  # the trainer's and the evaluator's, as with one process
    assert len({e.name.split(".")[4] for e in events}) == 1, f"events from several processes: {events}"
    assert sorted(p.name for p in logs.iterdir() if not p.name.startswith("events")) == [
        "learning_curves.csv", "learning_curves.png", "state_checkpoint_epoch=2.pt",
    ]  # fmt: skip
    rows = list(csv.DictReader(open(logs / "learning_curves.csv")))
    assert [int(r["epoch"]) for r in rows] == [1, 2]


@pytest.mark.slow
def test_two_processes_on_one_node(tmp_path, tiny_cohort, trained_bundle):
    bundle = _copy_bundle(tmp_path / BUNDLE.name)
    out = _check([_torchrun("--nproc_per_node=2", f"--master_port={_free_port()}", *_bundle_args(bundle, tiny_cohort))])
    assert "trained on 2 processes with backend gloo" in out
    _assert_written_once(bundle)
    # the AUC logged by rank 0 is over the predictions of both ranks: it is the AUC of the saved
    # model over the whole validation split, as one process computes it
    ddp_auc = _best_val_auc(bundle)
    assert _evaluate(bundle, tiny_cohort) == pytest.approx(ddp_auc, abs=1e-6)
    # the single-process run of the same configuration, evaluated the same way, agrees with its own log
    assert _evaluate(trained_bundle, tiny_cohort) == pytest.approx(_best_val_auc(trained_bundle), abs=1e-6)


@pytest.mark.slow
def test_two_nodes_on_loopback(tmp_path, tiny_cohort):
    bundle = _copy_bundle(tmp_path / BUNDLE.name)
    endpoint = f"127.0.0.1:{_free_port()}"
    rendezvous = ["--nnodes=2", "--nproc_per_node=1", "--rdzv_backend=c10d", f"--rdzv_endpoint={endpoint}"]
    nodes = [_torchrun(*rendezvous, f"--node_rank={n}", *_bundle_args(bundle, tiny_cohort)) for n in (0, 1)]
    out = _check(nodes)
    assert out.count("trained on 2 processes with backend gloo") == 1
    _assert_written_once(bundle)
    assert _evaluate(bundle, tiny_cohort) == pytest.approx(_best_val_auc(bundle), abs=1e-6)
