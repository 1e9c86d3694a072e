"""pipeline.deploy.series / sr / infer on the real DICOM fixture and on studies derived from it.

The always-on DICOM tests, on series the project writes itself, are in ``test_clinical_input.py``.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pydicom
import pytest
from conftest import BUNDLE, content_items
from monai.transforms import LoadImage
from pydicom.uid import generate_uid

from pipeline.__main__ import main
from pipeline.deploy.infer import infer_study, stage_series
from pipeline.deploy.series import find_series, select_axial_ct_series
from pipeline.deploy.sr import result_json, write_structured_report
from pipeline.utils.errors import InputError

RESULT = {"image": "x", "prob_normal": 0.25, "prob_pneumonia": 0.75, "prediction": "pneumonia"}


@pytest.fixture
def files(real_series) -> list[Path]:
    """The real DICOM series' files (30 slices, 128x128), in order."""
    return sorted(real_series.glob("*.dcm"))


def copy_series(
    dest: Path, files: list[Path], edit: Callable[[pydicom.Dataset], None] | None = None, prefix: str = "IM"
) -> Path:
    """Copy ``files`` into ``dest`` as a new series (fresh SeriesInstanceUID), names without extension."""
    dest.mkdir(parents=True, exist_ok=True)
    uid = generate_uid()
    for i, src in enumerate(files):
        ds = pydicom.dcmread(src)
        ds.SeriesInstanceUID = uid
        if edit:
            edit(ds)
        ds.save_as(dest / f"{prefix}{i:04d}")
    return dest


def test_fixture_is_small_and_loads_as_one_hu_volume(real_series, files):
    assert len(files) == 30
    assert sum(f.stat().st_size for f in files) < 1.5 * 2**20
    headers = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    assert {(h.Rows, h.Columns) for h in headers} == {(128, 128)}
    assert {h.SeriesInstanceUID for h in headers} == {headers[0].SeriesInstanceUID}
    assert len({h.SOPInstanceUID for h in headers}) == 30
    assert all(h.file_meta.MediaStorageSOPInstanceUID == h.SOPInstanceUID for h in headers)
    img = LoadImage(reader="PydicomReader", image_only=True)(str(real_series))
    assert img.shape == (128, 128, 30)
    np.testing.assert_allclose(img.pixdim, [2.5859375, 2.5859375, 8.0])
    assert img.min() == -1024 and 1000 < img.max() < 3072  # HU: air and bone after the rescale


def test_find_series_groups_nested_files_and_warns_about_junk(tmp_path, files):
    copy_series(tmp_path / "a" / "b", files)
    copy_series(tmp_path / "mr", files[:3], lambda ds: setattr(ds, "Modality", "MR"))
    (tmp_path / "a" / "notes.txt").write_text("not DICOM")
    (tmp_path / ".DS_Store").write_bytes(b"\0" * 200)
    with pytest.warns(UserWarning, match="skipped 2 file"):
        series = find_series(tmp_path)
    assert [(s.modality, s.num_slices) for s in series] == [("CT", 30), ("MR", 3)]
    ct = series[0]
    assert (ct.orientation, ct.slice_spacing, ct.rows, ct.cols, ct.body_part) == ("axial", 8.0, 128, 128, "CHEST")
    z = [float(pydicom.dcmread(f, stop_before_pixels=True).ImagePositionPatient[2]) for f in ct.files]
    assert z == sorted(z) and ct.geometry_problem is None
    assert select_axial_ct_series(series, tmp_path) is ct


def test_select_prefers_the_largest_axial_ct(tmp_path, files):
    copy_series(tmp_path / "thin", files[:20])
    copy_series(tmp_path / "full", files)
    assert select_axial_ct_series(find_series(tmp_path), tmp_path).num_slices == 30


def _set(**tags) -> Callable[[pydicom.Dataset], None]:
    return lambda ds: [setattr(ds, k, v) for k, v in tags.items()]


def _mixed_sizes(ds: pydicom.Dataset) -> None:
    if ds.InstanceNumber == 5:
        ds.Rows = 64


def _mixed_orientation(ds: pydicom.Dataset) -> None:
    if ds.InstanceNumber == 5:
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]


