"""Bad input ends a bundle run with one clean message, never a bare traceback.

Policy: a run meets every input before it commits to an answer. Header problems are found by
:mod:`pipeline.data.imagecheck` for all files at once; content problems (:mod:`pipeline.transforms.plausibility`)
are found while a :class:`~pipeline.data.cache.CheckedCacheDataset` fills its cache, again for all files at once. Either
way the run is refused with :class:`~pipeline.utils.errors.InputErrors` listing every bad file, and no
prediction, metric or checkpoint is written for it.

``python -m monai.bundle`` is a Fire CLI that prints a traceback for any exception, and MONAI wraps
errors raised in configs and transforms in ``RuntimeError("Failed to evaluate ...")`` /
``RuntimeError("applying transform ...")``. :func:`install`, called from a bundle's ``initialize``
(the first id ``monai.bundle run`` evaluates), replaces ``sys.excepthook`` so that an exception with an
:class:`~pipeline.utils.errors.InputError` anywhere in its chain prints ``error: <file>: <problem>`` and exits
with status 2; other exceptions keep their traceback.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from types import TracebackType

from pipeline.utils.errors import InputError

__all__ = ["EXIT_BAD_INPUT", "find_input_error", "install"]

#: Exit status of a run refused for bad input (argparse's status for a bad command line).
EXIT_BAD_INPUT = 2


def find_input_error(err: BaseException | None) -> InputError | None:
    """The first :class:`InputError` in ``err``'s chain (``__cause__``, then ``__context__``), or ``None``."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, InputError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None


def _excepthook(previous: Callable) -> Callable:
    def hook(kind: type[BaseException], err: BaseException, tb: TracebackType | None) -> None:
        found = find_input_error(err)
        if found is None:
            previous(kind, err, tb)
            return
        sys.stdout.flush()
        print(f"error: {found}", file=sys.stderr, flush=True)
        # the interpreter exits with status 1 after any excepthook; leave now with the documented status
        os._exit(EXIT_BAD_INPUT)

    hook.pipeline_guard = True  # type: ignore[attr-defined]
    return hook


def install() -> None:
    """Make an uncaught exception caused by bad input print ``error: <file>: <problem>`` and exit with status 2.

    Idempotent; other exceptions go to the hook that was installed before.
    """
    if not getattr(sys.excepthook, "pipeline_guard", False):
        sys.excepthook = _excepthook(sys.excepthook)
