"""Preprocessing of MosMedData-geometry studies: the bundle's chain against the tutorial's and against decoding.

Studies of 512x512x~45 voxels, 8 mm slices, int16 gzipped NIfTI are generated with
:func:`pipeline.synth.generate.generate_cohort`. On the same files, side by side, this times

- ``decode``: ``nibabel.load`` + ``np.asanyarray(dataobj)`` (int16, the least any chain must do);
- ``decode_fdata``: ``nibabel.load`` + ``get_fdata()`` (float64, how the tutorial reads);
- ``tutorial``: the Keras tutorial's ``process_scan`` (``get_fdata``, clip to the HU window, scale to
  [0, 1], ``ndimage.rotate(90, reshape=False)``, ``ndimage.zoom(order=1)`` to the bundle's spatial size);
- ``bundle``: ``deterministic_transforms`` of ``train.json``, built by ``monai.bundle.ConfigParser``;
- ``bundle_resize_first``: the same config entries reordered so that the volume is resized before the
  plausibility check and the intensity scaling (load, orientation, resize, check, scale, dtype).

It also records the seconds of each step of the bundle's chain, and how far ``bundle_resize_first``
is from ``bundle`` (largest voxel difference, aerated fraction seen by the check). Example::

    python -m benchmarks.bench_preprocessing --studies 6 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import Compose
from scipy import ndimage

from benchmarks.common import THREADS, bundle_config, interleaved, median, ratio, write_results
from pipeline.synth.generate import generate_cohort
from pipeline.transforms.plausibility import aerated_fraction

#: ``_target_`` suffixes of ``deterministic_transforms`` in the order of the proposed chain.
RESIZE_FIRST = ("LoadImaged", "Orientationd", "Resized", "CheckChestCTd", "ScaleIntensityRanged", "EnsureTyped")


def tutorial_preprocess(path: str, hu_window: tuple[float, float], size: tuple[int, int, int]) -> np.ndarray:
    """The Keras tutorial's ``process_scan``: float32 ``size`` volume in [0, 1] (rotated by 90 degrees in plane)."""
    volume = nib.load(path).get_fdata()
    low, high = hu_window
    volume = ((np.clip(volume, low, high) - low) / (high - low)).astype("float32")
    volume = ndimage.rotate(volume, 90, reshape=False)
    factors = [s / n for s, n in zip(size, volume.shape)]
    return ndimage.zoom(volume, factors, order=1)


def decode(path: str) -> np.ndarray:
    """The stored voxels of ``path`` (int16 for MosMedData), nothing else."""
    return np.asanyarray(nib.load(path).dataobj)


def decode_fdata(path: str) -> np.ndarray:
    """The voxels of ``path`` as float64, nibabel's ``get_fdata``."""
    return nib.load(path).get_fdata()


def config_transforms(order: tuple[str, ...] | None = None, **overrides: Any) -> list:
    """``deterministic_transforms`` of ``train.json``, optionally reordered by ``_target_`` suffix, parsed."""
    parser = bundle_config(**overrides)
    if order is not None:
        entries = parser["deterministic_transforms"]
        by_name = {entry["_target_"].rsplit(".", 1)[-1]: entry for entry in entries}
        if sorted(by_name) != sorted(order):
            raise ValueError(f"deterministic_transforms has {sorted(by_name)}, the reorder names {sorted(order)}")
        parser["deterministic_transforms"] = [by_name[name] for name in order]
    return parser.get_parsed_content("deterministic_transforms")


def step_seconds(steps: list, paths: list[str]) -> dict[str, float]:
    """Median seconds per study of each step of a dictionary transform chain, over ``paths``."""
    times: dict[str, list[float]] = {type(step).__name__: [] for step in steps}
    for path in paths:
        data: Any = {"image": path}
        for step in steps:
            start = time.perf_counter()
            data = step(data)
            times[type(step).__name__].append(time.perf_counter() - start)
    return {name: round(median(values), 4) for name, values in times.items()}


def generate_studies(out_dir: Path, n: int) -> list[str]:
    """``n`` synthetic studies at matrix 512 (half normal, half pneumonia) in ``out_dir``; their paths."""
    generate_cohort(out_dir, per_category=max(1, n // 2), categories=["CT-0", "CT-2"], matrix=512, progress=False)
    return sorted(str(p) for p in out_dir.glob("studies/*/*.nii.gz"))[:n]


def run(paths: list[str], repeats: int) -> dict[str, Any]:
    """Time every variant on ``paths`` side by side; return the results (seconds per study and ratios)."""
    parser = bundle_config()
    hu_window = tuple(parser.get_parsed_content("hu_window"))
    size = tuple(parser.get_parsed_content("spatial_size"))
    bundle = Compose(config_transforms())
    resize_first = Compose(config_transforms(RESIZE_FIRST))

    def each(fn):
        return lambda: [fn(p) for p in paths]

    variants = {
        "decode": each(decode),
        "decode_fdata": each(decode_fdata),
        "tutorial": each(lambda p: tutorial_preprocess(p, hu_window, size)),
        "bundle": each(lambda p: bundle({"image": p})),
        "bundle_resize_first": each(lambda p: resize_first({"image": p})),
    }
    times = interleaved(variants, repeats)
    per_study = {name: round(median(t) / len(paths), 4) for name, t in times.items()}

    resized_hu = Compose(resize_first.transforms[: RESIZE_FIRST.index("Resized") + 1])
    differences, mean_differences, fractions = [], [], []
    for path in paths:
        a = bundle({"image": path})["image"].float()
        b = resize_first({"image": path})["image"].float()
        differences.append(float((a - b).abs().max()))
        mean_differences.append(float((a - b).abs().mean()))
        small = resized_hu({"image": path})["image"][0].numpy()
        fractions.append((aerated_fraction(decode(path).astype(np.float32)), aerated_fraction(small)))
    shapes = [list(nib.load(p).shape) for p in paths]
    return {
        "studies": len(paths),
        "shapes": shapes,
        "repeats": repeats,
        "seconds_per_study": per_study,
        "bundle_steps_seconds_per_study": step_seconds(config_transforms(), paths),
        "resize_first_steps_seconds_per_study": step_seconds(config_transforms(RESIZE_FIRST), paths),
        "tutorial_over_bundle": ratio(per_study["tutorial"], per_study["bundle"]),
        "bundle_over_decode": ratio(per_study["bundle"], per_study["decode"]),
        "bundle_over_decode_fdata": ratio(per_study["bundle"], per_study["decode_fdata"]),
        "tutorial_over_resize_first": ratio(per_study["tutorial"], per_study["bundle_resize_first"]),
        "resize_first_over_decode": ratio(per_study["bundle_resize_first"], per_study["decode"]),
        "resize_first_over_decode_fdata": ratio(per_study["bundle_resize_first"], per_study["decode_fdata"]),
        "resize_first_max_abs_difference": round(max(differences), 4),
        "resize_first_mean_abs_difference": round(float(np.mean(mean_differences)), 5),
        "aerated_fraction_full_vs_resized": [[round(f, 4), round(s, 4)] for f, s in fractions],
        "targets": {"tutorial_over_bundle": ">= 5", "bundle_over_decode": "<= 1.5"},
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
