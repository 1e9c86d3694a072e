"""MONAI Label integration: a real MONAI Label 0.8.5 server serves and trains the bundle.

MONAI Label runs in its own virtual environment (it needs numpy<2, pydicom<3 and torch 2.14.1 with
torchvision), built on first use by ``scripts/monailabel_env.sh`` (a no-op once built; about 10 minutes
and 6 GB the first time). ``MONAILABEL_VENV`` names that venv (default ``<repo>/.venv-monailabel``);
``SKIP_MONAILABEL=1`` skips these tests (CI does not set it).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from conftest import REPO, chest, run_bundle, write_nifti

pytestmark = pytest.mark.slow

ML_VENV = Path(os.environ.get("MONAILABEL_VENV", REPO / ".venv-monailabel"))
MODEL = "chest_ct_pneumonia_classification"
#: The scans served: two of each class, named after their category.
STUDIES = {"CT-0": ("normal", 2), "CT-3": ("pneumonia", 2)}
#: A scan served beside them that the bundle refuses on its content.
REFUSED_SCAN = "bad_constant"
READY_TIMEOUT_S = 60.0


@pytest.fixture(scope="module")
def monailabel_python() -> Path:
    """The Python of MONAI Label's venv, built when missing."""
    if os.environ.get("SKIP_MONAILABEL") == "1":
        pytest.skip("SKIP_MONAILABEL=1")
    subprocess.run(["bash", str(REPO / "scripts" / "monailabel_env.sh"), str(ML_VENV)], check=True, timeout=3600)
    return ML_VENV / "bin" / "python"


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def request(
    url: str, method: str = "GET", json_body: dict | None = None, form: dict | None = None, timeout: float = 300
) -> dict:
    """Send ``json_body`` as JSON or ``form`` URL-encoded (or nothing) and decode the JSON answer.

    HTTP errors raise with the server's detail.
    """
    if json_body is not None:
        data, ctype = json.dumps(json_body).encode(), "application/json"
    else:
        data, ctype = urllib.parse.urlencode(form or {}).encode(), "application/x-www-form-urlencoded"
    req = urllib.request.Request(
        url, data=data if method != "GET" else None, method=method, headers={"Content-Type": ctype}
    )
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return json.loads(resp.read())
    except urllib.error.HTTPError as e:
        raise AssertionError(f"{method} {url} -> HTTP {e.code}: {e.read()[:2000]!r}") from e


