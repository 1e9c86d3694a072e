"""pipeline.utils.guard: the documented exit statuses of batch runs."""

from __future__ import annotations

import json

import pytest

from pipeline.utils.guard import EXIT_BAD_INPUT, EXIT_OK, EXIT_PARTIAL, exit_status, finish


def test_exit_status_of_a_batch():
    assert (EXIT_OK, EXIT_BAD_INPUT, EXIT_PARTIAL) == (0, 2, 3)
    assert exit_status(["ok", "ok"]) == EXIT_OK
    assert exit_status(["ok", "refused"]) == EXIT_PARTIAL
    assert exit_status(["refused", "refused"]) == EXIT_BAD_INPUT


def test_finish_names_every_refused_study_and_exits_partial(tmp_path, capsys):
    rows = [
        {"image": "/d/a.nii.gz", "status": "ok", "reason": ""},
        {"image": "/d/b.nii.gz", "status": "refused", "reason": "the volume is constant (-1000)"},
        {"image": "/d/c", "status": "refused", "reason": "no usable axial CT series"},
    ]
    (tmp_path / "predictions.json").write_text(json.dumps(rows))
    with pytest.raises(SystemExit) as stop:
        finish(tmp_path)
    assert stop.value.code == EXIT_PARTIAL
    err = capsys.readouterr().err.splitlines()
    assert err == [
        "error: /d/b.nii.gz: the volume is constant (-1000)",
        "error: /d/c: no usable axial CT series",
        "partial: 2 of 3 studies refused (status refused in the table)",
    ]
    (tmp_path / "predictions.json").write_text(json.dumps(rows[:1]))
    assert finish(tmp_path) is None and capsys.readouterr().err == ""
