"""Do real backgrounds help transfer? Leave-one-background-out over real scans without pneumonia.

For each held-out background ``B`` (one of ``--backgrounds``, real chest CTs without pneumonia) and each training
seed ``s``, two arms are trained through the bundle (``python -m monai.bundle run training``, same recipe, seed and
validation split):

- **phantom only**: a small synthetic cohort (``generate_cohort``, its own seed per ``s``), split 70/30 into
  training and validation;
- **+ backgrounds**: the same training and validation studies, plus, in training only, the painted studies of the
  OTHER backgrounds (``python -m pipeline synth --backgrounds``: the unmodified scan as CT-0 and
  ``--per-category`` lesion paintings per positive category). ``B`` never enters training.

Both are scored on what neither trained on, through the checkpoint's recorded chain
(:func:`benchmarks.bench_transfer.score_real`): ``B``'s own painted studies and its unmodified scan (every
P(pneumonia), and the AUC, which with one normal is the share of ``B``'s paintings scored above ``B`` itself), and
the RICORD 30 mm slabs of ``--realct`` (COVID-19 positive against negative patients).
Every fold and seed is reported, whichever arm it favours. Painted studies are written once per background
(seed ``--paint-seed`` + its index) into ``--work`` (outside git: the backgrounds are third-party scans, read in
place through symlinks). Example (the docs' figures; a GPU run can raise every size)::

    python -m benchmarks.bench_backgrounds --realct ../shared/realct --work /tmp/bench_backgrounds
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from monai.metrics import compute_roc_auc
from monai.transforms import Compose

from benchmarks.bench_recipe import train
from benchmarks.bench_transfer import real_scans, score_real
from benchmarks.common import RESULTS, THREADS, write_results
from pipeline.data.cohort import discover, to_items, train_val_split, write_datalist
from pipeline.engine.record import read as read_record
from pipeline.inferers.ensemble import load_model_weights
from pipeline.networks.nets import build_network, has_lesion_output
from pipeline.synth.generate import MANIFEST, generate_cohort, generate_from_backgrounds
from pipeline.transforms.chain import deterministic_transforms, in_channels
from pipeline.utils.atomic import atomic_write_text

#: The shared real normals, relative to ``--realct``.
BACKGROUNDS = ("dicom/Lung_Dx-A0001_chest_5mm", "dicom/Lung_Dx-A0002_thorax_8mm_B40f", "nifti/chest_cta_crop.nii.gz")
ARMS = ("phantom only", "+ backgrounds")
#: The real-scan groups of :func:`benchmarks.bench_transfer.real_scans` that no arm trains on.
RICORD = ("RICORD COVID-19 negative (30 mm slab)", "RICORD COVID-19 positive (30 mm slab)")


def folds(backgrounds: Sequence[str]) -> list[tuple[str, list[str]]]:
    """``(held out, trained on)`` per background: every background is held out once, the others train."""
    return [(b, [o for o in backgrounds if o != b]) for b in backgrounds]


def arm_backgrounds(arm: str, held_out: str, backgrounds: Sequence[str]) -> list[str]:
    """The backgrounds whose painted studies arm ``arm`` trains on when ``held_out`` is held out."""
    if arm not in ARMS:
        raise ValueError(f"unknown arm {arm!r}; expected one of {ARMS}")
    return [] if arm == "phantom only" else dict(folds(backgrounds))[held_out]


def prefixed_items(cohort: Path, prefix: str) -> list[dict]:
    """The labelled datalist items of ``cohort`` with study ids ``prefix-<id>`` (unique across cohorts); every item
    has the same keys, so that any two collate into one batch."""
    return [{**it, "study_id": f"{prefix}-{it['study_id']}"} for it in to_items(discover(cohort))]


def arm_datalist(
    out: Path, phantom: Path, painted: dict[str, Path], trained: Sequence[str], seed: int, val_fraction: float = 0.3
) -> Path:
    """Write the datalist of one arm: the phantom cohort split ``val_fraction`` for validation (seeded, so both
    arms validate on the same studies), the painted studies of the ``trained`` backgrounds added to training."""
    train_items, val_items = train_val_split(prefixed_items(phantom, "phantom"), val_fraction, seed)
    for name in trained:
        train_items += prefixed_items(painted[name], name)
    return write_datalist({"training": train_items, "validation": val_items}, out)


def auc(scores: Sequence[float], labels: Sequence[int]) -> float | None:
    """ROC AUC of ``scores`` against 0/1 ``labels``; ``None`` without both classes."""
    if len(set(labels)) < 2:
        return None
    return round(float(compute_roc_auc(torch.tensor(scores), torch.tensor(labels))), 4)


def own_rule(rows: list[dict[str, Any]], decision: dict[str, Any]) -> list[dict[str, Any]]:
    """The rows of :func:`benchmarks.bench_transfer.score_real` with ``p_pneumonia`` by the model's own rule."""
    return [{**r, "p_pneumonia": r["p_pneumonia"][decision["rule"]]} if "p_pneumonia" in r else r for r in rows]


