"""check_images refuses a cohort naming header and content problems at once."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import chest, write_nifti

from pipeline.data.imagecheck import check_images
from pipeline.utils.errors import InputErrors


def test_content_problems_are_named_beside_header_problems(tmp_path):
    volume, affine = chest(seed=3)
    good = write_nifti(tmp_path / "good.nii.gz", volume, affine)
    (tmp_path / "text.nii.gz").write_text("not an image")
    constant = write_nifti(tmp_path / "constant.nii.gz", np.full(volume.shape, -1000, np.int16), affine)
    mri = write_nifti(tmp_path / "mri.nii.gz", (np.clip(volume, -1000, 1000) + 1000).astype(np.int16), affine)
    with pytest.raises(InputErrors) as err:
        check_images([good, tmp_path / "text.nii.gz", constant, mri])
    problems = {e.path.rsplit("/", 1)[-1]: e.problem for e in err.value.errors}
    assert set(problems) == {"text.nii.gz", "constant.nii.gz", "mri.nii.gz"}
    assert "constant" in problems["constant.nii.gz"] and "no air" in problems["mri.nii.gz"]
    assert check_images([good]) == [check_images([good])[0]]
