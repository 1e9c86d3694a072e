"""Run the bundle's own inference on one image and read back its prediction record.

Used by ``python -m pipeline infer`` and by the MONAI Label app, so that both answer exactly what the bundle
writes (:func:`result_params` and :func:`returned_label` shape a record for MONAI Label). Imports neither
highdicom nor pydicom (MONAI Label runs in its own environment).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from pipeline.utils.errors import InputError
from pipeline.utils.guard import EXIT_BAD_INPUT, EXIT_PARTIAL

PREDICTION_KEYS = ("image", "prob_normal", "prob_pneumonia", "prediction")
#: Keys a model may add to its prediction record (models with a lesion output); absent for older models.
OPTIONAL_KEYS = ("involvement", "category_pred", "lesion_map")


def bundle_metadata(bundle_dir: str | os.PathLike) -> tuple[str, str]:
    """The bundle's name and version from ``configs/metadata.json``."""
    path = Path(bundle_dir) / "configs" / "metadata.json"
    try:
        meta = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as err:
        raise InputError(path, f"cannot read the bundle metadata: {err}") from err
    return str(meta.get("name", Path(bundle_dir).name)), str(meta.get("version", "unknown"))


def _same(a: Any, b: str | os.PathLike) -> bool:
    return Path(str(a or "")).resolve() == Path(b).resolve()


def pick_record(records: list[dict[str, Any]], image_path: str | os.PathLike, table: Path) -> dict[str, Any]:
    """The record of ``image_path`` in a bundle's ``predictions.json`` (or its only record).

    Raises:
        InputError: the bundle refused the image (status ``refused``), with its reason.
        RuntimeError: no such record, or one without the prediction keys.
    """
    matches = [r for r in records if _same(r.get("image"), image_path)]
    chosen = matches or (records if len(records) == 1 else [])
    if len(chosen) == 1 and chosen[0].get("status") == "refused":
        raise InputError(image_path, str(chosen[0].get("reason", "refused by the bundle")))
    if len(chosen) != 1 or any(k not in chosen[0] for k in PREDICTION_KEYS):
        raise RuntimeError(f"{table}: expected one record with {PREDICTION_KEYS} for {image_path}, got {records}")
    return chosen[0]


def run_bundle_inference(
    bundle_dir: str | os.PathLike, image_path: str | os.PathLike, output_dir: str | os.PathLike
) -> dict[str, Any]:
    """Run the bundle's ``run`` workflow on ``image_path`` and return its prediction record.

    The record comes from ``output_dir/predictions.json`` (a list of ``{"image", "prob_normal", "prob_pneumonia",
    "prediction", ...}``, plus :data:`OPTIONAL_KEYS` from models that give them). A study the bundle refuses
    (the run ends with :data:`~pipeline.utils.guard.EXIT_PARTIAL` or
    :data:`~pipeline.utils.guard.EXIT_BAD_INPUT`) raises :class:`InputError` with the bundle's reason.
    """
    from monai.bundle import run

    configs = Path(bundle_dir) / "configs"
    output_dir = Path(output_dir)
    table = output_dir / "predictions.json"
    try:
        run(
            run_id="run",
            config_file=str(configs / "inference.json"),
            meta_file=str(configs / "metadata.json"),
            logging_file=str(configs / "logging.conf"),
            bundle_root=str(bundle_dir),
            dataset_dir=str(image_path),
            output_dir=str(output_dir),
        )
    except SystemExit as stop:  # the bundle's finalize reports refused studies by its exit status
        if stop.code not in (EXIT_PARTIAL, EXIT_BAD_INPUT) or not table.is_file():
            raise
    return pick_record(json.loads(table.read_text()), image_path, table)


def result_params(record: dict[str, Any], class_names: list[str]) -> dict[str, Any]:
    """MONAI Label's result JSON for a bundle prediction record: class scores, then involvement and category."""
    params: dict[str, Any] = {
        "prediction": [
            {"idx": i, "label": name, "score": float(record[f"prob_{name}"])} for i, name in enumerate(class_names)
        ]
    }
    if record.get("involvement") not in (None, ""):
        params["involvement"] = float(record["involvement"])
    if record.get("category_pred") not in (None, ""):
        params["category"] = str(record["category_pred"])
    return params


def returned_label(record: dict[str, Any]) -> str | None:
    """A copy of the record's lesion map for MONAI Label to return (and delete once sent), or None without one."""
    source = record.get("lesion_map")
    if not source or not Path(source).is_file():
        return None
    fd, copy = tempfile.mkstemp(suffix="".join(Path(source).suffixes) or ".nii.gz", prefix="lesion_")
    os.close(fd)
    shutil.copyfile(source, copy)
    return copy
