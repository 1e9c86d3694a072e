"""Batches that go on past bad studies: a bad study is refused, not the run.

A refused study is a *refusal*: its datalist item (plain values only) plus ``"reason"``, the problem in words
(header and content problems alike: :mod:`pipeline.data.imagecheck`, :mod:`pipeline.transforms.plausibility`).
:class:`~pipeline.evaluation.writer.PredictionWriter` writes it as a row with status ``refused``, and
:func:`pipeline.utils.guard.finish` sets the run's exit status.

Streaming inference (one study at a time, memory flat over any number of studies) passes refusals with the
batches: :class:`RefusingDataset` returns ``{REFUSED: refusal}`` for a bad study, :func:`collate_refusals` gathers
them beside the good items, and :func:`skip_refused`, the evaluator's ``iteration_update``, runs the network on the
good items only and leaves the refusals in ``engine.state.refused``. A memory-cached evaluation finds them while
its cache fills instead (:class:`~pipeline.data.cache.CheckedCacheDataset` with ``refuse="study"``).
"""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from ignite.engine import Engine
from monai.data import Dataset, list_data_collate

from pipeline.data.imagecheck import check_image
from pipeline.utils.errors import InputError, find_input_error

#: Key of a refused study in a dataset item and in a collated batch.
REFUSED = "refused"


def refusal(item: Mapping[Hashable, Any], err: InputError) -> dict[str, Any]:
    """The refusal of datalist ``item`` for ``err``: the item's plain values plus ``"reason"``.

    The reason is the problem alone when ``err`` names the item's image, ``"<file>: <problem>"`` when it names a
    file inside it (a slice of a DICOM series).
    """
    plain = {str(k): v for k, v in item.items() if v is None or isinstance(v, str | int | float | bool)}
    image = os.fspath(item.get("image", ""))
    same = os.path.abspath(err.path) == os.path.abspath(image)
    return {**plain, "image": image, "reason": err.problem if same else str(err)}


def refuse_or_raise(item: Mapping[Hashable, Any], err: BaseException) -> dict[str, Any]:
    """The refusal of ``item`` when ``err`` comes from bad input (an :class:`InputError` in its chain); else raise."""
    found = find_input_error(err)
    if found is None:
        raise err
    return refusal(item, found)


class RefusingDataset(Dataset):
    """A MONAI :class:`~monai.data.Dataset` (no cache) that refuses a bad study instead of raising.

    Each item's image is header-checked (:func:`~pipeline.data.imagecheck.check_image`), then transformed; bad
    input anywhere in that returns ``{REFUSED: refusal}`` (see :func:`refusal`). Other exceptions propagate.
    """

    def set_data(self, data: Sequence) -> None:
        """Replace the items."""
        self.data = data

    def _transform(self, index: int) -> Any:
        item = self.data[index]
        try:
            check_image(item["image"])
            return super()._transform(index)
        except Exception as err:
            return {REFUSED: refuse_or_raise(item, err)}


def collate_refusals(batch: Sequence[Mapping]) -> dict:
    """MONAI's ``list_data_collate`` of the good items, with the refusals as a list under :data:`REFUSED`."""
    good = [b for b in batch if REFUSED not in b]
    collated = dict(list_data_collate(good)) if good else {}
    collated[REFUSED] = [b[REFUSED] for b in batch if REFUSED in b]
    return collated


def skip_refused(engine: Engine, batch: dict) -> Any:
    """``iteration_update`` of a MONAI ``SupervisedEvaluator``: its own iteration on the good items of ``batch``.

    The batch's refusals go to ``engine.state.refused`` (a list, empty when there are none); a batch of
    refusals only runs nothing and leaves an empty output.
    """
    engine.state.refused = batch.pop(REFUSED, [])
    if not batch:
        return []
    return engine._iteration(engine, batch)
