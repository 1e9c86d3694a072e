"""Bad input, through the header checks, the bundle's preprocessing and ``python -m monai.bundle`` itself.

Policy: a run with bad input is refused with ``error: <file>: <problem>`` lines naming every bad file
(exit status 2, no traceback); training writes no checkpoint, inference and evaluation write a ``refused`` row
for each bad study (batches that go on past bad studies: ``tests/deploy/test_batch.py``). Names with spaces and
non-ASCII letters simply work.
"""

from __future__ import annotations

import gzip
import json
import os
import re
import shutil
import sys
import time
import tracemalloc
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
import torch
from conftest import BUNDLE, TINY, chest, infer, refused, run_bundle, write_nifti
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.transforms import Compose

from pipeline.data.cache import CheckedCacheDataset
from pipeline.data.cohort import discover
from pipeline.data.imagecheck import check_image, check_images
from pipeline.synth.generate import generate_cohort
from pipeline.utils.errors import InputError, InputErrors, find_input_error
from pipeline.utils.guard import install

PNG = b"\x89PNG\r\n\x1a\n" + b"\x00\x00\x00\rIHDR" + bytes(17)
IS_ROOT = hasattr(os, "geteuid") and os.geteuid() == 0


def _copy_dicom(dest: Path, files: list[Path], new_series: bool = False) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    uid = pydicom.uid.generate_uid()
    for f in files:
        ds = pydicom.dcmread(f)
        if new_series:
            ds.SeriesInstanceUID = uid
        ds.save_as(dest / f"{f.stem}{'_b' if new_series else ''}.dcm")
    return dest


