"""Clinical DICOM as it arrives, on series the project writes itself from the phantom (always on, no real data).

Compressed transfer syntaxes, non-conformant UIDs and values, missing tags, uneven slice spacing, several series
per study, the series choice, the TID 1500 SR (validated by dciodvfy when installed, else read back by highdicom),
optional severity keys in result.json / SR / MONAI Label, and ``python -m pipeline infer`` end to end.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import warnings
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
from conftest import content_items
from monai.transforms import LoadImage

from pipeline.__main__ import main
from pipeline.deploy.bundle import result_params, returned_label
from pipeline.deploy.export import COMPRESSED, write_ct_series
from pipeline.deploy.infer import choose_chest_series
from pipeline.deploy.series import find_series, missing_decoder, rank_axial_ct_series
from pipeline.deploy.sr import result_json, write_structured_report
from pipeline.synth.phantom import generate_study
from pipeline.transforms.lung import lung_mask
from pipeline.transforms.plausibility import CheckChestCT, voxel_spacing
from pipeline.utils.errors import InputError

RECORD = {"image": "x", "prob_normal": 0.3, "prob_pneumonia": 0.7, "prediction": "pneumonia"}
SEVERITY = {"involvement": 0.32, "category_pred": "CT-2"}
UUID = "3f2504e0-4f89-11d3-9a0c-0305e82c3301"


@pytest.fixture(scope="module")
def study():
    """A synthetic chest CT (64 matrix, 8 mm slices): ``(volume, affine)``."""
    s = generate_study("CT-0", 0, matrix=64)
    return s.image.astype(np.float32), s.affine


def no_lungs(volume: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The volume with its lungs filled with soft tissue: what an abdomen series shows of them."""
    out = volume.copy()
    out[lung_mask(volume, voxel_spacing(affine))] = 40.0
    return out


#: dicom3tools' DICOM validator (Debian package ``dicom3tools``, installed by ``.ci/run``); ``None`` where absent.
DCIODVFY = shutil.which("dciodvfy")
NO_DCIODVFY = "dicom3tools' dciodvfy is not installed (.ci/run installs it): its verdict on the SR is not checked here"


def dciodvfy_errors(path: Path) -> list[str]:
    """dciodvfy's error lines for ``path``."""
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


def validate(path: Path) -> list[str]:
    """dciodvfy's error lines for ``path`` where it is installed; everywhere, highdicom reads it back as an SR."""
    hd.sr.srread(path)
    return dciodvfy_errors(path) if DCIODVFY else []


@pytest.mark.parametrize("name", list(COMPRESSED))
def test_compressed_series_decode_to_the_written_hu(tmp_path, study, name):
    volume, affine = study
    write_ct_series(volume, affine, tmp_path / name, COMPRESSED[name])
    (series,) = find_series(tmp_path / name)
    assert series.transfer_syntax == COMPRESSED[name] and missing_decoder(series.transfer_syntax) is None
    img = LoadImage(reader="PydicomReader", image_only=True)(str(tmp_path / name))
    expected = np.clip(np.rint(volume), -1024, None)
    np.testing.assert_array_equal(np.sort(img.numpy().ravel()), np.sort(expected.ravel()))
    CheckChestCT()(img)


def test_a_compression_without_decoder_is_refused_naming_the_transfer_syntax(tmp_path, study):
    mpeg2 = pydicom.uid.MPEG2MPML
    problem = missing_decoder(mpeg2)
    assert problem is not None and mpeg2.name in problem and str(mpeg2) in problem and "pip install" in problem
    write_ct_series(*study, tmp_path / "s")
    series = dataclasses.replace(find_series(tmp_path / "s")[0], transfer_syntax=mpeg2)
    with pytest.raises(InputError, match=f"no usable axial CT series.*{mpeg2.name}.*pylibjpeg"):
        rank_axial_ct_series([series], tmp_path / "s")


