"""Cache memory: bytes per cached study, and whether MosMedData's 1,110 studies fit a 4 GB cache budget.

Runs the bundle's ``deterministic_transforms`` (parsed from ``train.json``) through MONAI's
``CacheDataset`` over a few generated studies and measures what one cached item holds: the image
tensor (``cache_dtype`` at ``spatial_size``) and the item as pickled (tensor, metadata, label), an
upper bound of its in-memory size. The 1,110-study figure is that arithmetic; when
``results/cache.json`` (``benchmarks/bench_cache.py``, a generated cohort of that size) exists its
measured bytes per study are reported beside it. Example::

    python -m benchmarks.bench_memory --studies 8
"""

from __future__ import annotations

import argparse
import json
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
from monai.data import CacheDataset

from benchmarks.common import RESULTS, THREADS, bundle_config, write_results
from pipeline.synth.generate import generate_cohort

MOSMED_STUDIES = 1110
BUDGET_BYTES = 4 * 10**9


def run(studies: int, matrix: int = 128) -> dict[str, Any]:
    """Cache ``studies`` generated studies as the bundle's training cache does (``train#preprocessing`` up to its first
    random transform); return bytes per study and the budget arithmetic."""
    parser = bundle_config()
    transform = parser.get_parsed_content("train#preprocessing")
    with tempfile.TemporaryDirectory(prefix="bench_mem_") as tmp:
        generate_cohort(tmp, per_category=studies, categories=["CT-0"], matrix=matrix, progress=False)
        items = [{"image": str(p), "label": 0} for p in sorted(Path(tmp).glob("studies/*/*.nii.gz"))]
        cached = CacheDataset(items, transform, cache_rate=1.0, num_workers=1, progress=False)._cache
    tensor_bytes = [item["image"].element_size() * item["image"].numel() for item in cached]
    pickled_bytes = [len(pickle.dumps(item)) for item in cached]
    per_study = max(pickled_bytes)
    results: dict[str, Any] = {
        "studies": len(cached),
        "spatial_size": list(cached[0]["image"].shape[1:]),
        "cache_dtype": str(cached[0]["image"].dtype),
        "tensor_bytes_per_study": max(tensor_bytes),
        "pickled_item_bytes_per_study": per_study,
        "mosmed_studies": MOSMED_STUDIES,
        "mosmed_cache_bytes": MOSMED_STUDIES * per_study,
        "budget_bytes": BUDGET_BYTES,
        "fits_budget": MOSMED_STUDIES * per_study <= BUDGET_BYTES,
        "budget_fraction": round(MOSMED_STUDIES * per_study / BUDGET_BYTES, 3),
        "float32_cache_bytes": MOSMED_STUDIES * 2 * max(tensor_bytes),
    }
    measured = RESULTS / "cache.json"
    if measured.is_file():
        results["bench_cache"] = json.loads(measured.read_text())
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the benchmark, write ``results/memory.json``; return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=8)
    parser.add_argument("--quick", action="store_true", help="2 studies")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    results = run(2 if args.quick else args.studies)
    write_results("memory", results)
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
