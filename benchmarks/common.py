"""Shared helpers of the benchmarks: the bundle's config, interleaved timing, results files.

Absolute times on a shared machine move between runs, so every benchmark times the variants it
compares side by side: round-robin over the variants, repeated, and reports medians and ratios.
"""

from __future__ import annotations

import json
import platform
import statistics
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import monai
import numpy as np
import torch
from monai.bundle import ConfigParser

from pipeline.networks.nets import has_lesion_output
from pipeline.utils.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "chest_ct_pneumonia_classification"
TRAIN_JSON = BUNDLE / "configs" / "train.json"
RESULTS = REPO / "benchmarks" / "results"
THREADS = 2


def bundle_config(**overrides: Any) -> ConfigParser:
    """The bundle's ``train.json`` parsed by MONAI, with top-level ids replaced by ``overrides``."""
    parser = ConfigParser()
    parser.read_config(str(TRAIN_JSON))
    for key, value in overrides.items():
        parser[key] = value
    return parser


def interleaved(variants: Mapping[str, Callable[[], object]], repeats: int, warmup: int = 1) -> dict[str, list[float]]:
    """Wall seconds of each variant over ``repeats`` rounds; each round calls every variant once, in turn.

    The first ``warmup`` rounds are run but not recorded. Returns ``{name: [seconds per round]}``.
    """
    times: dict[str, list[float]] = {name: [] for name in variants}
    for round_ in range(warmup + repeats):
        for name, fn in variants.items():
            start = time.perf_counter()
            fn()
            if round_ >= warmup:
                times[name].append(time.perf_counter() - start)
    return times


def timed(fn: Callable[[], object], repeats: int) -> tuple[float, float]:
    """Median wall and CPU seconds of ``repeats`` calls of ``fn`` after one warm-up call (on a shared machine the
    wall time includes waiting for a core, the CPU time does not)."""
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        start, start_cpu = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - start)
        cpu.append(time.process_time() - start_cpu)
    return median(wall), median(cpu)


def median(values: list[float]) -> float:
    """Median of ``values``."""
    return float(statistics.median(values))


def ratio(numerator: float, denominator: float) -> float:
    """``numerator / denominator`` rounded to 2 decimals."""
    return round(numerator / denominator, 2)


def environment() -> dict[str, Any]:
    """Versions, threads and machine of this run."""
    return {
        "torch": torch.__version__,
        "monai": monai.__version__,
        "numpy": np.__version__,
        "threads": torch.get_num_threads(),
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "python": platform.python_version(),
    }


def write_results(name: str, results: dict[str, Any], out_dir: Path = RESULTS) -> Path:
    """Write ``results`` (plus the environment) to ``out_dir/NAME.json`` atomically; return the path."""
    results = {**results, "environment": environment()}
    return atomic_write_text(Path(out_dir) / f"{name}.json", json.dumps(results, indent=2) + "\n")


def multitask_target(name: str, label: torch.Tensor, x: torch.Tensor) -> torch.Tensor | dict[str, torch.Tensor]:
    """The training target of network ``name`` for :class:`~pipeline.engine.multitask.MultiTaskLoss`: the labels,
    with a lesion mask (the brightest voxels of ``x``) for networks that segment."""
    if not has_lesion_output(name):
        return label
    return {"label": label, "mask": (x > 1.0).float(), "has_mask": torch.ones(len(label), device=x.device)}