def write_header_corpus(folder: Path, series: Path) -> dict[str, str]:
    """Files whose headers (or bytes) are wrong, in ``folder`` (DICOM ones from ``series``); returns name -> problem."""
    folder.mkdir(parents=True, exist_ok=True)
    good = write_nifti(folder / "good_source.nii.gz", np.zeros((16, 16, 8), np.int16)).read_bytes()
    (folder / "good_source.nii.gz").unlink()
    (folder / "zero_byte.nii.gz").write_bytes(b"")
    (folder / "truncated.nii.gz").write_bytes(good[: len(good) // 2])
    (folder / "text.nii.gz").write_text("patient list, not an image\n")
    (folder / "picture.nii.gz").write_bytes(PNG)
    write_nifti(folder / "flat2d.nii.gz", np.zeros((16, 16), np.int16))
    write_nifti(folder / "series4d.nii.gz", np.zeros((8, 8, 8, 3), np.int16))
    header = nib.Nifti1Header()
    header.set_data_dtype(np.int16)
    header.set_data_shape((30000, 30000, 30000))
    header["vox_offset"] = 352
    (folder / "enormous.nii.gz").write_bytes(gzip.compress(header.binaryblock + bytes(4) + bytes(64)))
    (folder / "broken_link.nii.gz").symlink_to(folder / "gone.nii.gz")
    _copy_dicom(folder / "two_series", sorted(series.glob("*.dcm")))
    _copy_dicom(folder / "two_series", sorted(series.glob("*.dcm")), new_series=True)
    _copy_dicom(folder / "one_slice", sorted(series.glob("*.dcm"))[:1])
    expected = {
        "zero_byte.nii.gz": "empty (0 bytes)",
        "truncated.nii.gz": "truncated",
        "text.nii.gz": "not gzip-compressed",
        "picture.nii.gz": "not gzip-compressed",
        "flat2d.nii.gz": "expected a 3D volume",
        "series4d.nii.gz": "expected a 3D volume",
        "enormous.nii.gz": "over the",
        "broken_link.nii.gz": "broken symbolic link",
        "two_series": "holds 2 series",
        "one_slice": "fewer than 16 slices",
    }
    if not IS_ROOT:  # root reads any file whatever its mode
        write_nifti(folder / "unreadable.nii.gz", np.zeros((8, 8, 8), np.int16)).chmod(0)
        expected["unreadable.nii.gz"] = "not readable"
    return expected


def write_content_corpus(folder: Path, abdomen: Path) -> dict[str, str]:
    """Files with sound headers but content that is not a chest CT in HU (``abdomen`` too); returns name -> problem."""
    volume, affine = chest(seed=1)
    nan = volume.astype(np.float32)
    nan[10:12, 10:12, 3] = np.nan
    inf = volume.astype(np.float32)
    inf[5, 5, 5] = np.inf
    write_nifti(folder / "nan.nii.gz", nan, affine)
    write_nifti(folder / "inf.nii.gz", inf, affine)
    write_nifti(folder / "constant.nii.gz", np.full(volume.shape, -1000, np.int16), affine)
    mri = (np.clip(volume, -1000, 1000) + 1000) * 2  # MR-like: non-negative, no air at -1000
    write_nifti(folder / "mri_like.nii.gz", mri.astype(np.int16), affine)
    shutil.copy(abdomen, folder / "abdomen.nii.gz")
    return {
        "nan.nii.gz": "NaN or infinite",
        "inf.nii.gz": "NaN or infinite",
        "constant.nii.gz": "constant",
        "mri_like.nii.gz": "no air",
        "abdomen.nii.gz": "not a chest CT",
    }


def preprocessing(**overrides) -> Compose:
    """The training config's deterministic transforms (``train.json``), built with MONAI's ConfigParser."""
    parser = ConfigParser()
    parser.read_config(str(BUNDLE / "configs" / "train.json"))
    for key, value in {"spatial_size": [32, 32, 16], **overrides}.items():
        parser[key] = value
    return Compose(parser.get_parsed_content("deterministic_transforms"))


# --- fast, in process -----------------------------------------------------------------------------------


def test_every_header_problem_is_refused_with_its_reason(tmp_path, real_series):
    expected = write_header_corpus(tmp_path, real_series)
    for name, problem in expected.items():
        with pytest.raises(InputError, match=re.escape(problem)) as err:
            check_image(tmp_path / name)
        assert err.value.path == str(tmp_path / name)
    with pytest.raises(InputErrors) as err:
        check_images([tmp_path / name for name in expected])
    assert len(err.value.errors) == len(expected)


def test_enormous_header_is_refused_before_allocating(tmp_path, real_series):
    write_header_corpus(tmp_path, real_series)
    tracemalloc.start()
    with pytest.raises(InputError, match="27,000,000,000,000 voxels"):
        check_image(tmp_path / "enormous.nii.gz")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 20 * 2**20, f"{peak / 2**20:.0f} MiB allocated"


def test_duplicate_study_ids_and_label_rows_without_files(tmp_path):
    write_nifti(tmp_path / "a" / "CT-0" / "study_0001.nii.gz", np.zeros((8, 8, 4), np.int16))
    write_nifti(tmp_path / "a" / "CT-2" / "study_0001.nii", np.zeros((8, 8, 4), np.int16))
    with pytest.raises(InputError, match=r"duplicate study ids \['study_0001'\]"):
        discover(tmp_path / "a")
    write_nifti(tmp_path / "b" / "scan one.nii.gz", np.zeros((8, 8, 4), np.int16))
    (tmp_path / "labels.csv").write_text("image,label\nscan one.nii.gz,0\nmissing.nii.gz,1\n")
    with pytest.raises(InputError, match=r"1 row\(s\) name files that do not exist.*row 3: .*missing.nii.gz"):
        discover(tmp_path / "b", tmp_path / "labels.csv")


def test_the_configured_preprocessing_refuses_implausible_content(tmp_path, real_abdomen):
    expected = write_content_corpus(tmp_path, real_abdomen)
    transform = preprocessing()
    for name, problem in expected.items():
        with pytest.raises(Exception) as err:  # MONAI wraps what a transform raises in a RuntimeError
            transform({"image": str(tmp_path / name)})
        found = find_input_error(err.value)
        assert found is not None and problem in found.problem and found.path.endswith(name), repr(err.value)
    volume, affine = chest(seed=1)
    out = transform({"image": str(write_nifti(tmp_path / "good.nii.gz", volume, affine))})
    assert out["image"].shape == (1, 32, 32, 16)


def test_cache_fill_lists_every_implausible_file_at_once(tmp_path, real_abdomen):
    expected = write_content_corpus(tmp_path, real_abdomen)
    volume, affine = chest(seed=1)
    items = [{"image": str(write_nifti(tmp_path / "good.nii.gz", volume, affine))}]
    items += [{"image": str(tmp_path / name)} for name in expected]
    with pytest.raises(InputErrors) as err:
        CheckedCacheDataset(items, preprocessing(), cache_rate=1.0, num_workers=2, progress=False)
    assert sorted(Path(e.path).name for e in err.value.errors) == sorted(expected)


def _wrapped(err: Exception) -> RuntimeError:
    """``err`` wrapped the way MONAI does: a transform error inside a config-evaluation error."""
    try:
        try:
            raise err
        except Exception as inner:
            raise RuntimeError("applying transform") from inner
    except RuntimeError as outer:
        try:
            raise RuntimeError("Failed to evaluate") from outer
        except RuntimeError as wrapped:
            return wrapped


def test_guard_prints_the_input_error_and_exits_2_other_errors_go_to_the_previous_hook(monkeypatch, capsys):
    calls = []
    monkeypatch.setattr(sys, "excepthook", lambda *args: calls.append(args))
    monkeypatch.setattr(os, "_exit", lambda status: calls.append(status))
    install()
    install()
    err = _wrapped(InputError("scan ü.nii.gz", "bad"))
    assert find_input_error(err) is err.__cause__.__cause__
    sys.excepthook(type(err), err, err.__traceback__)
    assert capsys.readouterr().err == "error: scan ü.nii.gz: bad\n" and calls == [2]
    bug = _wrapped(ValueError("a bug"))
    assert find_input_error(bug) is None
    sys.excepthook(type(bug), bug, bug.__traceback__)
    assert calls[1] == (RuntimeError, bug, bug.__traceback__) and capsys.readouterr().err == ""


# --- through python -m monai.bundle ------------------------------------------------------------------------


@pytest.mark.slow
def test_training_refuses_a_cohort_listing_every_bad_file(real_series, tmp_path, tiny_cohort):
    cohort = tmp_path / "cohort"
    shutil.copytree(tiny_cohort / "studies", cohort / "studies")
    expected = write_header_corpus(cohort / "studies" / "CT-0", real_series)
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("eval", "logs", "models"))
    proc = run_bundle(
        "run", "training", "--config_file", str(bundle / "configs" / "train.json"), "--bundle_root", str(bundle),
        "--dataset_dir", str(cohort), *TINY, check=False,
    )  # fmt: skip
    refused(proc, list(expected))
    assert f"error: {len(expected)} bad input(s)" in proc.stderr
    assert not (bundle / "models").exists() and not (bundle / "logs").exists()


@pytest.mark.slow
def test_training_refuses_implausible_content_listing_every_file(real_abdomen, tmp_path, tiny_cohort):
    data = tmp_path / "data"
    expected = write_content_corpus(data, real_abdomen)
    good = sorted((tiny_cohort / "studies").glob("CT-[02]/*.nii.gz"))[:8]
    datalist = {
        "training": [{"image": str(p), "label": int("CT-2" in str(p))} for p in good[:6]]
        + [{"image": name, "label": i % 2} for i, name in enumerate(expected)],
        "validation": [{"image": str(p), "label": int("CT-2" in str(p))} for p in good[6:]],
    }
    (data / "datalist.json").write_text(json.dumps(datalist))
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle, ignore=shutil.ignore_patterns("eval", "logs", "models"))
    proc = run_bundle(
        "run", "training", "--config_file", str(bundle / "configs" / "train.json"), "--bundle_root", str(bundle),
        "--datalist", str(data / "datalist.json"), "--allow_outside_data_root", "true", *TINY, check=False,
    )  # fmt: skip
    refused(proc, list(expected))
    assert not (bundle / "models" / "model.pt").exists()


