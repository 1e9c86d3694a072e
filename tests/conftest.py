"""Shared fixtures: tiny real NIfTI volumes and cohorts on disk, the bundle helpers, and real CT.

Real CT is third-party data and is never in this repository, not even a resampled copy. Tests read the
originals from ``../shared/realct`` beside the clone (``CHEST_CT_SHARED`` overrides the ``shared`` folder)
and derive the small versions they use into a session temporary folder; every test that needs them is
skipped, saying why, where the folder is absent.

- :func:`real_series` (``Lung_Dx-A0002_thorax_8mm_128/``): the 30-file axial chest series
  ``dicom/Lung_Dx-A0002_thorax_8mm_B40f`` (Siemens Sensation 10, B40f kernel, 8 mm slices) block-averaged
  in-plane from 512x512 to 128x128 (2.586 mm pixels). Rows, Columns, PixelSpacing, ImagePositionPatient
  (centre of the first block) and the smallest/largest pixel values are updated, every instance UID
  (study, series, SOP instance, frame of reference, references) is re-derived deterministically from the
  original one, all other tags are kept. Source: The Cancer Imaging Archive, collection Lung-PET-CT-Dx,
  patient Lung_Dx-A0002, series 3, licensed CC BY 4.0 (https://creativecommons.org/licenses/by/4.0/).
  Cite: Li P. et al., A Large-Scale CT and PET/CT Dataset for Lung Cancer Diagnosis (Lung-PET-CT-Dx),
  The Cancer Imaging Archive, 2020, DOI 10.7937/TCIA.2020.NNC2-0461.
- :func:`real_abdomen` (``abdomen_ct_small.nii.gz``): the abdomen/pelvis CT ``nifti/abdomen_ct.nii.gz``
  (almost no lung in view; 122x101x112, 3 mm) block-averaged 2x per axis to 61x50x56 at 6 mm, RAS,
  int16 HU: the "not a chest CT" case.
- :func:`real_chest_crop` (``chest_cta_4slices.nii.gz``): 4 axial slices (every 4th slice from index 76
  to 88, 1.5 mm in-plane, 120x126x4, LPS, int16 HU) of ``nifti/chest_cta_crop.nii.gz``, a
  contrast-enhanced chest CT crop showing the mediastinum and both lungs. No pneumonia label.

  Both NIfTI sources: test fixtures of the TotalSegmentator project, licensed Apache-2.0. Cite:
  Wasserthal J. et al., TotalSegmentator: Robust Segmentation of 104 Anatomic Structures in CT Images,
  Radiology: Artificial Intelligence 2023.

None of these is a MosMedData study.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import nibabel as nib
import numpy as np
import pydicom
import pytest
from pydicom.uid import generate_uid

REPO = Path(__file__).resolve().parents[1]
BUNDLE = REPO / "bundles" / "chest_ct_pneumonia_classification"
TESTING_DATA = Path(__file__).resolve().parent / "testing_data"

#: The folder that holds ``realct/`` (third-party real CT): ``../shared`` beside the clone, or ``$CHEST_CT_SHARED``.
SHARED = Path(os.environ.get("CHEST_CT_SHARED") or REPO.parent / "shared")
SHARED_REALCT = SHARED / "realct"
REALCT_SERIES = "Lung_Dx-A0002_thorax_8mm_B40f"
DICOM_FACTOR = 4
NIFTI_FACTOR = 2

#: MosMedData's orientation: x to the left, y anterior, z superior (qfac -1).
LAS = np.diag([-0.8, 0.8, 8.0, 1.0])


def write_nifti(path: Path, data: np.ndarray, affine: np.ndarray = LAS) -> Path:
    """Save ``data`` as a NIfTI file (gzipped when the name ends with .gz)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


@pytest.fixture
def nifti(tmp_path):
    """Factory: ``nifti("a.nii.gz", shape=(16, 16, 8))`` writes a small int16 HU volume."""

    def make(name: str = "study_0001.nii.gz", shape=(16, 16, 8), dtype=np.int16, value=None) -> Path:
        rng = np.random.default_rng(abs(hash(name)) % 2**32)
        data = rng.integers(-1000, 400, size=shape).astype(dtype) if value is None else np.full(shape, value, dtype)
        return write_nifti(tmp_path / name, data)

    return make


@pytest.fixture
def mosmed_layout(tmp_path):
    """A tiny cohort in the MosMedData layout: 4 studies in each of CT-0, CT-1, CT-2, CT-3 (each its own voxels)."""
    root = tmp_path / "cohort"
    n = 0
    for cat in ("CT-0", "CT-1", "CT-2", "CT-3"):
        for _ in range(4):
            n += 1
            write_nifti(root / "studies" / cat / f"study_{n:04d}.nii.gz", np.full((8, 8, 4), n, np.int16))
    return root


def run_bundle(*args: str, cwd: Path | None = None, check: bool = True) -> subprocess.CompletedProcess:
    """Run ``python -m monai.bundle ARGS`` as a user would; returns the finished process (output captured)."""
    proc = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONWARNINGS": "ignore"},
        timeout=900,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"monai.bundle {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


