"""DICOM results out: the prediction as a JSON dict and as a DICOM Comprehensive Structured Report.

:func:`write_structured_report` writes the prediction as a DICOM Comprehensive SR (highdicom) that references the
source study, series and instances (a :class:`~pipeline.deploy.series.SeriesInfo`); :func:`result_json` is the same
as a JSON dict.
"""

from __future__ import annotations

import os
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
_SCHEME = "99CHESTCT"  # private coding scheme for the concepts that no public scheme names
_FINDINGS = {
    "normal": hd.sr.CodedConcept("17621005", "SCT", "Normal"),
    "pneumonia": hd.sr.CodedConcept("233604007", "SCT", "Pneumonia"),
}
_UNITLESS = hd.sr.CodedConcept("1", "UCUM", "no units")


def _label(result: dict[str, Any]) -> str:
    """The predicted class name of a prediction record (``prediction`` may be a name or an index)."""
    prediction = result["prediction"]
    return CLASS_NAMES[int(prediction)] if isinstance(prediction, int | np.integer) else str(prediction)


def result_json(result: dict[str, Any], source: SeriesInfo, model_name: str, model_version: str) -> dict[str, Any]:
    """A JSON-ready summary of one prediction record on the series ``source``."""
    return {
        "study_instance_uid": source.study_uid,
        "series_instance_uid": source.uid,
        "series_description": source.description,
        "num_slices": source.num_slices,
        "prob_normal": float(result["prob_normal"]),
        "prob_pneumonia": float(result["prob_pneumonia"]),
        "prediction": _label(result),
        "model": {"name": model_name, "version": model_version},
        "disclaimer": DISCLAIMER,
    }


def _report_content(result: dict[str, Any], model_name: str, model_version: str) -> hd.sr.ContainerContentItem:
    """The SR content tree: finding, class probabilities, algorithm identification, disclaimer."""
    contains = hd.sr.RelationshipTypeValues.CONTAINS
    root = hd.sr.ContainerContentItem(name=hd.sr.CodedConcept("18748-4", "LN", "Diagnostic imaging report"))
    root.ContentSequence = [
        hd.sr.CodeContentItem(name=codes.DCM.Finding, value=_FINDINGS[_label(result)], relationship_type=contains),
        *(
            hd.sr.NumContentItem(
                name=hd.sr.CodedConcept(f"P-{name.upper()}", _SCHEME, f"Probability of {name}"),
                value=float(result[f"prob_{name}"]),
                unit=_UNITLESS,
                relationship_type=contains,
            )
            for name in CLASS_NAMES
        ),
        hd.sr.TextContentItem(name=codes.DCM.AlgorithmName, value=model_name, relationship_type=contains),
        hd.sr.TextContentItem(name=codes.DCM.AlgorithmVersion, value=model_version, relationship_type=contains),
        hd.sr.TextContentItem(name=codes.DCM.Comment, value=DISCLAIMER, relationship_type=contains),
    ]
    return root


def write_structured_report(
    result: dict[str, Any],
    source: SeriesInfo,
    out_path: str | os.PathLike,
    model_name: str = "chest_ct_pneumonia_classification",
    model_version: str = "0.0.0",
) -> Path:
    """Write ``result`` (``prob_normal``, ``prob_pneumonia``, ``prediction``) as a Comprehensive SR.

    The SR joins the source study (same StudyInstanceUID and patient), lists every source instance in its
    evidence, and states that it is not for clinical use. Written atomically; returns ``out_path``.
    """
    evidence = [pydicom.dcmread(f, stop_before_pixels=True) for f in source.files]
    report = hd.sr.ComprehensiveSR(
        evidence=evidence,
        content=_report_content(result, model_name, model_version),
        series_instance_uid=hd.UID(),
        series_number=9001,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="chest-ct-pipeline",
        series_description=f"{model_name} {model_version} (not for clinical use)",
    )
    with atomic_path(out_path) as tmp:
        report.save_as(tmp, enforce_file_format=True)
    return Path(out_path)
