"""A volume out as a DICOM CT series, uncompressed or in the compressed transfer syntaxes PACS exports use.

:func:`write_ct_series` writes an (X, Y, Z) HU volume with its NIfTI affine (RAS, mm) as one CT Image Storage file
per slice (stored values ``HU + 1024``, RescaleIntercept -1024), e.g. a synthetic study
(:func:`pipeline.synth.phantom.generate_study`) to test a DICOM route end to end. Compressed transfer syntaxes
(:data:`COMPRESSED`) are encoded losslessly by GDCM (``python-gdcm``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from pipeline.utils.atomic import atomic_path

#: Lossless compressed transfer syntaxes GDCM encodes: name -> UID.
COMPRESSED = {
    "jpeg-lossless": pydicom.uid.JPEGLosslessSV1,
    "jpeg-ls": pydicom.uid.JPEGLSLossless,
    "jpeg2000": pydicom.uid.JPEG2000Lossless,
    "rle": pydicom.uid.RLELossless,
}
INTERCEPT = -1024.0


def _slice(pixels: np.ndarray, lps: np.ndarray, k: int, uids: Mapping[str, str], tags: Mapping[str, Any]) -> Dataset:
    """Slice ``k`` (pixels ``(rows, cols)``, stored values) of a series whose voxel-to-LPS affine is ``lps``."""
    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = CTImageStorage
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    ds.StudyInstanceUID, ds.SeriesInstanceUID = uids["study"], uids["series"]
    ds.FrameOfReferenceUID = uids["frame"]
    ds.PatientName, ds.PatientID, ds.Modality = "Synthetic^Phantom", "PHANTOM", "CT"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SeriesNumber, ds.InstanceNumber = 1, k + 1
    cols, rows = (lps[:3, :3] / np.linalg.norm(lps[:3, :3], axis=0)).T[:2]
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (*cols, *rows)]
    ds.ImagePositionPatient = [f"{v:.4f}" for v in (lps @ [0, 0, k, 1])[:3]]
    ds.PixelSpacing = [f"{spacing[1]:.6f}", f"{spacing[0]:.6f}"]
    ds.SliceThickness = f"{spacing[2]:.4f}"
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = f"{INTERCEPT:g}", "1", "HU"
    for keyword, value in tags.items():
        setattr(ds, keyword, value)
    ds.PixelData = np.ascontiguousarray(pixels, dtype=np.uint16).tobytes()
    return ds


def _compress(path: Path, transfer_syntax: str) -> None:
    """Re-encode the DICOM file ``path`` in place in ``transfer_syntax`` with GDCM."""
    import gdcm

    reader = gdcm.ImageReader()
    reader.SetFileName(str(path))
    if not reader.Read():
        raise RuntimeError(f"{path}: GDCM cannot read the file it should compress")
    change = gdcm.ImageChangeTransferSyntax()
    change.SetTransferSyntax(gdcm.TransferSyntax(gdcm.TransferSyntax.GetTSType(str(transfer_syntax))))
    change.SetInput(reader.GetImage())
    if not change.Change():
        raise RuntimeError(f"{path}: GDCM cannot encode {pydicom.uid.UID(transfer_syntax).name}")
    writer = gdcm.ImageWriter()
    writer.SetFile(reader.GetFile())
    writer.SetImage(change.GetOutput())
    with atomic_path(path) as tmp:
        writer.SetFileName(str(tmp))
        if not writer.Write():
            raise RuntimeError(f"{tmp}: GDCM cannot write the compressed file")


def write_ct_series(
    volume: np.ndarray,
    affine: np.ndarray,
    folder: str | os.PathLike,
    transfer_syntax: str = ExplicitVRLittleEndian,
    study_uid: str | None = None,
    series_uid: str | None = None,
    **tags: Any,
) -> list[Path]:
    """Write the (X, Y, Z) HU ``volume`` (NIfTI ``affine``, RAS mm) as a CT series ``folder/IM00001.dcm`` ...

    Args:
        volume: HU values (clipped to -1024..64511 as stored ``HU + 1024``).
        affine: 4x4 voxel-to-RAS affine in mm; DICOM's patient frame is LPS.
        folder: output folder (created).
        transfer_syntax: a UID of :data:`COMPRESSED` or an uncompressed one.
        study_uid: StudyInstanceUID (default: a new one); written as given, valid or not.
        series_uid: SeriesInstanceUID (default: a new one); written as given, valid or not.
        tags: more DICOM keywords and values for every slice (``ConvolutionKernel="B30f"``, ...).

    Returns:
        the files, one per slice along the volume's third axis.
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ np.asarray(affine, dtype=float)
    stored = np.clip(np.rint(np.asarray(volume, dtype=np.float64) - INTERCEPT), 0, 65535)
    uids = {"study": study_uid or generate_uid(), "series": series_uid or generate_uid(), "frame": generate_uid()}
    paths = []
    for k in range(stored.shape[2]):
        path = folder / f"IM{k + 1:05d}.dcm"
        ds = _slice(stored[:, :, k].T, lps, k, uids, tags)
        with atomic_path(path) as tmp:
            ds.save_as(tmp, enforce_file_format=True)
        if pydicom.uid.UID(transfer_syntax).is_compressed:
            _compress(path, transfer_syntax)
        paths.append(path)
    return paths
