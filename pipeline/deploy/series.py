"""DICOM studies in: find the series of a study (headers only), rank the axial CT series worth classifying.

- :func:`find_series` walks a study folder (nested folders, files with any name) and groups the DICOM
  files by SeriesInstanceUID, reading headers only. Reading is tolerant: UIDs that break the DICOM rules
  (UUID strings, for instance) are kept as the source gave them, values that cannot be read count as missing,
  missing optional tags are fine, and a series with a gap in its slice positions keeps its longest evenly
  spaced run of slices (the rest is named in :attr:`SeriesInfo.notes`).
- :func:`rank_axial_ct_series` orders the usable axial CT series best first (see :func:`rank_key`), or refuses
  the study with the reason for each series; :func:`select_axial_ct_series` is the first of them.
- :func:`missing_decoder` says why pixel data compressed in a transfer syntax cannot be decoded here.
"""

from __future__ import annotations

import os
import re
import warnings
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError

from pipeline.utils.errors import InputError

MIN_SLICES = 16

#: Relative tolerance on the gaps between slice positions for a run of slices to count as uniformly spaced.
SPACING_TOLERANCE = 0.01

#: Slice thickness (mm) preferred without a model to ask: the z spacing the bundle resamples to.
DEFAULT_THICKNESS_MM = 4.0

#: ImageType values or description words of series that are never classified.
EXCLUDED_TYPES = ("LOCALIZER", "DERIVED", "MIP", "MINIP", "MPR", "SCOUT", "TOPOGRAM", "SURVIEW")
_CONTRAST = re.compile(r"contrast|\bc\+|\bkm\b|arterial|venous|portal|angio|\bcta\b|\bphase\b", re.IGNORECASE)
_CHEST = re.compile(r"chest|thorax|thorac|lung|pulmo|thx", re.IGNORECASE)
_SHARP = re.compile(r"lung|bone|sharp|detail|edge|yc|yd|\bl\b", re.IGNORECASE)
_SOFT = re.compile(r"standard|std|soft|body|smooth|abdomen|mediastin|\bb\b|\bc\b", re.IGNORECASE)
_SIEMENS = re.compile(r"^[A-Za-z]{1,2}(\d{2})[a-z]?", re.IGNORECASE)

DECODER_HINT = "pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg pylibjpeg-rle (or python-gdcm)"


