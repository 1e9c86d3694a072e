"""Resume a killed training run from its last full state checkpoint, ending where an uninterrupted run ends.

The bundle's ``train#state_saver`` writes ``OUTPUT_DIR/state_checkpoint_epoch=N.pt`` (atomically) after each
epoch's validation. Besides the model, optimizer, scheduler and trainer (epoch, iteration), it holds a
:class:`RunState`: the random number generators of every process (torch, numpy, Python and each random
transform's own ``RandomState``; under ``torchrun`` each rank's own), the AMP ``GradScaler``, the
early-stopping counter, the best-model saver's record, the engines' best metrics, the learning-curve rows,
and what the run was trained with (its training parameters and a fingerprint of its cohort and split).
``--resume true`` makes the bundle call :func:`restore_latest` just before ``trainer.run()``; a state saved
under another configuration or cohort is refused, naming what differs.
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint
from monai.transforms import Compose, Randomizable

from pipeline.engine.checkpoint import load_weights_only
from pipeline.utils.errors import InputError

__all__ = ["STATE_FILE", "RunState", "latest_state", "restore_latest"]

logger = logging.getLogger(__name__)

#: File names written by the bundle's ``train#state_saver`` (``file_prefix="state"``, epoch-level).
STATE_FILE = re.compile(r"^state_checkpoint_epoch=(\d+)\.pt$")


def _numpy_state(state: tuple) -> dict[str, Any]:
    """A legacy numpy ``RandomState`` state as tensors and numbers (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "has_gauss": int(has_gauss),
        "cached_gaussian": float(cached),
    }


def _from_numpy_state(state: Mapping[str, Any]) -> tuple:
    keys = state["keys"].numpy().astype(np.uint32)
    return state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]


