"""Random rotation of a 128x128x64 volume: the bundle's ``RandRotated`` against the tutorial's ``ndimage.rotate``.

``bundle``: the ``RandRotated`` that ``train#random_transforms`` in ``train.json`` builds for
``--augmentation tutorial`` (parsed by ``ConfigParser``, probability set to 1 so that every call rotates; in-plane,
``range_z``, like the tutorial's; the default ``hospital`` recipe rotates in 3D with ``RandAffined``);
``tutorial``: ``ndimage.rotate(volume, angle, reshape=False)`` with an angle drawn from the tutorial's
``[-20, -10, -5, 5, 10, 20]`` degrees and the clip to [0, 1]. Example::

    python -m benchmarks.bench_augmentation --repeats 20
"""

from __future__ import annotations

import argparse
import json
from typing import Any

import numpy as np
import torch
from monai.data import MetaTensor
from monai.transforms import RandRotated
from scipy import ndimage

from benchmarks.common import THREADS, bundle_config, interleaved, median, ratio, write_results

TUTORIAL_ANGLES = (-20, -10, -5, 5, 10, 20)


def tutorial_rotate(volume: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """The tutorial's augmentation: rotate ``(H, W, D)`` in the first two axes by a random angle, clip to [0, 1]."""
    rotated = ndimage.rotate(volume, float(rng.choice(TUTORIAL_ANGLES)), reshape=False)
    return np.clip(rotated, 0, 1)


def bundle_rotation() -> RandRotated:
    """The ``RandRotated`` that ``train#random_transforms`` builds for ``--augmentation tutorial``, probability 1."""
    parser = bundle_config()
    parser["train#random_transforms#recipe"] = "tutorial"
    rotation = next(t for t in parser.get_parsed_content("train#random_transforms") if isinstance(t, RandRotated))
    rotation.prob = 1.0
    rotation.set_random_state(0)
    return rotation


def run(repeats: int, size: tuple[int, int, int] = (128, 128, 64)) -> dict[str, Any]:
    """Time the rotations side by side on one random volume of ``size``; return seconds per volume and ratios."""
    rng = np.random.default_rng(0)
    volume = rng.random(size, dtype=np.float32)
    image = MetaTensor(torch.from_numpy(volume)[None])
    configured = bundle_rotation()
    times = interleaved(
        {
            "tutorial": lambda: tutorial_rotate(volume, rng),
            "bundle": lambda: configured({"image": image}),
        },
        repeats,
    )
    per_volume = {name: round(median(t), 4) for name, t in times.items()}
    return {
        "volume": list(size),
        "repeats": repeats,
        "seconds_per_volume": per_volume,
        "tutorial_over_bundle": ratio(per_volume["tutorial"], per_volume["bundle"]),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the benchmark, write ``results/augmentation.json``; return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--quick", action="store_true", help="5 rounds")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    results = run(5 if args.quick else args.repeats)
    write_results("augmentation", results)
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
