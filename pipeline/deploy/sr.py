"""DICOM results out: the prediction as a JSON dict and as a DICOM TID 1500 Measurement Report.

:func:`write_structured_report` writes the prediction with highdicom's templates: a TID 1500
:class:`~highdicom.sr.MeasurementReport` whose observer is the model (a device observer context), with one
measurement group identified by the :class:`~highdicom.sr.AlgorithmIdentification` (name, version, decision
threshold, the input series' kernel), holding the class probabilities, the lung involvement (percent of lung
volume, UCUM ``%``) and the slice thickness as measurements, and the finding (normal or pneumonia) and the CT
severity category as qualitative evaluations. It references the source study, series and instances as the
source gave them (even UIDs that break the DICOM rules); its own UIDs are valid. :func:`result_json` is the same
as a JSON dict. Involvement and category are written only when the prediction record has them.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.sr.codedict import codes

from pipeline.data.cohort import CLASS_NAMES
from pipeline.deploy.series import SeriesInfo
from pipeline.utils.atomic import atomic_path

DISCLAIMER = "Research use only. Not for clinical use: not a medical device, not reviewed by a physician."
MANUFACTURER = "chest-ct-pipeline"
_SCHEME = "99CHESTCT"  # private coding scheme for the concepts that no public scheme names
_FINDINGS = {
    "normal": hd.sr.CodedConcept("17621005", "SCT", "Normal"),
    "pneumonia": hd.sr.CodedConcept("233604007", "SCT", "Pneumonia"),
}
_UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")
_PERCENT = hd.sr.CodedConcept("%", "UCUM", "percent")
_MM = hd.sr.CodedConcept("mm", "UCUM", "millimeter")
_CHEST_CT = hd.sr.CodedConcept("24627-2", "LN", "CT Chest")
_INVOLVEMENT = hd.sr.CodedConcept("INVOLVEMENT", _SCHEME, "Lung involvement (percent of lung volume)")
_CATEGORY = hd.sr.CodedConcept("CT-CATEGORY", _SCHEME, "CT severity category")
_CATEGORIES = {f"CT-{k}": f"CT-{k}" for k in range(5)}
#: Type 2 attributes the SR copies from its evidence (patient and study modules): empty when the source lacks them.
_COPIED_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "StudyID",
    "AccessionNumber",
    "ReferringPhysicianName",
)


def _label(result: dict[str, Any]) -> str:
    """The predicted class name of a prediction record (``prediction`` may be a name or an index)."""
    prediction = result["prediction"]
    return CLASS_NAMES[int(prediction)] if isinstance(prediction, int | np.integer) else str(prediction)


def result_json(
    result: dict[str, Any], source: SeriesInfo, model_name: str, model_version: str, threshold: float | None = None
) -> dict[str, Any]:
    """A JSON-ready summary of one prediction record on the series ``source`` (the chosen series)."""
    summary = {
        "study_instance_uid": source.study_uid,
        "series_instance_uid": source.uid,
        "series_description": source.description,
        "kernel": source.kernel,
        "slice_thickness_mm": source.slice_thickness,
        "num_slices": source.num_slices,
        "prob_normal": float(result["prob_normal"]),
        "prob_pneumonia": float(result["prob_pneumonia"]),
        "prediction": _label(result),
        "model": {"name": model_name, "version": model_version, "threshold": threshold},
        "disclaimer": DISCLAIMER,
    }
    if result.get("involvement") not in (None, ""):
        summary["involvement"] = float(result["involvement"])
    if result.get("category_pred") not in (None, ""):
        summary["category_pred"] = str(result["category_pred"])
    if result.get("lesion_map") not in (None, ""):
        summary["lesion_map"] = str(result["lesion_map"])
    if source.notes:
        summary["notes"] = list(source.notes)
    return summary


def _measurement_group(
    result: dict[str, Any], source: SeriesInfo, model_name: str, model_version: str, threshold: float | None
) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """TID 1501: the model's measurements and evaluations of the series ``source``."""
    parameters = [f"decision threshold: pneumonia when P(pneumonia) >= {threshold:g}"] if threshold is not None else []
    if source.kernel:
        parameters.append(f"input convolution kernel: {source.kernel}")
    algorithm = hd.sr.AlgorithmIdentification(model_name, model_version, parameters=parameters or None)
    measurements = [
        hd.sr.Measurement(
            name=hd.sr.CodedConcept(f"P-{name.upper()}", _SCHEME, f"Probability of {name}"),
            value=float(result[f"prob_{name}"]),
            unit=_UNITLESS,
            algorithm_id=algorithm,
        )
        for name in CLASS_NAMES
    ]
    if result.get("involvement") not in (None, ""):
        value = 100.0 * float(result["involvement"])
        measurements.append(hd.sr.Measurement(_INVOLVEMENT, value, _PERCENT, algorithm_id=algorithm))
    if source.slice_thickness:
        measurements.append(hd.sr.Measurement(codes.DCM.SliceThickness, float(source.slice_thickness), _MM))
    evaluations = [hd.sr.QualitativeEvaluation(codes.DCM.Finding, _FINDINGS[_label(result)])]
    category = str(result.get("category_pred") or "")
    if category:
        value = hd.sr.CodedConcept(category, _SCHEME, _CATEGORIES.get(category, category))
        evaluations.append(hd.sr.QualitativeEvaluation(_CATEGORY, value))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=hd.UID(), identifier=f"{model_name} on series {source.uid}"),
        algorithm_id=algorithm,
        finding_type=_FINDINGS["pneumonia"],
        measurements=measurements,
        qualitative_evaluations=evaluations,
    )


