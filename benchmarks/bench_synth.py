"""Generating a synthetic study: seconds per 512-matrix study, for every scanner profile and category.

:func:`pipeline.synth.phantom.generate_study` (anatomy, lung texture, lesion patterns with their exact mask,
scanner noise and kernel) is timed on ``studies`` studies per profile and category (seed = index), each the median
of ``repeats`` calls after one warm-up, wall and CPU seconds. The target (issue 22): at most 1.5 s per study at the
512 matrix. Example::

    python -m benchmarks.bench_synth --studies 2 --repeats 2
"""

from __future__ import annotations

import argparse
import json
import os
from typing import Any

import torch

from benchmarks.common import THREADS, median, timed, write_results
from pipeline.synth.phantom import SCANNERS, generate_study

CATEGORIES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
TARGET_SECONDS = 1.5


def run(studies: int, repeats: int, matrix: int = 512) -> dict[str, Any]:
    """Time ``studies`` studies per profile and category at ``matrix``; medians per profile and over all."""
    rows = []
    for scanner in SCANNERS:
        for category in CATEGORIES:
            for seed in range(studies):
                wall, cpu = timed(lambda c=category, s=seed, p=scanner: generate_study(c, s, matrix=matrix, scanner=p),
                                  repeats)  # fmt: skip
                rows.append({"scanner": scanner, "category": category, "seed": seed, "seconds": round(wall, 3),
                             "cpu_seconds": round(cpu, 3)})  # fmt: skip
    per_profile = {
        scanner: {
            "median": median([r["seconds"] for r in rows if r["scanner"] == scanner]),
            "max": max(r["seconds"] for r in rows if r["scanner"] == scanner),
        }
        for scanner in SCANNERS
    }
    overall = median([r["seconds"] for r in rows])
    return {
        "matrix": matrix,
        "repeats": repeats,
        "load_average_1min": round(os.getloadavg()[0], 2),
        "studies": rows,
        "seconds_per_study": {
            "median": overall,
            "cpu_median": median([r["cpu_seconds"] for r in rows]),
            "max": max(r["seconds"] for r in rows),
        },
        "per_profile": per_profile,
        "target_seconds": TARGET_SECONDS,
        "target_met": overall <= TARGET_SECONDS,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the benchmark, write ``results/synth.json``; return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=2, help="studies per profile and category")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls per study (after one warm-up)")
    parser.add_argument("--matrix", type=int, default=512)
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    results = run(args.studies, args.repeats, args.matrix)
    write_results("synth", results)
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
