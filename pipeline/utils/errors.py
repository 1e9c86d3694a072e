"""Errors reported to users: each names the file (or config key) and the problem."""

from __future__ import annotations

import os


class InputError(ValueError):
    """A bad input file or folder.

    Args:
        path: the offending file or folder.
        problem: what is wrong with it, in words a user can act on.
    """

    def __init__(self, path: str | os.PathLike, problem: str) -> None:
        self.path = os.fspath(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class LungsNotHeld(InputError):
    """A chest CT whose lungs the lung mask cannot hold (dense lung it cannot find: a white lung).

    Never predicted on what the mask keeps: evaluation and inference refuse the study; a training cohort leaves it
    out and goes on (its lesion targets and input would be those of the lung that is left), naming it.
    """


class InputErrors(InputError):
    """Several bad inputs found in one pass; the message lists every one of them."""

    def __init__(self, errors: list[InputError]) -> None:
        self.errors = list(errors)
        lines = "\n".join(f"  - {e}" for e in self.errors)
        ValueError.__init__(self, f"{len(self.errors)} bad input(s):\n{lines}")
        self.path = self.errors[0].path if self.errors else ""
        self.problem = str(self)


def find_input_error(err: BaseException | None) -> InputError | None:
    """The first :class:`InputError` in ``err``'s chain (``__cause__``, then ``__context__``), or ``None``."""
    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        if isinstance(err, InputError):
            return err
        seen.add(id(err))
        err = err.__cause__ or err.__context__
    return None
