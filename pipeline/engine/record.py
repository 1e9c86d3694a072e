"""What a checkpoint was trained with: the network and the parameters of the deterministic preprocessing.

:class:`ChainRecord` is saved inside ``model.pt`` (key ``"record"``) beside the weights by the best-model
``CheckpointSaver`` and checked by the ``CheckpointLoader`` of evaluation and inference: a model is never
fed a chain it was not trained with. ``inference.json`` takes its chain from the record itself
(:func:`resolve`), so a model always meets its own preprocessing; an explicit override that disagrees is
refused with the file and the differing parameters named.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from pipeline.engine.checkpoint import load_weights_only
from pipeline.utils.errors import InputError

__all__ = ["KEY", "ChainRecord", "read", "resolve"]

#: The key of the record in a bundle checkpoint.
KEY = "record"


def _plain(value: Any) -> Any:
    """JSON round trip: tuples become lists, so records compare equal however they were written."""
    return json.loads(json.dumps(value))


class ChainRecord:
    """The network name and the preprocessing parameters of a run, as an ignite-serialisable object.

    Args:
        network_name: the network (``pipeline.networks.nets.build_network`` name).
        preprocessing: the keyword arguments of :func:`pipeline.transforms.chain.deterministic_transforms`.
        source: the name :meth:`load_state_dict`'s error gives (``CheckpointLoader`` re-raises it naming its file).
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


def read(path: str | os.PathLike) -> dict[str, Any]:
    """The record saved in checkpoint ``path``.

    Raises:
        InputError: the file is missing or unsafe, or holds no record (a checkpoint from before records).
    """
    checkpoint = load_weights_only(path)
    if not isinstance(checkpoint, Mapping) or KEY not in checkpoint:
        raise InputError(path, f"no preprocessing record in this checkpoint (no {KEY!r} key): retrain or re-save it")
    return dict(checkpoint[KEY])


def resolve(path: str | os.PathLike, network_name: str | None = None, **overrides: Any) -> dict[str, Any]:
    """The record of checkpoint ``path``, with ``network_name`` and each non-``None`` override checked against it.

    Returns ``{"network_name": ..., "preprocessing": {...}}`` as saved.

    Raises:
        InputError: an override disagrees with the record (naming the parameter and both values).
    """
    record = read(path)
    wanted = ChainRecord(
        network_name if network_name is not None else record.get("network_name", ""),
        {**record.get("preprocessing", {}), **{k: v for k, v in overrides.items() if v is not None}},
        source=str(path),
    )
    wanted.load_state_dict(record)
    return record
