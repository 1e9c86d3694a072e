"""Header checks that refuse a bad image before any voxel is loaded.

A NIfTI file is checked from its header and, for ``.nii.gz``, from the gzip trailer (the
uncompressed size the stream claims), so corrupt, truncated, mislabelled, 2D/4D and absurdly
large images are refused in milliseconds with a message naming the file and the problem.
A DICOM series folder must hold one series forming a regular axial CT volume whose pixel data this machine
can decode (checked from the headers by :mod:`pipeline.deploy.series`): a folder of several series, a single slice,
uneven slice spacing or a compression without an installed decoder is refused, naming the file and the transfer
syntax. :func:`check_images` refuses a whole cohort (training) naming every bad file: when some fail their header
check, the others are loaded and content-checked (:class:`~pipeline.transforms.plausibility.CheckChestCT`) too, so
one error lists every problem at once.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np

from pipeline.utils.errors import InputError, InputErrors, find_input_error

#: Largest image accepted, in voxels (2048 x 2048 x 1024): a header claiming more is refused
#: before anything is allocated. MosMedData studies are at most 512 x 512 x 54.
MAX_VOXELS = 2048 * 2048 * 1024

NIFTI_SUFFIXES = (".nii", ".nii.gz")


@dataclass(frozen=True)
class ImageHeader:
    """What the header says about an image.

    Attributes:
        path: the file or DICOM series folder.
        shape: spatial shape in voxels (x, y, z).
        spacing: voxel size in mm (x, y, z).
        dtype: on-disk data type.
        axcodes: orientation codes, e.g. ``("L", "A", "S")`` for MosMedData.
    """

    path: str
    shape: tuple[int, int, int]
    spacing: tuple[float, float, float]
    dtype: str
    axcodes: tuple[str, str, str]


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether ``path`` is named like a NIfTI file."""
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def is_dicom_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` starts like a DICOM Part 10 file (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def is_dicom_dir(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder holding at least one DICOM file (searched recursively)."""
    p = Path(path)
    return p.is_dir() and any(f.is_file() and is_dicom_file(f) for f in p.rglob("*"))


def _check_readable_file(path: Path) -> None:
    if path.is_symlink() and not path.exists():
        raise InputError(path, f"broken symbolic link (points to {os.readlink(path)})")
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "not a regular file")
    if not os.access(path, os.R_OK):
        raise InputError(path, "file is not readable (permission denied)")
    if path.stat().st_size == 0:
        raise InputError(path, "file is empty (0 bytes)")


def _gzip_payload_size(path: Path) -> int:
    """Uncompressed size of a gzip file: from its trailer, verified by decoding when it disagrees."""
    with open(path, "rb") as f:
        if f.read(2) != b"\x1f\x8b":
            raise InputError(path, "named .nii.gz but is not gzip-compressed (wrong file type?)")
        f.seek(-4, os.SEEK_END)
        return struct.unpack("<I", f.read(4))[0]


def _decoded_size(path: Path) -> int:
    """Decode a whole gzip stream; raises InputError if it ends early or is corrupt."""
    size = 0
    try:
        with gzip.open(path, "rb") as f:
            while chunk := f.read(1 << 22):
                size += len(chunk)
    except (EOFError, OSError, zlib.error) as err:
        raise InputError(path, f"truncated or corrupt gzip stream ({err})") from err
    return size


def check_nifti(path: str | os.PathLike) -> ImageHeader:
    """Check a NIfTI file from its header; raise :class:`InputError` naming the problem.

    Refuses: missing, unreadable or empty files; non-NIfTI content (a text or PNG file named
    ``.nii.gz``); truncated files; images that are not 3D (a 4D image with a single volume is
    accepted); zero or non-finite voxel sizes; headers claiming more than :data:`MAX_VOXELS`.
    """
    path = Path(path)
    _check_readable_file(path)
    gzipped = path.name.lower().endswith(".gz")
    if gzipped:
        _gzip_payload_size(path)  # refuses non-gzip content before nibabel sees it
    try:
        img = nib.load(str(path))
    except Exception as err:  # nibabel raises many types for garbage input
        raise InputError(path, f"not a readable NIfTI image ({type(err).__name__}: {err})") from err
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InputError(path, f"not a NIfTI image ({type(img).__name__})")
    shape = tuple(int(s) for s in img.shape)
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InputError(path, f"expected a 3D volume, got {len(shape)}D image of shape {img.shape}")
    if min(shape) < 1:
        raise InputError(path, f"empty image of shape {shape}")
    n_voxels = int(np.prod(shape, dtype=np.int64))
    if n_voxels > MAX_VOXELS:
        raise InputError(path, f"header claims {shape} = {n_voxels:,} voxels, over the {MAX_VOXELS:,} limit")
    header = img.header
    dtype = header.get_data_dtype()
    expected = int(img.dataobj.offset) + n_voxels * dtype.itemsize
    if gzipped:
        # the trailer holds the size mod 2**32; decode only when it disagrees (or is ambiguous)
        trailer_ok = _gzip_payload_size(path) == expected % 2**32
        stored = expected if trailer_ok else _decoded_size(path)
    else:
        stored = path.stat().st_size
    if stored < expected:
        raise InputError(path, f"truncated: {stored:,} bytes, the header needs {expected:,}")
    zooms = tuple(float(z) for z in header.get_zooms()[:3])
    if not all(np.isfinite(zooms)) or min(zooms) <= 0:
        raise InputError(path, f"invalid voxel size {zooms} mm in the header")
    axcodes = tuple(nib.aff2axcodes(img.affine))
    if None in axcodes:
        raise InputError(path, f"degenerate affine, cannot tell the orientation:\n{img.affine}")
    return ImageHeader(str(path), shape, zooms, str(dtype), axcodes)  # type: ignore[arg-type]


def check_dicom_series(path: str | os.PathLike) -> None:
    """Refuse a DICOM folder unless it holds exactly one series that is a regular axial CT volume.

    The series' files must lie directly in the folder, with nothing else beside them (hidden files
    aside): MONAI's DICOM readers read every file of the folder as a slice.
    """
    from pipeline.deploy.series import find_series, select_axial_ct_series  # pydicom/highdicom only when needed

    series = find_series(path)
    if len(series) > 1:
        listed = "; ".join(map(str, series))
        raise InputError(path, f"holds {len(series)} series ({listed}); pass the folder of one series")
    others = sorted(p.name for p in Path(path).iterdir() if not p.name.startswith(".") and not is_dicom_file(p))
    if others:
        shown = ", ".join(others[:5]) + (", ..." if len(others) > 5 else "")
        raise InputError(
            path,
            f"holds {len(others)} entries that are not DICOM slices ({shown}); a series folder "
            "may hold only the series' files",
        )
    chosen = select_axial_ct_series(series, path)
    if chosen.notes:
        raise InputError(
            path, "; ".join(chosen.notes) + ": a series folder is read whole (python -m pipeline infer keeps the run)"
        )


def check_image(path: str | os.PathLike) -> ImageHeader | None:
    """Check a NIfTI file or a DICOM series folder before loading it.

    Returns the NIfTI header summary, or ``None`` for a DICOM folder (whose geometry is read
    when the series is loaded). Raises :class:`InputError` for anything else.
    """
    p = Path(path)
    if p.is_dir():
        if not is_dicom_dir(p):
            raise InputError(p, "folder holds no DICOM files")
        check_dicom_series(p)
        return None
    if is_nifti(p):
        return check_nifti(p)
    if p.is_symlink() and not p.exists():
        raise InputError(p, f"broken symbolic link (points to {os.readlink(p)})")
    if not p.exists():
        raise InputError(p, "file not found")
    if is_dicom_file(p):
        raise InputError(p, "a single DICOM file; pass the folder holding the whole series")
    raise InputError(p, "unsupported file type: expected .nii, .nii.gz or a DICOM series folder")


def content_errors(paths: list[str | os.PathLike]) -> list[InputError]:
    """The content problems of images that passed their header check: each loaded and checked for a chest CT in HU."""
    from monai.transforms import LoadImage

    from pipeline.transforms.plausibility import CheckChestCT

    load, check, errors = LoadImage(image_only=True), CheckChestCT(), []
    for p in paths:
        try:
            check(load(str(p)))
        except Exception as err:
            found = find_input_error(err)
            errors.append(found or InputError(p, f"cannot be loaded ({type(err).__name__}: {err})"))
    return errors


def check_images(paths: list[str | os.PathLike]) -> list[ImageHeader | None]:
    """Check every image and raise one :class:`InputErrors` listing all bad ones.

    When any fails its header check, the others are content-checked too (:func:`content_errors`): the run is
    refused anyway, and the error names every bad file, header and content problems alike.
    """
    headers, errors, passed = [], [], []
    for p in paths:
        try:
            headers.append(check_image(p))
            passed.append(p)
        except InputError as err:
            errors.append(err)
    if errors:
        raise InputErrors(errors + content_errors(passed))
    return headers
