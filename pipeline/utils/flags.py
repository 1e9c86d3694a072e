"""Boolean bundle ids given on the command line.

``python -m monai.bundle run ... --tta false`` hands the config the *string* ``"false"`` (Fire parses
only Python literals such as ``False``), and a non-empty string is true in Python. Configs therefore
read their switches through :func:`as_bool`.
"""

from __future__ import annotations

_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0", "none", ""}


def as_bool(value: object, name: str = "flag") -> bool:
    """``True``/``False`` for a bool, 0/1, ``None`` or a word (true/false, yes/no, on/off, 1/0, any case).

    Raises:
        ValueError: for anything else, naming the id.
    """
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in _TRUE | _FALSE:
        return value.strip().lower() in _TRUE
    raise ValueError(f"{name} must be true or false, got {value!r}")
