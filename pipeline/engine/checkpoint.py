"""Checkpoints that are written atomically and loaded safely, with their record beside them.

- :class:`CheckpointSaver` is MONAI's saver writing through :func:`pipeline.utils.atomic.atomic_path`. MONAI 1.6.1
  turns ignite's atomic writes off, and ignite deletes the checkpoint it replaces *before* writing the new
  one, so a run killed at that moment would lose both; here the old file goes only after the new one is whole.
  Given a ``record``, the best-model file (``key_metric_filename``) gets its record file right after it
  (:func:`pipeline.engine.record.write`).
- :class:`CheckpointLoader` is MONAI's loader (which reads with ``torch.load(weights_only=True)``, so a
  pickle cannot run code) that first reads the weights' record (:func:`pipeline.engine.record.read`, checked
  against this run's record when given), with the failures turned into :class:`~pipeline.utils.errors.InputError`:
  a missing or mismatched record, a missing file, a file that is not plain weights (e.g. a pickle carrying
  code), or weights of another network.
- :func:`load_weights_only` is that safe read, for code outside the engines.
- :func:`load_torchscript` loads ``model.ts`` for the TorchScript route after checking that it holds the weights
  of ``model.pt``, whose record gives the route its chain.
- :func:`migrate` splits a checkpoint of the earlier one-file format (``{"model": weights, "record": record}``)
  into plain weights and their record file (``python -m pipeline migrate-checkpoint PATH ...``).
"""

from __future__ import annotations

import argparse
import os
import pickle
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import torch
from ignite.engine import Engine
from ignite.handlers import DiskSaver
from monai.handlers import CheckpointLoader as _MonaiCheckpointLoader
from monai.handlers import CheckpointSaver as _MonaiCheckpointSaver
from torch import nn

from pipeline.engine import record as chain_record
from pipeline.engine.record import ChainRecord
from pipeline.utils.atomic import atomic_path
from pipeline.utils.errors import InputError

__all__ = ["AtomicDiskSaver", "CheckpointLoader", "CheckpointSaver", "load_torchscript", "load_weights_only", "migrate"]


def load_weights_only(path: str | os.PathLike, map_location: Any = "cpu") -> Any:
    """``torch.load(path, weights_only=True)``; raises :class:`InputError` for a missing, corrupt or unsafe file."""
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except FileNotFoundError as err:
        raise InputError(path, "checkpoint not found") from err
    except pickle.UnpicklingError as err:
        lines = [ln.strip() for ln in str(err).splitlines() if "Unsupported global" in ln or "Unpickler error" in ln]
        why = lines[0] if lines else type(err).__name__
        raise InputError(path, f"refused to load: not plain weights, it asks to import or run code ({why})") from err
    except (RuntimeError, EOFError, OSError) as err:
        raise InputError(path, f"not a readable PyTorch checkpoint ({type(err).__name__}: {err})") from err


class AtomicDiskSaver(DiskSaver):
    """ignite's ``DiskSaver`` that writes through a temporary file and removes replaced files only afterwards.

    Args:
        dirname: folder of the checkpoints.
        filename: a fixed file name (e.g. ``model.pt``) used instead of ignite's generated one.
        record: the run's record, written beside each saved file (:func:`pipeline.engine.record.write`); ``None``:
            no record file.
    """

    def __init__(
        self, dirname: str | os.PathLike, filename: str | None = None, record: ChainRecord | None = None
    ) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename
        self.record = record
        self._replaced: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:  # under torch.distributed one rank writes
            return
        name = self.filename or filename
        with atomic_path(Path(self.dirname) / name) as tmp:
            torch.save(checkpoint, tmp)
        if self.record is not None:
            chain_record.write(Path(self.dirname) / name, self.record)
        for old in self._replaced:
            if old != name:
                (Path(self.dirname) / old).unlink(missing_ok=True)
        self._replaced = []

    def remove(self, filename: str) -> None:
        """Called by ignite just before it saves the replacement: remember the file, delete it after the save."""
        if idist.get_rank() == self.save_on_rank:
            self._replaced.append(self.filename or filename)


