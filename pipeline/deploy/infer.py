"""``python -m pipeline infer STUDY_DIR --bundle BUNDLE_DIR --out OUT``: classify a DICOM study.

Finds the series of the study (:func:`~pipeline.deploy.series.find_series`, tolerant of messy headers), ranks the
usable axial CT series (:func:`~pipeline.deploy.series.rank_axial_ct_series`: original, soft kernel, the model's
slice thickness, no contrast, chest), and takes the first one that passes the chest check
(:class:`~pipeline.transforms.plausibility.CheckChestCT`) on its loaded volume. The bundle's
``configs/inference.json`` runs on that series alone; ``OUT/result.json`` and a DICOM TID 1500 SR
``OUT/report_sr.dcm`` record the prediction and the chosen series, its kernel and slice thickness.

Exit status: 0 with a prediction; 2 (refused) with ``error: <folder>: <reason>`` when no series can be used,
naming each series and why (see :mod:`pipeline.utils.guard`).
"""

from __future__ import annotations

import argparse
import json
import os
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from pipeline.deploy.bundle import bundle_metadata, run_bundle_inference
from pipeline.deploy.series import (
    DEFAULT_THICKNESS_MM,
    MIN_SLICES,
    SeriesInfo,
    find_series,
    rank_axial_ct_series,
)
from pipeline.utils.atomic import atomic_write_text
from pipeline.utils.errors import InputError, find_input_error


def stage_series(series: SeriesInfo, folder: str | os.PathLike) -> Path:
    """Make ``folder`` hold links to exactly the files of ``series`` (a study folder may mix series)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for i, src in enumerate(series.files):
        (folder / f"{i:05d}.dcm").symlink_to(src.resolve())
    return folder


def model_facts(bundle_dir: str | os.PathLike) -> tuple[float | None, float]:
    """The bundle model's decision threshold (None without weights) and the slice spacing (mm) it resamples to."""
    from pipeline.engine import record, threshold

    model = Path(bundle_dir) / "models" / "model.pt"
    if not model.is_file():
        return None, DEFAULT_THICKNESS_MM
    pixdim = record.read(model).get("preprocessing", {}).get("pixdim") or [DEFAULT_THICKNESS_MM] * 3
    return threshold.load([str(model)]), float(pixdim[-1])


def choose_chest_series(candidates: Sequence[SeriesInfo], folder: str | os.PathLike, study_dir: Path) -> SeriesInfo:
    """The first of ``candidates`` whose loaded volume passes the chest check; staged in ``folder``.

    Raises:
        InputError: none passes, naming each series and its problem.
    """
    from monai.transforms import LoadImage

    from pipeline.transforms.plausibility import CheckChestCT

    load, check, reasons = LoadImage(reader="PydicomReader", image_only=True), CheckChestCT(), []
    for series in candidates:
        staged = stage_series(series, folder)
        try:
            check(load(str(staged)), filename=str(series))
            return series
        except Exception as err:
            found = find_input_error(err)
            if found is None:
                raise
            reasons.append(f"{series}: {found.problem}")
    raise InputError(study_dir, "no series is a chest CT: " + "; ".join(reasons))


def infer_study(
    study_dir: str | os.PathLike,
    bundle_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    min_slices: int = MIN_SLICES,
) -> dict[str, Any]:
    """Classify the best chest CT series of ``study_dir``; write ``result.json`` and ``report_sr.dcm`` in ``out``."""
    from pipeline.deploy.sr import result_json, write_structured_report

    out = Path(out_dir)
    name, version = bundle_metadata(bundle_dir)
    threshold, thickness = model_facts(bundle_dir)
    candidates = rank_axial_ct_series(find_series(study_dir), study_dir, min_slices, thickness)
    source = choose_chest_series(candidates, out / "series", Path(study_dir))
    for note in source.notes:
        warnings.warn(f"{study_dir}: {source}: {note}", stacklevel=2)
    prediction = run_bundle_inference(bundle_dir, out / "series", out / "bundle_output")
    summary = result_json(prediction, source, name, version, threshold)
    summary["report"] = str(
        write_structured_report(prediction, source, out / "report_sr.dcm", name, version, threshold)
    )
    atomic_write_text(out / "result.json", json.dumps(summary, indent=2) + "\n")
    return summary


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("study_dir", type=Path, help="DICOM study folder (searched recursively)")
    parser.add_argument("--bundle", type=Path, required=True, help="MONAI bundle folder")
    parser.add_argument("--out", type=Path, required=True, help="output folder for result.json and report_sr.dcm")
    parser.add_argument("--min-slices", type=int, default=MIN_SLICES, help="fewest slices of a usable series")


def run(args: argparse.Namespace) -> int:
    summary = infer_study(args.study_dir, args.bundle, args.out, args.min_slices)
    print(
        f"{summary['prediction']} (P(pneumonia) = {summary['prob_pneumonia']:.3f}) for series "
        f"{summary['series_instance_uid']} (kernel {summary['kernel'] or 'unknown'}, "
        f"{summary['slice_thickness_mm'] or '?'} mm); wrote {args.out / 'result.json'} and {summary['report']}"
    )
    return 0