@pytest.mark.slow
def test_evaluation_refuses_implausible_content_and_writes_nothing(tmp_path, untrained_bundle, real_abdomen):
    cohort = tmp_path / "cohort" / "CT-0"
    expected = write_content_corpus(cohort, real_abdomen)
    configs = untrained_bundle / "configs"
    proc = run_bundle(
        "run", "--config_file", f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']",
        "--bundle_root", str(untrained_bundle), "--dataset_dir", str(cohort.parent),
        "--output_dir", str(tmp_path / "eval"), *TINY, check=False,
    )  # fmt: skip
    refused(proc, list(expected))  # every study refused: status 2, a refused row each, no metrics
    rows = json.loads((tmp_path / "eval" / "predictions.json").read_text())
    assert sorted(Path(r["image"]).name for r in rows if r["status"] == "refused") == sorted(expected)
    assert not (tmp_path / "eval" / "metrics.json").exists()


@pytest.mark.slow
def test_inference_refuses_bad_files_and_a_non_chest_ct(tmp_path, untrained_bundle, real_series, real_abdomen):
    expected = write_header_corpus(tmp_path / "bad", real_series)
    refused(infer(untrained_bundle, tmp_path / "bad", tmp_path / "out"), list(expected))
    rows = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert {r["status"] for r in rows} == {"refused"} and all(r["prob_pneumonia"] == "" for r in rows)
    proc = infer(untrained_bundle, real_abdomen, tmp_path / "out2")
    refused(proc, [f"{real_abdomen}: not a chest CT"])


