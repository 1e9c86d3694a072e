"""Lesions painted into real scans without pneumonia: ``python -m pipeline synth OUT --backgrounds DIR``.

Every NIfTI file and DICOM series folder directly in ``DIR`` is a background: it is read with MONAI's
``LoadImage`` and turned RAS (``Orientation``), its lungs found by :func:`pipeline.transforms.lung.lung_mask`,
and for each positive category asked for, ``per_category`` studies are made by painting drawn lesions
(:func:`pipeline.synth.lesions.add_lesions`) into those lungs. The unmodified background is written once as a
CT-0 study (empty mask) when CT-0 is asked for, so that a cohort made from normals alone is balanced by those
normals. Studies and masks are written RAS, int16 HU and uint8, in the cohort layout of
:mod:`pipeline.synth.generate`; study ``i`` draws its lesions from ``SeedSequence(seed, spawn_key=(i,))``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np

from pipeline.synth.lesions import CATEGORY_BANDS, add_lesions
from pipeline.utils.errors import InputError

#: Values kept as they are (padding below -1024 HU included), only rounded to int16.
HU_RANGE = (np.iinfo(np.int16).min, np.iinfo(np.int16).max)


def find_backgrounds(folder: str | os.PathLike) -> list[Path]:
    """The NIfTI files and DICOM series folders directly in ``folder``, sorted by name.

    Raises:
        InputError: ``folder`` is missing or holds no background.
    """
    from pipeline.data.imagecheck import is_dicom_dir, is_nifti

    root = Path(folder)
    if not root.is_dir():
        raise InputError(root, "background folder not found" if not root.exists() else "not a folder")
    found = [p for p in sorted(root.iterdir()) if not p.name.startswith(".") and (is_nifti(p) or is_dicom_dir(p))]
    if not found:
        raise InputError(root, "no NIfTI files or DICOM series folders to use as backgrounds")
    return found


def load_background(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """An ``(X, Y, Z)`` float32 HU volume turned RAS and its 4x4 voxel-to-world affine.

    Raises:
        InputError: ``path`` cannot be read as a single 3D volume.
    """
    from monai.transforms import LoadImage, Orientation

    path = Path(path)
    try:
        image = Orientation(axcodes="RAS")(LoadImage(image_only=True, ensure_channel_first=True)(str(path)))
    except Exception as err:
        raise InputError(path, f"cannot be read as a CT volume ({type(err).__name__}: {err})") from err
    if image.ndim != 4 or image.shape[0] != 1 or min(image.shape[1:]) < 2:
        raise InputError(path, f"not a single-channel 3D volume (shape {tuple(image.shape)})")
    return np.asarray(image[0].numpy(), dtype=np.float32), np.asarray(image.affine, dtype=float)


def background_studies(
    path: str | os.PathLike, categories: list[str], per_category: int, seeds: Sequence[int]
) -> Iterator[tuple[str, np.ndarray, np.ndarray, np.ndarray, dict]]:
    """The studies made from one background, one at a time: ``(category, int16 HU, uint8 mask, affine,
    params)``, the unmodified background once for CT-0 and ``per_category`` per positive category;
    ``seeds[j]`` is the seed of the ``j``-th study (unused by CT-0).

    Raises:
        InputError: the background cannot be read or no lung is found in it.
    """
    from pipeline.transforms.lung import lung_mask

    volume, affine = load_background(path)
    spacing = np.sqrt((affine[:3, :3] ** 2).sum(0))
    lung = lung_mask(volume, spacing)
    if not lung.any():
        raise InputError(path, "no lung found: not usable as a background")
    n_lung = int(lung.sum())
    plan = [c for c in categories for _ in range(1 if CATEGORY_BANDS[c][1] == 0.0 else per_category)]
    for category, seed in zip(plan, seeds, strict=True):
        params = {"lung_voxels": n_lung, "seed": seed, "patterns": "none"}
        if CATEGORY_BANDS[category][1] == 0.0:
            yield category, _int16(volume), np.zeros(volume.shape, np.uint8), affine, params
            continue
        hu, mask, lesion = add_lesions(np.random.default_rng(seed), category, volume, lung, spacing)
        yield category, _int16(hu), mask.astype(np.uint8), affine, {**params, **lesion}


def studies_per_background(categories: Sequence[str], per_category: int) -> int:
    """How many studies :func:`background_studies` makes from one background."""
    return sum(1 if CATEGORY_BANDS[c][1] == 0.0 else per_category for c in categories)


def _int16(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(hu), *HU_RANGE).astype(np.int16)