class CheckpointSaver(_MonaiCheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` with atomic writes (:class:`AtomicDiskSaver`).

    Args:
        record: the run's record, written beside the best model (``key_metric_filename``, e.g. ``model.json``
            beside ``model.pt``) each time it is saved; its ``save_dict`` then holds only ``{"model": network}``,
            which ignite saves as the plain state dict.
        args, kwargs: those of :class:`monai.handlers.CheckpointSaver`.
    """

    def __init__(self, *args: Any, record: ChainRecord | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                best = record if checkpoint is self._key_metric_checkpoint else None
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, checkpoint.save_handler.filename, best)


class CheckpointLoader(_MonaiCheckpointLoader):
    """:class:`monai.handlers.CheckpointLoader` (weights only) that checks the weights' record first.

    Args:
        record: this run's record; the saved one (:func:`pipeline.engine.record.read`) must agree with it
            (:meth:`ChainRecord.load_state_dict`). ``None``: the saved record is only checked to describe these
            weights (the chain was taken from it, :func:`pipeline.engine.record.resolve`).
        args, kwargs: those of :class:`monai.handlers.CheckpointLoader`.

    Raises:
        InputError: naming the file: the record is missing, describes other weights or another chain; the weights
            are missing, unsafe or of another network.
    """

    def __init__(self, *args: Any, record: ChainRecord | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.record = record

    def __call__(self, engine: Engine) -> None:
        saved = chain_record.read(self.load_path)  # the record before the weights: never another chain's weights
        if self.record is not None:
            try:
                self.record.load_state_dict(saved)
            except InputError as err:
                raise InputError(self.load_path, err.problem) from err
        load_weights_only(self.load_path)  # refuses missing, corrupt and unsafe files before MONAI reads them
        try:
            super().__call__(engine)
        except (RuntimeError, KeyError, ValueError) as err:
            raise InputError(self.load_path, f"does not fit this network ({str(err).strip().splitlines()[0]})") from err


def load_torchscript(path: str | os.PathLike, weights: str | os.PathLike, map_location: Any = "cpu") -> nn.Module:
    """``torch.jit.load(path)``, after checking that it holds exactly the weights ``weights`` (whose record it meets).

    The TorchScript route takes its chain from the record of ``models/model.pt`` (``model.json``); a ``model.ts``
    exported from other weights would meet a chain it was not trained with.

    Raises:
        InputError: the record of ``weights`` is missing or describes other weights; ``path`` is missing, not
            TorchScript, or holds other tensors than ``weights`` (naming both files).
    """
    chain_record.read(weights)
    state = load_weights_only(weights, map_location=map_location)
    try:
        module = torch.jit.load(os.fspath(path), map_location=map_location)
    except (RuntimeError, ValueError, OSError) as err:
        raise InputError(path, f"not a readable TorchScript file ({str(err).strip().splitlines()[0]})") from err
    scripted = module.state_dict()
    same = {k for k in set(state) & set(scripted) if torch.equal(state[k], scripted[k].to(state[k].device))}
    differ = sorted((set(state) | set(scripted)) - same)
    if differ:
        raise InputError(
            path,
            f"not exported from {weights} ({len(differ)} tensors differ, e.g. {differ[0]!r}): export it again "
            "(python -m monai.bundle ckpt_export, docs/bundle.md)",
        )
    return module


def migrate(path: str | os.PathLike) -> Path:
    """Split a checkpoint of the earlier one-file format into plain weights and their record file.

    ``path`` (``{"model": state_dict, "record": record}``, as saved before the record moved beside the weights)
    is rewritten, atomically, as the plain state dict; its record goes to ``model.json`` beside it
    (:func:`pipeline.engine.record.write`), written before the old file is replaced. The weights are unchanged.

    Returns:
        the record file.

    Raises:
        InputError: ``path`` is unreadable or unsafe, or not of that format (e.g. already plain weights).
    """
    checkpoint = load_weights_only(path)
    if not isinstance(checkpoint, Mapping) or set(checkpoint) != {"model", "record"}:
        keys = sorted(checkpoint)[:4] if isinstance(checkpoint, Mapping) else type(checkpoint).__name__
        raise InputError(path, f"not a one-file checkpoint with keys 'model' and 'record' (found {keys})")
    with atomic_path(path) as tmp:
        torch.save(checkpoint["model"], tmp)
        # the record first: until the weights replace the old file, that file can still be migrated again
        return chain_record.write(path, checkpoint["record"], digest=chain_record.sha256(tmp))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """``python -m pipeline migrate-checkpoint PATH ...``."""
    parser.add_argument("paths", nargs="+", type=Path, help="one-file checkpoints (model.pt) to split in place")


def run(args: argparse.Namespace) -> int:
    """Migrate every checkpoint of ``args.paths``; print each record file written."""
    for path in args.paths:
        print(f"{path}: plain weights; record written to {migrate(path)}")
    return 0
