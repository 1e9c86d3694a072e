"""Datasets cached in memory or on disk, keyed on the preprocessing so a changed config never reads stale data.

``cached_dataset(..., cache="disk", cache_dir=DIR)`` stores each study's deterministic preprocessing
(load, orient, HU window, resize, cast) once as ``DIR/<item hash><transform hash>.pt`` and reads it
back in later epochs and runs, for cohorts whose cache does not fit in memory.

MONAI's ``PersistentDataset(hash_transform=...)`` appends a hash of the deterministic transforms to
every file name, but its stock hashers do not key on the parameters: ``json_hashing`` cannot
serialise transform objects and falls back to their class names (a new ``spatial_size`` or
``hu_window`` would read the old cache), and ``pickle_hashing`` depends on pickle's byte layout of
every attribute. :func:`transform_hash` describes each transform's parameters as canonical JSON
instead, and :func:`item_hash` adds the size and modification time of the item's files, so a
replaced image is recomputed too.
"""

from __future__ import annotations

import enum
import hashlib
import inspect
import json
import logging
import os
from collections.abc import Callable, Sequence
from typing import Any

import monai
import numpy as np
import torch
from monai.data import CacheDataset, CacheNTransDataset, Dataset, PersistentDataset
from monai.data.utils import pickle_hashing

from pipeline.data.imagecheck import check_image
from pipeline.data.refusal import RefusingDataset, refusal
from pipeline.utils.errors import InputError, InputErrors, LungsNotHeld, find_input_error

logger = logging.getLogger(__name__)

CACHE_KINDS = ("memory", "disk", "none")
#: ``"run"``: bad input refuses the whole run (training); ``"study"``: only the bad study (evaluation, inference).
REFUSE = ("run", "study")
_MAX_DEPTH = 8


def describe(obj: Any, _depth: int = 0) -> Any:
    """A JSON-serialisable description of ``obj`` that is the same in every process and run.

    Objects become ``{"class": "module.QualName", <public and private attributes>}``; tensors and
    arrays their dtype, shape and a SHA-256 of their bytes; dtypes, enums, types and functions
    their names. Nothing depends on memory addresses or hash seeds.
    """
    if obj is None or isinstance(obj, bool | int | float | str):
        return obj
    if isinstance(obj, enum.Enum):
        return f"{type(obj).__qualname__}.{obj.name}"
    if isinstance(obj, torch.dtype | np.dtype):
        return str(obj)
    if isinstance(obj, type) or inspect.isroutine(obj):
        return f"{getattr(obj, '__module__', '')}.{getattr(obj, '__qualname__', type(obj).__qualname__)}"
    if isinstance(obj, torch.Tensor | np.ndarray):
        arr = obj.detach().cpu().numpy() if isinstance(obj, torch.Tensor) else obj
        digest = hashlib.sha256(np.ascontiguousarray(arr).tobytes()).hexdigest()
        return {"array": str(arr.dtype), "shape": list(arr.shape), "sha256": digest}
    if _depth >= _MAX_DEPTH:
        return type(obj).__qualname__
    if isinstance(obj, dict):
        return {str(k): describe(v, _depth + 1) for k, v in sorted(obj.items(), key=lambda kv: str(kv[0]))}
    if isinstance(obj, list | tuple):
        return [describe(v, _depth + 1) for v in obj]
    if isinstance(obj, set | frozenset):
        return sorted((describe(v, _depth + 1) for v in obj), key=lambda d: json.dumps(d, sort_keys=True))
    name = f"{type(obj).__module__}.{type(obj).__qualname__}"
    state = getattr(obj, "__dict__", None)
    if state is None:
        return name
    return {"class": name, **{k: describe(v, _depth + 1) for k, v in sorted(state.items())}}


