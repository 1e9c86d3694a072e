"""Cohorts to MONAI datalists: discovery, binary labels and seeded stratified splits.

Three layouts are read, real or synthetic alike:

- MosMedData: ``COHORT/studies/CT-0 ... CT-4/study_NNNN.nii.gz`` (``COHORT/CT-N/...`` too);
- the tutorial's two folders: ``COHORT/CT-0/`` and ``COHORT/CT-23/`` (CT-23 = CT-2 + CT-3);
- any folder of NIfTI files or DICOM series folders with a labels CSV (columns ``image`` and
  ``label`` (0/1 or normal/pneumonia) or ``category`` (CT-0 ... CT-4), optional ``study_id``).

A datalist item is ``{"image": path, "label": 0|1, "category": "CT-2", "study_id": "study_0001"}``
(plus ``"fold"`` for k-fold datalists); the JSON follows MONAI's decathlon layout, with image
paths relative to the JSON file's folder, so ``monai.data.load_decathlon_datalist`` reads it.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import os
import re
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
    """

    study_id: str
    image: str
    category: str | None = None
    label: int | None = None


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
            studies = [Study(study_id_of(p), p, d.name) for d in cat_dirs for p in scan_images(d)]
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
        if not image.exists():
            missing.append(f"row {i}: {image}")
            continue
        category = (row.get("category") or "").strip() or None
        if category is not None and category not in CATEGORIES and category not in MERGED:
            raise InputError(labels_csv, f"row {i}: unknown category {category!r}")
        label = _parse_label(row["label"], labels_csv, i) if (row.get("label") or "").strip() else None
        if label is None and category is None:
            raise InputError(labels_csv, f"row {i}: neither a label nor a category")
        sid = (row.get("study_id") or "").strip() or study_id_of(image)
        studies.append(Study(sid, str(image), category, label))
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
        items.append(item)
    if dropped:
        logger.info("left out %s (neither normal nor abnormal)", dict(dropped))
    return items


def _strata(items: Sequence[dict]) -> dict[str, list[int]]:
    groups: dict[str, list[int]] = defaultdict(list)
    for i, item in enumerate(items):
        groups[f"{item.get('label', '')}/{item.get('category', '')}"].append(i)
    return groups


def assign_folds(items: Sequence[dict], n_folds: int, seed: int = 0) -> list[int]:
    """A fold index per item, stratified by (label, category) and seeded; fold sizes differ by <= 1 per stratum."""
    if n_folds < 2:
        raise ValueError(f"need at least 2 folds, got {n_folds}")
    rng = np.random.default_rng(seed)
    folds = [0] * len(items)
    offset = 0
    for _, idx in sorted(_strata(items).items()):
        for j, i in enumerate(rng.permutation(idx)):
            folds[int(i)] = (j + offset) % n_folds
        offset += len(idx)
    return folds


def train_val_split(items: Sequence[dict], val_fraction: float = 0.3, seed: int = 0) -> tuple[list, list]:
    """The tutorial's hold-out split (70/30 by default), stratified by (label, category) and seeded."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"val_fraction must be in (0, 1), got {val_fraction}")
    rng = np.random.default_rng(seed)
    val_idx: set[int] = set()
    for _, idx in sorted(_strata(items).items()):
        n_val = round(val_fraction * len(idx))
        val_idx.update(int(i) for i in rng.permutation(idx)[:n_val])
    train = [dict(it) for i, it in enumerate(items) if i not in val_idx]
    val = [dict(it) for i, it in enumerate(items) if i in val_idx]
    return train, val


def split(
    items: Sequence[dict], fold: int | None = None, val_fraction: float = 0.3, seed: int = 0, n_folds: int = 5
) -> dict[str, list[dict]]:
    """``{"training": [...], "validation": [...]}``: the hold-out split, or fold ``fold`` of ``n_folds``.

    Items already carrying a ``"fold"`` key (from a k-fold datalist) keep their folds.
    """
    if fold is None:
        train, val = train_val_split(items, val_fraction, seed)
        return {"training": train, "validation": val}
    folds = [it["fold"] for it in items] if all("fold" in it for it in items) else assign_folds(items, n_folds, seed)
    if not 0 <= fold < max(folds) + 1:
        raise ValueError(f"fold {fold} out of range 0..{max(folds)}")
    return {
        "training": [dict(it) for it, f in zip(items, folds) if f != fold],
        "validation": [dict(it) for it, f in zip(items, folds) if f == fold],
    }


def _relative(items: list[dict], base: Path) -> list[dict]:
    out = []
    for it in items:
        it = dict(it)
        try:
            it["image"] = os.path.relpath(it["image"], base)
        except ValueError:  # another drive on Windows
            it["image"] = os.path.abspath(it["image"])
        out.append(it)
    return out


def write_datalist(datalist: dict[str, list[dict]], out: str | os.PathLike) -> Path:
    """Write a datalist JSON atomically, image paths relative to its folder."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    base = out.parent.resolve()
    data = {k: _relative(v, base) if isinstance(v, list) else v for k, v in datalist.items()}
    atomic_write_text(out, json.dumps(data, indent=2) + "\n")
    return out


