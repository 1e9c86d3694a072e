"""Synthetic chest-CT cohorts in the MosMedData layout: ``python -m pipeline synth OUT_DIR``.

Writes ``OUT_DIR/studies/CT-k/study_NNNN.nii.gz`` (int16 HU, gzipped NIfTI), lesion masks
``OUT_DIR/masks/study_NNNN_mask.nii.gz`` (uint8) and the manifest ``OUT_DIR/dataset_registry.csv``.
Study numbers run globally across categories. Study ``i`` is drawn from
``SeedSequence(seed, spawn_key=(i,))``, so a cohort is byte-for-byte the same for a given seed
whatever the number of workers. Every file is written to a temporary name and renamed.
``--scanner shifted`` draws a domain-shift cohort: the same patients and lesions in distribution,
other scanner settings (thin slices, RAS, low noise, sharp kernels; see :data:`pipeline.synth.phantom.SCANNERS`).
``--scanner foreign`` draws a cohort unlike the training generator in every respect: 5 mm LPS slices, sharp
low-dose kernels, other patients (anatomy, lung texture) and another mix of lesion patterns and densities.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import io
import json
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.synth.phantom import CATEGORY_BANDS, SCANNERS, SyntheticStudy, check_matrix, generate_study, get_scanner
from pipeline.utils.atomic import atomic_write_bytes
from pipeline.utils.errors import InputError

__all__ = ["SyntheticStudy", "generate_cohort", "generate_study", "write_montage"]

MANIFEST = "dataset_registry.csv"
#: Written first into every cohort folder; its presence lets a later run overwrite the folder.
MARKER = "synth_cohort.json"
MANIFEST_PARAMS = (
    "scanner",
    "kernel",
    "noise_hu",
    "padding_hu",
    "fov_mm",
    "body_a",
    "lung_hu",
    "inspiration",
    "arms_down",
    "breasts",
    "couch",
    "contrast",
    "mimics",
    "target_fraction",
    "patterns",
    "background",
)
FIELDS = (
    "study_id",
    "category",
    "study_file",
    "mask_file",
    "lesion_fraction",
    "shape",
    "spacing",
    "orientation",
    "seed",
    *MANIFEST_PARAMS,
)


def nifti_bytes(array: np.ndarray, affine: np.ndarray) -> bytes:
    """Gzipped NIfTI-1 bytes for ``array`` with ``affine`` (qform/sform code 1, mm units, mtime 0)."""
    img = nib.Nifti1Image(array, affine)
    img.header.set_data_dtype(array.dtype)
    img.header.set_xyzt_units("mm")
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    return gzip.compress(img.to_bytes(), compresslevel=1, mtime=0)


def _study_seed(seed: int, index: int) -> int:
    """The 63-bit integer seed of study ``index`` (1-based) of a cohort with ``seed``."""
    state = np.random.SeedSequence(seed, spawn_key=(index,)).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def _write_study(job: tuple[Path, int, str, int, int, int | None, str]) -> dict[str, str]:
    """Generate and write study ``index``; return its manifest row."""
    out_dir, index, category, seed, matrix, n_slices, scanner = job
    study_seed = _study_seed(seed, index)
    study = generate_study(category, study_seed, matrix=matrix, _n_slices=n_slices, scanner=scanner)
    return _write_files(out_dir, index, category, study.image, study.mask, study.affine, study_seed, study.params)


def _write_files(out_dir: Path, index: int, category: str, image, mask, affine, seed: int, params: dict) -> dict:
    """Write study ``index`` (int16 HU) and its uint8 lesion mask; return its manifest row."""
    study_file = Path("studies") / category / f"study_{index:04d}.nii.gz"
    mask_file = Path("masks") / f"study_{index:04d}_mask.nii.gz"
    atomic_write_bytes(out_dir / study_file, nifti_bytes(image, affine))
    atomic_write_bytes(out_dir / mask_file, nifti_bytes(mask, affine))
    spacing = np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))
    lung_voxels = params.get("lung_voxels")
    row = {
        "study_id": f"study_{index:04d}",
        "category": category,
        "study_file": study_file.as_posix(),
        "mask_file": mask_file.as_posix(),
        "lesion_fraction": f"{mask.sum() / lung_voxels if lung_voxels else 0.0:.4f}",
        "shape": "x".join(map(str, image.shape)),
        "spacing": "x".join(f"{s:.4f}" for s in spacing),
        "orientation": "".join(nib.aff2axcodes(affine)),
        "seed": str(seed),
    }
    row.update({k: str(params.get(k, "")) for k in MANIFEST_PARAMS})
    return row


def _write_manifest(out: Path, rows: list[dict]) -> Path:
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    manifest = out / MANIFEST
    atomic_write_bytes(manifest, text.getvalue().encode())
    return manifest


def _parse_categories(categories: str | list[str] | tuple[str, ...]) -> list[str]:
    names = [c.strip() for c in categories.split(",")] if isinstance(categories, str) else list(categories)
    unknown = [c for c in names if c not in CATEGORY_BANDS]
    if unknown or not names:
        raise ValueError(f"unknown categories {unknown}; choose from {', '.join(CATEGORY_BANDS)}")
    return sorted(set(names), key=list(CATEGORY_BANDS).index)


def _prepare_out_dir(out_dir: Path, settings: dict) -> None:
    """Refuse a non-empty folder that is not a synth cohort; clear our files from an old cohort."""
    if out_dir.exists() and not out_dir.is_dir():
        raise InputError(out_dir, "output path exists and is not a folder")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not (out_dir / MARKER).is_file():
            raise InputError(
                out_dir, f"folder is not empty and is not a synthetic cohort (no {MARKER}); choose an empty folder"
            )
        for pattern in ("studies/CT-*/study_*.nii.gz", "masks/study_*_mask.nii.gz", MANIFEST):
            for f in out_dir.glob(pattern):
                f.unlink()
    atomic_write_bytes(out_dir / MARKER, json.dumps(settings, indent=2).encode())


def generate_cohort(
    out_dir: str | os.PathLike,
    per_category: int = 10,
    categories: str | list[str] | tuple[str, ...] = tuple(CATEGORY_BANDS),
    seed: int = 0,
    matrix: int | None = None,
    workers: int = 1,
    progress: bool = True,
    _n_slices: int | None = None,
    scanner: str = "mosmed",
) -> Path:
    """Write a synthetic cohort in the MosMedData layout and return the manifest path.

    Args:
        out_dir: empty folder, or a previous synthetic cohort (its studies are replaced).
        per_category: studies per category.
        categories: names or a comma-separated string, e.g. ``"CT-0,CT-2,CT-3"``.
        seed: cohort seed; the cohort is a pure function of (seed, categories, per_category, matrix,
            scanner).
        matrix: in-plane size, a multiple of 16 in [32, 1024]; same field of view at every size.
            ``None``: the scanner profile's default (512 for ``"mosmed"``, 384 for ``"shifted"``).
        workers: processes; the output does not depend on it.
        progress: show a tqdm progress bar.
        _n_slices: force the slice count (tests).
        scanner: generator profile, ``"mosmed"`` (MosMedData-like), ``"shifted"`` (other scanner) or
            ``"foreign"`` (other scanner, patients and lesion mix).
    """
    out = Path(out_dir)
    names = _parse_categories(categories)
    profile = get_scanner(scanner)
    matrix = profile.matrix if matrix is None else matrix
    check_matrix(matrix)
    if per_category < 1 or workers < 1:
        raise ValueError(f"per_category and workers must be >= 1, got {per_category} and {workers}")
    settings = {"generator": "pipeline.synth.generate", "per_category": per_category, "categories": names}
    settings.update(seed=seed, matrix=matrix, n_slices=_n_slices, scanner=profile.name)
    _prepare_out_dir(out, settings)
    jobs = [
        (out, ci * per_category + k + 1, name, seed, matrix, _n_slices, profile.name)
        for ci, name in enumerate(names)
        for k in range(per_category)
    ]
    from tqdm.auto import tqdm

    bar = tqdm(total=len(jobs), desc="synth", unit="study", disable=not progress)
    if workers == 1:
        rows = []
        for job in jobs:
            rows.append(_write_study(job))
            bar.update()
    else:
        with ProcessPoolExecutor(max_workers=workers) as pool:
            rows = []
            for row in pool.map(_write_study, jobs):
                rows.append(row)
                bar.update()
    bar.close()
    return _write_manifest(out, rows)


def generate_from_backgrounds(
    out_dir: str | os.PathLike,
    backgrounds: str | os.PathLike,
    per_category: int = 1,
    categories: str | list[str] | tuple[str, ...] = tuple(CATEGORY_BANDS),
    seed: int = 0,
    progress: bool = True,
) -> Path:
    """Write a cohort of lesions painted into real scans (see :mod:`pipeline.synth.backgrounds`); return the
    manifest path.

    Args:
        out_dir: empty folder, or a previous synthetic cohort (its studies are replaced).
        backgrounds: folder of NIfTI files and DICOM series folders without pneumonia.
        per_category: studies per positive category and background; CT-0 is each background once, unmodified.
        categories: names or a comma-separated string.
        seed: cohort seed; positive study ``i`` paints with ``SeedSequence(seed, spawn_key=(i,))``.
        progress: show a tqdm progress bar.

    Raises:
        InputError: no background in ``backgrounds``, or one unreadable or without lungs (named).
    """
    from tqdm.auto import tqdm

    from pipeline.synth.backgrounds import background_studies, find_backgrounds, studies_per_background

    out = Path(out_dir)
    names = _parse_categories(categories)
    if per_category < 1:
        raise ValueError(f"per_category must be >= 1, got {per_category}")
    sources = find_backgrounds(backgrounds)
    settings = {"generator": "pipeline.synth.backgrounds", "per_category": per_category, "categories": names}
    settings.update(seed=seed, backgrounds=[p.name for p in sources])
    _prepare_out_dir(out, settings)
    rows = []
    n = studies_per_background(names, per_category)
    for b, source in enumerate(tqdm(sources, desc="backgrounds", unit="scan", disable=not progress)):
        seeds = [_study_seed(seed, b * n + j + 1) for j in range(n)]
        for j, (category, image, mask, affine, params) in enumerate(
            background_studies(source, names, per_category, seeds)
        ):
            params = {**params, "scanner": "background", "background": source.name}
            rows.append(_write_files(out, b * n + j + 1, category, image, mask, affine, params["seed"], params))
    return _write_manifest(out, rows)


def _pick_slice(image: np.ndarray, mask: np.ndarray) -> int:
    """The axial slice with the most lesion voxels, else the one with the most lung-like voxels."""
    if mask.any():
        return int(np.argmax(mask.sum((0, 1))))
    return int(np.argmax(((image > -950) & (image < -600)).sum((0, 1))))


def write_montage(manifest: str | os.PathLike, png: str | os.PathLike, per_row: int = 5) -> Path:
    """PNG of one study per category: axial slice in lung window (W 1500 / L -600), lesions outlined
    in red, and a coronal reformat below it."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    manifest = Path(manifest)
    with open(manifest, newline="") as f:
        rows = list(csv.DictReader(f))
    first = {}
    for row in rows:
        first.setdefault(row["category"], row)
    picked = list(first.values())[:per_row]
    fig, axes = plt.subplots(2, len(picked), figsize=(3.2 * len(picked), 6.4), squeeze=False)
    for col, row in enumerate(picked):
        image = np.asanyarray(nib.load(manifest.parent / row["study_file"]).dataobj)
        mask = np.asanyarray(nib.load(manifest.parent / row["mask_file"]).dataobj)
        k = _pick_slice(image, mask)
        j = image.shape[1] // 2
        pixel = float(row["spacing"].split("x")[0])
        window = {"cmap": "gray", "vmin": -1350, "vmax": 150, "origin": "lower", "interpolation": "nearest"}
        views = ((image[:, :, k], mask[:, :, k], 1.0), (image[:, j, :], mask[:, j, :], 8.0 / pixel))
        for ax, (img, msk, aspect) in zip(axes[:, col], views, strict=True):
            ax.imshow(img.T, aspect=aspect, **window)
            if msk.any():
                ax.contour(msk.T, levels=[0.5], colors="red", linewidths=0.7, origin="lower")
            ax.set_axis_off()
        axes[0, col].set_title(
            f"{row['category']}  {row['study_id']}\nlesions {float(row['lesion_fraction']):.0%}, slice {k}",
            fontsize=9,
        )
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=90, metadata={"Software": None})
    plt.close(fig)
    png = Path(png)
    atomic_write_bytes(png, buf.getvalue())
    return png


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``python -m pipeline synth``."""
    parser.add_argument("out_dir", help="empty folder (or a previous synthetic cohort) to write into")
    parser.add_argument("--per-category", type=int, default=10, help="studies per category (default 10)")
    parser.add_argument(
        "--categories", default=",".join(CATEGORY_BANDS), help="comma-separated, default CT-0,CT-1,CT-2,CT-3,CT-4"
    )
    parser.add_argument("--seed", type=int, default=0, help="cohort seed (default 0)")
    parser.add_argument("--matrix", type=int, help="in-plane size, multiple of 16 (default 512; 384 for shifted)")
    parser.add_argument(
        "--scanner",
        choices=list(SCANNERS),
        default="mosmed",
        help="generator profile: mosmed (8 mm, LAS; default), shifted (2.5-5 mm, RAS, low noise, sharp kernels) "
        "or foreign (5 mm, LPS, low dose, other patients and lesion mix)",
    )
    parser.add_argument(
        "--backgrounds",
        metavar="DIR",
        help="paint lesions into the real scans without pneumonia in DIR (NIfTI files, DICOM series folders) "
        "instead of phantoms; --per-category counts per background, CT-0 is each background unmodified",
    )
    parser.add_argument("--workers", type=int, default=1, help="processes (default 1)")
    parser.add_argument("--montage", metavar="FILE.png", help="also write a PNG montage, one study per category")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")


def run(args: argparse.Namespace) -> int:
    """Run ``synth``: bad options become :class:`InputError` naming the output folder."""
    try:
        if args.backgrounds:
            if args.matrix or args.scanner != "mosmed":
                raise ValueError("--backgrounds keeps each background's scanner and geometry: drop --matrix, --scanner")
            manifest = generate_from_backgrounds(
                args.out_dir,
                args.backgrounds,
                per_category=args.per_category,
                categories=args.categories,
                seed=args.seed,
                progress=not args.no_progress,
            )
        else:
            manifest = generate_cohort(
                args.out_dir,
                per_category=args.per_category,
                categories=args.categories,
                seed=args.seed,
                matrix=args.matrix,
                workers=args.workers,
                progress=not args.no_progress,
                scanner=args.scanner,
            )
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        raise InputError(args.out_dir, str(err)) from err
    print(f"wrote {manifest}")
    if args.montage:
        print(f"wrote {write_montage(manifest, args.montage)}")
    return 0
