"""What a checkpoint was trained with, kept beside its weights and tied to them by their sha256.

``models/model.pt`` holds the network's plain state dict (``network.load_state_dict(torch.load(path))``, as the
MONAI model zoo, ``ckpt_export`` and every bundle user expect). Beside it, ``models/model.json`` holds the
:class:`ChainRecord` of the run (network name, preprocessing chain, training augmentation, and whatever else
its :meth:`~ChainRecord.state_dict` gives) with the name and the sha256 of the weights it describes::

    {"weights": "model.pt", "weights_sha256": "...", "network_name": ..., "preprocessing": {...}, ...}

The best-model ``CheckpointSaver`` writes it (:func:`write`, atomically) right after the weights; every route that
loads weights reads it first (:func:`read`): evaluation and inference (``CheckpointLoader``), the TorchScript
route, every member of an ensemble and MONAI Label. A record that is missing, or that describes other weights,
is refused naming both files: a model is never fed a chain it was not trained with. ``inference.json`` takes
its chain from the record itself (:func:`resolve`); an explicit override that disagrees is refused with the
file and the differing parameters named.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pipeline.utils.atomic import atomic_write_text
from pipeline.utils.errors import InputError

__all__ = ["MIGRATE_COMMAND", "ChainRecord", "read", "record_path", "resolve", "sha256", "write"]

#: How a checkpoint of the earlier one-file format (keys ``"model"`` and ``"record"``) is split into the pair.
MIGRATE_COMMAND = "python -m pipeline migrate-checkpoint"


def _plain(value: Any) -> Any:
    """JSON round trip: tuples become lists, so records compare equal however they were written."""
    return json.loads(json.dumps(value))


class ChainRecord:
    """The network name and the preprocessing parameters of a run, as an ignite-serialisable object.

    Args:
        network_name: the network (``pipeline.networks.nets.build_network`` name).
        preprocessing: the keyword arguments of :func:`pipeline.transforms.chain.deterministic_transforms`.
        source: the name :meth:`load_state_dict`'s error gives (``CheckpointLoader`` re-raises it naming its file).
            Saved whole (:meth:`state_dict`) in ``model.json`` beside the weights (:func:`write`) and in the resumable
            training state.
        augmentation: the keyword arguments of :func:`pipeline.transforms.augment.train_augmentation` the model was
            trained with (recorded so that test-time augmentation uses only views it saw; not compared, since it
            does not change what the network is fed at inference).

    Attribute ``decision``: the scan's decision fitted on validation (:mod:`pipeline.transforms.decision`; set by
    :class:`pipeline.engine.decision.DecisionFitter`), ``None`` until fitted; saved, not compared (it is fitted,
    not a chain parameter).
    """

    def __init__(
        self,
        network_name: str,
        preprocessing: Mapping[str, Any],
        source: str = "checkpoint",
        augmentation: Mapping[str, Any] | None = None,
    ) -> None:
        self.network_name = network_name
        self.preprocessing = _plain(dict(preprocessing))
        self.source = source
        self.augmentation = _plain(dict(augmentation or {}))
        self.decision: dict[str, Any] | None = None

    def state_dict(self) -> dict[str, Any]:
        """``{"network_name", "preprocessing", "augmentation", "decision"}``: strings, numbers, lists, ``None``."""
        return {
            "network_name": self.network_name,
            "preprocessing": self.preprocessing,
            "augmentation": self.augmentation,
            "decision": _plain(self.decision),
        }

    def differences(self, other: Mapping[str, Any]) -> list[str]:
        """Human-readable differences between this run's record and ``other`` (a saved record)."""
        diffs = []
        if other.get("network_name") != self.network_name:
            diffs.append(f"network_name: trained {other.get('network_name')!r}, this run {self.network_name!r}")
        saved = other.get("preprocessing", {})
        for key in sorted(set(saved) | set(self.preprocessing)):
            if saved.get(key) != self.preprocessing.get(key):
                diffs.append(f"{key}: trained {saved.get(key)!r}, this run {self.preprocessing.get(key)!r}")
        return diffs

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Refuse a saved record that differs from this run's (called by ``CheckpointLoader``).

        Raises:
            InputError: naming :attr:`source` and every differing parameter.
        """
        diffs = self.differences(state)
        if diffs:
            raise InputError(
                self.source,
                "this model was trained with another network or preprocessing chain: "
                + "; ".join(diffs)
                + " (pass the trained values, or evaluate with the model's own chain)",
            )


def record_path(weights: str | os.PathLike) -> Path:
    """The record file of the weights ``weights``: ``models/model.pt`` -> ``models/model.json``."""
    return Path(weights).with_suffix(".json")


def sha256(path: str | os.PathLike) -> str:
    """The sha256 of the bytes of file ``path`` (hex).

    Raises:
        InputError: the file does not exist.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "checkpoint not found")
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def write(weights: str | os.PathLike, record: ChainRecord | Mapping[str, Any], digest: str | None = None) -> Path:
    """Write the record of the weights file ``weights`` beside it (:func:`record_path`), atomically.

    Args:
        weights: the weights file.
        record: the run's :class:`ChainRecord` (its whole :meth:`~ChainRecord.state_dict`), or such a dict (e.g.
            one :func:`read` gave: its ``weights`` and ``weights_sha256`` are replaced).
        digest: the sha256 of the weights' bytes; ``None``: that of ``weights`` as it is on disk.

    Returns:
        the record file.
    """
    state = record.state_dict() if isinstance(record, ChainRecord) else dict(record)
    tie = {"weights": Path(weights).name, "weights_sha256": digest or sha256(weights)}
    content = {**tie, **{k: v for k, v in _plain(state).items() if k not in tie}}  # a record read back is re-tied
    return atomic_write_text(record_path(weights), json.dumps(content, indent=2) + "\n")


def read(weights: str | os.PathLike) -> dict[str, Any]:
    """The record of the weights file ``weights`` (every key of its JSON), after checking that it describes them.

    Raises:
        InputError: naming both files: the record is missing (e.g. a checkpoint of the earlier one-file format:
            :data:`MIGRATE_COMMAND` splits it), unreadable, or written for other weights (sha256 differs).
    """
    weights, file = Path(weights), record_path(weights)
    digest = sha256(weights)
    if not file.is_file():
        raise InputError(
            file,
            f"missing: the weights {weights} have no record of the network and preprocessing they were trained with "
            f"(retrain, or split a checkpoint that holds its record inside with '{MIGRATE_COMMAND} {weights}')",
        )
    try:
        record = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(file, f"not valid JSON ({err}); it should be the record of {weights}") from err
    if not isinstance(record, dict) or record.get("weights_sha256") != digest:
        stored = record.get("weights_sha256") if isinstance(record, dict) else None
        raise InputError(
            file,
            f"describes other weights than {weights} (sha256 {stored!r} recorded, {digest!r} on disk): "
            "keep a model's weights and record together",
        )
    return record


def resolve(path: str | os.PathLike, network_name: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The record of the weights ``path`` (:func:`read`), with ``network_name`` and each non-``None`` override checked.

    Returns the record as :func:`read` gives it (``{"network_name": ..., "preprocessing": {...}, ...}``).

    Raises:
        InputError: the record is missing or describes other weights (:func:`read`), or an override disagrees with
            it (naming the parameter and both values).
    """
    record = read(path)
    wanted = ChainRecord(
        network_name if network_name is not None else record.get("network_name", ""),
        {**record.get("preprocessing", {}), **{k: v for k, v in overrides.items() if v is not None}},
        source=str(path),
    )
    wanted.load_state_dict(record)
    return record