def _plain(obj: Any) -> Any:
    """``obj`` with numpy scalars turned into Python numbers, through dicts, lists and tuples."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return type(obj)(_plain(v) for v in obj)
    return obj


def _random_transforms(transforms: Iterable[Any]) -> list[Randomizable]:
    """The :class:`Randomizable` objects in ``transforms``, in order, including those they hold as attributes.

    Nested ``Compose`` lists are searched, and so are the attributes of each transform (MONAI's dictionary
    transforms hold their array transform, e.g. ``RandRotated.rand_rotate``, with a generator of its own).
    """
    found: list[Randomizable] = []
    for t in transforms:
        if isinstance(t, Compose):
            found += _random_transforms(t.transforms)
        elif isinstance(t, Randomizable):
            found.append(t)
            found += _random_transforms(v for v in vars(t).values() if isinstance(v, Randomizable))
    return found


def _world() -> tuple[int, int]:
    """``(rank, world_size)`` of this process (``(0, 1)`` outside ``torchrun``)."""
    return (dist.get_rank(), dist.get_world_size()) if dist.is_available() and dist.is_initialized() else (0, 1)


class RunState:
    """What a training run needs beyond model, optimizer, scheduler and trainer to continue identically.

    An ignite-serialisable object (``state_dict`` / ``load_state_dict``) for a ``CheckpointSaver``'s
    ``save_dict``; :meth:`attach` it to the trainer on every rank, before the saver (rank 0) is attached.

    Args:
        transforms: the training transforms (a ``Compose``), whose random transforms' generators are saved.
        engines: engines whose ``best_metric`` / ``best_metric_epoch`` are saved (trainer, evaluator).
        early_stop: MONAI ``EarlyStopHandler`` (its ignite ``EarlyStopping`` counter and best score).
        best_saver: MONAI ``CheckpointSaver`` of the best model (its record of the best score).
        curves: :class:`pipeline.engine.handlers.LearningCurves` (the rows of the epochs done).
        config: the run's training parameters (JSON-able); a resumed run must have the same.
        cohort: a fingerprint of the run's cohort and split
            (:func:`pipeline.data.cohort.split_fingerprint`); a resumed run must have the same.
    """

    def __init__(
        self,
        transforms: Compose | Sequence[Any] = (),
        engines: Sequence[Engine] = (),
        early_stop: Any = None,
        best_saver: Any = None,
        curves: Any = None,
        config: Mapping[str, Any] | None = None,
        cohort: str | None = None,
    ) -> None:
        self.transforms = _random_transforms(transforms.transforms if isinstance(transforms, Compose) else transforms)
        self.engines = list(engines)
        self.early_stop = early_stop
        self.best_saver = best_saver
        self.curves = curves
        self.config = json.loads(json.dumps(dict(config or {})))  # tuples as lists, as a saved state holds them
        self.cohort = cohort
        self.trainer: Engine | None = None
        self._rank_rngs: list[dict[str, Any]] | None = None
        self._scaler_state: Mapping[str, Any] | None = None

    def attach(self, trainer: Engine) -> None:
        """Gather every rank's random state when an epoch completes (for rank 0's saver, attached after this),
        and restore the AMP ``GradScaler``, which MONAI creates in ``trainer.run()``, when the run starts."""
        self.trainer = trainer
        trainer.add_event_handler(Events.EPOCH_COMPLETED, self._gather)
        trainer.add_event_handler(Events.STARTED, self._restore_scaler)

    def _gather(self, _engine: Engine | None = None) -> None:
        own = _plain(self._rng_state())
        if _world()[1] > 1:
            gathered: list[Any] = [None] * _world()[1]
            dist.all_gather_object(gathered, own)
            self._rank_rngs = gathered
        else:
            self._rank_rngs = [own]

    def _restore_scaler(self, _engine: Engine | None = None) -> None:
        scaler = getattr(self.trainer, "scaler", None)
        if self._scaler_state is not None and scaler is not None:
            scaler.load_state_dict(dict(self._scaler_state))

    def _rng_state(self) -> dict[str, Any]:
        state: dict[str, Any] = {
            "torch_rng": torch.get_rng_state(),
            "numpy_rng": _numpy_state(np.random.get_state()),  # noqa: NPY002 (the global legacy generator)
            "python_rng": random.getstate(),
            "transform_rngs": [_numpy_state(t.R.get_state()) for t in self.transforms],
        }
        if torch.cuda.is_available():
            state["cuda_rng"] = torch.cuda.get_rng_state_all()
        return state

    def _set_rng_state(self, state: Mapping[str, Any]) -> None:
        if len(state["transform_rngs"]) != len(self.transforms):
            raise ValueError("the saved run has different random transforms than this configuration")
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(_from_numpy_state(state["numpy_rng"]))  # noqa: NPY002
        random.setstate(state["python_rng"])
        for t, rng in zip(self.transforms, state["transform_rngs"]):
            t.R.set_state(_from_numpy_state(rng))
        if "cuda_rng" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])

    def differences(self, state: Mapping[str, Any]) -> list[str]:
        """What differs between a saved state's configuration and cohort and this run's, in words."""
        saved = state.get("config")
        if saved is None:
            return ["the state records no configuration (saved by an older version)"]
        diffs = [
            f"{key}: saved {saved.get(key)!r}, this run {self.config.get(key)!r}"
            for key in sorted(set(saved) | set(self.config))
            if saved.get(key) != self.config.get(key)
        ]
        if state.get("cohort") != self.cohort:
            diffs.append(f"cohort or split: saved fingerprint {state.get('cohort')}, this run {self.cohort}")
        world = _world()[1]
        if len(state.get("rngs", ())) != world:
            diffs.append(f"processes: saved by {len(state.get('rngs', ()))}, this run has {world}")
        return diffs

    def state_dict(self) -> dict[str, Any]:
        """The state, as tensors, numbers, strings, lists and dicts only (so it loads with ``weights_only=True``).

        ``"rngs"`` holds one random state per rank (as gathered when the epoch completed; this process's
        own when not attached).
        """
        state: dict[str, Any] = {
            "rngs": self._rank_rngs if self._rank_rngs is not None else [self._rng_state()],
            "best_metrics": [(e.state.best_metric, e.state.best_metric_epoch) for e in self.engines],
            "config": self.config,
            "cohort": self.cohort,
        }
        scaler = getattr(self.trainer, "scaler", None)
        if scaler is not None and scaler.is_enabled():
            state["scaler"] = scaler.state_dict()
        if self.early_stop is not None and self.early_stop._handler is not None:
            state["early_stop"] = self.early_stop._handler.state_dict()
        if self.best_saver is not None and self.best_saver._key_metric_checkpoint is not None:
            state["best_saver"] = self.best_saver._key_metric_checkpoint.state_dict()
        if self.curves is not None:
            state["curves"] = [dict(row) for row in self.curves.rows]
        return _plain(state)

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore what :meth:`state_dict` saved (this rank's random state); refuse another configuration.

        Raises:
            ValueError: the configuration, cohort, number of processes, random transforms or engines differ.
        """
        diffs = self.differences(state)
        if diffs:
            raise ValueError("saved under another configuration or cohort: " + "; ".join(diffs))
        if len(state["best_metrics"]) != len(self.engines):
            raise ValueError("the saved run has different engines than this configuration")
        self._set_rng_state(state["rngs"][_world()[0]])
        for e, (best, epoch) in zip(self.engines, state["best_metrics"]):
            e.state.best_metric, e.state.best_metric_epoch = best, epoch
        self._scaler_state = state.get("scaler")
        if "early_stop" in state and self.early_stop is not None and self.early_stop._handler is not None:
            self.early_stop._handler.load_state_dict(state["early_stop"])
        if "best_saver" in state and self.best_saver is not None:
            self.best_saver.load_state_dict(state["best_saver"])
        if "curves" in state and self.curves is not None:
            self.curves.rows = [dict(row) for row in state["curves"]]


