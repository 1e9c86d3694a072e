"""Untrusted files: a checkpoint carrying a pickle payload is refused unexecuted; datalists stay in their data root."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from conftest import chest, infer, refused, write_nifti

from pipeline.data.cohort import read_datalist
from pipeline.engine.checkpoint import load_weights_only
from pipeline.engine.record import read, write
from pipeline.engine.resume import restore_latest
from pipeline.utils.errors import InputError


class Payload:
    """Unpickling this calls ``open(marker, "w")``: proof of code execution if the marker appears."""

    def __init__(self, marker: Path) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A ``model.pt`` that holds weights and, beside them, a payload that creates ``marker`` when unpickled."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"weight": torch.zeros(2), "payload": Payload(marker)}, path)
    assert not marker.exists()
    return path


def test_the_payload_is_live_when_loaded_unsafely(tmp_path):
    """Control: without ``weights_only`` the file really runs code, so the tests below can fail."""
    path = malicious_checkpoint(tmp_path / "model.pt", tmp_path / "pwned")
    torch.load(path, weights_only=False)  # the payload only creates an empty file
    assert (tmp_path / "pwned").exists()


def test_load_weights_only_refuses_the_payload(tmp_path):
    path = malicious_checkpoint(tmp_path / "model.pt", tmp_path / "pwned")
    with pytest.raises(InputError, match="refused to load: not plain weights") as err:
        load_weights_only(path)
    assert err.value.path == str(path) and not (tmp_path / "pwned").exists()
    with pytest.raises(InputError, match="checkpoint not found"):
        load_weights_only(tmp_path / "missing.pt")
    (tmp_path / "cut.pt").write_bytes(path.read_bytes()[:100])
    with pytest.raises(InputError, match="not a readable PyTorch checkpoint"):
        load_weights_only(tmp_path / "cut.pt")


def test_resume_refuses_a_malicious_state_file(tmp_path):
    malicious_checkpoint(tmp_path / "state_checkpoint_epoch=3.pt", tmp_path / "pwned")
    with pytest.raises(InputError, match="refused to load"):
        restore_latest(tmp_path, {"model": torch.nn.Linear(1, 1)})
    assert not (tmp_path / "pwned").exists()


@pytest.mark.slow
def test_bundle_inference_refuses_a_malicious_model_without_running_it(tmp_path, untrained_bundle):
    marker = tmp_path / "pwned"
    model = untrained_bundle / "models" / "model.pt"
    record = read(model)
    malicious_checkpoint(model, marker)
    write(model, record)  # whoever made the file can tie a record to it: the weights are still read safely
    image = write_nifti(tmp_path / "scan.nii.gz", *chest())
    proc = infer(untrained_bundle, image, tmp_path / "out")
    refused(proc, [f"{untrained_bundle / 'models' / 'model.pt'}: refused to load: not plain weights"])
    assert not marker.exists() and not (tmp_path / "out").exists()


def _datalist(folder: Path, image: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "datalist.json").write_text(json.dumps({"testing": [{"image": image}]}))
    return folder / "datalist.json"


def test_datalist_paths_cannot_escape_the_data_root(tmp_path):
    data = tmp_path / "data"
    escape = "../" * len(data.parts) + "etc/passwd"
    with pytest.raises(InputError, match="lies outside the data root"):
        read_datalist(_datalist(data, escape), root=data)
    with pytest.raises(InputError, match="lies outside the data root"):
        read_datalist(_datalist(data, "/etc/passwd"), root=data)
    os.symlink("/etc", data / "link")  # a link inside the root that leads out of it
    with pytest.raises(InputError, match="lies outside the data root"):
        read_datalist(_datalist(data, "link/passwd"), root=data)
    assert read_datalist(_datalist(data, escape))["testing"][0]["image"] == "/etc/passwd"


@pytest.mark.slow
def test_bundle_refuses_a_datalist_leaving_its_data_root_unless_asked(tmp_path, untrained_bundle):
    datalist = _datalist(tmp_path / "data", "../" * len(tmp_path.parts) + "etc/passwd")
    args = ("--datalist", str(datalist))
    refused(infer(untrained_bundle, tmp_path, tmp_path / "out", *args), ["lies outside the data root"])
    # asked to allow it, the run gets as far as the header check of /etc/passwd
    proc = infer(untrained_bundle, tmp_path, tmp_path / "out", *args, "--allow_outside_data_root", "true")
    refused(proc, ["/etc/passwd: unsupported file type"])
