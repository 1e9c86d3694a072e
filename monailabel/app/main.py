"""MONAI Label app serving the chest-CT pneumonia bundle as a classification model (infer and train).

Runs in MONAI Label 0.8.5's own environment (``scripts/monailabel_env.sh``)::

    .venv-monailabel/bin/monailabel start_server --app monailabel/app --studies STUDIES \\
        --host 127.0.0.1 --port 8000 --conf zoo_source github --conf sam2 false

Conf keys (``--conf KEY VALUE``):
    model_dir: folder holding bundle folders (default: this repository's ``bundles``).
    models: comma-separated bundle folder names under ``model_dir``
        (default: ``chest_ct_pneumonia_classification``); each becomes a model of that name,
        with its weights read from ``<model_dir>/<name>/models/model.pt`` after their record, ``model.json`` beside
        them (a missing record, or one of other weights, is refused naming both files).
    skip_trainers: ``true`` to serve inference only.
    preload: ``true`` to load the networks at start-up.
The app never downloads anything: ``zoo_source`` and ``sam2`` are accepted and ignored.

The infer task (:class:`ClassificationInferTask`) runs the bundle's own ``inference.json`` on the scan
(:func:`pipeline.deploy.bundle.run_bundle_inference`), so MONAI Label answers exactly what the bundle writes:
``{"prediction": [{"idx": 0, "label": "normal", "score": p0}, {"idx": 1, ...}]}``, plus ``"involvement"``
(fraction of the lung) and ``"category"`` (``CT-0`` ... ``CT-4``) from models with a lesion output, whose lesion
map (NIfTI, in the scan's geometry) is then the returned label. A scan refused as bad input (header or content,
:mod:`pipeline.utils.guard`) is answered with HTTP 422 and the reason, not a 500.

Training labels are image-level: a study's class is the key ``class`` of its image info (a class
name of the bundle's ``channel_def``, or its index), set e.g. with::

    curl -X PUT "http://127.0.0.1:8000/datastore/image/info?image=study_0001" -F 'info={"class": "pneumonia"}'
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from fastapi import HTTPException
from monailabel.interfaces.app import MONAILabelApp
from monailabel.interfaces.datastore import Datastore
from monailabel.interfaces.tasks.infer_v2 import InferTask, InferType
from monailabel.interfaces.tasks.strategy import Strategy
from monailabel.interfaces.tasks.train import TrainTask
from monailabel.tasks.activelearning.first import First
from monailabel.tasks.activelearning.random import Random
from monailabel.tasks.infer.bundle import BundleInferTask
from monailabel.tasks.train.bundle import BundleTrainTask
from monailabel.utils.others.generic import strtobool

import monailabel
from pipeline.data.cohort import train_val_split
from pipeline.data.imagecheck import check_image
from pipeline.deploy.bundle import result_params, returned_label, run_bundle_inference
from pipeline.engine.record import read as read_record
from pipeline.utils.errors import InputError, find_input_error

logger = logging.getLogger(__name__)

#: Repository root (this file is ``<repo>/monailabel/app/main.py``).
REPO = Path(__file__).resolve().parents[2]
DEFAULT_MODEL_DIR = REPO / "bundles"
DEFAULT_MODELS = "chest_ct_pneumonia_classification"
#: Image-info key that holds a study's class for training.
CLASS_KEY = "class"
#: HTTP status of a scan refused as bad input (the request was understood, the scan cannot be processed).
REFUSED_STATUS = 422


def bundle_paths(conf: dict[str, str]) -> dict[str, str]:
    """Model name -> bundle folder, from the conf keys ``model_dir`` and ``models``.

    Raises:
        InputError: a named bundle folder has no ``configs/inference.json`` or ``configs/metadata.json``.
    """
    model_dir = Path(conf.get("model_dir") or DEFAULT_MODEL_DIR).resolve()
    names = [n.strip() for n in (conf.get("models") or DEFAULT_MODELS).split(",") if n.strip()]
    bundles = {}
    for name in names:
        path = model_dir / name
        for required in ("configs/inference.json", "configs/metadata.json"):
            if not (path / required).is_file():
                raise InputError(path, f"not a bundle folder: {required} is missing (conf model_dir/models)")
        bundles[name] = str(path)
    return bundles


def channel_names(bundle: str | os.PathLike) -> list[str]:
    """The bundle's output class names, ordered by channel, from ``metadata.json``'s ``channel_def``."""
    metadata = json.loads((Path(bundle) / "configs" / "metadata.json").read_text())
    pred = next(iter(metadata["network_data_format"]["outputs"].values()))
    channel_def = pred["channel_def"]
    return [channel_def[str(i)] for i in range(len(channel_def))]


class ClassificationInferTask(BundleInferTask):
    """A classification infer task that runs the bundle's own ``run`` workflow on the scan.

    The image is header-checked first (:func:`~pipeline.data.imagecheck.check_image`); the bundle's prediction
    record becomes :func:`result_params`, its lesion map (when the model gives one) the label.
    """

    def __init__(self, path: str, conf: dict[str, str]) -> None:
        super().__init__(path, conf, type=InferType.CLASSIFICATION, add_post_restore=False, load_strict=True)
        self.class_names = channel_names(path)

    def __call__(self, request: dict[str, Any], callbacks: Any = None) -> tuple[str | None, dict[str, Any]]:
        image = request["image"]
        check_image(image)
        out = tempfile.mkdtemp(prefix="chestct_infer_")
        try:
            record = run_bundle_inference(self.bundle_path, image, out)
            return returned_label(record), result_params(record, self.class_names)
        finally:
            shutil.rmtree(out, ignore_errors=True)


class ClassificationTrainTask(BundleTrainTask):
    """:class:`BundleTrainTask` on image-level classes instead of label masks.

    The datalist is ``[{"image": path, "label": class index}]`` for every datastore image whose info
    has :data:`CLASS_KEY`; the bundle's ``train#dataset#data`` / ``validate#dataset#data`` get a
    class-stratified, seeded split (``val_split`` of the request; ``-1`` keeps the bundle's own
    validation list). MONAI Label runs the bundle's ``run`` id with ``init_id=None``.
    """

    def __init__(self, path: str, conf: dict[str, str]) -> None:
        super().__init__(path, conf, load_strict=True)
        self.class_names = channel_names(path)

    def config(self) -> dict[str, Any]:
        """MONAI Label's train options, defaulting ``run_id`` to the bundle's ``run`` (MONAI Label's default "" would
        make MONAI evaluate the whole config)."""
        return {**super().config(), "run_id": "run"}

    def _load_checkpoint(self, model_pytorch: str, pretrained: bool, train_handlers: list) -> None:
        """Append (MONAI Label prepends) the pretrained-weights loader, so that ids such as ``train#handlers#5``
        in the bundle still name the same handlers."""
        if pretrained and os.path.exists(model_pytorch):
            train_handlers.append(
                {
                    "_target_": "CheckpointLoader",
                    "load_path": model_pytorch,
                    "load_dict": {self.model_dict_key: f"$@{self.const.key_network()}"},
                    "strict": self.load_strict,
                }
            )

    def _update_overrides(self, overrides: dict[str, Any]) -> dict[str, Any]:
        """Hand MONAI Label's lists to the bundle's datalists, and train with the served model's chain.

        MONAI Label sets ``train#dataset#data``/``validate#dataset#data``; the bundle builds its datasets empty and
        fills them from ``train#datalist``/``validate#datalist`` when the run starts. Training starts from the served
        ``model.pt`` and the infer task keeps the chain it read from that model's record, so the run uses the
        recorded network and preprocessing too (a retrained model is then served as it was trained).
        """
        for split in ("train", "validate"):
            if f"{split}#dataset#data" in overrides:
                overrides[f"{split}#datalist"] = overrides.pop(f"{split}#dataset#data")
                overrides["test_datalist"] = []  # MONAI Label's partition has no test split
        model = Path(self.bundle_path) / "models" / "model.pt"
        if model.is_file():
            record = read_record(model)
            overrides["network_name"] = record["network_name"]
            overrides.update(record["preprocessing"])
        return overrides

    def _class_index(self, image_id: str, value: Any) -> int:
        """A class name (any case) or index of :attr:`class_names` -> its index."""
        names = [n.lower() for n in self.class_names]
        if str(value).lower() in names:
            return names.index(str(value).lower())
        if str(value).isdigit() and int(value) < len(names):
            return int(value)
        raise InputError(image_id, f"image info {CLASS_KEY}={value!r} is none of {self.class_names} or their indices")

    def _fetch_datalist(self, request: dict, datastore: Datastore) -> list[dict]:
        items = []
        for image_id in sorted(datastore.list_images()):
            info = datastore.get_image_info(image_id)
            if CLASS_KEY in info:
                items.append({"image": info["path"], "label": self._class_index(image_id, info[CLASS_KEY])})
        if not items:
            raise InputError(self.bundle_path, f"no datastore image has a {CLASS_KEY!r} in its image info")
        return items

    def _partition_datalist(self, datalist: list[dict], request: dict, shuffle: bool = False):
        val_split = float(request.get("val_split", 0.2))
        if val_split <= 0:
            return super()._partition_datalist(datalist, request, shuffle)
        train, val = train_val_split(datalist, val_fraction=val_split, seed=int(request.get("seed", 0)))
        if not train or not val:
            raise InputError(
                self.bundle_path,
                f"val_split={val_split} of {len(datalist)} labelled studies leaves an empty training or validation "
                "set (the best checkpoint is chosen on validation): label more studies or change val_split",
            )
        return train, val


class ChestCTApp(MONAILabelApp):
    """One classification infer task and one train task per bundle named in the conf."""

    def __init__(self, app_dir: str, studies: str, conf: dict[str, str]) -> None:
        self.bundles = bundle_paths(conf)
        super().__init__(
            app_dir=app_dir,
            studies=studies,
            conf=conf,
            name="Chest CT pneumonia classification",
            description="3D chest-CT classifier (normal vs viral pneumonia) served from its MONAI bundle",
            version=monailabel.__version__,
        )

    def init_infers(self) -> dict[str, InferTask]:
        infers: dict[str, InferTask] = {}
        for name, path in self.bundles.items():
            task = ClassificationInferTask(path, self.conf)
            if not task.is_valid():
                raise InputError(path, "MONAI Label cannot serve this bundle: models/model.pt or model.ts is missing")
            infers[name] = task
        return infers

    def init_trainers(self) -> dict[str, TrainTask]:
        if strtobool(self.conf.get("skip_trainers", "false")):
            return {}
        return {name: ClassificationTrainTask(path, self.conf) for name, path in self.bundles.items()}

    def init_strategies(self) -> dict[str, Strategy]:
        return {"random": Random(), "first": First()}

    def infer(self, request: dict[str, Any], datastore: Datastore | None = None) -> dict[str, Any]:
        """MONAI Label's infer; a scan refused as bad input raises HTTP :data:`REFUSED_STATUS` with the reason."""
        try:
            return super().infer(request, datastore)
        except Exception as err:
            found = find_input_error(err)
            if found is None:
                raise
            raise HTTPException(status_code=REFUSED_STATUS, detail=f"refused: {found}") from err

    def info(self) -> dict[str, Any]:
        """MONAI Label's app info plus the bundle folder of each model."""
        info = super().info()
        info["bundles"] = dict(self.bundles)
        return info