@dataclass(frozen=True)
class SeriesInfo:
    """One DICOM series found in a study folder (headers only).

    Attributes:
        uid: SeriesInstanceUID, as the source gave it (it may break the DICOM UID rules).
        study_uid: StudyInstanceUID, as the source gave it.
        modality: e.g. ``"CT"``, ``"MR"``.
        description: SeriesDescription (may be empty).
        body_part: BodyPartExamined (may be empty).
        orientation: ``"axial"``, ``"coronal"``, ``"sagittal"`` (from ImageOrientationPatient) or ``"unknown"``.
        slice_spacing: median distance between consecutive slice positions in mm, None for one slice.
        files: the files, sorted by position along the slice normal.
        rows: Rows of the first slice.
        cols: Columns of the first slice.
        geometry_problem: why the slices do not form one regular volume, None if they do.
        image_type: ImageType values, upper case (e.g. ``("ORIGINAL", "PRIMARY", "AXIAL")``).
        kernel: ConvolutionKernel (may be empty).
        slice_thickness: SliceThickness in mm, None when missing.
        contrast: whether the series was acquired with contrast (ContrastBolusAgent or the description).
        transfer_syntax: TransferSyntaxUID of the first file.
        notes: what was tolerated or left out while reading, for the user.
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
    image_type: tuple[str, ...] = ()
    kernel: str = ""
    slice_thickness: float | None = None
    contrast: bool = False
    transfer_syntax: str = ""
    notes: tuple[str, ...] = ()

    @property
    def num_slices(self) -> int:
        """Number of files (slices) in the series."""
        return len(self.files)

    @property
    def excluded(self) -> str | None:
        """Why this series is never classified (a localizer, derived image or projection), None otherwise."""
        words = set(self.image_type) | set(re.findall(r"[A-Z]+", self.description.upper()))
        found = [t for t in EXCLUDED_TYPES if t in words]
        return f"{'/'.join(found)} image, not an original axial acquisition" if found else None

    def __str__(self) -> str:
        desc = f" '{self.description}'" if self.description else ""
        return f"{self.modality} series{desc} ({self.orientation}, {self.num_slices} slice(s), {self.uid})"


def _value(ds: pydicom.Dataset, keyword: str) -> Any:
    """``ds.keyword``, or None when missing or unreadable (a value that breaks its VR)."""
    try:
        value = ds.get(keyword)
    except (ValueError, TypeError, KeyError, IndexError):
        return None
    return None if value is None or value == "" else value


def _text(ds: pydicom.Dataset, keyword: str) -> str:
    value = _value(ds, keyword)
    if value is None:
        return ""
    if isinstance(value, pydicom.multival.MultiValue | list | tuple):
        return "\\".join(str(v) for v in value)
    return str(value).strip()


def _floats(ds: pydicom.Dataset, keyword: str, n: int) -> np.ndarray | None:
    """``n`` numbers from ``ds.keyword``, or None when missing, unreadable or of another length."""
    value = _value(ds, keyword)
    try:
        array = np.asarray([float(v) for v in value], dtype=float) if value is not None else None
    except (TypeError, ValueError):
        return None
    return array if array is not None and array.size == n and np.isfinite(array).all() else None


def _number(ds: pydicom.Dataset, keyword: str) -> float | None:
    value = _value(ds, keyword)
    try:
        number = float(value[0] if isinstance(value, pydicom.multival.MultiValue | list) else value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if np.isfinite(number) else None


def _orientation(iop: np.ndarray | None) -> tuple[str, np.ndarray | None]:
    """Plane name and slice normal from ImageOrientationPatient (``"unknown"``, None without one)."""
    if iop is None:
        return "unknown", None
    normal = np.cross(iop[:3], iop[3:])
    if not np.linalg.norm(normal) > 0:
        return "unknown", None
    return ("sagittal", "coronal", "axial")[int(np.abs(normal).argmax())], normal


def _longest_even_run(gaps: np.ndarray, spacing: float) -> tuple[int, int]:
    """(start, stop) slice indices of the longest run of consecutive slices spaced ``spacing`` apart."""
    even = np.abs(gaps - spacing) <= SPACING_TOLERANCE * spacing
    best, start = (0, 1), 0
    for i, ok in enumerate([*even, False]):
        if not ok:
            if i + 1 - start > best[1] - best[0]:
                best = (start, i + 1)
            start = i + 1
    return best


def _series_info(headers: list[tuple[Path, pydicom.Dataset]]) -> SeriesInfo:
    """Sort one series' files by position and describe its geometry and acquisition."""
    first = headers[0][1]
    iops = [_floats(ds, "ImageOrientationPatient", 6) for _, ds in headers]
    planes = {_orientation(iop)[0] for iop in iops}
    sizes = {(int(_number(ds, "Rows") or 0), int(_number(ds, "Columns") or 0)) for _, ds in headers}
    orientation, normal = _orientation(iops[0])
    positions = [_floats(ds, "ImagePositionPatient", 3) for _, ds in headers]
    problem, notes = None, []
    if len(planes) > 1:
        problem = f"mixed slice orientations {sorted(planes)}"
    elif len(sizes) > 1:
        problem = f"mixed slice sizes {sorted(sizes)}"
    if normal is None or any(p is None for p in positions):
        keys = [_number(ds, "InstanceNumber") or 0.0 for _, ds in headers]
        problem = problem or ("no readable ImagePositionPatient/ImageOrientationPatient" if len(headers) > 1 else None)
    else:
        keys = [float(np.dot(p, normal)) for p in positions]
    order = np.argsort(keys, kind="stable")
    spacing = None
    if len(headers) > 1 and normal is not None and problem is None:
        gaps = np.diff(np.asarray(keys)[order])
        spacing = float(np.median(gaps))
        if gaps.min() <= 1e-3:
            problem = "several slices at the same position (repeated or mixed acquisitions)"
        elif np.abs(gaps - spacing).max() > SPACING_TOLERANCE * spacing:
            start, stop = _longest_even_run(gaps, spacing)
            notes.append(
                f"slice spacing varies from {gaps.min():.3g} to {gaps.max():.3g} mm (missing slices?): kept the "
                f"{stop - start} evenly spaced slices {start + 1}-{stop} of {len(headers)}"
            )
            order = order[start:stop]
    contrast = bool(_text(first, "ContrastBolusAgent")) or bool(_CONTRAST.search(_text(first, "SeriesDescription")))
    return SeriesInfo(
        uid=_text(first, "SeriesInstanceUID"),
        study_uid=_text(first, "StudyInstanceUID"),
        modality=_text(first, "Modality").upper(),
        description=_text(first, "SeriesDescription"),
        body_part=_text(first, "BodyPartExamined"),
        orientation=orientation,
        slice_spacing=spacing,
        files=tuple(headers[i][0] for i in order),
        rows=int(_number(first, "Rows") or 0),
        cols=int(_number(first, "Columns") or 0),
        geometry_problem=problem,
        image_type=tuple(v.strip().upper() for v in _text(first, "ImageType").split("\\") if v.strip()),
        kernel=_text(first, "ConvolutionKernel"),
        slice_thickness=_number(first, "SliceThickness"),
        contrast=contrast,
        transfer_syntax=str(getattr(getattr(first, "file_meta", None), "TransferSyntaxUID", "") or ""),
        notes=tuple(notes),
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
                with warnings.catch_warnings():  # values that break their VR: read as given, judged when used
                    warnings.simplefilter("ignore", UserWarning)
                    ds = pydicom.dcmread(path, stop_before_pixels=True)
                uid = _text(ds, "SeriesInstanceUID")
            except (InvalidDicomError, OSError, ValueError, EOFError, TypeError):
                uid = ""
            if not uid:
                skipped.append(str(path.relative_to(root)))
                continue
            groups[uid].append((path, ds))
    if skipped:
        shown = ", ".join(skipped[:5]) + (", ..." if len(skipped) > 5 else "")
        warnings.warn(f"{root}: skipped {len(skipped)} file(s) that are not DICOM images: {shown}", stacklevel=2)
    return sorted((_series_info(h) for h in groups.values()), key=lambda s: -s.num_slices)


def _kernel_rank(kernel: str) -> int:
    """0 for a soft or standard reconstruction kernel, 2 for a sharp (lung, bone) one, 1 when unknown."""
    siemens = _SIEMENS.match(kernel)
    if siemens:  # Siemens B30f, Br40d, I70f ...: the number is the sharpness
        return 0 if int(siemens.group(1)) < 50 else 2
    if _SHARP.search(kernel):
        return 2
    return 0 if _SOFT.search(kernel) else 1


def rank_key(series: SeriesInfo, thickness_mm: float = DEFAULT_THICKNESS_MM) -> tuple:
    """Sort key of a usable axial CT series, best first.

    In order: ORIGINAL/PRIMARY image type; soft or standard kernel (:func:`_kernel_rank`); slice thickness closest
    to ``thickness_mm`` (the slice spacing when SliceThickness is missing); without contrast; a chest body part or
    description; then more slices.
    """
    original = {"ORIGINAL", "PRIMARY"} <= set(series.image_type) or not series.image_type
    thickness = series.slice_thickness or series.slice_spacing or thickness_mm
    chest = bool(_CHEST.search(f"{series.body_part} {series.description}"))
    return (
        not original,
        _kernel_rank(series.kernel),
        round(abs(thickness - thickness_mm), 1),
        series.contrast,
        not chest,
        -series.num_slices,
    )


def rank_axial_ct_series(
    series: Sequence[SeriesInfo],
    study_dir: str | os.PathLike,
    min_slices: int = MIN_SLICES,
    thickness_mm: float = DEFAULT_THICKNESS_MM,
) -> list[SeriesInfo]:
    """The usable axial CT series of a study, best first (:func:`rank_key`).

    Usable: CT, axial, no localizer, derived image or projection (:attr:`SeriesInfo.excluded`), a regular
    volume of at least ``min_slices`` slices, pixel data this machine can decode. Raises InputError naming
    ``study_dir`` and why nothing fits, series by series.
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
    usable, reasons = [], []
    for s in axial:
        why = (
            s.excluded
            or s.geometry_problem
            or (f"fewer than {min_slices} slices, not a volume" if s.num_slices < min_slices else None)
            or missing_decoder(s.transfer_syntax)
        )
        if why:
            reasons.append(f"{s}: {why}")
        else:
            usable.append(s)
    if not usable:
        raise InputError(study_dir, "no usable axial CT series: " + "; ".join(reasons))
    return sorted(usable, key=lambda s: rank_key(s, thickness_mm))


def select_axial_ct_series(
    series: Sequence[SeriesInfo], study_dir: str | os.PathLike, min_slices: int = MIN_SLICES
) -> SeriesInfo:
    """The best usable axial CT series (the first of :func:`rank_axial_ct_series`)."""
    return rank_axial_ct_series(series, study_dir, min_slices)[0]


def missing_decoder(transfer_syntax: str) -> str | None:
    """Why pixel data in ``transfer_syntax`` cannot be decoded here, or None when it can (or is not compressed)."""
    if not transfer_syntax:
        return None
    uid = pydicom.uid.UID(transfer_syntax)
    if not uid.is_compressed:
        return None
    try:
        from pydicom.pixels import get_decoder  # pydicom >= 3

        available = get_decoder(uid).is_available
    except NotImplementedError:
        available = False
    except ImportError:  # pydicom 2
        handlers = pydicom.config.pixel_data_handlers
        available = any(h.supports_transfer_syntax(uid) and h.is_available() for h in handlers)
    if available:
        return None
    return f"pixel data compressed as {uid.name} ({uid}) and no decoder for it is installed: {DECODER_HINT}"
