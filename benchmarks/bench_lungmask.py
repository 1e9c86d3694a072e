"""The classical lung mask on MosMedData-geometry studies: seconds per study, and what it covers.

Studies of a 512 matrix at every scanner profile (``"mosmed"``: 0.58-1.15 mm pixels, 8 mm slices; ``"shifted"``:
2.5-5 mm slices; int16 HU) are generated with :func:`pipeline.synth.phantom.generate_study` and turned RAS as
``Orientationd`` would. On each, this times :func:`pipeline.transforms.lung.segment_lungs` (median over
``repeats`` calls after one warm-up, wall and CPU seconds: on a shared machine the wall time includes waiting for
a core, the CPU time does not) and records the share of the true lung (``SyntheticStudy.lung``) and of the lesion
voxels inside the mask, the share of the mask that is not lung, the mask volume over the true lung's and the
lungs' share of the thoracic cavity (the refusal reads it). The target is 0.2 s per study on 2 cores. Example::

    python -m benchmarks.bench_lungmask --studies 5 --repeats 5
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch

from benchmarks.common import THREADS, median, timed, write_results
from pipeline.synth.phantom import SCANNERS, generate_study
from pipeline.transforms.lung import segment_lungs

CATEGORIES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")


def ras_study(category: str, seed: int, matrix: int, scanner: str) -> tuple[np.ndarray, ...]:
    """A synthetic study turned RAS: ``(image, lesion mask, true lung, spacing)``."""
    study = generate_study(category, seed, matrix=matrix, scanner=scanner)
    flip = 1 if study.affine[0, 0] > 0 else -1
    image = np.ascontiguousarray(study.image[::flip])
    lesion = np.ascontiguousarray(study.mask[::flip]).astype(bool)
    lung = np.ascontiguousarray(study.lung[::flip])
    return image, lesion, lung, np.abs(np.diag(study.affine)[:3])


def run(studies: int, repeats: int, matrix: int = 512) -> dict[str, Any]:
    """Time and score the mask on ``studies`` studies per scanner profile (categories in turn, seed = index)."""
    rows = []
    for scanner in SCANNERS:
        for index in range(studies):
            category = CATEGORIES[index % len(CATEGORIES)]
            image, lesion, lung, spacing = ras_study(category, index, matrix, scanner)
            wall, cpu = timed(lambda image=image, spacing=spacing: segment_lungs(image, spacing), repeats)
            found = segment_lungs(image, spacing)
            mask = found.mask
            rows.append(
                {
                    "scanner": scanner,
                    "category": category,
                    "seed": index,
                    "shape": list(image.shape),
                    "spacing_mm": [round(float(s), 3) for s in spacing],
                    "seconds": round(wall, 4),
                    "cpu_seconds": round(cpu, 4),
                    "true_lung_inside": round(float((mask & lung).sum() / lung.sum()), 4),
                    "not_lung_share": round(float((mask & ~lung).sum() / max(mask.sum(), 1)), 4),
                    "lesion_inside": round(float((mask & lesion).sum() / lesion.sum()), 4) if lesion.any() else None,
                    "volume_over_true_lungs": round(float(mask.sum() / lung.sum()), 3),
                    "lungs_over_cavity": round(found.lung_ml / found.cavity_ml, 3) if found.cavity_ml else None,
                }
            )
    covered = [row["true_lung_inside"] for row in rows]
    return {
        "matrix": matrix,
        "repeats": repeats,
        "studies": rows,
        "seconds_per_study": {
            "median": round(median([row["seconds"] for row in rows]), 4),
            "cpu_median": round(median([row["cpu_seconds"] for row in rows]), 4),
            "cpu_max": max(row["cpu_seconds"] for row in rows),
        },
        "true_lung_inside": {"min": min(covered), "median": round(median(covered), 4)},
        "not_lung_share_median": round(median([row["not_lung_share"] for row in rows]), 4),
        "target_seconds": 0.2,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the benchmark, write ``results/lungmask.json``; return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--studies", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--quick", action="store_true", help="2 studies per profile, 3 repeats")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    results = run(2, 3) if args.quick else run(args.studies, args.repeats)
    write_results("lungmask", results)
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