def wait_ready(url: str, proc: subprocess.Popen, log: Path) -> dict:
    """Poll ``url/info/`` until it answers (at most :data:`READY_TIMEOUT_S`); fail if the server exits."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"MONAI Label exited with {proc.returncode}:\n{log.read_text()[-5000:]}")
        try:
            return request(f"{url}/info/", timeout=5)
        except (urllib.error.URLError, ConnectionError, TimeoutError):
            time.sleep(0.5)
    raise AssertionError(f"MONAI Label not ready after {READY_TIMEOUT_S} s:\n{log.read_text()[-5000:]}")


@pytest.fixture(scope="module")
def bundle(trained_bundle, tmp_path_factory) -> Path:
    """A private copy of the trained bundle (training through MONAI Label rewrites its ``models/model.pt``)."""
    dst = tmp_path_factory.mktemp("ml_models") / MODEL
    shutil.copytree(trained_bundle, dst, ignore=shutil.ignore_patterns("eval", "logs"))
    return dst


@pytest.fixture(scope="module")
def studies(tiny_cohort, tmp_path_factory) -> Path:
    """A MONAI Label studies folder: synthetic NIfTI scans of both classes, and one constant volume."""
    folder = tmp_path_factory.mktemp("ml_studies")
    for category, (_, n) in STUDIES.items():
        for src in sorted((tiny_cohort / "studies" / category).glob("*.nii.gz"))[:n]:
            shutil.copy(src, folder / f"{category}_{src.name}")
    volume, affine = chest(seed=0)
    write_nifti(folder / f"{REFUSED_SCAN}.nii.gz", np.full(volume.shape, -1000, np.int16), affine)
    return folder


@pytest.fixture(scope="module")
def server(monailabel_python, bundle, studies, tmp_path_factory) -> Iterator[str]:
    """A MONAI Label server on 127.0.0.1 serving :func:`bundle`; its base URL. Stopped (process group) at the end."""
    url_port = free_port()
    log = tmp_path_factory.mktemp("ml_server") / "server.log"
    cmd = [
        str(monailabel_python), "-m", "monailabel.main", "start_server",
        "--app", str(REPO / "monailabel" / "app"), "--studies", str(studies),
        "--host", "127.0.0.1", "--port", str(url_port),
        "--conf", "model_dir", str(bundle.parent), "--conf", "models", MODEL,
        "--conf", "zoo_source", "github", "--conf", "sam2", "false",
    ]  # fmt: skip
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=log.parent, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{url_port}"
        info = wait_ready(url, proc, log)
        assert info["models"][MODEL]["type"] == "classification", info["models"]
        assert MODEL in info["trainers"] and info["bundles"][MODEL] == str(bundle)
        yield url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def bundle_probabilities(bundle: Path, scan: Path, out: Path) -> dict[str, float]:
    """The bundle's own prediction for ``scan``: ``{"normal": p, "pneumonia": p}`` from ``inference.json``."""
    run_bundle(
        "run", "--config_file", str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
        "--dataset_dir", str(scan), "--output_dir", str(out),
    )  # fmt: skip
    (row,) = json.loads((out / "predictions.json").read_text())
    return {"normal": row["prob_normal"], "pneumonia": row["prob_pneumonia"]}


def served_probabilities(url: str, image_id: str) -> dict[str, float]:
    """MONAI Label's ``/infer`` scores for datastore image ``image_id``, by class name."""
    res = request(f"{url}/infer/{MODEL}?image={image_id}&output=json", method="POST", form={"params": "{}"})
    assert [p["idx"] for p in res["prediction"]] == [0, 1], res
    return {p["label"]: p["score"] for p in res["prediction"]}


def assert_same_scores(url: str, bundle: Path, studies: Path, out: Path) -> None:
    scan = sorted(studies.glob("CT-3_*.nii.gz"))[0]
    served = served_probabilities(url, scan.name.removesuffix(".nii.gz"))
    own = bundle_probabilities(bundle, scan, out)
    assert served == pytest.approx(own, abs=1e-4)
    assert sum(served.values()) == pytest.approx(1.0, abs=1e-5)


def test_infer_matches_bundle_prediction(server, bundle, studies, tmp_path):
    assert_same_scores(server, bundle, studies, tmp_path)


def test_a_refused_scan_is_answered_422_with_the_reason(server):
    url = f"{server}/infer/{MODEL}?image={REFUSED_SCAN}&output=json"
    body = urllib.parse.urlencode({"params": "{}"}).encode()
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(urllib.request.Request(url, data=body, method="POST"), timeout=300)
    assert err.value.code == 422
    detail = json.loads(err.value.read())["detail"]
    assert detail.startswith("refused: ") and f"{REFUSED_SCAN}.nii.gz: the volume is constant" in detail


def test_train_rewrites_checkpoint_and_infer_follows(server, bundle, studies, tmp_path):
    for scan in studies.glob("CT-*.nii.gz"):
        image_id = scan.name.removesuffix(".nii.gz")
        info = json.dumps({"class": STUDIES[image_id[:4]][0]})
        request(f"{server}/datastore/image/info?image={image_id}", method="PUT", form={"info": info})
    ckpt = bundle / "models" / "model.pt"
    before = ckpt.read_bytes()
    params = {"max_epochs": 1, "val_split": 0.5, "device": "cpu", "multi_gpu": False}
    request(f"{server}/train/{MODEL}?run_sync=true", method="POST", json_body=params, timeout=600)
    assert ckpt.read_bytes() != before
    assert_same_scores(server, bundle, studies, tmp_path)
