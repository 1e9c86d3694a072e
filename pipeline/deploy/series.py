"""DICOM studies in: find the series of a study (headers only) and pick the axial CT series to classify.

- :func:`find_series` walks a study folder (nested folders, files with any name) and groups the DICOM
  files by SeriesInstanceUID, reading headers only.
- :func:`select_axial_ct_series` picks the series to classify or refuses the study with the reason.
"""

from __future__ import annotations

import os
import warnings
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from pipeline.utils.errors import InputError

MIN_SLICES = 16

#: Relative tolerance on the gaps between slice positions for a series to count as uniformly spaced.
SPACING_TOLERANCE = 0.01


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a study folder (headers only).

    Attributes:
        uid: SeriesInstanceUID.
        study_uid: StudyInstanceUID.
        modality: e.g. ``"CT"``, ``"MR"``.
        description: SeriesDescription (may be empty).
        body_part: BodyPartExamined (may be empty).
        orientation: ``"axial"``, ``"coronal"``, ``"sagittal"`` (from ImageOrientationPatient) or ``"unknown"``.
        slice_spacing: median distance between consecutive slice positions in mm, None for one slice.
        files: the files, sorted by position along the slice normal.
        rows: Rows of the first slice.
        cols: Columns of the first slice.
        geometry_problem: why the slices do not form one regular volume, None if they do.
    """

    uid: str
    study_uid: str
    modality: str
    description: str
    body_part: str
    orientation: str
    slice_spacing: float | None
    files: tuple[Path, ...] = field(repr=False)
    rows: int
    cols: int
    geometry_problem: str | None = field(default=None)

    @property
    def num_slices(self) -> int:
        """Number of files (slices) in the series."""
        return len(self.files)

    def __str__(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.modality} series{desc} ({self.orientation}, {self.num_slices} slice(s), {self.uid})"


def _orientation(iop: Any) -> tuple[str, np.ndarray | None]:
    """Plane name and slice normal from ImageOrientationPatient (``"unknown"``, None without one)."""
    if iop is None or len(iop) != 6:
        return "unknown", None
    normal = np.cross(np.asarray(iop[:3], dtype=float), np.asarray(iop[3:], dtype=float))
    return ("sagittal", "coronal", "axial")[int(np.abs(normal).argmax())], normal


def _series_info(headers: list[tuple[Path, pydicom.Dataset]]) -> SeriesInfo:
    """Sort one series' files by position and describe its geometry."""
    first = headers[0][1]
    planes = {_orientation(ds.get("ImageOrientationPatient"))[0] for _, ds in headers}
    sizes = {(int(ds.get("Rows", 0)), int(ds.get("Columns", 0))) for _, ds in headers}
    orientation, normal = _orientation(first.get("ImageOrientationPatient"))
    positions = [ds.get("ImagePositionPatient") for _, ds in headers]
    problem = None
    if len(planes) > 1:
        problem = f"mixed slice orientations {sorted(planes)}"
    elif len(sizes) > 1:
        problem = f"mixed slice sizes {sorted(sizes)}"
    if normal is None or any(p is None or len(p) != 3 for p in positions):
        keys = [float(ds.get("InstanceNumber") or 0) for _, ds in headers]
        problem = problem or ("no ImagePositionPatient/ImageOrientationPatient" if len(headers) > 1 else None)
    else:
        keys = [float(np.dot(np.asarray(p, dtype=float), normal)) for p in positions]
    order = np.argsort(keys, kind="stable")
    spacing = None
    if len(headers) > 1 and normal is not None and problem is None:
        gaps = np.diff(np.asarray(keys)[order])
        spacing = float(np.median(gaps))
        if gaps.min() <= 1e-3:
            problem = "several slices at the same position (repeated or mixed acquisitions)"
        elif np.abs(gaps - spacing).max() > SPACING_TOLERANCE * spacing:
            problem = f"slice spacing varies from {gaps.min():.3g} to {gaps.max():.3g} mm (missing slices?)"
    return SeriesInfo(
        uid=str(first.SeriesInstanceUID),
        study_uid=str(first.get("StudyInstanceUID", "")),
        modality=str(first.get("Modality", "")),
        description=str(first.get("SeriesDescription", "")),
        body_part=str(first.get("BodyPartExamined", "")),
        orientation=orientation,
        slice_spacing=spacing,
        files=tuple(headers[i][0] for i in order),
        rows=int(first.get("Rows", 0)),
        cols=int(first.get("Columns", 0)),
        geometry_problem=problem,
    )


def find_series(study_dir: str | os.PathLike) -> list[SeriesInfo]:
    """All DICOM image series under ``study_dir`` (searched recursively), largest first.

    Files that are not DICOM, or DICOM without a SeriesInstanceUID (e.g. DICOMDIR), are skipped with one
    warning that counts and names them. Raises InputError if ``study_dir`` is not a folder.
    """
    root = Path(study_dir)
    if not root.is_dir():
        raise InputError(root, "not a folder")
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = defaultdict(list)
    skipped: list[str] = []
    for folder, dirs, names in os.walk(root):
        dirs.sort()
        for name in sorted(names):
            path = Path(folder, name)
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (InvalidDicomError, OSError, ValueError, EOFError):
                skipped.append(str(path.relative_to(root)))
                continue
            if "SeriesInstanceUID" not in ds:
                skipped.append(str(path.relative_to(root)))
                continue
            groups[str(ds.SeriesInstanceUID)].append((path, ds))
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(f"{root}: skipped {len(skipped)} file(s) that are not DICOM images: {shown}", stacklevel=2)
    return sorted((_series_info(h) for h in groups.values()), key=lambda s: -s.num_slices)


def select_axial_ct_series(
    series: list[SeriesInfo], study_dir: str | os.PathLike, min_slices: int = MIN_SLICES
) -> SeriesInfo:
    """The largest regular axial CT series with at least ``min_slices`` slices.

    Raises InputError naming ``study_dir`` and why nothing fits: no DICOM, no CT, no axial CT,
    too few slices, or irregular geometry (mixed sizes or orientations, uneven slice spacing).
    """
    if not series:
        raise InputError(study_dir, "no DICOM image series found")
    ct = [s for s in series if s.modality == "CT"]
    if not ct:
        found = sorted({s.modality or "missing" for s in series})
        raise InputError(study_dir, f"no CT series: modality {', '.join(found)}, not CT")
    axial = [s for s in ct if s.orientation == "axial"]
    if not axial:
        raise InputError(study_dir, "no axial CT series: found " + "; ".join(map(str, ct)))
    usable = [s for s in axial if s.geometry_problem is None and s.num_slices >= min_slices]
    if not usable:
        reasons = [f"{s}: {s.geometry_problem or f'fewer than {min_slices} slices, not a volume'}" for s in axial]
        raise InputError(study_dir, "no usable axial CT series: " + "; ".join(reasons))
    return max(usable, key=lambda s: s.num_slices)
