"""Bad input ends a bundle run with one clean message, never a bare traceback; batches go on past bad studies.

Policy. Training meets every input before it commits to an answer: header problems are found by
:mod:`pipeline.data.imagecheck` for all files at once (with the content problems of the other files when there are
any), content problems (:mod:`pipeline.transforms.plausibility`) while a
:class:`~pipeline.data.cache.CheckedCacheDataset` fills its cache, again for all files at once. Either way the run
is refused with :class:`~pipeline.utils.errors.InputErrors` listing every bad file, and no checkpoint is written.

Inference and evaluation go on past a bad study (:mod:`pipeline.data.refusal`): each bad study gets a row with
status ``refused`` and its reason in ``predictions.csv``/``.json``, the good ones their predictions (status
``ok``), and :func:`finish`, the configs' last step, prints ``error: <file>: <problem>`` for each refused study
and sets the exit status.

Exit statuses (``python -m monai.bundle run ...`` and ``python -m pipeline infer``):

- ``0`` (:data:`EXIT_OK`): every study was predicted.
- ``2`` (:data:`EXIT_BAD_INPUT`): refused: bad input stopped the run (a training cohort with bad files, a bad
  config value, no studies), or no study of a batch could be predicted (every row ``refused``).
- ``3`` (:data:`EXIT_PARTIAL`): partial: some studies were predicted, others refused (rows ``refused``).

``python -m monai.bundle`` is a Fire CLI that prints a traceback for any exception, and MONAI wraps
errors raised in configs and transforms in ``RuntimeError("Failed to evaluate ...")`` /
``RuntimeError("applying transform ...")``. :func:`install`, called from a bundle's ``initialize``
(the first id ``monai.bundle run`` evaluates), replaces ``sys.excepthook`` so that an exception with an
:class:`~pipeline.utils.errors.InputError` anywhere in its chain prints ``error: <file>: <problem>`` and exits
with status 2; other exceptions keep their traceback.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

from pipeline.utils.errors import find_input_error

__all__ = ["EXIT_BAD_INPUT", "EXIT_OK", "EXIT_PARTIAL", "exit_status", "finish", "install"]

#: Exit status of a run whose studies were all predicted.
EXIT_OK = 0
#: Exit status of a run refused for bad input, or of a batch none of whose studies could be predicted
#: (argparse's status for a bad command line).
EXIT_BAD_INPUT = 2
#: Exit status of a batch that predicted some studies and refused others.
EXIT_PARTIAL = 3


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


def exit_status(statuses: list[str]) -> int:
    """:data:`EXIT_OK`, :data:`EXIT_PARTIAL` or :data:`EXIT_BAD_INPUT` for the row statuses of a batch."""
    refused = sum(s == "refused" for s in statuses)
    if not refused:
        return EXIT_OK
    return EXIT_BAD_INPUT if refused == len(statuses) else EXIT_PARTIAL


def finish(output_dir: str | os.PathLike) -> None:
    """End a batch run: ``error: <file>: <reason>`` on stderr for each refused row of ``predictions.json``.

    Returns when every study was predicted; otherwise raises ``SystemExit`` with :data:`EXIT_PARTIAL` (some
    predicted) or :data:`EXIT_BAD_INPUT` (none), after a summary line. (A run whose evaluator never ran writes
    its table first: :func:`pipeline.evaluation.writer.write_refusals`.)
    """
    table = Path(output_dir) / "predictions.json"
    rows = json.loads(table.read_text(encoding="utf-8"))
    refused = [r for r in rows if r.get("status") == "refused"]
    status = exit_status([r.get("status", "ok") for r in rows])
    if status == EXIT_OK:
        return
    sys.stdout.flush()
    for row in refused:
        print(f"error: {row['image']}: {row['reason']}", file=sys.stderr)
    kind = "partial" if status == EXIT_PARTIAL else "refused"
    print(f"{kind}: {len(refused)} of {len(rows)} studies refused (status refused in the table)", file=sys.stderr)
    sys.stderr.flush()
    raise SystemExit(status)
