"""Preprocessing of MosMedData-geometry studies: the bundle's chain against the tutorial's and against decoding.

Studies of 512 x 512 x 33-54 voxels (0.58-1.15 mm pixels, 8 mm slices, LAS), int16 gzipped NIfTI, are generated
with :func:`pipeline.synth.generate.generate_cohort`. On the same files, side by side (round-robin over the
variants, one warm-up round; ``benchmarks.common.interleaved``), this times

- ``decode``: ``nibabel.load`` + ``np.asanyarray(dataobj)`` (int16: the least any chain must do);
- ``decode_fdata``: ``nibabel.load`` + ``get_fdata()`` (float64, how the tutorial reads);
- ``tutorial``: the Keras tutorial's ``process_scan`` (``get_fdata``, clip to the HU window, scale to
  [0, 1], ``ndimage.rotate(90, reshape=False)``, ``ndimage.zoom(order=1)`` to the bundle's spatial size);
- ``bundle``: the bundle's whole deterministic chain, ``deterministic_transforms(**preprocessing_params,
  dtype=cache_dtype)`` with the parameters of ``train.json`` (decode, chest-CT check, orientation, resampling,
  lung mask, crop, window, air outside the lungs, resize, float16); each transform is timed as it runs, which
  gives the per-step breakdown of the same runs;
- ``bundle_1_thread``: the same chain with one torch thread (on a shared 2-core machine, torch's thread
  hand-offs can cost more than they save).

The machine these run on may be shared with other jobs: the load average before and after is recorded, and
only ratios of variants timed in the same rounds are meaningful. Example::

    python -m benchmarks.bench_preprocessing --studies 6 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from scipy import ndimage

from benchmarks.common import THREADS, bundle_config, interleaved, median, ratio, write_results
from pipeline.synth.generate import generate_cohort
from pipeline.transforms.chain import deterministic_transforms

#: Targets: the tutorial's chain at least 5x slower than the bundle's, the bundle's at most 1.5x decoding, the
#: lung mask's own budget.
TARGETS = {"tutorial_over_bundle": 5.0, "bundle_over_decode": 1.5, "lung_mask_seconds": 0.2}


def tutorial_preprocess(path: str, hu_window: tuple[float, float], size: tuple[int, int, int]) -> np.ndarray:
    """The Keras tutorial's ``process_scan``: float32 ``size`` volume in [0, 1] (rotated by 90 degrees in plane)."""
    volume = nib.load(path).get_fdata()
    low, high = hu_window
    volume = ((np.clip(volume, low, high) - low) / (high - low)).astype("float32")
    volume = ndimage.rotate(volume, 90, reshape=False)
    factors = [s / n for s, n in zip(size, volume.shape, strict=True)]
    return ndimage.zoom(volume, factors, order=1)


def decode(path: str) -> np.ndarray:
    """The stored voxels of ``path`` (int16 for MosMedData), nothing else."""
    return np.asanyarray(nib.load(path).dataobj)


def decode_fdata(path: str) -> np.ndarray:
    """The voxels of ``path`` as float64, nibabel's ``get_fdata``."""
    return nib.load(path).get_fdata()


def bundle_chain() -> tuple[list, dict[str, Any]]:
    """The bundle's deterministic chain built from ``train.json``'s parameters, and those parameters."""
    parser = bundle_config()
    params = dict(parser.get_parsed_content("preprocessing_params"))
    dtype = parser.get_parsed_content("cache_dtype")
    return deterministic_transforms(**params, dtype=dtype), {**params, "dtype": str(dtype)}


def step_names(steps: list) -> list[str]:
    """Class names of ``steps``, numbered where one repeats."""
    names = [type(step).__name__ for step in steps]
    return [f"{name}#{names[:i].count(name) + 1}" if names.count(name) > 1 else name for i, name in enumerate(names)]


def timed_chain(steps: list, names: list[str], times: dict[str, list[float]]) -> Callable[[str], Any]:
    """A function running ``steps`` on ``{"image": path}`` and appending each step's seconds to ``times``."""

    def run(path: str) -> Any:
        data: Any = {"image": path}
        for name, step in zip(names, steps, strict=True):
            start = time.perf_counter()
            data = step(data)
            times[name].append(time.perf_counter() - start)
        return data

    return run


def with_threads(n: int, fn: Callable[[], Any]) -> Callable[[], Any]:
    """``fn`` run with ``n`` torch threads (restored afterwards)."""

    def run() -> Any:
        before = torch.get_num_threads()
        torch.set_num_threads(n)
        try:
            return fn()
        finally:
            torch.set_num_threads(before)

    return run