#: ``shutil.copytree``'s ``ignore`` for a copy of the bundle without its model (weights, record, exports) or outputs.
WITHOUT_MODEL = shutil.ignore_patterns("eval", "logs", "*.pt", "model.json", "*.ts", "*.onnx")

#: Overrides that make a bundle run tiny: 32x32x16 volumes, 2 epochs.
TINY = ("--spatial_size", "[32,32,16]", "--pixdim", "[6,6,8]", "--epochs", "2", "--cache_workers", "1")


def run_evaluation(bundle: Path, dataset_dir: Path, output_dir: Path) -> subprocess.CompletedProcess:
    """Evaluate ``bundle``'s tiny trained model (``train.json`` + ``evaluate.json``, :data:`TINY`) on a cohort."""
    configs = bundle / "configs"
    return run_bundle(
        "run",
        "--config_file",
        f"['{configs / 'train.json'}','{configs / 'evaluate.json'}']",
        "--bundle_root",
        str(bundle),
        "--dataset_dir",
        str(dataset_dir),
        "--output_dir",
        str(output_dir),
        *TINY,
    )


#: The preprocessing of :data:`TINY` runs, as a checkpoint records it (with train.json's other defaults).
TINY_CHAIN = {"spatial_size": [32, 32, 16], "pixdim": [6.0, 6.0, 8.0]}


def save_model(state: object, path: Path, network_name: str = "chestnet", **preprocessing) -> Path:
    """Save ``state`` as the bundle's best-model saver does: plain at ``path``, its record (``.json``) beside it."""
    import torch

    from pipeline.engine.record import ChainRecord, write

    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    write(path, ChainRecord(network_name, preprocessing))
    return path


def write_untrained_model(bundle: Path, **chain) -> Path:
    """Write ``bundle/models/model.pt`` (an untrained ``chestnet``) and its record: train.json's chain + ``chain``."""
    from monai.bundle import ConfigParser

    from pipeline.networks.nets import build_network

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "train.json"))
    network = build_network("chestnet", in_channels=1, num_classes=2)
    preprocessing = {**parser.get_parsed_content("preprocessing_params"), **chain}
    return save_model(network.state_dict(), bundle / "models" / "model.pt", **preprocessing)


@pytest.fixture(scope="session")
def tiny_cohort(tmp_path_factory) -> Path:
    """A synthetic cohort of 8 studies in each of CT-0, CT-2 and CT-3 at a 64 matrix."""
    from pipeline.synth.generate import generate_cohort

    out = tmp_path_factory.mktemp("cohort") / "synthetic"
    generate_cohort(out, per_category=8, categories=["CT-0", "CT-2", "CT-3"], seed=7, matrix=64, progress=False)
    return out


@pytest.fixture(scope="session")
def trained_bundle(tmp_path_factory, tiny_cohort) -> Path:
    """A copy of the bundle trained for 2 epochs on :func:`tiny_cohort` (``models/model.pt`` written)."""
    bundle = tmp_path_factory.mktemp("bundle") / BUNDLE.name
    shutil.copytree(BUNDLE, bundle, ignore=WITHOUT_MODEL)
    run_bundle(
        "run",
        "training",
        "--config_file",
        str(bundle / "configs" / "train.json"),
        "--bundle_root",
        str(bundle),
        "--dataset_dir",
        str(tiny_cohort),
        *TINY,
    )
    assert (bundle / "models" / "model.pt").is_file()
    return bundle


# --- the bundle, run by tests (untrained weights, inference, refused runs) ----------------------------------


def chest(seed: int = 0, category: str = "CT-0") -> tuple[np.ndarray, np.ndarray]:
    """A synthetic chest CT (int16 HU, 64 matrix) that the plausibility check accepts, and its affine."""
    from pipeline.synth.phantom import generate_study

    study = generate_study(category, seed, matrix=64)
    return study.image.astype(np.int16), study.affine


@pytest.fixture
def untrained_bundle(tmp_path) -> Path:
    """A copy of the bundle with a freshly initialised ``models/model.pt`` (inference needs weights, not skill)."""
    bundle = tmp_path / "bundle"
    shutil.copytree(BUNDLE, bundle, ignore=WITHOUT_MODEL)
    write_untrained_model(bundle, **TINY_CHAIN)
    return bundle


def infer(bundle: Path, dataset: Path, out: Path, *extra: str) -> subprocess.CompletedProcess:
    """``monai.bundle run`` with inference.json on ``dataset``, outputs in ``out``."""
    return run_bundle(
        "run", "--config_file", str(bundle / "configs" / "inference.json"), "--bundle_root", str(bundle),
        "--dataset_dir", str(dataset), "--output_dir", str(out), "--spatial_size", "[32,32,16]", *extra, check=False,
    )  # fmt: skip


def refused(proc: subprocess.CompletedProcess, names: list[str]) -> None:
    """The run ended with status 2 and ``error:`` lines naming every one of ``names``, without a traceback."""
    assert proc.returncode == 2, f"status {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    assert "Traceback" not in proc.stderr and "Failed to evaluate" not in proc.stderr, proc.stderr[-4000:]
    message = proc.stderr[proc.stderr.index("error: ") :]
    for name in names:
        assert name in message, f"{name} not named in:\n{message}"