def read_datalist(path: str | os.PathLike, root: str | os.PathLike | None = None) -> dict[str, list[dict]]:
    """Read a datalist JSON; relative image paths resolve against its folder.

    Args:
        root: when given, every image must lie inside this folder (a guard against datalists
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
            image = (base / it["image"]).resolve()
            if limit is not None and not image.is_relative_to(limit):
                raise InputError(
                    path,
                    f"{key}[{n}]: image {it['image']!r} lies outside the data root {limit} "
                    "(set --data_root, or --allow_outside_data_root true if you trust this datalist)",
                )
            resolved.append({**it, "image": str(image)})
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
) -> dict[str, list[dict]]:
    """Training and validation items for a bundle run, from a datalist JSON or a cohort folder.

    A datalist with both ``training`` and ``validation`` is used as it is (unless ``fold`` is
    given); otherwise its ``training`` list (or the cohort's labelled studies) is split.
    Every image is header-checked first, and one error lists all bad files. With ``data_root``,
    datalist images must lie inside it (see :func:`read_datalist`).
    """
    if datalist:
        lists = read_datalist(datalist, root=data_root)
        if fold is None and lists.get("validation"):
            out = {"training": lists.get("training", []), "validation": lists["validation"]}
        else:
            out = split(lists.get("training", []), fold, val_fraction, seed, n_folds)
    elif dataset_dir:
        out = split(to_items(discover(dataset_dir), normal, abnormal), fold, val_fraction, seed, n_folds)
    else:
        raise ValueError("give dataset_dir (a cohort folder) or datalist (a JSON file)")
    for key in ("training", "validation"):
        labels = Counter(it.get("label") for it in out[key])
        if len(out[key]) == 0 or None in labels:
            raise InputError(datalist or dataset_dir, f"the {key} split is empty or has unlabelled items: {labels}")
    if check:
        check_images([it["image"] for key in ("training", "validation") for it in out[key]])
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
    only the held-out studies of that fold (as :func:`load_split` makes them) are returned.
    """
    if fold is not None:
        kwargs = {"normal": normal, "abnormal": abnormal, "check": check, "data_root": data_root}
        return load_split(dataset_dir, datalist, fold, seed=seed, n_folds=n_folds, **kwargs)["validation"]
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
    parser.add_argument("--val-fraction", type=float, default=0.3, help="hold-out fraction (default 0.3)")
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
        datalist = dict(zip(("training", "validation"), train_val_split(items, args.val_fraction, args.seed)))
    write_datalist(datalist, args.out)
    for key, lst in datalist.items():
        print(f"{key}: {len(lst)} studies, labels {dict(sorted(Counter(it['label'] for it in lst).items()))}")
    print(f"wrote {args.out}")
    return 0


__all__ = [
    "CATEGORIES",
    "CLASS_NAMES",
    "Study",
    "assign_folds",
    "binary_label",
    "discover",
    "load_items",
    "load_split",
    "read_datalist",
    "split",
    "to_items",
    "train_val_split",
    "write_datalist",
]