def latest_state(output_dir: str | os.PathLike) -> Path:
    """The ``state_checkpoint_epoch=N.pt`` with the largest N in ``output_dir``; InputError if there is none."""
    found = [
        (int(m.group(1)), p)
        for p in Path(output_dir).glob("state_checkpoint_epoch=*.pt")
        if (m := STATE_FILE.match(p.name))
    ]
    if not found:
        raise InputError(output_dir, "nothing to resume: no state_checkpoint_epoch=N.pt (run once without --resume)")
    return max(found)[1]


def restore_latest(output_dir: str | os.PathLike, save_dict: Mapping[str, Any]) -> Path:
    """Load the latest full state of ``output_dir`` into the objects of ``save_dict`` (the state saver's).

    The trainer keeps its configured ``max_epochs``, so a resumed run may also train longer. Loading uses
    ``weights_only=True``. Returns the file loaded.
    """
    path = latest_state(output_dir)
    checkpoint = load_weights_only(path)
    for key, obj in save_dict.items():  # before anything is loaded: another configuration changes nothing
        if isinstance(obj, RunState) and (diffs := obj.differences(checkpoint.get(key, {}))):
            raise InputError(
                path,
                "was saved under another training configuration or cohort: "
                + "; ".join(diffs)
                + " (resume with the saved values, or train again without --resume)",
            )
    trainers = [obj for obj in save_dict.values() if isinstance(obj, Engine)]
    max_epochs = [t.state.max_epochs for t in trainers]
    try:
        Checkpoint.load_objects(to_load=dict(save_dict), checkpoint=checkpoint)
    except (KeyError, RuntimeError, ValueError) as err:
        raise InputError(path, f"does not match this training configuration ({err})") from err
    for trainer, epochs in zip(trainers, max_epochs):
        if epochs is not None and trainer.state.epoch >= epochs:
            raise InputError(path, f"training already reached epoch {trainer.state.epoch}; raise --epochs to go on")
        trainer.state.max_epochs = epochs
    logger.info("resuming from %s", path)
    print(f"resuming from {os.path.abspath(path)}", flush=True)
    return path