def content_items(sr: pydicom.Dataset) -> dict[str, pydicom.Dataset]:
    """Every content item of a DICOM SR tree by its concept name's meaning (the last one of a name wins)."""
    found = {}
    for item in sr.get("ContentSequence", []):
        found[item.ConceptNameCodeSequence[0].CodeMeaning] = item
        found.update(content_items(item))
    return found


# --- real CT: third-party originals in ../shared/realct, small versions derived per session --------------------


def block_mean(array: np.ndarray, factor: int) -> np.ndarray:
    """Mean over ``factor``-sized blocks along every axis (trailing remainders dropped)."""
    shape = [s // factor for s in array.shape]
    cropped = array[tuple(slice(0, s * factor) for s in shape)].astype(np.float64)
    blocks = cropped.reshape([v for s in shape for v in (s, factor)])
    return blocks.mean(axis=tuple(range(1, 2 * len(shape), 2)))


def derived_uid(uid: str, factor: int = DICOM_FACTOR) -> str:
    """A new UID derived deterministically from ``uid``, so references between files stay consistent."""
    return generate_uid(entropy_srcs=[uid, f"downsampled x{factor}"])


def _rederive_uids(ds: pydicom.Dataset, factor: int) -> None:
    """Replace every instance UID (study, series, SOP, frame of reference, references) in place."""
    for elem in [*ds.iterall(), *ds.file_meta]:
        if elem.VR == "UI" and (elem.keyword.endswith("InstanceUID") or elem.keyword == "FrameOfReferenceUID"):
            elem.value = derived_uid(str(elem.value), factor)


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
    _rederive_uids(ds, factor)
    ds.save_as(dst, enforce_file_format=True)


def downsample_series(source: Path, out: Path, factor: int = DICOM_FACTOR) -> Path:
    """Every ``*.dcm`` of the series folder ``source`` block-averaged in-plane by ``factor`` into ``out``."""
    out.mkdir(parents=True)
    for src in sorted(source.glob("*.dcm")):
        downsample_slice(src, out / src.name, factor)
    return out


def downsample_nifti(source: Path, out: Path, factor: int = NIFTI_FACTOR) -> Path:
    """Block-average ``source`` by ``factor`` per axis into ``out``; int16 HU, affine moved to the block centres."""
    img = nib.load(source)
    small = np.rint(block_mean(np.asarray(img.dataobj), factor)).astype(np.int16)
    scale = np.diag([factor, factor, factor, 1.0])
    scale[:3, 3] = (factor - 1) / 2
    small_img = nib.Nifti1Image(small, img.affine @ scale)
    small_img.header.set_xyzt_units("mm", "sec")
    nib.save(small_img, out)
    return out


def axial_slices(source: Path, out: Path, start: int = 76, stop: int = 89, step: int = 4) -> Path:
    """Axial slices ``start:stop:step`` of the NIfTI ``source`` (data and affine as stored) into ``out``."""
    nib.save(nib.load(source).slicer[:, :, start:stop:step], out)
    return out


def shared_source(shared_realct: Path, relative: str) -> Path:
    """``shared_realct / relative``, or a skip naming it where it is absent."""
    path = shared_realct / relative
    if not path.exists():
        pytest.skip(f"{path} not found: third-party real CT is not in the repo")
    return path


@pytest.fixture(scope="session")
def shared_realct() -> Path:
    """``../shared/realct``: the third-party real CT originals (skips when absent)."""
    if not SHARED_REALCT.is_dir():
        pytest.skip(f"../shared/realct not found ({SHARED_REALCT}): third-party real CT is not in the repo")
    return SHARED_REALCT


@pytest.fixture(scope="session")
def derived_realct(tmp_path_factory) -> Path:
    """The session folder that the small real-CT versions are derived into."""
    return tmp_path_factory.mktemp("realct")


@pytest.fixture(scope="session")
def real_series(shared_realct, derived_realct) -> Path:
    """The 30-slice 8 mm real chest DICOM series at 128x128: a folder of ``*.dcm`` files."""
    source = shared_source(shared_realct, f"dicom/{REALCT_SERIES}")
    return downsample_series(source, derived_realct / "Lung_Dx-A0002_thorax_8mm_128")


@pytest.fixture(scope="session")
def real_abdomen(shared_realct, derived_realct) -> Path:
    """A real abdomen/pelvis CT (almost no lung) at 6 mm: ``abdomen_ct_small.nii.gz``."""
    source = shared_source(shared_realct, "nifti/abdomen_ct.nii.gz")
    return downsample_nifti(source, derived_realct / "abdomen_ct_small.nii.gz")


@pytest.fixture(scope="session")
def real_chest_crop(shared_realct, derived_realct) -> Path:
    """4 axial slices of a real contrast chest CT crop: ``chest_cta_4slices.nii.gz``."""
    source = shared_source(shared_realct, "nifti/chest_cta_crop.nii.gz")
    return axial_slices(source, derived_realct / "chest_cta_4slices.nii.gz")
