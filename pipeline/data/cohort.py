"""Cohorts to MONAI datalists: discovery, binary labels and seeded stratified splits.

Three layouts are read, real or synthetic alike:

- MosMedData: ``COHORT/studies/CT-0 ... CT-4/study_NNNN.nii.gz`` (``COHORT/CT-N/...`` too);
- the tutorial's two folders: ``COHORT/CT-0/`` and ``COHORT/CT-23/`` (CT-23 = CT-2 + CT-3);
- any folder of NIfTI files or DICOM series folders with a labels CSV (columns ``image`` and
  ``label`` (0/1 or normal/pneumonia) or ``category`` (CT-0 ... CT-4), optional ``study_id``,
  ``mask`` and ``patient_id``).

A datalist item is ``{"image": path, "label": 0|1, "category": "CT-2", "study_id": "study_0001"}``,
plus ``"mask"`` when the study has a lesion mask (MosMedData's ``COHORT/masks/study_NNNN_mask.nii.gz``
or a labels CSV's ``mask`` column), ``"patient_id"`` when known and ``"fold"`` for k-fold datalists;
the JSON follows MONAI's decathlon layout, with image and mask paths relative to the JSON file's
folder, so ``monai.data.load_decathlon_datalist`` reads it.
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import json
import logging
import os
import re
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sklearn.model_selection import StratifiedGroupKFold, train_test_split

from pipeline.data.imagecheck import check_images, is_dicom_dir, is_dicom_file, is_nifti
from pipeline.utils.atomic import atomic_write_text
from pipeline.utils.errors import InputError
from pipeline.utils.flags import as_bool

logger = logging.getLogger(__name__)

#: MosMedData severity categories, plus the tutorial's merged CT-2/CT-3 folder.
CATEGORIES = ("CT-0", "CT-1", "CT-2", "CT-3", "CT-4")
MERGED = {"CT-23": ("CT-2", "CT-3")}
DEFAULT_NORMAL = ("CT-0",)
DEFAULT_ABNORMAL = ("CT-1", "CT-2", "CT-3", "CT-4")
CLASS_NAMES = ("normal", "pneumonia")
_LABEL_WORDS = {"0": 0, "1": 1, "normal": 0, "pneumonia": 1, "abnormal": 1}


@dataclass(frozen=True)
class Study:
    """One scan of a cohort.

    Attributes:
        study_id: unique id (file name without extension, or DICOM folder name).
        image: NIfTI file or DICOM series folder.
        category: MosMed category (``CT-0`` ... ``CT-4``, ``CT-23``) or ``None``.
        label: binary label (0 normal, 1 pneumonia) when given directly, else ``None``.
        mask: lesion mask (NIfTI) of the study, or ``None``.
        patient_id: the patient the study belongs to, or ``None`` (each study its own patient).
    """

    study_id: str
    image: str
    category: str | None = None
    label: int | None = None
    mask: str | None = None
    patient_id: str | None = None


def study_id_of(path: str | os.PathLike) -> str:
    """``study_0001`` for ``.../study_0001.nii.gz`` or for a DICOM folder ``.../study_0001``."""
    name = Path(path).name
    return re.sub(r"\.nii(\.gz)?$", "", name, flags=re.IGNORECASE)


def scan_images(folder: str | os.PathLike) -> list[str]:
    """The NIfTI files and DICOM series folders directly inside ``folder``, sorted by name."""
    folder = Path(folder)
    found = []
    for p in sorted(folder.iterdir()):
        if p.name.startswith("."):
            continue
        if is_nifti(p) or (p.is_dir() and is_dicom_dir(p)):
            found.append(str(p))
        elif p.is_symlink() and not p.exists():
            found.append(str(p))  # reported as broken by the header checks
    return found


def _mask_of(masks: Path, study_id: str) -> str | None:
    """``masks/<study_id>_mask.nii.gz`` (MosMedData's naming) when it exists."""
    path = masks / f"{study_id}_mask.nii.gz"
    return str(path) if path.is_file() else None


def _category_dirs(root: Path) -> list[Path]:
    """Category folders of a MosMedData (``studies/CT-N``) or two-folder (``CT-N``) cohort, else []."""
    base = root / "studies" if (root / "studies").is_dir() else root
    subdirs = [d for d in sorted(base.iterdir()) if d.is_dir() and not d.name.startswith(".")]
    cats = [d for d in subdirs if d.name in CATEGORIES or d.name in MERGED]
    unknown = [d.name for d in subdirs if d not in cats and d.name != "masks" and not is_dicom_dir(d)]
    if (cats or base.name == "studies") and unknown:
        raise InputError(base, f"unknown category folder(s) {unknown}; expected {list(CATEGORIES)} or CT-23")
    return cats


def discover(cohort: str | os.PathLike, labels_csv: str | os.PathLike | None = None) -> list[Study]:
    """Find every study of a cohort folder (any of the three layouts) or a single image.

    Raises:
        InputError: missing or empty cohort, unknown category folders, duplicate study ids,
            labels CSV rows without files or with bad labels.
    """
    root = Path(cohort)
    if not root.exists():
        raise InputError(root, "cohort not found")
    if labels_csv is not None:
        studies = _from_labels_csv(root, Path(labels_csv))
    elif root.is_file() or any(is_dicom_file(p) for p in root.iterdir()):  # a DICOM series folder
        studies = [Study(study_id_of(root), str(root))]
    else:
        cat_dirs = _category_dirs(root)
        if cat_dirs:
            masks = root.parent / "masks" if root.name == "studies" else root / "masks"
            studies = [
                Study(study_id_of(p), p, d.name, mask=_mask_of(masks, study_id_of(p)))
                for d in cat_dirs
                for p in scan_images(d)
            ]
        else:
            studies = [Study(study_id_of(p), p) for p in scan_images(root)]
    if not studies:
        raise InputError(
            root, "no images found (expected studies/CT-N/*.nii.gz, CT-N/ folders, NIfTI files or DICOM series folders)"
        )
    dupes = [k for k, n in Counter(s.study_id for s in studies).items() if n > 1]
    if dupes:
        where = [s.image for s in studies if s.study_id in set(dupes)]
        raise InputError(root, f"duplicate study ids {sorted(dupes)[:10]} in {where[:10]}")
    return studies


def _parse_label(value: str, path: Path, row: int) -> int:
    key = value.strip().lower()
    if key not in _LABEL_WORDS:
        raise InputError(path, f"row {row}: label {value!r} is not 0/1/normal/pneumonia")
    return _LABEL_WORDS[key]


def _from_labels_csv(root: Path, labels_csv: Path) -> list[Study]:
    if not labels_csv.is_file():
        raise InputError(labels_csv, "labels CSV not found")
    with open(labels_csv, newline="", encoding="utf-8-sig") as f:
        reader = csv.DictReader(f)
        fields = set(reader.fieldnames or [])
        if "image" not in fields or not fields & {"label", "category"}:
            raise InputError(labels_csv, f"needs columns 'image' and 'label' or 'category', has {sorted(fields)}")
        rows = list(reader)
    studies, missing = [], []
    base = root if root.is_dir() else root.parent
    for i, row in enumerate(rows, start=2):
        image = base / row["image"].strip()
        mask = base / row["mask"].strip() if (row.get("mask") or "").strip() else None
        absent = [str(p) for p in (image, mask) if p is not None and not p.exists()]
        if absent:
            missing.append(f"row {i}: {', '.join(absent)}")
            continue
        category = (row.get("category") or "").strip() or None
        if category is not None and category not in CATEGORIES and category not in MERGED:
            raise InputError(labels_csv, f"row {i}: unknown category {category!r}")
        label = _parse_label(row["label"], labels_csv, i) if (row.get("label") or "").strip() else None
        if label is None and category is None:
            raise InputError(labels_csv, f"row {i}: neither a label nor a category")
        sid = (row.get("study_id") or "").strip() or study_id_of(image)
        patient = (row.get("patient_id") or "").strip() or None
        studies.append(Study(sid, str(image), category, label, str(mask) if mask else None, patient))
    if missing:
        raise InputError(labels_csv, f"{len(missing)} row(s) name files that do not exist: {missing[:10]}")
    return studies


def _expand(categories: Iterable[str]) -> set[str]:
    out: set[str] = set()
    for c in categories:
        if c in MERGED:
            out.update(MERGED[c])
        elif c in CATEGORIES:
            out.add(c)
        else:
            raise ValueError(f"unknown category {c!r}; expected one of {list(CATEGORIES)} or CT-23")
    return out


def binary_label(study: Study, normal: Sequence[str], abnormal: Sequence[str]) -> int | None:
    """0 (normal), 1 (pneumonia) or ``None`` when the study is in neither group."""
    if study.label is not None:
        return study.label
    if study.category is None:
        return None
    members = _expand([study.category])
    if members <= _expand(normal):
        return 0
    if members <= _expand(abnormal):
        return 1
    return None


def to_items(
    studies: Sequence[Study],
    normal: Sequence[str] = DEFAULT_NORMAL,
    abnormal: Sequence[str] = DEFAULT_ABNORMAL,
    require_label: bool = True,
) -> list[dict]:
    """Datalist items of the labelled studies; unlabelled ones are dropped (and counted in the log)."""
    overlap = _expand(normal) & _expand(abnormal)
    if overlap:
        raise ValueError(f"categories {sorted(overlap)} are both normal and abnormal")
    items, dropped = [], Counter()
    for s in studies:
        label = binary_label(s, normal, abnormal)
        if label is None and require_label:
            dropped[s.category or "unlabelled"] += 1
            continue
        item = {"image": s.image, "study_id": s.study_id, "category": s.category or ""}
        if label is not None:
            item["label"] = label
        if s.mask is not None:
            item["mask"] = s.mask
        if s.patient_id is not None:
            item["patient_id"] = s.patient_id
        items.append(item)
    if dropped:
        logger.info("left out %s (neither normal nor abnormal)", dict(dropped))
    return items


SPLITS = ("training", "validation", "test")


def study_key(item: Mapping) -> str:
    """The study id of a datalist item (its ``study_id``, else its image's name)."""
    return str(item.get("study_id") or study_id_of(item["image"]))


def _stratum(item: Mapping, fine: bool = True) -> str:
    return f"{item.get('label', '')}/{item.get('category', '')}" if fine else str(item.get("label", ""))


def _groups(items: Sequence[Mapping]) -> list[str]:
    """One group per patient (``patient_id``), else per study: a group never straddles two splits."""
    return [f"patient:{it['patient_id']}" if it.get("patient_id") else f"study:{study_key(it)}" for it in items]


def _holdout(items: Sequence[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """``items`` split into (kept, held out): ``fraction`` of the patients held out, stratified and seeded.

    ``sklearn.model_selection.train_test_split`` over patients (studies without a ``patient_id`` count as
    patients of their own), stratified by (label, category) of each patient's most severe study, by label
    alone when a stratum is too small for that, and unstratified when even that fails.
    """
    if fraction == 0:
        return [dict(it) for it in items], []
    groups = _groups(items)
    names = sorted(set(groups))
    for fine in (True, False, None):
        strata = None
        if fine is not None:
            worst: dict[str, str] = {}
            for g, it in zip(groups, items):
                worst[g] = max(worst.get(g, ""), _stratum(it, fine))
            strata = [worst[g] for g in names]
        try:
            _, held = train_test_split(names, test_size=fraction, random_state=seed, stratify=strata)
            break
        except ValueError:
            if fine is None:
                raise
            logger.info("too few studies to stratify by %s", "label and category" if fine else "label")
    held_set = set(held)
    return (
        [dict(it) for it, g in zip(items, groups) if g not in held_set],
        [dict(it) for it, g in zip(items, groups) if g in held_set],
    )


def assign_folds(items: Sequence[dict], n_folds: int, seed: int = 0) -> list[int]:
    """A fold index per item: ``StratifiedGroupKFold`` by (label, category), one patient in one fold, seeded."""
    if n_folds < 2:
        raise ValueError(f"need at least 2 folds, got {n_folds}")
    folds = [0] * len(items)
    splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
    with warnings.catch_warnings():  # a stratum smaller than n_folds is not an error
        warnings.filterwarnings("ignore", message="The least populated class", category=UserWarning)
        parts = list(splitter.split(np.zeros(len(items)), [_stratum(it) for it in items], _groups(items)))
    for k, (_, held) in enumerate(parts):
        for i in held:
            folds[int(i)] = k
    return folds


def train_val_split(items: Sequence[dict], val_fraction: float = 0.3, seed: int = 0) -> tuple[list, list]:
    """A hold-out split (70/30 by default), stratified by (label, category), by patient when known, seeded."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    return _holdout(items, val_fraction, seed)


def split(
    items: Sequence[dict],
    fold: int | None = None,
    val_fraction: float = 0.3,
    seed: int = 0,
    n_folds: int = 5,
    test_fraction: float = 0.2,
) -> dict[str, list[dict]]:
    """``{"training", "validation", "test"}``: a nested split of ``items``.

    The test split is held out first: ``test_fraction`` of the studies, or fold ``fold`` of ``n_folds``
    (items already carrying a ``"fold"`` key, from a k-fold datalist, keep their folds). Validation is then
    ``val_fraction`` of the remaining studies. Every split is stratified by (label, category), keeps each
    ``patient_id``'s studies together and is seeded.
    """
    if not 0 <= test_fraction < 1:
        raise ValueError(f"test_fraction must be in [0, 1), got {test_fraction}")
    if fold is None:
        rest, test = _holdout(items, test_fraction, seed)
    else:
        folds = (
            [it["fold"] for it in items] if all("fold" in it for it in items) else assign_folds(items, n_folds, seed)
        )
        if not 0 <= fold < max(folds) + 1:
            raise ValueError(f"fold {fold} out of range 0..{max(folds)}")
        rest = [dict(it) for it, f in zip(items, folds) if f != fold]
        test = [dict(it) for it, f in zip(items, folds) if f == fold]
    train, val = train_val_split(rest, val_fraction, seed)
    return {"training": train, "validation": val, "test": test}


def _size(path: str) -> int:
    """Bytes of a file, or of every file in a DICOM series folder."""
    p = Path(path)
    if p.is_dir():
        return sum(f.stat().st_size for f in p.rglob("*") if f.is_file())
    return p.stat().st_size if p.exists() else -1


def cohort_fingerprint(items: Iterable[Mapping]) -> str:
    """sha256 over the sorted (study id, label, category, file size) rows of a cohort: changes with any study."""
    rows = sorted(
        {(study_key(it), str(it.get("label", "")), str(it.get("category", "")), _size(it["image"])) for it in items}
    )
    return hashlib.sha256(json.dumps(rows).encode()).hexdigest()


def split_fingerprint(splits: Mapping[str, Sequence[Mapping]]) -> str:
    """sha256 over the cohort's fingerprint and the sorted study ids of each split."""
    members = {k: sorted(study_key(it) for it in v) for k, v in sorted(splits.items())}
    cohort = cohort_fingerprint(it for v in splits.values() for it in v)
    return hashlib.sha256(json.dumps([cohort, members]).encode()).hexdigest()


def study_digest(item: Mapping) -> str:
    """sha256 of a study's image: the file's bytes, or the names and bytes of a DICOM series folder's files.

    What "the same study" means when another cohort is scored: the same scan, whatever its id or folder (two
    cohorts may both call different scans ``study_0001``; a copied scan keeps its bytes).
    """
    path = Path(item["image"])
    files = sorted(f for f in path.rglob("*") if f.is_file()) if path.is_dir() else [path]
    digest = hashlib.sha256()
    for f in files:
        if path.is_dir():
            digest.update(f.relative_to(path).as_posix().encode())
        with open(f, "rb") as fh:
            digest.update(hashlib.file_digest(fh, "sha256").digest())
    return digest.hexdigest()


def write_split(path: str | os.PathLike, splits: Mapping[str, Sequence[Mapping]], **params: Any) -> Path:
    """Write ``split.json`` (atomically): the study ids of each split, ``params``, the cohort's fingerprint and
    the :func:`study_digest` of every study trained or validated on (``seen_sha256``, id to digest).

    The bundle writes it beside the checkpoint when a training run starts; an evaluation of that model
    reads it (:func:`evaluation_items`).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    seen = [it for k in ("training", "validation") for it in splits.get(k, [])]
    record = {
        "fingerprint": cohort_fingerprint(it for v in splits.values() for it in v),
        **params,
        **{k: sorted(study_key(it) for it in splits.get(k, [])) for k in SPLITS},
        "seen_sha256": {study_key(it): study_digest(it) for it in sorted(seen, key=study_key)},
    }
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def evaluation_items(
    items: Sequence[dict],
    split_files: str | os.PathLike | Sequence[str | os.PathLike],
    allow_seen: bool | str = False,
    fold: int | None = None,
) -> list[dict]:
    """The studies an evaluation of a trained model (or ensemble) scores, given each member's ``split.json``.

    - The models' own training cohort (same fingerprint): the studies in every member's test split, or, with
      ``allow_seen``, every study.
    - Another cohort or datalist: every study, but studies a member trained or validated on (the same image
      bytes, :func:`study_digest`, whatever the id) are refused, naming how many and which; with ``allow_seen``
      they are scored.

    With ``allow_seen``, every item carries ``"seen_in_training"`` (True for studies a member trained or
    validated on). Models without a ``split.json`` (trained before splits were recorded) are not checked,
    with a warning.

    Raises:
        InputError: seen studies without ``allow_seen``; an empty test split; a ``fold`` a model was not
            trained for.
    """
    paths = [Path(split_files)] if isinstance(split_files, str | os.PathLike) else [Path(p) for p in split_files]
    allow_seen = as_bool(allow_seen, "allow_seen")
    for path in paths:
        if not path.is_file():
            logger.warning("no %s: nothing guards against scoring studies this model was trained on", path)
    records = {path: json.loads(path.read_text(encoding="utf-8")) for path in paths if path.is_file()}
    if not records:
        return list(items)
    for path, record in records.items():
        if fold is not None and fold != record.get("fold"):
            raise InputError(path, f"this model was trained with fold {record.get('fold')}, not fold {fold}")
    seen = {digest for r in records.values() for digest in r["seen_sha256"].values()}
    if allow_seen:
        marked = [{**it, "seen_in_training": study_digest(it) in seen} for it in items]
        n = sum(it["seen_in_training"] for it in marked)
        logger.warning("scoring %d studies the model was trained or validated on (allow_seen)", n)
        return marked
    where = ", ".join(map(str, records))
    if all(cohort_fingerprint(items) == r["fingerprint"] for r in records.values()):
        test = set.intersection(*(set(r["test"]) for r in records.values()))
        if not test:
            raise InputError(where, "no test split of the model's cohort is left: evaluate on studies it has not seen")
        logger.info("the model's training cohort: scoring its %d test studies (%s)", len(test), where)
        return [dict(it) for it in items if study_key(it) in test]
    hits = sorted(study_key(it) for it in items if study_digest(it) in seen)
    if hits:
        raise InputError(
            where,
            f"{len(hits)} of the {len(items)} studies to score were used to train or validate this model: "
            f"{', '.join(hits[:20])}{' ...' if len(hits) > 20 else ''}. Evaluate on the training cohort itself "
            "(its test split is scored) or on unseen studies, or pass --allow_seen true to score them marked "
            "seen_in_training",
        )
    return list(items)


#: Item keys that hold file paths (relative to the datalist JSON's folder on disk).
PATH_KEYS = ("image", "mask")


def _relative(items: list[dict], base: Path) -> list[dict]:
    out = []
    for it in items:
        it = dict(it)
        for key in PATH_KEYS:
            if key not in it:
                continue
            try:
                it[key] = os.path.relpath(it[key], base)
            except ValueError:  # another drive on Windows
                it[key] = os.path.abspath(it[key])
        out.append(it)
    return out


def write_datalist(datalist: dict[str, list[dict]], out: str | os.PathLike) -> Path:
    """Write a datalist JSON atomically, image and mask paths relative to its folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.parent.resolve()
    data = {k: _relative(v, base) if isinstance(v, list) else v for k, v in datalist.items()}
    atomic_write_text(out, json.dumps(data, indent=2) + "\n")
    return out


def read_datalist(path: str | os.PathLike, root: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """Read a datalist JSON; relative image and mask paths resolve against its folder.

    Args:
        root: when given, every image and mask must lie inside this folder (a guard against datalists
            that reach outside their data root).
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "datalist not found")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise InputError(path, f"not valid JSON ({err})") from err
    if not isinstance(data, dict) or not any(isinstance(v, list) for v in data.values()):
        raise InputError(path, "expected a JSON object with lists such as 'training' and 'validation'")
    base = path.parent.resolve()
    limit = Path(root).resolve() if root is not None else None
    out: dict[str, list[dict]] = {}
    for key, items in data.items():
        if not isinstance(items, list):
            continue
        resolved = []
        for n, it in enumerate(items):
            if not isinstance(it, dict) or "image" not in it:
                raise InputError(path, f"{key}[{n}]: each item needs an 'image' key")
            paths = {k: (base / it[k]).resolve() for k in PATH_KEYS if it.get(k)}
            for k, p in paths.items():
                if limit is not None and not p.is_relative_to(limit):
                    raise InputError(
                        path,
                        f"{key}[{n}]: {k} {it[k]!r} lies outside the data root {limit} "
                        "(set --data_root, or --allow_outside_data_root true if you trust this datalist)",
                    )
            resolved.append({**it, **{k: str(p) for k, p in paths.items()}})
        out[key] = resolved
    return out


def data_root_for(datalist: str | None, allow_outside: bool | str = False) -> str | None:
    """The folder a datalist's images must lie in (the datalist's own), or ``None`` when ``allow_outside``."""
    if not datalist or as_bool(allow_outside, "allow_outside_data_root"):
        return None
    return os.path.dirname(os.path.abspath(datalist))


def load_split(
    dataset_dir: str | None = None,
    datalist: str | None = None,
    fold: int | None = None,
    val_fraction: float = 0.3,
    seed: int = 0,
    normal: Sequence[str] = DEFAULT_NORMAL,
    abnormal: Sequence[str] = DEFAULT_ABNORMAL,
    check: bool = True,
    data_root: str | None = None,
    n_folds: int = 5,
    test_fraction: float = 0.2,
) -> dict[str, list[dict]]:
    """Training, validation and test items for a bundle run, from a datalist JSON or a cohort folder.

    A cohort's labelled studies (or a datalist's ``training`` list) are split by :func:`split`. A datalist's
    own lists are kept unless ``fold`` is given: ``testing`` is the test split, and ``validation`` (else
    ``val_fraction`` of ``training``) the validation split; without a ``testing`` list the test split is
    empty (evaluate on another cohort). Every image is header-checked first, and one error lists all bad
    files. With ``data_root``, datalist images must lie inside it (see :func:`read_datalist`).
    """
    if datalist:
        lists = read_datalist(datalist, root=data_root)
        if fold is None and (lists.get("validation") or lists.get("testing")):
            train, val = lists.get("training", []), lists.get("validation", [])
            if not val:
                train, val = train_val_split(train, val_fraction, seed)
            out = {"training": train, "validation": val, "test": lists.get("testing", [])}
        else:
            out = split(lists.get("training", []), fold, val_fraction, seed, n_folds, test_fraction)
    elif dataset_dir:
        items = to_items(discover(dataset_dir), normal, abnormal)
        out = split(items, fold, val_fraction, seed, n_folds, test_fraction)
    else:
        raise ValueError("give dataset_dir (a cohort folder) or datalist (a JSON file)")
    for key in SPLITS:
        labels = Counter(it.get("label") for it in out[key])
        if (len(out[key]) == 0 and key != "test") or None in labels:
            raise InputError(datalist or dataset_dir, f"the {key} split is empty or has unlabelled items: {labels}")
    if check:
        check_images([it["image"] for key in SPLITS for it in out[key]])
    return out


def log_split(splits: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """Log how many studies of each label every split holds (the bundle's first step of a training run); return it."""
    for key, items in splits.items():
        labels = Counter(it.get("label") for it in items)
        logger.info(
            "%s: %d studies (%s)", key, len(items), ", ".join(f"label {k}: {n}" for k, n in sorted(labels.items()))
        )
    return splits


def load_items(
    dataset_dir: str | None = None,
    datalist: str | None = None,
    normal: Sequence[str] = DEFAULT_NORMAL,
    abnormal: Sequence[str] = DEFAULT_ABNORMAL,
    require_label: bool = False,
    check: bool = True,
    data_root: str | None = None,
    fold: int | None = None,
    n_folds: int = 5,
    seed: int = 0,
) -> list[dict]:
    """Every item of a cohort or datalist, for evaluation or inference (labels when known).

    ``dataset_dir`` may also be a single NIfTI file or DICOM series folder. A datalist
    contributes all of its lists (``testing``, ``validation``, ``training``), without duplicates;
    with ``data_root``, its images must lie inside it (see :func:`read_datalist`). With ``fold``,
    only the test studies of that fold (as :func:`load_split` makes them) are returned.
    """
    if fold is not None:
        kwargs = {"normal": normal, "abnormal": abnormal, "check": check, "data_root": data_root}
        return load_split(dataset_dir, datalist, fold, seed=seed, n_folds=n_folds, **kwargs)["test"]
    if datalist:
        lists = read_datalist(datalist, root=data_root)
        seen, items = set(), []
        for key in ("testing", "validation", "training"):
            for it in lists.get(key, []):
                if it["image"] not in seen:
                    seen.add(it["image"])
                    items.append(it)
    elif dataset_dir:
        items = to_items(discover(dataset_dir), normal, abnormal, require_label=require_label)
    else:
        raise ValueError("give dataset_dir (a cohort folder or an image) or datalist (a JSON file)")
    if not items:
        raise InputError(datalist or dataset_dir, "no studies to process")
    if check:
        check_images([it["image"] for it in items])
    return items


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Arguments of ``python -m pipeline datalist``."""
    parser.add_argument("cohort", help="cohort folder (MosMedData or two-folder layout, or images + --labels)")
    parser.add_argument("--out", required=True, help="datalist JSON to write")
    parser.add_argument("--labels", help="labels CSV for a plain folder of images (columns image, label|category)")
    parser.add_argument("--normal", default=",".join(DEFAULT_NORMAL), help="categories labelled normal (0)")
    parser.add_argument("--abnormal", default=",".join(DEFAULT_ABNORMAL), help="categories labelled pneumonia (1)")
    parser.add_argument(
        "--val-fraction", type=float, default=0.3, help="validation share of the non-test studies (default 0.3)"
    )
    parser.add_argument("--test-fraction", type=float, default=0.2, help="test share of the cohort (default 0.2)")
    parser.add_argument("--folds", type=int, default=None, help="write K stratified folds instead of one split")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-check", action="store_true", help="skip the header check of every image")


def run(args: argparse.Namespace) -> int:
    """Write the datalist and print a one-line summary per list."""
    try:
        items = to_items(discover(args.cohort, args.labels), args.normal.split(","), args.abnormal.split(","))
    except ValueError as err:
        if isinstance(err, InputError):
            raise
        raise InputError(args.cohort, str(err)) from err
    if not items:
        raise InputError(args.cohort, "no study is in the normal or abnormal categories")
    if not args.no_check:
        check_images([it["image"] for it in items])
    if args.folds:
        folds = assign_folds(items, args.folds, args.seed)
        datalist = {"training": [{**it, "fold": f} for it, f in zip(items, folds)]}
    else:
        splits = split(items, None, args.val_fraction, args.seed, test_fraction=args.test_fraction)
        datalist = {"training": splits["training"], "validation": splits["validation"], "testing": splits["test"]}
    write_datalist(datalist, args.out)
    for key, lst in datalist.items():
        print(f"{key}: {len(lst)} studies, labels {dict(sorted(Counter(it['label'] for it in lst).items()))}")
    print(f"wrote {args.out}")
    return 0


__all__ = [
    "CATEGORIES",
    "CLASS_NAMES",
    "PATH_KEYS",
    "SPLITS",
    "Study",
    "assign_folds",
    "binary_label",
    "cohort_fingerprint",
    "discover",
    "evaluation_items",
    "load_items",
    "load_split",
    "read_datalist",
    "split",
    "split_fingerprint",
    "study_key",
    "to_items",
    "train_val_split",
    "write_datalist",
    "write_split",
]