@pytest.mark.slow
def test_inference_on_names_with_spaces_and_non_ascii_letters(tmp_path, untrained_bundle, real_series):
    folder = tmp_path / "Patiënt scans (copy)"
    write_nifti(folder / "Ünal Çelik 01.nii.gz", *chest(seed=0))
    _copy_dicom(folder / "Série thorax 02", sorted(real_series.glob("*.dcm")))
    proc = infer(untrained_bundle, folder, tmp_path / "résultats")
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = json.loads((tmp_path / "résultats" / "predictions.json").read_text(encoding="utf-8"))
    assert [r["study_id"] for r in rows] == ["Série thorax 02", "Ünal Çelik 01"]
    assert "Ünal Çelik 01: " in proc.stdout


def _rss_mib() -> float:
    """Resident set size of this process in MiB (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS:")) / 1024


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads the resident set size from /proc")
def test_inference_over_500_studies_keeps_memory_flat(tmp_path, untrained_bundle, monkeypatch, request):
    source = generate_cohort(
        tmp_path / "source", per_category=10, categories=["CT-0"], seed=3, matrix=64, progress=False
    ).parent
    studies = sorted((source / "studies" / "CT-0").glob("*.nii.gz"))
    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(500):  # 500 files (hard links to 10 synthetic studies): every one is read and classified
        os.link(studies[i % len(studies)], folder / f"study_{i:04d}.nii.gz")
    monkeypatch.setattr(sys, "excepthook", sys.excepthook)  # the workflow installs pipeline.utils.guard's hook
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # batch size 1 at 32 x 32 x 16: more threads only spin on a shared CI machine
    request.addfinalizer(lambda: torch.set_num_threads(threads))
    workflow = ConfigWorkflow(
        config_file=str(untrained_bundle / "configs" / "inference.json"), workflow_type="infer",
        bundle_root=str(untrained_bundle), dataset_dir=str(folder), output_dir=str(tmp_path / "out"),
        spatial_size=[32, 32, 16],
    )  # fmt: skip
    workflow.initialize()
    cpu = time.process_time()
    rss: list[float] = []
    evaluator = workflow.parser.get_parsed_content("evaluator")
    evaluator.add_event_handler(Events.ITERATION_COMPLETED, lambda _: rss.append(_rss_mib()))
    workflow.run()
    workflow.finalize()
    assert len(rss) == 500
    assert len(json.loads((tmp_path / "out" / "predictions.json").read_text())) == 500
    settled, peak = float(np.median(rss[40:60])), max(rss[60:])
    cpu = time.process_time() - cpu
    print(f"500 studies: RSS {settled:.0f} MiB after 50, peak {peak:.0f} MiB over 60-500; {cpu:.1f} s CPU")
    assert peak - settled < 25, f"memory grows: {settled:.0f} -> {peak:.0f} MiB"