def generate_studies(out_dir: Path, n: int) -> list[str]:
    """``n`` synthetic studies at matrix 512 (half normal, half pneumonia) in ``out_dir``; their paths."""
    per_category = max(1, (n + 1) // 2)
    generate_cohort(out_dir, per_category=per_category, categories=["CT-0", "CT-2"], matrix=512, progress=False)
    return sorted(str(p) for p in out_dir.glob("studies/*/*.nii.gz"))[:n]


def run(paths: list[str], repeats: int) -> dict[str, Any]:
    """Time every variant on ``paths`` side by side; return seconds per study, the per-step breakdown, ratios."""
    parser = bundle_config()
    hu_window = tuple(parser.get_parsed_content("hu_window"))
    size = tuple(parser.get_parsed_content("spatial_size"))
    steps, params = bundle_chain()
    names = step_names(steps)
    step_times: dict[str, list[float]] = {name: [] for name in names}
    unused: dict[str, list[float]] = {name: [] for name in names}
    bundle = timed_chain(steps, names, step_times)
    bundle_1 = timed_chain(steps, names, unused)

    def each(fn: Callable[[str], Any]) -> Callable[[], list]:
        return lambda: [fn(p) for p in paths]

    variants = {
        "decode": each(decode),
        "decode_fdata": each(decode_fdata),
        "tutorial": each(lambda p: tutorial_preprocess(p, hu_window, size)),
        "bundle": each(bundle),
        "bundle_1_thread": with_threads(1, each(bundle_1)),
    }
    load_before = os.getloadavg()
    times = interleaved(variants, repeats)
    load_after = os.getloadavg()
    per_study = {name: round(median(t) / len(paths), 4) for name, t in times.items()}
    warm = len(paths)  # the warm-up round's step times are dropped, as interleaved drops its seconds
    steps_per_study = {name: round(median(t[warm:]), 4) for name, t in step_times.items()}
    out = bundle(paths[0])["image"]
    # the lungs are segmented once a study, in the chest check (which hands its segmentation on), and judged in
    # LungMaskd: the lung mask costs both steps (an upper bound: the check's own tests are in it too)
    lung = steps_per_study.get("LungMaskd")
    if lung is not None:
        lung += steps_per_study.get("CheckChestCTd", 0.0)
    return {
        "studies": len(paths),
        "shapes": [list(nib.load(p).shape) for p in paths],
        "spacings_mm": [[round(float(z), 3) for z in nib.load(p).header.get_zooms()] for p in paths],
        "repeats": repeats,
        "threads": THREADS,
        "bundle_params": params,
        "bundle_output": {"shape": list(out.shape), "dtype": str(out.dtype)},
        "seconds_per_study": per_study,
        "bundle_steps_seconds_per_study": steps_per_study,
        "bundle_steps_sum": round(sum(steps_per_study.values()), 4),
        "lung_mask_share_of_bundle": round(lung / per_study["bundle"], 3) if lung is not None else None,
        "tutorial_over_bundle": ratio(per_study["tutorial"], per_study["bundle"]),
        "tutorial_over_bundle_1_thread": ratio(per_study["tutorial"], per_study["bundle_1_thread"]),
        "bundle_over_decode": ratio(per_study["bundle"], per_study["decode"]),
        "bundle_over_decode_fdata": ratio(per_study["bundle"], per_study["decode_fdata"]),
        "tutorial_over_bundle_met": per_study["tutorial"] / per_study["bundle"] >= TARGETS["tutorial_over_bundle"],
        "bundle_over_decode_met": per_study["bundle"] / per_study["decode"] <= TARGETS["bundle_over_decode"],
        "lung_mask_met": lung is not None and lung <= TARGETS["lung_mask_seconds"],
        "targets": {
            "tutorial_over_bundle": ">= 5",
            "bundle_over_decode": "<= 1.5",
            "lung_mask_seconds_per_study": "<= 0.2",
        },
        "machine": {
            "shared": True,
            "note": "2 CPU cores shared with other jobs; variants interleaved round-robin so load hits each alike",
            "cpus": os.cpu_count(),
            "load_average_1min_before_after": [round(load_before[0], 2), round(load_after[0], 2)],
        },
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the benchmark, write ``results/preprocessing.json``; return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=6, help="studies generated at matrix 512")
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (after one warm-up round)")
    parser.add_argument("--quick", action="store_true", help="2 studies, 2 rounds")
    args = parser.parse_args(argv)
    if args.quick:
        args.studies, args.repeats = 2, 2
    torch.set_num_threads(THREADS)
    with tempfile.TemporaryDirectory(prefix="bench_pre_") as tmp:
        results = run(generate_studies(Path(tmp), args.studies), args.repeats)
    write_results("preprocessing", results)
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
