"""Cohort discovery, labels, splits and datalists on real (tiny) NIfTI cohorts."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from conftest import write_nifti

from pipeline.__main__ import main
from pipeline.data.cohort import (
    assign_folds,
    cohort_fingerprint,
    discover,
    evaluation_items,
    load_items,
    load_split,
    read_datalist,
    split,
    to_items,
    train_val_split,
    write_split,
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


def test_masks_and_patient_ids_reach_the_datalist(tmp_path, mosmed_layout):
    """MosMedData's ``masks/study_NNNN_mask.nii.gz`` and a labels CSV's ``mask``/``patient_id`` columns
    become item keys, and a datalist keeps the mask through a write/read round trip (relative on disk)."""
    mask = write_nifti(mosmed_layout / "masks" / "study_0005_mask.nii.gz", np.zeros((8, 8, 4), np.uint8))
    for root in (mosmed_layout, mosmed_layout / "studies"):
        items = {it["study_id"]: it for it in to_items(discover(root))}
        assert items["study_0005"]["mask"] == str(mask)
        assert sum("mask" in it for it in items.values()) == 1  # studies without a mask file get no key
    out = tmp_path / "lists" / "dl.json"
    assert main(["datalist", str(mosmed_layout), "--out", str(out), "--no-check"]) == 0
    raw = [it for lst in json.loads(out.read_text()).values() for it in lst if "mask" in it]
    assert [it["mask"] for it in raw] == [os.path.relpath(mask, out.parent)]
    read = [it for lst in read_datalist(out).values() for it in lst if "mask" in it]
    assert [it["mask"] for it in read] == [str(mask.resolve())]
    assert [it["mask"] for it in load_items(datalist=str(out), check=False) if "mask" in it] == [str(mask.resolve())]
    with pytest.raises(InputError, match=r"mask .* lies outside the data root"):
        read_datalist(out, root=mosmed_layout / "studies")

    for name in ("a.nii.gz", "b.nii.gz"):
        write_nifti(tmp_path / "imgs" / name, np.zeros((4, 4, 4), np.int16))
    write_nifti(tmp_path / "imgs" / "a_seg.nii.gz", np.zeros((4, 4, 4), np.uint8))
    csv_path = tmp_path / "labels.csv"
    csv_path.write_text("image,label,mask,patient_id\na.nii.gz,1,a_seg.nii.gz,p1\nb.nii.gz,0,,p1\n")
    items = {it["study_id"]: it for it in to_items(discover(tmp_path / "imgs", csv_path))}
    assert items["a"]["mask"] == str(tmp_path / "imgs" / "a_seg.nii.gz") and "mask" not in items["b"]
    assert items["a"]["patient_id"] == items["b"]["patient_id"] == "p1"
    csv_path.write_text("image,label,mask\na.nii.gz,1,gone.nii.gz\n")
    with pytest.raises(InputError, match=r"gone\.nii\.gz"):
        discover(tmp_path / "imgs", csv_path)


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


def _ids(items) -> set[str]:
    return {it["study_id"] for it in items}


def test_three_way_split_is_disjoint_stratified_and_seeded():
    items = _items({"CT-0": 40, "CT-2": 30, "CT-3": 10})
    parts = split(items, val_fraction=0.25, seed=3, test_fraction=0.2)
    assert [len(parts[k]) for k in ("training", "validation", "test")] == [48, 16, 16]
    assert Counter(it["category"] for it in parts["test"]) == {"CT-0": 8, "CT-2": 6, "CT-3": 2}
    assert not _ids(parts["training"]) & _ids(parts["test"]) and not _ids(parts["validation"]) & _ids(parts["test"])
    assert _ids(parts["training"]) | _ids(parts["validation"]) | _ids(parts["test"]) == _ids(items)
    assert split(items, val_fraction=0.25, seed=3) == parts
    assert split(items, val_fraction=0.25, seed=4)["test"] != parts["test"]
    assert split(items, test_fraction=0)["test"] == []
    with pytest.raises(ValueError, match="test_fraction"):
        split(items, test_fraction=1.0)


def test_nested_kfold_tests_every_study_once_and_selects_inside_the_rest():
    items = _items({"CT-0": 23, "CT-2": 17, "CT-3": 6})
    folds = assign_folds(items, 5, seed=0)
    parts = [split(items, fold=k, n_folds=5, val_fraction=0.25) for k in range(5)]
    ids = [it["study_id"] for p in parts for it in p["test"]]
    assert sorted(ids) == sorted(it["study_id"] for it in items)  # each study tested exactly once
    for k, p in enumerate(parts):
        assert _ids(p["test"]) == {it["study_id"] for it, f in zip(items, folds) if f == k}
        assert not _ids(p["validation"]) & _ids(p["test"])  # the inner split never sees the outer fold
        assert len(p["validation"]) == pytest.approx(0.25 * (len(items) - len(p["test"])), abs=1)
        per_cat = Counter(it["category"] for it in p["test"])
        assert abs(per_cat["CT-0"] - 23 / 5) < 1 and abs(per_cat["CT-3"] - 6 / 5) < 1
    with pytest.raises(ValueError, match="out of range"):
        split(items, fold=5, n_folds=5)


def test_a_patients_studies_stay_in_one_split():
    items = _items({"CT-0": 30, "CT-2": 30})
    for i, it in enumerate(items):
        it["patient_id"] = f"p{i // 3}"  # three studies per patient
    for parts in [split(items, seed=s) for s in range(3)] + [split(items, fold=k, n_folds=4) for k in range(4)]:
        homes = {}
        for name, lst in parts.items():
            for it in lst:
                homes.setdefault(it["patient_id"], set()).add(name)
        assert all(len(h) == 1 for h in homes.values()), parts
        assert all(parts[k] for k in ("training", "validation", "test"))


def test_split_json_and_evaluation_items(tmp_path, mosmed_layout):
    """The training cohort evaluates on its test split; other cohorts with seen studies are refused or marked."""
    items = to_items(discover(mosmed_layout))
    parts = split(items, val_fraction=0.3, seed=0, test_fraction=0.25)
    path = write_split(tmp_path / "models" / "split.json", parts, seed=0, fold=None)
    record = json.loads(path.read_text())
    assert record["test"] == sorted(_ids(parts["test"])) and record["seed"] == 0
    assert record["fingerprint"] == cohort_fingerprint(items) == cohort_fingerprint(reversed(items))

    assert _ids(evaluation_items(items, path)) == _ids(parts["test"])
    marked = evaluation_items(items, path, allow_seen="true")
    assert {it["study_id"] for it in marked if it["seen_in_training"]} == _ids(parts["training"] + parts["validation"])
    subset = parts["test"] + parts["training"][:2]  # another cohort holding two training studies
    with pytest.raises(InputError, match=r"2 of the 6 studies .* used to train or validate") as err:
        evaluation_items(subset, path)
    assert all(it["study_id"] in str(err.value) for it in parts["training"][:2])
    assert sum(it["seen_in_training"] for it in evaluation_items(subset, path, allow_seen=True)) == 2
    assert evaluation_items(parts["test"], path) == parts["test"]
    with pytest.raises(InputError, match="trained with fold None, not fold 1"):
        evaluation_items(items, path, fold=1)
    assert evaluation_items(items, tmp_path / "none.json") == items  # an older model: no split.json, no guard
    other = write_split(tmp_path / "m2" / "split.json", split(items, seed=1, test_fraction=0.25), fold=None)
    both = evaluation_items(items, [path, other])  # an ensemble: the studies in every member's test split
    assert _ids(both) == set(record["test"]) & set(json.loads(other.read_text())["test"])
    assert not _ids(both) & set(json.loads(other.read_text())["training"])

    seen_id = sorted(_ids(parts["training"]))[0]
    seen_file = next(Path(it["image"]) for it in items if it["study_id"] == seen_id)
    write_nifti(seen_file, np.zeros((8, 8, 5), np.int16))
    changed = to_items(discover(mosmed_layout))  # one seen file rewritten: another cohort, the rest still seen
    assert cohort_fingerprint(changed) != record["fingerprint"]
    with pytest.raises(InputError, match="used to train or validate") as err:
        evaluation_items(changed, path)
    assert seen_id not in str(err.value)  # same id, other scan: not seen


def test_another_cohort_with_the_same_ids_is_not_seen(tmp_path, mosmed_layout):
    """Studies are matched on their bytes: a freshly made cohort reusing the ids study_0001... is scored whole."""
    items = to_items(discover(mosmed_layout))
    path = write_split(tmp_path / "split.json", split(items, val_fraction=0.3, seed=0, test_fraction=0.25))
    fresh = []
    for it in items:
        copy = tmp_path / "fresh" / Path(it["image"]).name
        copy.parent.mkdir(exist_ok=True)
        write_nifti(copy, np.full((8, 8, 5), len(fresh), np.int16))
        fresh.append({**it, "image": str(copy)})
    assert evaluation_items(fresh, path) == fresh
    renamed = [{**it, "study_id": f"other_{i}"} for i, it in enumerate(items)]  # same scans, new ids: still seen
    with pytest.raises(InputError, match="used to train or validate"):
        evaluation_items(renamed, path)


def test_datalist_cli_roundtrip(tmp_path, mosmed_layout):
    out = tmp_path / "lists" / "mosmed.json"
    assert main(["datalist", str(mosmed_layout), "--out", str(out), "--abnormal", "CT-1,CT-2,CT-3"]) == 0
    raw = json.loads(out.read_text())
    assert not raw["training"][0]["image"].startswith("/")  # relative to the JSON's folder
    lists = read_datalist(out)
    assert [len(lists[k]) for k in ("training", "validation", "testing")] == [8, 4, 4]
    assert all(it["image"].startswith(str(mosmed_layout)) for it in lists["training"])
    split_ = load_split(datalist=str(out))
    assert [_ids(split_[k]) for k in ("validation", "test")] == [_ids(lists["validation"]), _ids(lists["testing"])]
    with pytest.raises(InputError, match="outside the data root"):
        read_datalist(out, root=tmp_path / "lists")


def test_datalist_cli_folds_and_bad_input(tmp_path, mosmed_layout, capsys):
    out = tmp_path / "folds.json"
    assert main(["datalist", str(mosmed_layout), "--out", str(out), "--folds", "4"]) == 0
    assert sorted({it["fold"] for it in read_datalist(out)["training"]}) == [0, 1, 2, 3]
    assert len(load_split(datalist=str(out), fold=2)["test"]) == 4
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
