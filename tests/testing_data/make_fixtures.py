"""Build the small real-CT fixtures in ``tests/testing_data/realct/`` from ``/work/shared/realct``.

Run once by a developer (not by CI); the outputs are committed::

    python tests/testing_data/make_fixtures.py [--source /work/shared/realct]

- ``Lung_Dx-A0002_thorax_8mm_128/``: the 30-slice 8 mm Siemens chest series (TCIA Lung-PET-CT-Dx,
  CC BY 4.0) block-averaged in-plane from 512x512 to 128x128. Rows, Columns, PixelSpacing,
  ImagePositionPatient (centre of the first block) and the smallest/largest pixel values are updated,
  every instance UID is re-derived deterministically from the original one, all other tags are kept.
- ``abdomen_ct_small.nii.gz``: the abdomen CT (TotalSegmentator test data, Apache-2.0)
  block-averaged 2x per axis to 6 mm voxels, int16 HU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
from pydicom.uid import generate_uid

HERE = Path(__file__).resolve().parent / "realct"
SERIES = "Lung_Dx-A0002_thorax_8mm_B40f"
SERIES_OUT = "Lung_Dx-A0002_thorax_8mm_128"
ABDOMEN_OUT = "abdomen_ct_small.nii.gz"
DICOM_FACTOR = 4
NIFTI_FACTOR = 2


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``-sized blocks along every axis (trailing remainders dropped)."""
    shape = [s // factor for s in array.shape]
    cropped = array[tuple(slice(0, s * factor) for s in shape)].astype(np.float64)
    blocks = cropped.reshape([v for s in shape for v in (s, factor)])
    return blocks.mean(axis=tuple(range(1, 2 * len(shape), 2)))


def derived_uid(uid: str) -> str:
    """A new UID derived deterministically from ``uid``, so references between files stay consistent."""
    return generate_uid(entropy_srcs=[uid, f"downsampled x{DICOM_FACTOR}"])


def _rederive_uids(ds: pydicom.Dataset) -> None:
    """Replace every instance UID (study, series, SOP, frame of reference, references) in place."""
    for elem in [*ds.iterall(), *ds.file_meta]:
        if elem.VR == "UI" and (elem.keyword.endswith("InstanceUID") or elem.keyword == "FrameOfReferenceUID"):
            elem.value = derived_uid(str(elem.value))


def downsample_slice(src: Path, dst: Path, factor: int = DICOM_FACTOR) -> None:
    """Write ``src`` (one CT slice) to ``dst`` block-averaged in-plane by ``factor``."""
    ds = pydicom.dcmread(src)
    small = np.rint(block_mean(ds.pixel_array, factor)).astype(ds.pixel_array.dtype)
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    iop = np.asarray(ds.ImageOrientationPatient, dtype=float)
    # the first output pixel is the centre of the first factor x factor block
    shift = (factor - 1) / 2 * (iop[:3] * col_spacing + iop[3:] * row_spacing)
    ds.ImagePositionPatient = [f"{v:.6f}" for v in np.asarray(ds.ImagePositionPatient, dtype=float) + shift]
    ds.PixelSpacing = [f"{row_spacing * factor:.9g}", f"{col_spacing * factor:.9g}"]
    ds.Rows, ds.Columns = small.shape
    ds.SmallestImagePixelValue, ds.LargestImagePixelValue = int(small.min()), int(small.max())
    ds.PixelData = small.tobytes()
    _rederive_uids(ds)
    ds.save_as(dst, enforce_file_format=True)


def make_dicom_fixture(source: Path, out_dir: Path) -> Path:
    """Downsample every file of the 8 mm series into ``out_dir/SERIES_OUT`` (replaced as a whole)."""
    final = out_dir / SERIES_OUT
    tmp = Path(tempfile.mkdtemp(dir=out_dir, prefix=".tmp-"))
    for src in sorted((source / "dicom" / SERIES).glob("*.dcm")):
        downsample_slice(src, tmp / src.name)
    tmp.chmod(0o755)
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    return final


def make_abdomen_fixture(source: Path, out_dir: Path, factor: int = NIFTI_FACTOR) -> Path:
    """Block-average the abdomen CT by ``factor`` per axis; int16 HU, affine adjusted to the block centres."""
    img = nib.load(source / "nifti" / "abdomen_ct.nii.gz")
    small = np.rint(block_mean(np.asarray(img.dataobj), factor)).astype(np.int16)
    scale = np.diag([factor, factor, factor, 1.0])
    scale[:3, 3] = (factor - 1) / 2
    out = nib.Nifti1Image(small, img.affine @ scale)
    out.header.set_xyzt_units("mm", "sec")
    final = out_dir / ABDOMEN_OUT
    tmp = out_dir / f".tmp-{ABDOMEN_OUT}"
    nib.save(out, tmp)
    os.replace(tmp, final)
    return final


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", type=Path, default=Path("/work/shared/realct"))
    args = parser.parse_args()
    HERE.mkdir(parents=True, exist_ok=True)
    for path in (make_dicom_fixture(args.source, HERE), make_abdomen_fixture(args.source, HERE)):
        files = [path] if path.is_file() else sorted(path.iterdir())
        print(f"{path}: {len(files)} file(s), {sum(f.stat().st_size for f in files) / 1024:.0f} KiB")


if __name__ == "__main__":
    main()
