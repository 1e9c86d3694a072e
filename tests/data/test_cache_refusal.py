"""CheckedCacheDataset(refuse="study") and RefusingDataset: a bad study leaves the batch with its reason."""

from __future__ import annotations

import logging

import numpy as np
import pytest
from conftest import chest, write_nifti
from monai.transforms import Compose

from pipeline.data.cache import CheckedCacheDataset, cached_dataset
from pipeline.data.refusal import REFUSED, RefusingDataset, collate_refusals
from pipeline.synth.phantom import generate_study
from pipeline.transforms.chain import deterministic_transforms
from pipeline.utils.errors import InputErrors


@pytest.fixture
def items(tmp_path) -> list[dict]:
    """A good chest CT between a file refused on its header and one refused on its content."""
    volume, affine = chest(seed=1)
    good = write_nifti(tmp_path / "good.nii.gz", volume, affine)
    (tmp_path / "text.nii.gz").write_text("not an image")
    constant = write_nifti(tmp_path / "constant.nii.gz", np.full(volume.shape, -1000, np.int16), affine)
    return [
        {"image": str(tmp_path / "text.nii.gz"), "label": 0},
        {"image": str(good), "label": 1},
        {"image": str(constant), "label": 0},
    ]


def preprocessing() -> Compose:
    return Compose(deterministic_transforms(spatial_size=(16, 16, 8)))


def test_memory_cache_refuses_the_study_not_the_run(items):
    ds = CheckedCacheDataset(items, preprocessing(), refuse="study", num_workers=1, progress=False)
    assert len(ds) == 1 and ds[0]["image"].shape == (1, 16, 16, 8) and int(ds[0]["label"]) == 1
    reasons = {r["image"].rsplit("/", 1)[-1]: r["reason"] for r in ds.refused}
    assert set(reasons) == {"text.nii.gz", "constant.nii.gz"}
    assert "not gzip-compressed" in reasons["text.nii.gz"] and "constant" in reasons["constant.nii.gz"]
    assert all(r["label"] == 0 for r in ds.refused)
    with pytest.raises(InputErrors):  # training (headers checked before): the whole run, every bad file named
        CheckedCacheDataset(items[1:], preprocessing(), refuse="run", num_workers=1, progress=False)


def test_streaming_dataset_passes_refusals_with_the_batch(items):
    ds = cached_dataset(items, preprocessing(), cache="none", refuse="study")
    assert isinstance(ds, RefusingDataset)
    batch = collate_refusals([ds[i] for i in range(3)])
    assert batch["image"].shape == (1, 1, 16, 16, 8)
    assert [r["image"] for r in batch[REFUSED]] == [items[0]["image"], items[2]["image"]]
    assert collate_refusals([ds[0]]) == {REFUSED: [ds[0][REFUSED]]}
    with pytest.raises(ValueError, match="needs cache"):
        cached_dataset(items, preprocessing(), cache="disk", cache_dir="x", refuse="study")


def test_a_training_cohort_leaves_out_lungs_the_mask_cannot_hold(items, tmp_path, caplog):
    """A white lung (lobar consolidation through both lungs) is not a bad file: training leaves it out, names it
    and goes on; a bad file beside it still stops the run."""
    study = generate_study("CT-4", 0, matrix=128, patterns=("lobar",))
    white = write_nifti(tmp_path / "white.nii.gz", study.image, study.affine)
    cohort = [items[1], {"image": str(white), "label": 1}]
    with caplog.at_level(logging.WARNING, logger="pipeline.data.cache"):
        ds = CheckedCacheDataset(cohort, preprocessing(), refuse="run", num_workers=1, progress=False)
    assert len(ds) == 1 and ds.data == [items[1]]
    (left,) = ds.refused
    assert left["image"] == str(white) and "lungs implausibly small" in left["reason"]
    assert "white.nii.gz" in caplog.text and "left out of this run" in caplog.text
    with pytest.raises(InputErrors) as err:  # the constant volume is bad input: the run stops, naming it alone
        CheckedCacheDataset([*cohort, items[2]], preprocessing(), refuse="run", num_workers=1, progress=False)
    assert [e.path for e in err.value.errors] == [items[2]["image"]]
