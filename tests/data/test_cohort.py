"""Cohort discovery, labels, splits and datalists on real (tiny) NIfTI cohorts."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
from conftest import write_nifti

from pipeline.__main__ import main
from pipeline.data.cohort import (
    assign_folds,
    discover,
    load_items,
    load_split,
    read_datalist,
    split,
    to_items,
    train_val_split,
)
from pipeline.utils.errors import InputError


def _items(n_per_cat: dict[str, int]) -> list[dict]:
    items, k = [], 0
    for cat, n in n_per_cat.items():
        for _ in range(n):
            k += 1
            items.append(
                {"image": f"/x/study_{k:04d}.nii.gz", "study_id": f"s{k}", "category": cat, "label": int(cat != "CT-0")}
            )
    return items


def test_mosmed_layout(mosmed_layout):
    studies = discover(mosmed_layout)
    assert Counter(s.category for s in studies) == {"CT-0": 4, "CT-1": 4, "CT-2": 4, "CT-3": 4}
    items = to_items(studies)
    assert Counter(it["label"] for it in items) == {0: 4, 1: 12}  # CT-0 against every severity by default
    assert {it["category"] for it in items if it["label"] == 1} == {"CT-1", "CT-2", "CT-3"}
    items = to_items(studies, normal=["CT-0"], abnormal=["CT-2", "CT-3"])  # the tutorial's task
    assert Counter(it["label"] for it in items) == {0: 4, 1: 8}
    assert discover(mosmed_layout / "studies") == studies


def test_two_folder_layout(tmp_path):
    for cat, n in (("CT-0", 3), ("CT-23", 5)):
        for i in range(n):
            write_nifti(tmp_path / cat / f"{cat}_{i}.nii.gz", np.zeros((4, 4, 4), np.int16))
    items = to_items(discover(tmp_path))
    assert Counter(it["label"] for it in items) == {0: 3, 1: 5}
    assert to_items(discover(tmp_path), abnormal=["CT-2"]) == [it for it in items if it["label"] == 0]


def test_labels_csv_layout(tmp_path):
    for name in ("a b.nii.gz", "ß-study.nii.gz", "c.nii.gz"):  # spaces and non-ASCII just work
        write_nifti(tmp_path / "imgs" / name, np.zeros((4, 4, 4), np.int16))
    (tmp_path / "labels.csv").write_text("image,label\na b.nii.gz,normal\nß-study.nii.gz,1\nc.nii.gz,0\n")
    items = to_items(discover(tmp_path / "imgs", tmp_path / "labels.csv"))
    assert {it["study_id"]: it["label"] for it in items} == {"a b": 0, "ß-study": 1, "c": 0}


@pytest.mark.parametrize(
    ("csv_text", "problem"),
    [
        ("image,label\nmissing.nii.gz,1\n", "name files that do not exist"),
        ("image,label\nc.nii.gz,maybe\n", "row 2: label 'maybe'"),
        ("image,category\nc.nii.gz,CT-9\n", "unknown category 'CT-9'"),
        ("file,label\nc.nii.gz,1\n", "needs columns 'image'"),
    ],
)
def test_labels_csv_errors(tmp_path, csv_text, problem):
    write_nifti(tmp_path / "imgs" / "c.nii.gz", np.zeros((4, 4, 4), np.int16))
    (tmp_path / "labels.csv").write_text(csv_text)
    with pytest.raises(InputError, match=problem) as err:
        discover(tmp_path / "imgs", tmp_path / "labels.csv")
    assert "labels.csv" in str(err.value)


def test_cohort_errors(tmp_path, mosmed_layout):
    with pytest.raises(InputError, match="cohort not found"):
        discover(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no images found"):
        discover(tmp_path / "empty")
    (mosmed_layout / "studies" / "CT-9").mkdir()
    with pytest.raises(InputError, match=r"unknown category folder\(s\) \['CT-9'\]"):
        discover(mosmed_layout)


def test_duplicate_study_ids(tmp_path):
    write_nifti(tmp_path / "CT-0" / "study_0001.nii.gz", np.zeros((4, 4, 4), np.int16))
    write_nifti(tmp_path / "CT-23" / "study_0001.nii.gz", np.zeros((4, 4, 4), np.int16))
    with pytest.raises(InputError, match=r"duplicate study ids \['study_0001'\]"):
        discover(tmp_path)


def test_holdout_split_is_stratified_disjoint_and_seeded():
    items = _items({"CT-0": 40, "CT-2": 30, "CT-3": 10})
    train, val = train_val_split(items, 0.3, seed=1)
    assert len(val) == 12 + 9 + 3 and len(train) + len(val) == len(items)
    assert not {it["study_id"] for it in train} & {it["study_id"] for it in val}
    assert Counter(it["category"] for it in val) == {"CT-0": 12, "CT-2": 9, "CT-3": 3}
    assert train_val_split(items, 0.3, seed=1) == (train, val)
    assert train_val_split(items, 0.3, seed=2) != (train, val)


def test_kfold_partitions_every_study_once():
    items = _items({"CT-0": 23, "CT-2": 17, "CT-3": 6})
    folds = assign_folds(items, 5, seed=0)
    vals = [split(items, fold=k, n_folds=5)["validation"] for k in range(5)]
    ids = [it["study_id"] for v in vals for it in v]
    assert sorted(ids) == sorted(it["study_id"] for it in items)  # each study validated exactly once
    for k in range(5):
        per_cat = Counter(it["category"] for it, f in zip(items, folds) if f == k)
        assert abs(per_cat["CT-0"] - 23 / 5) < 1 and abs(per_cat["CT-3"] - 6 / 5) < 1
    with pytest.raises(ValueError, match="out of range"):
        split(items, fold=5, n_folds=5)


def test_datalist_cli_roundtrip(tmp_path, mosmed_layout):
    out = tmp_path / "lists" / "mosmed.json"
    assert main(["datalist", str(mosmed_layout), "--out", str(out), "--abnormal", "CT-1,CT-2,CT-3"]) == 0
    raw = json.loads(out.read_text())
    assert not raw["training"][0]["image"].startswith("/")  # relative to the JSON's folder
    lists = read_datalist(out)
    assert len(lists["training"]) + len(lists["validation"]) == 16
    assert all(it["image"].startswith(str(mosmed_layout)) for it in lists["training"])
    split_ = load_split(datalist=str(out))
    assert len(split_["validation"]) == len(lists["validation"])
    with pytest.raises(InputError, match="outside the data root"):
        read_datalist(out, root=tmp_path / "lists")


def test_datalist_cli_folds_and_bad_input(tmp_path, mosmed_layout, capsys):
    out = tmp_path / "folds.json"
    assert main(["datalist", str(mosmed_layout), "--out", str(out), "--folds", "4"]) == 0
    assert sorted({it["fold"] for it in read_datalist(out)["training"]}) == [0, 1, 2, 3]
    assert len(load_split(datalist=str(out), fold=2)["validation"]) == 4
    (mosmed_layout / "studies" / "CT-0" / "study_0001.nii.gz").write_bytes(b"")
    bad_out = tmp_path / "bad.json"
    assert main(["datalist", str(mosmed_layout), "--out", str(bad_out)]) == 2
    assert "study_0001.nii.gz: file is empty" in capsys.readouterr().err
    assert not bad_out.exists()


def test_load_items_single_image_and_missing(tmp_path, nifti):
    path = nifti("scan one.nii.gz")
    assert load_items(dataset_dir=str(path)) == [{"image": str(path), "study_id": "scan one", "category": ""}]
    with pytest.raises(InputError, match="datalist not found"):
        load_items(datalist=str(tmp_path / "x.json"))
