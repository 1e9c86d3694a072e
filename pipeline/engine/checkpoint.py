"""Checkpoints that are written atomically and loaded safely.

- :class:`CheckpointSaver` is MONAI's saver writing through :func:`pipeline.utils.atomic.atomic_path`. MONAI 1.6.1
  turns ignite's atomic writes off, and ignite deletes the checkpoint it replaces *before* writing the new
  one, so a run killed at that moment would lose both; here the old file goes only after the new one is whole.
- :class:`CheckpointLoader` is MONAI's loader (which reads with ``torch.load(weights_only=True)``, so a
  pickle cannot run code) with the failures turned into :class:`~pipeline.utils.errors.InputError`: a missing
  file, a file that is not plain weights (e.g. a pickle carrying code), or weights of another network.
- :func:`load_weights_only` is that safe read, for code outside the engines.
"""

from __future__ import annotations

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

from pipeline.utils.atomic import atomic_path
from pipeline.utils.errors import InputError

__all__ = ["AtomicDiskSaver", "CheckpointLoader", "CheckpointSaver", "load_weights_only"]


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
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None) -> None:
        super().__init__(dirname=dirname, atomic=True, require_empty=False)
        self.filename = filename
        self._replaced: list[str] = []

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:  # under torch.distributed one rank writes
            return
        name = self.filename or filename
        with atomic_path(Path(self.dirname) / name) as tmp:
            torch.save(checkpoint, tmp)
        for old in self._replaced:
            if old != name:
                (Path(self.dirname) / old).unlink(missing_ok=True)
        self._replaced = []

    def remove(self, filename: str) -> None:
        """Called by ignite just before it saves the replacement: remember the file, delete it after the save."""
        if idist.get_rank() == self.save_on_rank:
            self._replaced.append(self.filename or filename)


class CheckpointSaver(_MonaiCheckpointSaver):
    """:class:`monai.handlers.CheckpointSaver` with atomic writes (:class:`AtomicDiskSaver`); same arguments."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for checkpoint in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint):
            if checkpoint is not None:
                checkpoint.save_handler = AtomicDiskSaver(self.save_dir, checkpoint.save_handler.filename)


class CheckpointLoader(_MonaiCheckpointLoader):
    """:class:`monai.handlers.CheckpointLoader` (weights only) whose failures name the file: same arguments."""

    def __call__(self, engine: Engine) -> None:
        load_weights_only(self.load_path)  # refuses missing, corrupt and unsafe files before MONAI reads them
        try:
            super().__call__(engine)
        except InputError as err:  # e.g. a preprocessing record that differs from this run's
            raise InputError(self.load_path, err.problem) from err
        except (RuntimeError, KeyError, ValueError) as err:
            raise InputError(self.load_path, f"does not fit this network ({str(err).strip().splitlines()[0]})") from err
