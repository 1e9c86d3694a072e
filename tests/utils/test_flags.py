"""Command-line switches read the way users write them."""

from __future__ import annotations

import pytest

from pipeline.utils.flags import as_bool


@pytest.mark.parametrize("value", [True, 1, "true", "True", "YES", "on", "1"])
def test_true_words(value):
    assert as_bool(value) is True


@pytest.mark.parametrize("value", [False, 0, None, "false", "False", "no", "off", "0", ""])
def test_false_words(value):
    assert as_bool(value) is False


@pytest.mark.parametrize("value", ["maybe", 2, 0.5, [True]])
def test_other_values_are_refused(value):
    with pytest.raises(ValueError, match="tta must be true or false"):
        as_bool(value, "tta")
