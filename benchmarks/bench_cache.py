"""Disk cache on a cohort of MosMedData's size: bytes per study, cache-building and cached epoch times.

Generates (or reuses) a synthetic cohort of 1,110 studies (222 in each of CT-0..CT-4, MosMedData's
total), runs the bundle's deterministic preprocessing through
``pipeline.data.cache.cached_dataset(cache="disk")`` for two epochs, and writes
``benchmarks/results/cache.json``::

    python benchmarks/bench_cache.py --cohort /tmp/mosmed_size --matrix 64 --spatial-size 128 128 64

Epoch 1 loads, preprocesses and writes every study; epoch 2 reads the cache files. The second
epoch is read through the operating system's page cache when the cache fits in RAM.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import monai
import torch
from monai.bundle import ConfigParser
from monai.transforms import Compose, EnsureTyped

from pipeline.data.cache import cached_dataset
from pipeline.synth.generate import generate_cohort
from pipeline.utils.atomic import atomic_write_text

REPO = Path(__file__).resolve().parents[1]
TRAIN_JSON = REPO / "bundles" / "chest_ct_pneumonia_classification" / "configs" / "train.json"
MOSMED_STUDIES = 1110
CATEGORIES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")


def bundle_transforms(spatial_size: list[int]) -> list:
    """The bundle's deterministic MONAI preprocessing (load, RAS, HU window, resize, float16) at ``spatial_size``.

    Input checks from ``pipeline`` are left out: they change nothing that is cached.
    """
    parser = ConfigParser()
    parser.read_config(str(TRAIN_JSON))
    parser["spatial_size"] = spatial_size
    steps = parser.get_parsed_content("deterministic_transforms")
    return [t for t in steps if type(t).__module__.startswith("monai.")]


def epoch_seconds(dataset) -> float:
    """Seconds to fetch every item of ``dataset`` once, in order."""
    start = time.perf_counter()
    for i in range(len(dataset)):
        dataset[i]
    return time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; return (and write) the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cohort", type=Path, required=True, help="cohort folder (generated when missing)")
    parser.add_argument("--matrix", type=int, default=64, help="in-plane size of the generated studies")
    parser.add_argument("--workers", type=int, default=1, help="processes generating the cohort")
    parser.add_argument("--spatial-size", type=int, nargs=3, default=[128, 128, 64], help="bundle spatial_size")
    parser.add_argument("--cache-dir", type=Path, help="disk cache folder (default: a fresh temporary folder)")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "cache.json")
    args = parser.parse_args(argv)
    torch.set_num_threads(1)

    generation_s = None
    if not (args.cohort / "dataset_registry.csv").is_file():
        start = time.perf_counter()
        generate_cohort(
            args.cohort,
            per_category=MOSMED_STUDIES // len(CATEGORIES),
            categories=list(CATEGORIES),
            matrix=args.matrix,
            workers=args.workers,
            progress=False,
        )
        generation_s = time.perf_counter() - start
    items = [{"image": str(p)} for p in sorted(args.cohort.glob("studies/*/*.nii*"))]

    deterministic = bundle_transforms(args.spatial_size)
    transform = Compose([*deterministic, EnsureTyped(keys="image", dtype=torch.float32)])
    with tempfile.TemporaryDirectory(dir=args.cache_dir.parent if args.cache_dir else None) as tmp:
        cache_dir = args.cache_dir or Path(tmp) / "cache"
        dataset = cached_dataset(items, transform, cache="disk", cache_dir=cache_dir, cache_n_trans=len(deterministic))
        first = epoch_seconds(dataset)
        second = epoch_seconds(dataset)
        files = list(Path(cache_dir).glob("*.pt"))
        disk_bytes = sum(f.stat().st_size for f in files)
    input_bytes = sum(Path(it["image"]).stat().st_size for it in items)
    results = {
        "studies": len(items),
        "matrix": args.matrix,
        "cohort_generation_s": generation_s,
        "spatial_size": args.spatial_size,
        "cache_files": len(files),
        "cache_bytes_total": disk_bytes,
        "cache_bytes_per_study": disk_bytes / max(len(files), 1),
        "input_nifti_bytes_per_study": input_bytes / len(items),
        "epoch1_build_s": first,
        "epoch2_cached_s": second,
        "epoch1_ms_per_study": 1000 * first / len(items),
        "epoch2_ms_per_study": 1000 * second / len(items),
        "threads": 1,
        "monai": monai.__version__,
        "torch": torch.__version__,
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
    }
    atomic_write_text(args.out, json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return results


if __name__ == "__main__":
    main()
