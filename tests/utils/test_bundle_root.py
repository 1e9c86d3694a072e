"""The bundle root follows the config file named on the command line."""

from __future__ import annotations

import os

from pipeline.utils.bundle_root import from_argv


def test_bundle_root_from_config_file_forms(tmp_path):
    train = str(tmp_path / "b" / "configs" / "train.json")
    expected = str(tmp_path / "b")
    assert from_argv(["-m", "run", "training", "--config_file", train]) == expected
    assert from_argv([f"--config_file={train}"]) == expected
    assert from_argv(["--config_file", f"['{train}','{tmp_path}/b/configs/evaluate.json']"]) == expected
    assert from_argv(["--config_file", str(tmp_path / "flat" / "train.json")]) == str(tmp_path / "flat")


def test_bundle_root_falls_back_to_cwd():
    assert from_argv(["run", "--epochs", "2"]) == "."
    assert os.path.isabs(from_argv(["--config_file", "configs/train.json"]))