def score_arm(run: Path, held_out_cohort: Path, realct: Path | None) -> dict[str, Any]:
    """P(pneumonia) of the held-out background's unmodified scan and of its paintings, and of the RICORD slabs, with
    their AUCs, from the model in ``run/models`` through its recorded chain
    (:func:`benchmarks.bench_transfer.score_real`)."""
    model = run / "models" / "model.pt"
    record = read_record(model)
    prep = record["preprocessing"]
    network = build_network(record["network_name"], in_channels=in_channels(prep["outside_lung"]), num_classes=2)
    load_model_weights(network, model).eval()
    lesion = has_lesion_output(record["network_name"])
    chain = Compose(deterministic_transforms(**prep, dtype=torch.float32, lesion=lesion))
    held: dict[str, list] = {}
    for study in discover(held_out_cohort):
        held.setdefault(study.category, []).append(Path(study.image))
    decision = record["decision"]
    rows = own_rule(score_real(network, chain, held, decision)[0], decision)
    scored = [r for r in rows if "p_pneumonia" in r]
    painted: dict[str, list[float]] = {}
    for r in scored:
        if r["group"] != "CT-0":
            painted.setdefault(r["group"], []).append(r["p_pneumonia"])
    result: dict[str, Any] = {"held_out": {
        "auc": auc([r["p_pneumonia"] for r in scored], [int(r["group"] != "CT-0") for r in scored]),
        "p_unmodified": [r["p_pneumonia"] for r in scored if r["group"] == "CT-0"],
        "p_painted": dict(sorted(painted.items())), "n": len(scored), "n_refused": len(rows) - len(scored),
    }}  # fmt: skip
    if realct is not None:
        groups = {g: paths for g, paths in real_scans(realct).items() if g in RICORD}
        rows = own_rule(score_real(network, chain, groups, decision)[0], decision)
        scored = [r for r in rows if "p_pneumonia" in r]
        result["ricord"] = {
            "auc": auc([r["p_pneumonia"] for r in scored], [int(r["group"] == RICORD[1]) for r in scored]),
            "rows": [{k: r[k] for k in ("group", "scan", "p_pneumonia", "refused") if k in r} for r in rows],
        }
    return result


def paint(work: Path, backgrounds: dict[str, Path], per_category: int, seed: int) -> dict[str, Path]:
    """Painted cohort per background (``synth --backgrounds`` on a folder holding one symlink to it), written
    once into ``work/painted`` and reused; background ``i`` paints with seed ``seed + i``."""
    painted = {}
    for i, (name, source) in enumerate(backgrounds.items()):
        links, out = work / "backgrounds" / name, work / "painted" / name
        if not (out / MANIFEST).is_file():
            links.mkdir(parents=True, exist_ok=True)
            if not (links / source.name).is_symlink():
                (links / source.name).symlink_to(source.resolve(), target_is_directory=source.is_dir())
            generate_from_backgrounds(out, links, per_category=per_category, seed=seed + i, progress=False)
        painted[name] = out
    return painted


