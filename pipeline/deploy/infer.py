"""``python -m pipeline infer STUDY_DIR --bundle BUNDLE_DIR --out OUT``: classify a DICOM study.

Finds the series of the study, picks the axial CT series (or refuses the study with the reason),
runs the bundle's ``configs/inference.json`` on that series alone, and writes ``OUT/result.json``
and a DICOM Comprehensive SR ``OUT/report_sr.dcm`` that references the source study and series.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

from pipeline.deploy.series import MIN_SLICES, SeriesInfo, find_series, select_axial_ct_series
from pipeline.deploy.sr import result_json, write_structured_report
from pipeline.utils.atomic import atomic_write_text
from pipeline.utils.errors import InputError

PREDICTION_KEYS = ("image", "prob_normal", "prob_pneumonia", "prediction")


def stage_series(series: SeriesInfo, folder: str | os.PathLike) -> Path:
    """Make ``folder`` hold links to exactly the files of ``series`` (a study folder may mix series)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.iterdir():
        old.unlink()
    for i, src in enumerate(series.files):
        (folder / f"{i:05d}.dcm").symlink_to(src.resolve())
    return folder


def bundle_metadata(bundle_dir: str | os.PathLike) -> tuple[str, str]:
    """The bundle's name and version from ``configs/metadata.json``."""
    path = Path(bundle_dir) / "configs" / "metadata.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(path, f"cannot read the bundle metadata: {err}") from err
    return str(meta.get("name", Path(bundle_dir).name)), str(meta.get("version", "unknown"))


def run_bundle_inference(
    bundle_dir: str | os.PathLike, image_path: str | os.PathLike, output_dir: str | os.PathLike
) -> dict[str, Any]:
    """Run the bundle's ``run`` workflow on ``image_path`` and return its prediction record.

    The record comes from ``output_dir/predictions.json`` (a list of
    ``{"image", "prob_normal", "prob_pneumonia", "prediction"}``); the one for ``image_path``
    is returned, or the only one if the bundle names images differently.
    """
    from monai.bundle import run

    configs = Path(bundle_dir) / "configs"
    output_dir = Path(output_dir)
    run(
        run_id="run",
        config_file=str(configs / "inference.json"),
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        bundle_root=str(bundle_dir),
        dataset_dir=str(image_path),
        output_dir=str(output_dir),
    )
    table = output_dir / "predictions.json"
    records = json.loads(table.read_text())
    matches = [r for r in records if Path(str(r.get("image", ""))).resolve() == Path(image_path).resolve()]
    chosen = matches or (records if len(records) == 1 else [])
    if len(chosen) != 1 or any(k not in chosen[0] for k in PREDICTION_KEYS):
        raise RuntimeError(f"{table}: expected one record with {PREDICTION_KEYS} for {image_path}, got {records}")
    return chosen[0]


def infer_study(
    study_dir: str | os.PathLike,
    bundle_dir: str | os.PathLike,
    out_dir: str | os.PathLike,
    min_slices: int = MIN_SLICES,
) -> dict[str, Any]:
    """Classify the axial CT series of ``study_dir``; write ``result.json`` and ``report_sr.dcm`` in ``out_dir``."""
    out = Path(out_dir)
    source = select_axial_ct_series(find_series(study_dir), study_dir, min_slices)
    name, version = bundle_metadata(bundle_dir)
    series_dir = stage_series(source, out / "series")
    prediction = run_bundle_inference(bundle_dir, series_dir, out / "bundle_output")
    summary = result_json(prediction, source, name, version)
    summary["report"] = str(write_structured_report(prediction, source, out / "report_sr.dcm", name, version))
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
        f"{summary['series_instance_uid']}; wrote {args.out / 'result.json'} and {summary['report']}"
    )
    return 0