def report_content(
    result: dict[str, Any],
    source: SeriesInfo,
    model_name: str,
    model_version: str,
    threshold: float | None = None,
) -> hd.sr.MeasurementReport:
    """The TID 1500 content tree: the model as device observer, one measurement group (see the module docstring)."""
    device = hd.sr.DeviceObserverIdentifyingAttributes(
        uid=pydicom.uid.generate_uid(entropy_srcs=[MANUFACTURER, model_name, model_version]),
        name=model_name,
        manufacturer_name=MANUFACTURER,
        model_name=f"{model_name} {model_version}",
    )
    context = hd.sr.ObservationContext(
        observer_device_context=hd.sr.ObserverContext(codes.DCM.Device, device),
    )
    return hd.sr.MeasurementReport(
        observation_context=context,
        procedure_reported=_CHEST_CT,
        imaging_measurements=[_measurement_group(result, source, model_name, model_version, threshold)],
    )


def _evidence(path: Path) -> pydicom.Dataset:
    """The header of a source file, with the type 2 attributes the SR copies present (empty when missing)."""
    with warnings.catch_warnings():  # UIDs that break the rules are referenced as the source gave them
        warnings.simplefilter("ignore", UserWarning)
        ds = pydicom.dcmread(path, stop_before_pixels=True)
    for keyword in _COPIED_TYPE2:
        if keyword not in ds:
            setattr(ds, keyword, "")
    return ds


def write_structured_report(
    result: dict[str, Any],
    source: SeriesInfo,
    out_path: str | os.PathLike,
    model_name: str = "chest_ct_pneumonia_classification",
    model_version: str = "0.0.0",
    threshold: float | None = None,
) -> Path:
    """Write ``result`` (``prob_normal``, ``prob_pneumonia``, ``prediction``; ``involvement`` and ``category_pred``
    when present) as a Comprehensive 3D SR holding a TID 1500 Measurement Report.

    The SR joins the source study (same StudyInstanceUID and patient), lists every source instance in its
    evidence, and states in its series description that it is not for clinical use. Written atomically;
    returns ``out_path``.
    """
    evidence = [_evidence(f) for f in source.files]
    report = hd.sr.Comprehensive3DSR(
        evidence=evidence,
        content=report_content(result, source, model_name, model_version, threshold),
        series_instance_uid=hd.UID(),
        series_number=9001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer=MANUFACTURER,
        series_description=f"{model_name} {model_version} (not for clinical use)",
    )
    with atomic_path(out_path) as tmp:
        report.save_as(tmp, enforce_file_format=True)
    return Path(out_path)