def transform_hash(transforms: Sequence[Callable]) -> bytes:
    """SHA-256 (hex, as bytes) of the transforms' parameters and the MONAI version.

    Pass as ``PersistentDataset(hash_transform=transform_hash)``: MONAI calls it with the
    deterministic transforms (those before the first random one) and appends the result to
    every cache file name.
    """
    text = json.dumps({"monai": monai.__version__, "transforms": describe(list(transforms))}, sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest().encode()


def item_hash(item: dict) -> bytes:
    """SHA-256 (hex, as bytes) of a datalist item plus the size and mtime of each file it names."""
    stats = {}
    for key, value in item.items():
        if isinstance(value, str) and os.path.isfile(value):
            st = os.stat(value)
            stats[key] = [st.st_size, st.st_mtime_ns]
    return pickle_hashing({"item": item, "files": stats})


class CheckedCacheDataset(CacheDataset):
    """A :class:`~monai.data.CacheDataset` that checks every item while caching and reports all bad ones at once.

    When an item's deterministic transforms (e.g. :class:`~pipeline.transforms.plausibility.CheckChestCTd`) raise an
    :class:`InputError`, the cache fill goes on. At its end, with ``refuse="run"`` (training) one
    :class:`InputErrors` lists every bad file; with ``refuse="study"`` (evaluation) each item is also header-checked
    first (:func:`~pipeline.data.imagecheck.check_image`), the bad items leave the dataset and their refusals
    (:func:`pipeline.data.refusal.refusal`) are kept in :attr:`refused`. Lungs the mask cannot hold
    (:class:`~pipeline.utils.errors.LungsNotHeld`: white lungs) are not bad files: with ``refuse="run"`` too they
    leave the dataset, each logged as a warning and kept in :attr:`refused`, and the run goes on. Other exceptions
    propagate unchanged. Items transformed at run time (``cache_rate < 1``, or a disk cache) raise as usual. Other
    arguments are those of :class:`~monai.data.CacheDataset`.
    """

    _collecting = False

    def __init__(self, *args: Any, refuse: str = "run", **kwargs: Any) -> None:
        if refuse not in REFUSE:
            raise ValueError(f"refuse must be one of {REFUSE}, got {refuse!r}")
        self.refuse = refuse
        self.refused: list[dict] = []
        super().__init__(*args, **kwargs)

    def _fill_cache(self, indices: Sequence[int] | None = None) -> list:
        self._collecting = True
        try:
            cache = super()._fill_cache(indices)
        finally:
            self._collecting = False
        bad = {i for i, item in enumerate(cache) if isinstance(item, InputError)}
        if self.refuse == "run":
            if stop := [cache[i] for i in sorted(bad) if not isinstance(cache[i], LungsNotHeld)]:
                raise InputErrors(stop)
            for i in sorted(bad):
                logger.warning("left out of this run: %s", cache[i])
        self.refused = [refusal(self.data[i], cache[i]) for i in sorted(bad)]
        if bad:
            self.data = [item for i, item in enumerate(self.data) if i not in bad]
            self.cache_num -= len(bad)
            cache = [item for i, item in enumerate(cache) if i not in bad]
        return cache

    def _load_cache_item(self, idx: int):
        try:
            if self.refuse == "study":
                check_image(self.data[idx]["image"])
            return super()._load_cache_item(idx)
        except Exception as err:
            found = find_input_error(err)
            if not self._collecting or found is None:
                raise
            return found


class PlainDataset(Dataset):
    """MONAI's :class:`~monai.data.Dataset` (no cache) with ``set_data``, like the cached datasets."""

    def set_data(self, data: Sequence) -> None:
        """Replace the items."""
        self.data = data


def cached_dataset(
    data: Sequence[dict],
    transform: Callable,
    cache: str = "memory",
    cache_dir: str | os.PathLike | None = None,
    cache_rate: float = 1.0,
    num_workers: int | None = 1,
    cache_n_trans: int | None = None,
    refuse: str = "run",
) -> Dataset:
    """A dataset that runs the deterministic part of ``transform`` once per study.

    Args:
        data: datalist items (``{"image": path, "label": int, ...}``).
        transform: the whole preprocessing, deterministic transforms first.
        cache: ``"none"`` (transform every item on every access: inference),
            ``"memory"`` (:class:`CheckedCacheDataset`: every rank holds its studies in
            RAM, and every bad study is reported at once) or ``"disk"``
            (``PersistentDataset`` files under ``cache_dir``, shared by ranks and runs).
        cache_dir: folder of the disk cache (created if missing); required for ``"disk"``.
        cache_rate: fraction of the studies held in memory (``"memory"`` only).
        num_workers: threads that fill the memory cache.
        cache_n_trans: store the output of the first ``cache_n_trans`` transforms (e.g. the
            float16 output of the deterministic steps, before a float32 cast); default: every
            transform before the first random one.
        refuse: ``"run"`` or ``"study"`` (:data:`REFUSE`). ``"study"`` with ``"memory"``: bad studies leave the
            dataset while its cache fills, their refusals in ``.refused``; with ``"none"``: a
            :class:`~pipeline.data.refusal.RefusingDataset`, whose refusals travel with the batches.

    Raises:
        ValueError: for an unknown ``cache`` or ``refuse``, ``"disk"`` without ``cache_dir``, or ``"disk"`` with
            ``refuse="study"``.
    """
    if refuse not in REFUSE:
        raise ValueError(f"refuse must be one of {REFUSE}, got {refuse!r}")
    if cache == "none":
        if refuse == "study":
            return RefusingDataset(data=data, transform=transform)
        return PlainDataset(data=data, transform=transform)
    if cache == "memory":
        return CheckedCacheDataset(
            data=data, transform=transform, cache_rate=cache_rate, num_workers=num_workers, refuse=refuse
        )
    if cache != "disk":
        raise ValueError(f"cache must be one of {CACHE_KINDS}, got {cache!r}")
    if refuse == "study":
        raise ValueError('refuse "study" needs cache "memory" or "none": a disk cache refuses the whole run')
    if cache_dir is None:
        raise ValueError('cache "disk" needs cache_dir (a folder for the cached studies)')
    kwargs = {"hash_func": item_hash, "hash_transform": transform_hash}
    if cache_n_trans is None:
        return PersistentDataset(data=data, transform=transform, cache_dir=cache_dir, **kwargs)
    return CacheNTransDataset(data, transform, cache_n_trans=cache_n_trans, cache_dir=cache_dir, **kwargs)
