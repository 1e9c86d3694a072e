"""Leave-one-background-out (``benchmarks.bench_backgrounds``): which backgrounds each arm trains on, and the
benchmark end to end at its tiniest size on small versions of two real normals (skipped without ../shared/realct)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import downsample_nifti

from benchmarks.bench_backgrounds import ARMS, arm_backgrounds, arm_datalist, folds, main
from pipeline.data.cohort import read_datalist
from pipeline.synth.generate import generate_cohort

NAMES = ["a.nii.gz", "b", "c"]


def test_every_background_held_out_once_and_never_trained_on() -> None:
    assert folds(NAMES) == [("a.nii.gz", ["b", "c"]), ("b", ["a.nii.gz", "c"]), ("c", ["a.nii.gz", "b"])]
    for held_out, others in folds(NAMES):
        assert arm_backgrounds("phantom only", held_out, NAMES) == []
        assert arm_backgrounds("+ backgrounds", held_out, NAMES) == others
        assert held_out not in others
    with pytest.raises(ValueError, match="unknown arm"):
        arm_backgrounds("backgrounds only", "b", NAMES)


@pytest.fixture(scope="module")
def cohorts(tmp_path_factory) -> dict[str, Path]:
    """A phantom cohort and, standing in for three painted backgrounds, three more (same layout, 3 studies each)."""
    root = tmp_path_factory.mktemp("cohorts")
    made = {}
    for i, name in enumerate(["phantom", *NAMES]):
        per_category = 4 if name == "phantom" else 1
        categories = ["CT-0", "CT-1", "CT-3"]
        generate_cohort(root / name, per_category, categories, seed=i, matrix=64, progress=False, _n_slices=8)
        made[name] = root / name
    return made


def test_arm_datalists_share_validation_and_add_only_the_other_backgrounds(cohorts, tmp_path: Path) -> None:
    phantom, painted = cohorts["phantom"], {n: cohorts[n] for n in NAMES}
    held_out, others = folds(NAMES)[1]
    lists = {}
    for arm in ARMS:
        trained = arm_backgrounds(arm, held_out, NAMES)
        lists[arm] = read_datalist(arm_datalist(tmp_path / f"{arm}.json", phantom, painted, trained, seed=3))
    phantom_only, plus = lists["phantom only"], lists["+ backgrounds"]
    assert plus["validation"] == phantom_only["validation"]
    assert all(it["study_id"].startswith("phantom-") for it in phantom_only["training"] + plus["validation"])
    added = plus["training"][len(phantom_only["training"]) :]
    assert plus["training"][: len(phantom_only["training"])] == phantom_only["training"]
    assert sorted({it["study_id"].rsplit("-study_", 1)[0] for it in added}) == others
    assert {frozenset(it) for split in plus.values() for it in split} == {frozenset(plus["training"][0])}
    assert len(added) == 3 * len(others)
    assert not any(str(painted[held_out]) in it["image"] for split in plus.values() for it in split)
    ids = [it["study_id"] for split in plus.values() for it in split]
    assert len(ids) == len(set(ids))


@pytest.mark.slow
def test_benchmark_end_to_end_tiny(real_series: Path, shared_realct: Path, tmp_path: Path) -> None:
    """One fold, one seed, one epoch on a 128x128 real DICOM series and a 3 mm real CTA crop."""
    sources = tmp_path / "sources"
    sources.mkdir()
    cta = downsample_nifti(shared_realct / "nifti" / "chest_cta_crop.nii.gz", sources / "cta.nii.gz")
    argv = ["--realct", str(shared_realct), "--backgrounds", str(real_series), str(cta), "--work", str(tmp_path / "w"),
            "--seeds", "0", "--folds", "1", "--epochs", "1", "--matrix", "64", "--per-category", "2",
            "--paint-per-category", "1", "--spatial-size", "64", "64", "32",
            "--results-dir", str(tmp_path)]  # fmt: skip
    results = main(argv)
    held_out = real_series.name
    assert [(r["arm"], r["trained_backgrounds"]) for r in results["runs"]] == [
        ("phantom only", []),
        ("+ backgrounds", ["cta.nii.gz"]),
    ]
    for run in results["runs"]:
        held = run["held_out"]
        assert held["background"] == held_out and held["n"] == 5 and len(held["p_unmodified"]) == 1
        assert sorted(held["p_painted"]) == ["CT-1", "CT-2", "CT-3", "CT-4"]
        assert 0.0 <= held["auc"] <= 1.0
        assert len(run["ricord"]["rows"]) == 8
    saved = json.loads((tmp_path / "backgrounds.json").read_text())
    assert saved["summary"]["paired difference"]["held-out AUC"]["n"] == 1
    assert "+ backgrounds minus phantom only" in (tmp_path / "backgrounds.md").read_text()