def summary(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Per arm, the mean held-out AUC, P(unmodified), mean P(painted) and RICORD AUC over every fold and seed;
    the paired difference (+ backgrounds minus phantom only) per fold and seed, and how often it is positive."""

    def figures(run: dict[str, Any]) -> dict[str, float | None]:
        held = run["held_out"]
        painted = [p for ps in held["p_painted"].values() for p in ps]
        out = {"held-out AUC": held["auc"], "held-out P(unmodified)": held["p_unmodified"][0],
               "held-out mean P(painted)": statistics.mean(painted)}  # fmt: skip
        if "ricord" in run:
            out["RICORD AUC"] = run["ricord"]["auc"]
        return out

    per_arm: dict[str, dict[str, list]] = {arm: {} for arm in ARMS}
    for run in runs:
        for key, value in figures(run).items():
            per_arm[run["arm"]].setdefault(key, []).append(value)
    out: dict[str, Any] = {"mean": {}, "paired difference": {}}
    for arm, values in per_arm.items():
        out["mean"][arm] = {k: round(statistics.mean(v), 4) for k, v in values.items() if None not in v}
    pairs = {}
    for run in runs:
        pairs.setdefault((run["held_out"]["background"], run["seed"]), {})[run["arm"]] = figures(run)
    for key in per_arm[ARMS[0]]:
        diffs = [p[ARMS[1]][key] - p[ARMS[0]][key] for p in pairs.values()
                 if len(p) == 2 and None not in (p[ARMS[1]][key], p[ARMS[0]][key])]  # fmt: skip
        if diffs:
            up, down = sum(d > 0 for d in diffs), sum(d < 0 for d in diffs)
            mean = round(statistics.mean(diffs), 4)
            out["paired difference"][key] = {"mean": mean, "n": len(diffs), "positive": up, "negative": down}
    return out


def markdown(results: dict[str, Any]) -> str:
    """Per fold and seed, both arms side by side; then the means and paired differences."""
    head = "| held out | seed | arm | held-out AUC | P(unmodified) | mean P(painted) CT-1 / CT-2 / CT-3 / CT-4"
    lines = [head + " | RICORD AUC |", "|---|---|---|---|---|---|---|"]
    for run in results["runs"]:
        held = run["held_out"]
        painted = " / ".join(f"{statistics.mean(held['p_painted'][c]):.2f}" if c in held["p_painted"] else "-"
                             for c in ("CT-1", "CT-2", "CT-3", "CT-4"))  # fmt: skip
        ricord = run.get("ricord", {}).get("auc")
        lines.append(f"| {held['background']} | {run['seed']} | {run['arm']} | {held['auc']} | "
                     f"{held['p_unmodified'][0]:.3f} | {painted} | {'-' if ricord is None else ricord} |")  # fmt: skip
    s = results["summary"]
    keys = list(s["mean"][ARMS[0]])
    lines += ["", "| arm | " + " | ".join(keys) + " |", "|---" * (len(keys) + 1) + "|"]
    lines += [f"| {arm} (mean) | " + " | ".join(str(s["mean"][arm].get(k, "-")) for k in keys) + " |" for arm in ARMS]
    diff = s["paired difference"]
    lines.append("| + backgrounds minus phantom only (mean; pairs up / down) | " + " | ".join(
        f"{diff[k]['mean']:+.3f} ({diff[k]['positive']} / {diff[k]['negative']} of {diff[k]['n']})" if k in diff
        else "-" for k in keys) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realct", type=Path, default=Path("../shared/realct"), help="real CT folder (read in place)")
    parser.add_argument("--backgrounds", nargs="*", type=Path, default=None,
                        help="background scans (default: the three real normals of --realct)")  # fmt: skip
    parser.add_argument("--work", type=Path, default=Path("/tmp/bench_backgrounds"), help="outside git")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--folds", type=int, default=None, help="hold out only the first N backgrounds")
    parser.add_argument("--per-category", type=int, default=8, help="phantom studies per category (5 categories)")
    parser.add_argument("--paint-per-category", type=int, default=2, help="paintings per positive category")
    parser.add_argument("--paint-seed", type=int, default=1)
    parser.add_argument("--matrix", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--spatial-size", type=int, nargs=3, default=[96, 96, 48])
    parser.add_argument("--name", default="backgrounds", help="results file stem (benchmarks/results/NAME.json, .md)")
    parser.add_argument("--results-dir", type=Path, default=RESULTS)
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    sources = args.backgrounds or [args.realct / b for b in BACKGROUNDS]
    backgrounds = {p.name: p for p in sources}
    painted = paint(args.work, backgrounds, args.paint_per_category, args.paint_seed)
    realct = args.realct if (args.realct / "ricord_slabs").is_dir() else None
    cache_dir = args.work / "cache"
    overrides = ["--spatial_size", json.dumps(args.spatial_size), "--warmup_epochs", "1", "--val_interval", "1"]
    results: dict[str, Any] = {"config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}}
    results["config"]["backgrounds"] = [str(p) for p in sources]
    results["runs"] = []
    for seed in args.seeds:
        phantom = args.work / f"phantom_seed{seed}"
        if not (phantom / MANIFEST).is_file():
            generate_cohort(phantom, per_category=args.per_category, seed=1000 + seed, matrix=args.matrix,
                            workers=1, progress=False)  # fmt: skip
        for held_out, _ in folds(list(backgrounds))[: args.folds]:
            for arm in ARMS:
                run = args.work / f"{held_out}_seed{seed}_{'plus' if arm == ARMS[1] else 'phantom'}"
                trained = arm_backgrounds(arm, held_out, list(backgrounds))
                datalist = arm_datalist(args.work / f"{run.name}.json", phantom, painted, trained, seed)
                t0 = time.perf_counter()
                train(phantom, run, ["--datalist", str(datalist), "--seed", str(seed), *overrides], args.epochs,
                      cache_dir)  # fmt: skip
                scores = score_arm(run, painted[held_out], realct)
                scores["held_out"]["background"] = held_out
                results["runs"].append({"seed": seed, "arm": arm, "trained_backgrounds": trained, **scores,
                                        "seconds": round(time.perf_counter() - t0, 1)})  # fmt: skip
                print(json.dumps(results["runs"][-1]), flush=True)
                save(results, args.name, args.results_dir, start)  # a run cut short keeps what it measured
    print("results:", save(results, args.name, args.results_dir, start))
    return results


def save(results: dict[str, Any], name: str, results_dir: Path, start: float) -> Path:
    """Summarise ``results`` and write ``results_dir/NAME.json`` and ``.md``; return the JSON's path."""
    results["summary"] = summary(results["runs"])
    results["seconds"] = round(time.perf_counter() - start, 1)
    atomic_write_text(results_dir / f"{name}.md", markdown(results))
    return write_results(name, results, results_dir)


if __name__ == "__main__":
    main()