@pytest.mark.parametrize(  # pick: which of the real series' files the study holds
    "pick,edit,problem",
    [
        (lambda f: [], None, "no DICOM image series"),
        (lambda f: f, _set(Modality="MR"), "modality MR, not CT"),
        (
            lambda f: f,
            _set(ImageOrientationPatient=[1, 0, 0, 0, 0, -1]),
            "no axial CT series: found CT series .*coronal",
        ),
        (lambda f: f[:1], None, "1 slice.*fewer than 16 slices"),
        (lambda f: f[:10], None, "fewer than 16 slices"),
        (lambda f: f, _mixed_sizes, "mixed slice sizes"),
        (lambda f: f, _mixed_orientation, "mixed slice orientations"),
        (lambda f: f[:10] + f[12:20], None, "fewer than 16 slices"),  # the longest evenly spaced run: 10
        (lambda f: f + f[:1], None, "several slices at the same position"),
    ],
    ids=["empty", "mr", "coronal", "one-slice", "few-slices", "sizes", "orientations", "gap", "duplicate"],
)
def test_select_refuses_with_reason(tmp_path, files, pick, edit, problem):
    study = copy_series(tmp_path / "study", pick(files), edit)
    with pytest.raises(InputError, match=problem) as err:
        select_axial_ct_series(find_series(study), study)
    assert err.value.path == str(study)


def test_structured_report_references_source_and_carries_the_result(tmp_path, real_series):
    source = find_series(real_series)[0]
    out = write_structured_report({**RESULT, "prediction": 1}, source, tmp_path / "sr.dcm", "model-x", "1.2.3")
    assert [p.name for p in tmp_path.iterdir()] == ["sr.dcm"]  # no temporary file left behind
    sr = pydicom.dcmread(out)
    assert sr.SOPClassUID == pydicom.uid.Comprehensive3DSRStorage
    assert sr.StudyInstanceUID == source.study_uid and sr.SeriesInstanceUID != source.uid
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.StudyInstanceUID == source.study_uid
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == source.uid
    referenced = {r.ReferencedSOPInstanceUID for r in evidence.ReferencedSeriesSequence[0].ReferencedSOPSequence}
    assert referenced == {pydicom.dcmread(f, stop_before_pixels=True).SOPInstanceUID for f in source.files}
    items = content_items(sr)
    assert items["Finding"].ConceptCodeSequence[0].CodeMeaning == "Pneumonia"
    assert float(items["Probability of normal"].MeasuredValueSequence[0].NumericValue) == 0.25
    assert float(items["Probability of pneumonia"].MeasuredValueSequence[0].NumericValue) == 0.75
    assert (items["Algorithm Name"].TextValue, items["Algorithm Version"].TextValue) == ("model-x", "1.2.3")
    assert "not for clinical use" in sr.SeriesDescription


def test_result_json_summarises_the_prediction(real_series):
    source = find_series(real_series)[0]
    summary = result_json({**RESULT, "prediction": 0}, source, "m", "0.1.0")
    assert summary["prediction"] == "normal" and summary["prob_pneumonia"] == 0.75
    assert (summary["series_instance_uid"], summary["num_slices"]) == (source.uid, 30)


def test_stage_series_holds_exactly_the_selected_series(tmp_path, files):
    copy_series(tmp_path / "study", files)
    copy_series(tmp_path / "study", files[:3], _set(Modality="MR"), prefix="MR")  # same folder, another series
    series = select_axial_ct_series(find_series(tmp_path / "study"), tmp_path / "study")
    staged = stage_series(series, tmp_path / "staged")
    assert LoadImage(reader="PydicomReader", image_only=True)(str(staged)).shape == (128, 128, 30)


def test_infer_command_refuses_a_study_without_ct(tmp_path, capsys, files):
    study = copy_series(tmp_path / "study", files[:3], _set(Modality="PT"))
    assert main(["infer", str(study), "--bundle", str(BUNDLE), "--out", str(tmp_path / "out")]) == 2
    assert "modality PT, not CT" in capsys.readouterr().err
    assert not (tmp_path / "out" / "result.json").exists()


@pytest.mark.slow
def test_infer_end_to_end_on_real_dicom(real_series, files, tmp_path, trained_bundle):  # real data first: skip early
    study = copy_series(tmp_path / "study" / "nested", files)
    (tmp_path / "study" / "README").write_text("junk")
    with pytest.warns(UserWarning, match="skipped 1 file"):
        summary = infer_study(tmp_path / "study", trained_bundle, tmp_path / "out")
    assert summary["prediction"] in ("normal", "pneumonia")
    assert summary["prob_normal"] + summary["prob_pneumonia"] == pytest.approx(1.0, abs=1e-4)
    sr = pydicom.dcmread(tmp_path / "out" / "report_sr.dcm")
    assert sr.StudyInstanceUID == pydicom.dcmread(next(study.iterdir())).StudyInstanceUID
    assert (tmp_path / "out" / "result.json").exists()
