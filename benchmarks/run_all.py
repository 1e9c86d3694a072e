"""Run every benchmark, write ``benchmarks/results/*.json`` and the table ``benchmarks/results/summary.md``.

::

    python -m benchmarks.run_all --quick   # about a minute on a quiet 2-core CPU (65 s), more when shared
    python -m benchmarks.run_all           # more studies and repeats, torch.compile, the 30-per-category
                                           # end-to-end run at 128x128x64: an hour or more on 2 cores

Each figure is a ratio of variants timed side by side in the same run (see ``benchmarks.common``).
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

from benchmarks import bench_augmentation, bench_end_to_end, bench_memory, bench_preprocessing, bench_training
from benchmarks.common import RESULTS
from pipeline.utils.atomic import atomic_write_text

BENCHMARKS = {
    "preprocessing": bench_preprocessing,
    "augmentation": bench_augmentation,
    "training": bench_training,
    "memory": bench_memory,
    "end_to_end": bench_end_to_end,
}


def _row(figure: str, measured: Any, target: str = "", met: bool | None = None) -> str:
    verdict = "" if met is None else ("met" if met else "missed")
    return f"| {figure} | {measured} | {target} | {verdict} |"


def summary(results: dict[str, dict[str, Any]], quick: bool) -> str:
    """The Markdown table of the headline ratios of ``results`` (one dict per benchmark)."""
    lines = [
        f"Benchmarks ({'--quick' if quick else 'full'} run; ratios of variants timed side by side in one run).",
        "",
        "| figure | measured | target | |",
        "|---|---|---|---|",
    ]
    pre = results.get("preprocessing")
    if pre:
        s = pre["seconds_per_study"]
        steps = pre.get("bundle_steps_seconds_per_study", {})
        top = sorted(steps.items(), key=lambda item: -item[1])[:4]
        load = pre.get("machine", {}).get("load_average_1min_before_after")
        lines += [
            _row(
                "preprocessing, s/study of MosMedData geometry (512x512x~45, 8 mm): decode / tutorial / bundle chain"
                + (f" (shared machine, load {load[0]}-{load[1]})" if load else ""),
                f"{s['decode']} / {s['tutorial']} / {s['bundle']}",
            ),
            _row(
                "tutorial chain / bundle chain (decode, orientation, resampling, lung mask, crop, window, resize)",
                f"{pre['tutorial_over_bundle']}x",
                ">= 5x",
                pre["tutorial_over_bundle"] >= 5,
            ),
            _row(
                "bundle chain, largest steps (s/study)",
                ", ".join(f"{name} {seconds}" for name, seconds in top)
                + (
                    f"; lung mask {pre['lung_mask_share_of_bundle']:.0%} of the chain"
                    if pre.get("lung_mask_share_of_bundle")
                    else ""
                ),
            ),
            _row(
                "bundle chain / decoding (int16; float64 get_fdata)",
                f"{pre['bundle_over_decode']}x; {pre['bundle_over_decode_fdata']}x",
                "<= 1.5x",
                pre["bundle_over_decode"] <= 1.5,
            ),
        ]
        if "bundle_1_thread" in s:
            lines.append(
                _row(
                    "bundle chain with 1 torch thread, s/study (tutorial / it)",
                    f"{s['bundle_1_thread']} ({pre['tutorial_over_bundle_1_thread']}x)",
                )
            )
    aug = results.get("augmentation")
    if aug:
        s = aug["seconds_per_volume"]
        lines.append(
            _row(
                "rotation 128x128x64, s/volume: tutorial ndimage.rotate / bundle RandRotated",
                f"{s['tutorial']} / {s['bundle']} ({aug['tutorial_over_bundle']}x)",
            )
        )
    tr = results.get("training")
    if tr:
        s, g = tr["train_seconds_per_volume"], tr["achieved_gflops"]
        lines += [
            _row(f"training s/volume ({tr['device']}): seed / chestnet", f"{s['seed']} / {s['chestnet']}"),
            _row("seed / chestnet per volume", f"{tr['seed_over_chestnet']}x", ">= 5x", tr["seed_over_chestnet"] >= 5),
            _row(
                "forward GFLOPs/volume seed / chestnet",
                f"{tr['forward_gflops_per_volume']['seed']} / {tr['forward_gflops_per_volume']['chestnet']}",
            ),
            _row(
                f"achieved GFLOP/s seed / chestnet (matmul peak {tr['matmul_peak_gflops_fp32']})",
                f"{g['seed']} ({tr['fraction_of_peak']['seed']:.0%}) / {g['chestnet']} "
                f"({tr['fraction_of_peak']['chestnet']:.0%})",
            ),
            _row(
                "channels_last_3d speed-up seed / chestnet",
                f"{tr['channels_last_speedup']['seed']}x / {tr['channels_last_speedup']['chestnet']}x",
            ),
            _row("ThreadDataLoader / DataLoader epoch speed-up", f"{tr['threaddataloader_speedup']}x"),
        ]
        if "compile_speedup" in tr:
            lines.append(
                _row(
                    "torch.compile speed-up chestnet (compile s)",
                    f"{tr['compile_speedup']}x ({tr['compile_seconds'].get('chestnet_compiled')} s)",
                )
            )
    mem = results.get("memory")
    if mem:
        measured = mem.get("bench_cache", {}).get("cache_bytes_per_study")
        lines += [
            _row(
                f"cache bytes/study ({mem['cache_dtype']}, {'x'.join(map(str, mem['spatial_size']))})",
                f"{mem['pickled_item_bytes_per_study']:,}"
                + (f" (disk cache, 1,110 studies: {measured:,.0f})" if measured else ""),
            ),
            _row(
                "1,110 studies in a 4 GB cache",
                f"{mem['mosmed_cache_bytes'] / 1e9:.2f} GB ({mem['budget_fraction']:.0%})",
                "<= 4 GB",
                mem["fits_budget"],
            ),
        ]
    e2e = results.get("end_to_end")
    if e2e:
        for name, run in e2e["networks"].items():
            to_target = (
                f"{run['seconds_to_target']} s (epoch {run['epoch_to_target']})"
                if run["seconds_to_target"]
                else "not reached"
            )
            lines.append(
                _row(
                    f"end to end {name} ({e2e['per_category']}/category, matrix {e2e['matrix']}): wall s, epochs, "
                    f"best AUC, to AUC {e2e['target_auc']}",
                    f"{run['wall_seconds']}, {run['n_epochs']}, {run['best_val_auc']:.3f}, {to_target}",
                )
            )
        if "seed_over_chestnet_seconds_per_epoch" in e2e:
            lines.append(_row("seed / chestnet seconds per epoch", f"{e2e['seed_over_chestnet_seconds_per_epoch']}x"))
        if "seed_over_chestnet_time_to_target" in e2e:
            lines.append(_row("seed / chestnet time to target AUC", f"{e2e['seed_over_chestnet_time_to_target']}x"))
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict[str, dict[str, Any]]:
    """Parse ``argv``, run the chosen benchmarks in turn, write the JSON files and ``summary.md``."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes and few repeats (about a minute)")
    parser.add_argument("--only", nargs="+", choices=list(BENCHMARKS), default=list(BENCHMARKS))
    args = parser.parse_args(argv)
    results: dict[str, dict[str, Any]] = {}
    for name in args.only:
        start = time.perf_counter()
        results[name] = BENCHMARKS[name].main(["--quick"] if args.quick else [])
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    for name in BENCHMARKS.keys() - results.keys():  # keep earlier results in the table
        path = RESULTS / f"{name}.json"
        if path.is_file():
            results[name] = json.loads(path.read_text())
    table = summary(results, args.quick)
    atomic_write_text(RESULTS / "summary.md", table)
    print(table)
    return results


if __name__ == "__main__":
    main()