def messy_sr(folder: Path, study) -> Path:
    """The SR written on a series with non-conformant UIDs (UUID strings), a value breaking its VR, tags missing."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom warns about the UUIDs it is asked to write
        files = write_ct_series(*study, folder / "s", study_uid=UUID, series_uid=f"urn:uuid:{UUID}")
        for path in files:  # a value that breaks its VR, and optional tags missing
            ds = pydicom.dcmread(path)
            del ds.SliceThickness, ds.PatientName, ds.PatientID, ds.SeriesNumber
            ds.add_new(0x00180050, "LO", "8,0")
            ds.save_as(path)
    (series,) = find_series(folder / "s")
    assert (series.study_uid, series.uid) == (UUID, f"urn:uuid:{UUID}")
    assert series.slice_thickness is None and series.slice_spacing == pytest.approx(8.0)  # "8,0" breaks DS
    (chosen,) = rank_axial_ct_series([series], folder / "s")
    return write_structured_report({**RECORD, **SEVERITY}, chosen, folder / "sr.dcm", "m", "1.0", 0.4)


def test_messy_headers_are_read_and_the_sr_keeps_the_source_uids(tmp_path, study):
    """On every machine: the SR is a readable TID 1500 SR whose own UIDs are valid and whose references keep the
    source's invalid UIDs as the source wrote them (what a validator flags: see the dciodvfy test below)."""
    sr_path = messy_sr(tmp_path, study)
    hd.sr.srread(sr_path)
    sr = pydicom.dcmread(sr_path)
    assert pydicom.uid.UID(sr.SOPInstanceUID).is_valid and pydicom.uid.UID(sr.SeriesInstanceUID).is_valid
    assert sr.StudyInstanceUID == UUID  # the SR joins the source study as the source named it
    evidence = sr.CurrentRequestedProcedureEvidenceSequence[0]
    assert evidence.ReferencedSeriesSequence[0].SeriesInstanceUID == f"urn:uuid:{UUID}"
    kept = [sr.StudyInstanceUID, evidence.StudyInstanceUID, evidence.ReferencedSeriesSequence[0].SeriesInstanceUID]
    assert [uid for uid in kept if not pydicom.uid.UID(uid).is_valid] == kept


@pytest.mark.skipif(DCIODVFY is None, reason=NO_DCIODVFY)
def test_dciodvfy_flags_only_the_source_uids_the_messy_sr_keeps(tmp_path, study):
    errors = dciodvfy_errors(messy_sr(tmp_path, study))
    assert errors and all("Instance UID" in e or "invalid data values" in e for e in errors), errors


def test_uneven_spacing_keeps_the_longest_evenly_spaced_run(tmp_path, study):
    files = write_ct_series(*study, tmp_path / "s")
    files[10].unlink()  # a missing slice
    (series,) = find_series(tmp_path / "s")
    assert series.num_slices == len(files) - 11 and series.geometry_problem is None
    assert f"kept the {len(files) - 11} evenly spaced slices 1-{len(files) - 11} of {len(files) - 1}" in series.notes[0]
    assert rank_axial_ct_series([series], tmp_path / "s")[0] is series


