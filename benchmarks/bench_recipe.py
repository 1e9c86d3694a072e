"""Which recipe transfers: train variants of the bundle on one cohort, score each on data it never saw.

Each variant is ``python -m monai.bundle run training`` on the same cohort and split with some overrides
(``--outside_lung``, ``--augmentation``, ...), then :mod:`benchmarks.bench_transfer`'s tiers: a freshly seeded
cohort, a shifted-scanner cohort (AUC with its interval, sensitivity per category) and the real scans in
``--realct DIR`` (P(pneumonia) of the normals and of the RICORD slabs). Nothing here selects on those
figures: the variants are fixed in advance and every one is reported. Example::

    python -m benchmarks.bench_recipe --cohort data/synthetic --epochs 20
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from benchmarks.bench_transfer import cohort_metrics, evaluate_cohort, real_scans, rule_row, score_real
from benchmarks.common import BUNDLE, RESULTS, THREADS, TRAIN_JSON, write_results
from pipeline.engine.record import read as read_record
from pipeline.inferers.ensemble import load_model_weights
from pipeline.networks.nets import build_network, has_lesion_output
from pipeline.synth.generate import generate_cohort
from pipeline.transforms.chain import deterministic_transforms, in_channels
from pipeline.utils.atomic import atomic_write_text

#: The real-scan groups of :func:`benchmarks.bench_transfer.real_scans`, in table order.
REAL_GROUPS = ("real, no pneumonia", "RICORD COVID-19 negative (30 mm slab)", "RICORD COVID-19 positive (30 mm slab)")
#: name -> training overrides. ``default`` is the bundle as shipped.
VARIANTS: dict[str, list[str]] = {
    "default (air outside the lungs, hospital augmentation)": [],
    "mask as a second channel": ["--outside_lung", "channel"],
    "tutorial augmentation (in-plane rotation only)": ["--augmentation", "tutorial"],
    "whole volume (no lung crop), hospital augmentation": ["--outside_lung", "keep"],
}


def train(cohort: Path, out: Path, overrides: list[str], epochs: int, cache_dir: Path) -> None:
    """Train one variant into ``out/models`` and ``out/logs`` (skipped when its model exists)."""
    if (out / "models" / "model.pt").is_file():
        return
    cmd = [
        sys.executable, "-m", "monai.bundle", "run", "training", "--config_file", str(TRAIN_JSON),
        "--bundle_root", str(BUNDLE), "--dataset_dir", str(cohort), "--epochs", str(epochs),
        "--ckpt_dir", str(out / "models"), "--output_dir", str(out / "logs"),
        "--cache", "disk", "--cache_dir", str(cache_dir), *overrides,
    ]  # fmt: skip
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "train.log", "w") as log:
        proc = subprocess.run(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=dict(os.environ, OMP_NUM_THREADS=str(THREADS))
        )
    if proc.returncode != 0:
        raise RuntimeError(f"training failed; see {out / 'train.log'}")


def score(variant_dir: Path, cohorts: dict[str, Path], realct: Path | None = None) -> dict[str, Any]:
    """The transfer tiers for the model in ``variant_dir/models``."""
    from monai.transforms import Compose

    model = variant_dir / "models" / "model.pt"
    record = read_record(model)
    prep = record["preprocessing"]
    decision = record["decision"]
    result: dict[str, Any] = {}
    for name, cohort in cohorts.items():
        rows = evaluate_cohort(cohort, model.parent, variant_dir / f"eval_{cohort.name}", record)
        result[name] = cohort_metrics(decision, rows)
    network = build_network(record["network_name"], in_channels=in_channels(prep["outside_lung"]), num_classes=2)
    load_model_weights(network, model).eval()
    if realct is not None and realct.is_dir():
        import torch

        lesion = has_lesion_output(record["network_name"])
        chain = Compose(deterministic_transforms(**prep, dtype=torch.float32, lesion=lesion))
        result["real"], _ = score_real(network, chain, real_scans(realct), decision)
    return result


def markdown(results: dict[str, Any]) -> str:
    """A table: per variant, both synthetic cohorts by decision rule, and each real group's P(pneumonia) by rule."""
    lines = [
        "| variant | cohort | rule | n | AUC [95 % CI, DeLong] | threshold (validation) | sensitivity | specificity "
        "| sensitivity CT-1 / CT-2 / CT-3 / CT-4 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    real_lines = ["", "| variant | " + " | ".join(REAL_GROUPS) + " |", "|---" * (len(REAL_GROUPS) + 1) + "|"]
    for name, v in results["variants"].items():
        for cohort in ("fresh seed", "shifted scanner"):
            lines += [rule_row(f"{name} | {cohort} | {rule}", m) for rule, m in v[cohort]["rules"].items()]
        if isinstance(v.get("real"), list):
            cells = []
            for group in REAL_GROUPS:
                probs = [p for r in v["real"] if r["group"] == group for p in r.get("p_pneumonia", {}).values()]
                cells.append(", ".join(f"{p:.2f}" for p in probs))
            real_lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines + real_lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, default=Path("data/synthetic"))
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--work", type=Path, default=Path("runs/recipe"))
    parser.add_argument("--per-category", type=int, default=12)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--only", nargs="*", default=None, help="variant names to run (default: all)")
    parser.add_argument("--realct", type=Path, default=None, help="the real CT folder (third-party; read in place)")
    args = parser.parse_args()
    cohorts = {"fresh seed": args.work / "fresh_seed", "shifted scanner": args.work / "shifted_scanner"}
    for cohort, (seed, scanner) in zip(cohorts.values(), ((101, "mosmed"), (202, "shifted")), strict=True):
        if not (cohort / "dataset_registry.csv").is_file():
            generate_cohort(cohort, per_category=args.per_category, seed=seed, matrix=args.matrix, scanner=scanner,
                            workers=2, progress=False)  # fmt: skip
    results: dict[str, Any] = {"cohort": str(args.cohort), "epochs": args.epochs, "variants": {}}
    previous = args.work / "recipe.json"
    if previous.is_file():
        results["variants"] = json.loads(previous.read_text())["variants"]
    for i, (name, overrides) in enumerate(VARIANTS.items()):
        if args.only and name not in args.only:
            continue
        out = args.work / f"variant{i}"
        train(args.cohort, out, overrides, args.epochs, args.work / "cache")
        results["variants"][name] = {"overrides": overrides, **score(out, cohorts, args.realct)}
        print(name, json.dumps(results["variants"][name]), flush=True)
        atomic_write_text(previous, json.dumps(results, indent=2))
    print("results:", write_results("recipe", results))
    atomic_write_text(RESULTS / "recipe.md", markdown(results))


if __name__ == "__main__":
    main()
