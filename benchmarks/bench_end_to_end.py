"""End to end: generate a synthetic cohort, train both networks through the bundle, time to a held-out AUC.

For each network, ``python -m monai.bundle run training`` runs in a subprocess on the cohort
(``--network_name seed|chestnet``, its own ``--ckpt_dir`` and ``--output_dir``) until the early stop
or ``--epochs``. While it runs, ``learning_curves.csv`` is polled: the wall time at which each
epoch's ``val_auc`` first appears is that epoch's time (the CSV has no time column). Reported per
network: wall time (process start to exit, caching included), epochs, best validation AUC, and the
seconds and epoch at which validation AUC first reached ``--target-auc``. Example (the defaults)::

    python -m benchmarks.bench_end_to_end --per-category 30 --matrix 128

Without ``--quick`` this takes long on a 2-core CPU (the tutorial network at 128x128x64 needs
seconds per volume): an hour or more.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import BUNDLE, THREADS, TRAIN_JSON, ratio, write_results
from pipeline.synth.generate import generate_cohort

NETWORKS = ("seed", "chestnet")


def read_curves(csv_path: Path) -> list[dict[str, str]]:
    """Rows of ``learning_curves.csv`` (empty while it does not exist)."""
    try:
        with open(csv_path, newline="") as f:
            return list(csv.DictReader(f))
    except FileNotFoundError:
        return []


def train(network: str, cohort: Path, work: Path, overrides: list[str], poll_s: float = 0.5) -> dict[str, Any]:
    """Train ``network`` on ``cohort`` through the bundle; return wall time and per-epoch (seconds, val_auc)."""
    out = work / network
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training",
        "--config_file", str(TRAIN_JSON), "--bundle_root", str(BUNDLE), "--dataset_dir", str(cohort),
        "--network_name", network, "--ckpt_dir", str(out / "models"), "--output_dir", str(out / "logs"),
        *overrides,
    ]  # fmt: skip
    env = dict(os.environ, OMP_NUM_THREADS=str(THREADS))
    curves = out / "logs" / "learning_curves.csv"
    seen: dict[int, tuple[float, float]] = {}
    start = time.perf_counter()
    with open(work / f"{network}.log", "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env)
        while True:
            done = proc.poll() is not None
            now = time.perf_counter() - start
            for row in read_curves(curves):
                if row.get("val_auc") and int(row["epoch"]) not in seen:
                    seen[int(row["epoch"])] = (round(now, 1), float(row["val_auc"]))
            if done:
                break
            time.sleep(poll_s)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        raise RuntimeError(f"training {network} failed ({proc.returncode}); see {work / f'{network}.log'}")
    return {"wall_seconds": round(wall, 1), "epochs": {e: {"seconds": s, "val_auc": a} for e, (s, a) in seen.items()}}


def summarize(run: dict[str, Any], target_auc: float) -> dict[str, Any]:
    """Add the best AUC and the first epoch (and its seconds) at or above ``target_auc`` to ``run``."""
    epochs = run["epochs"]
    reached = [e for e in sorted(epochs) if epochs[e]["val_auc"] >= target_auc]
    first = reached[0] if reached else None
    times = [epochs[e]["seconds"] for e in sorted(epochs)]
    return {
        **run,
        "n_epochs": len(epochs),
        "seconds_per_epoch": round((times[-1] - times[0]) / (len(times) - 1), 1) if len(times) > 1 else None,
        "best_val_auc": max((v["val_auc"] for v in epochs.values()), default=None),
        "epoch_to_target": first,
        "seconds_to_target": epochs[first]["seconds"] if first else None,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the benchmark, write ``results/end_to_end.json``; return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--per-category", type=int, default=30, help="studies of CT-0, CT-2 and CT-3 each")
    parser.add_argument("--matrix", type=int, default=128, help="in-plane size of the generated studies")
    parser.add_argument("--spatial-size", type=int, nargs=3, default=None, help="bundle spatial_size (its default)")
    parser.add_argument("--epochs", type=int, default=None, help="bundle epochs (its default, early stop)")
    parser.add_argument("--patience", type=int, default=None, help="bundle early_stop_patience")
    parser.add_argument("--target-auc", type=float, default=0.95)
    parser.add_argument("--networks", nargs="+", default=list(NETWORKS), choices=NETWORKS)
    parser.add_argument("--work-dir", type=Path, help="keep cohort, logs and checkpoints here (default: temporary)")
    parser.add_argument("--quick", action="store_true", help="6 per category at matrix 64, 64x64x48, 2 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.per_category, args.matrix, args.spatial_size, args.epochs = 6, 64, [64, 64, 48], 2
    overrides = []
    if args.spatial_size:
        overrides += ["--spatial_size", json.dumps(args.spatial_size)]
    if args.epochs:
        overrides += ["--epochs", str(args.epochs)]
    if args.patience:
        overrides += ["--early_stop_patience", str(args.patience)]

    with tempfile.TemporaryDirectory(prefix="bench_e2e_") as tmp:
        work = args.work_dir or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        start = time.perf_counter()
        generate_cohort(
            work / "cohort", per_category=args.per_category, categories=["CT-0", "CT-2", "CT-3"],
            matrix=args.matrix, workers=THREADS, progress=False,
        )  # fmt: skip
        generation = time.perf_counter() - start
        runs = {n: summarize(train(n, work / "cohort", work, overrides), args.target_auc) for n in args.networks}
    results: dict[str, Any] = {
        "per_category": args.per_category,
        "matrix": args.matrix,
        "bundle_overrides": overrides,
        "target_auc": args.target_auc,
        "cohort_generation_seconds": round(generation, 1),
        "networks": runs,
    }
    if set(NETWORKS) <= runs.keys():
        seed, chest = runs["seed"], runs["chestnet"]
        if seed["seconds_per_epoch"] and chest["seconds_per_epoch"]:
            results["seed_over_chestnet_seconds_per_epoch"] = ratio(
                seed["seconds_per_epoch"], chest["seconds_per_epoch"]
            )
        if seed["seconds_to_target"] and chest["seconds_to_target"]:
            results["seed_over_chestnet_time_to_target"] = ratio(seed["seconds_to_target"], chest["seconds_to_target"])
    write_results("end_to_end", results)
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