def test_the_series_choice_ranks_then_checks_for_a_chest(tmp_path, study):
    volume, affine = study
    root = tmp_path / "study"
    uid = pydicom.uid.generate_uid()
    write = lambda name, vol=volume, **tags: write_ct_series(vol, affine, root / name, study_uid=uid, **tags)  # noqa: E731
    write("lung", ConvolutionKernel="B70f", SliceThickness="1", SeriesDescription="Thorax 1.0 B70f")
    write("soft", ConvolutionKernel="B30f", SliceThickness="5", SeriesDescription="Thorax 5.0 B30f")
    write("contrast", ConvolutionKernel="B30f", SliceThickness="5", ContrastBolusAgent="Iohexol")
    write("mip", ConvolutionKernel="B30f", ImageType=["DERIVED", "SECONDARY", "AXIAL", "MIP"])
    write("scout", volume[:, :, :20], ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"])
    abdomen = np.concatenate([no_lungs(volume, affine)] * 2, axis=2)  # larger than the chest series
    write("abdomen", abdomen, ConvolutionKernel="B30f", SliceThickness="4", BodyPartExamined="ABDOMEN")
    ranked = rank_axial_ct_series(find_series(root), root)
    names = [Path(s.files[0]).parent.name for s in ranked]
    assert names == ["abdomen", "soft", "contrast", "lung"]  # MIP and localizer never; then the rank key
    chosen = choose_chest_series(ranked, tmp_path / "staged", root)
    assert Path(chosen.files[0]).parent.name == "soft"  # the abdomen fails the chest check
    with pytest.raises(InputError, match=r"no series is a chest CT: .*not a chest CT, or lungs almost without air"):
        choose_chest_series(ranked[:1], tmp_path / "staged", root)


def test_optional_severity_keys_are_carried_when_present_and_omitted_otherwise(tmp_path, study):
    write_ct_series(*study, tmp_path / "s", ConvolutionKernel="B30f")
    (series,) = find_series(tmp_path / "s")
    lesion = tmp_path / "lesion.nii.gz"
    lesion.write_bytes(b"NIfTI bytes")
    full = result_json({**RECORD, **SEVERITY, "lesion_map": str(lesion)}, series, "m", "1.0", 0.4)
    assert (full["involvement"], full["category_pred"], full["lesion_map"]) == (0.32, "CT-2", str(lesion))
    assert (full["kernel"], full["slice_thickness_mm"], full["model"]["threshold"]) == ("B30f", 8.0, 0.4)
    assert not {"involvement", "category_pred", "lesion_map"} & set(result_json(RECORD, series, "m", "1.0"))

    items = content_items(pydicom.dcmread(write_structured_report({**RECORD, **SEVERITY}, series, tmp_path / "a")))
    involvement = items["Lung involvement (percent of lung volume)"].MeasuredValueSequence[0]
    assert float(involvement.NumericValue) == pytest.approx(32.0)
    assert involvement.MeasurementUnitsCodeSequence[0].CodeValue == "%"
    assert items["CT severity category"].ConceptCodeSequence[0].CodeValue == "CT-2"
    assert float(items["Slice Thickness"].MeasuredValueSequence[0].NumericValue) == 8.0
    plain = content_items(pydicom.dcmread(write_structured_report(RECORD, series, tmp_path / "b")))
    assert "CT severity category" not in plain and "Lung involvement (percent of lung volume)" not in plain
    assert plain["Finding"].ConceptCodeSequence[0].CodeMeaning == "Pneumonia"

    params = result_params({**RECORD, **SEVERITY}, ["normal", "pneumonia"])
    assert params == {
        "prediction": [{"idx": 0, "label": "normal", "score": 0.3}, {"idx": 1, "label": "pneumonia", "score": 0.7}],
        "involvement": 0.32,
        "category": "CT-2",
    }
    assert set(result_params(RECORD, ["normal", "pneumonia"])) == {"prediction"}
    copy = returned_label({**RECORD, "lesion_map": str(lesion)})
    assert copy and Path(copy).read_bytes() == b"NIfTI bytes" and Path(copy) != lesion
    Path(copy).unlink()
    assert returned_label(RECORD) is None


@pytest.mark.slow
def test_pipeline_infer_on_a_jpeg_lossless_study(tmp_path, study, untrained_bundle):
    volume, affine = study
    root = tmp_path / "study"
    write_ct_series(volume, affine, root / "chest", COMPRESSED["jpeg-lossless"], ConvolutionKernel="B30f")
    write_ct_series(no_lungs(volume, affine), affine, root / "abdomen", COMPRESSED["jpeg-ls"], SliceThickness="4")
    assert main(["infer", str(root), "--bundle", str(untrained_bundle), "--out", str(tmp_path / "out")]) == 0
    summary = json.loads((tmp_path / "out" / "result.json").read_text())
    chest_uid = pydicom.dcmread(next((root / "chest").iterdir())).SeriesInstanceUID
    chosen = (summary["series_instance_uid"], summary["kernel"], summary["slice_thickness_mm"])
    assert chosen == (chest_uid, "B30f", 8.0)
    assert summary["prediction"] in ("normal", "pneumonia")
    assert validate(tmp_path / "out" / "report_sr.dcm") == []
