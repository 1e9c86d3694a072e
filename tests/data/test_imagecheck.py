"""Header checks refuse every kind of broken image with a message naming the file."""

from __future__ import annotations

import gzip
import os
import struct

import nibabel as nib
import numpy as np
import pytest
from conftest import chest, write_nifti

from pipeline.data.imagecheck import MAX_VOXELS, check_image, check_images, check_nifti
from pipeline.utils.errors import InputError, InputErrors


def test_good_volume_header(nifti):
    header = check_nifti(nifti(shape=(16, 12, 8)))
    assert header.shape == (16, 12, 8)
    assert header.spacing == pytest.approx((0.8, 0.8, 8.0))
    assert header.axcodes == ("L", "A", "S")
    assert header.dtype == "int16"


def test_single_volume_4d_is_accepted(tmp_path):
    assert check_nifti(write_nifti(tmp_path / "a.nii.gz", np.zeros((8, 8, 4, 1), np.int16))).shape == (8, 8, 4)


@pytest.mark.parametrize(
    ("shape", "problem"),
    [((16, 16), "expected a 3D volume, got 2D"), ((8, 8, 4, 3), "expected a 3D volume, got 4D")],
)
def test_wrong_dimensionality(tmp_path, shape, problem):
    path = write_nifti(tmp_path / "bad.nii.gz", np.zeros(shape, np.int16))
    with pytest.raises(InputError, match=problem) as err:
        check_image(path)
    assert err.value.path == str(path)


def test_zero_byte_file(tmp_path):
    (tmp_path / "empty.nii.gz").touch()
    with pytest.raises(InputError, match=r"empty.nii.gz: file is empty"):
        check_image(tmp_path / "empty.nii.gz")


def test_truncated_gzip(nifti):
    path = nifti(shape=(32, 32, 16))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError, match="truncated"):
        check_image(path)


def test_truncated_uncompressed(nifti):
    path = nifti("plain.nii", shape=(16, 16, 8))
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(InputError, match="truncated"):
        check_image(path)


def test_gzip_of_too_little_data(tmp_path):
    """A valid gzip stream whose payload is shorter than the header claims."""
    path = write_nifti(tmp_path / "full.nii", np.zeros((16, 16, 8), np.int16))
    short = tmp_path / "short.nii.gz"
    short.write_bytes(gzip.compress(path.read_bytes()[:-64]))
    with pytest.raises(InputError, match="truncated"):
        check_image(short)


@pytest.mark.parametrize("content", [b"hello, I am a text file\n", b"\x89PNG\r\n\x1a\n" + b"\0" * 64])
def test_not_a_nifti(tmp_path, content):
    path = tmp_path / "study.nii.gz"
    path.write_bytes(content)
    with pytest.raises(InputError, match="not gzip-compressed"):
        check_image(path)


def test_gzipped_garbage(tmp_path):
    path = tmp_path / "study.nii.gz"
    path.write_bytes(gzip.compress(b"not a nifti header at all" * 20))
    with pytest.raises(InputError, match="not a readable NIfTI"):
        check_image(path)


def test_enormous_header_refused_before_allocation(tmp_path):
    img = nib.Nifti1Image(np.zeros((2, 2, 2), np.int16), np.eye(4))
    img.header.set_data_shape((4096, 4096, 4096))
    path = tmp_path / "huge.nii"
    with open(path, "wb") as f:
        img.header.write_to(f)
    with pytest.raises(InputError, match=f"over the {MAX_VOXELS:,} limit"):
        check_image(path)


def test_missing_and_broken_symlink(tmp_path):
    with pytest.raises(InputError, match="file not found"):
        check_image(tmp_path / "nope.nii.gz")
    link = tmp_path / "link.nii.gz"
    os.symlink(tmp_path / "gone.nii.gz", link)
    with pytest.raises(InputError, match="broken symbolic link"):
        check_image(link)


def test_unsupported_and_empty_folder(tmp_path):
    (tmp_path / "scan.png").write_bytes(b"\x89PNG")
    with pytest.raises(InputError, match="unsupported file type"):
        check_image(tmp_path / "scan.png")
    (tmp_path / "series").mkdir()
    with pytest.raises(InputError, match="holds no DICOM"):
        check_image(tmp_path / "series")


def test_zero_voxel_size(tmp_path):
    path = write_nifti(tmp_path / "flat.nii", np.zeros((8, 8, 4), np.int16))
    raw = bytearray(path.read_bytes())
    raw[88:92] = struct.pack("<f", 0.0)  # pixdim[3]: the slice spacing
    raw[312:328] = bytes(16)  # srow_z: the sform's z row
    path.write_bytes(bytes(raw))
    with pytest.raises(InputError, match=r"flat.nii: (invalid voxel size|degenerate affine)"):
        check_image(path)


def test_check_images_lists_every_bad_file(tmp_path):
    good = write_nifti(tmp_path / "good.nii.gz", *chest(seed=0))  # header and content sound
    (tmp_path / "a.nii.gz").touch()
    (tmp_path / "b.nii.gz").write_text("text")
    with pytest.raises(InputErrors) as err:
        check_images([good, tmp_path / "a.nii.gz", tmp_path / "b.nii.gz"])
    assert len(err.value.errors) == 2
    assert "a.nii.gz" in str(err.value) and "b.nii.gz" in str(err.value)
