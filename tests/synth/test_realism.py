"""Tests of ``python -m pipeline realism``: synthetic vs real chest-CT figures (tiny cohorts, known inputs)."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from pipeline.__main__ import main
from pipeline.synth import realism
from pipeline.synth.generate import generate_cohort
from pipeline.utils.errors import InputError


@pytest.fixture(scope="module")
def cohort(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("realism") / "cohort"
    generate_cohort(out, per_category=2, categories=["CT-0", "CT-2"], seed=1, matrix=64, progress=False)
    return out


@pytest.fixture(scope="module")
def real_dir(cohort, tmp_path_factory) -> Path:
    """A stand-in "real" folder: one phantom as NIfTI, and one in a RICORD-like path."""
    real = tmp_path_factory.mktemp("realism") / "real"
    first = sorted((cohort / "studies" / "CT-0").glob("*.nii.gz"))[0]
    (real / "nifti").mkdir(parents=True)
    shutil.copy(first, real / "nifti" / "chest.nii.gz")
    pos = real / "ricord_slabs" / "covid_positive" / "patient_1"
    pos.mkdir(parents=True)
    shutil.copy(sorted((cohort / "studies" / "CT-2").glob("*.nii.gz"))[0], pos / "slab.nii.gz")
    return real


@pytest.fixture(scope="module")
def report(cohort, real_dir, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("realism") / "out"
    docs = out.parent / "docs"
    assert main(["realism", str(cohort), str(real_dir), "--out", str(out), "--docs", str(docs), "--quiet"]) == 0
    return out


def test_cli_writes_every_output(report):
    for name in ("realism.json", "realism.csv", "realism_scans.csv", "realism.md", "realism.png"):
        assert (report / name).is_file(), name
    assert (report / "realism.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    docs = report.parent / "docs"
    assert (docs / "realism.md").is_file() and (docs / "images" / "realism.png").is_file()
    assert "images/realism.png" in (docs / "realism.md").read_text()
    assert not list(report.glob(".*.tmp")), "temporary files left behind"
    data = json.loads((report / "realism.json").read_text())
    assert data["groups"] == ["real normal", "RICORD positive", "CT-0", "CT-2"]
    assert [s["n"] for s in data["summary"].values()] == [1, 1, 2, 2]
    with open(report / "realism.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert [r["group"] for r in rows] == data["groups"]
    md = (report / "realism.md").read_text()
    assert "| lung HU median |" in md and "CT-0 (n=2)" in md and "CT-0 median vs real range" in md
    assert data["synthetic_vs_real"]["group"] == "CT-0"
    assert set(data["synthetic_vs_real"]["figures"]) == set(realism.FIGURES)


def test_cli_writes_the_lesion_section(report, real_dir):
    """The cohort's CT-2 masks are measured; the stand-in real folder holds no lesion reference (left out)."""
    data = json.loads((report / "realism_lesions.json").read_text())
    assert data["mask_counts"] == {"CT-2": 2}
    # the stand-in real scans: a CT-0 phantom as "real normal" (a control of the outline rule), a CT-2 one as
    # "RICORD positive"
    assert list(data["hu_counts"]) == [
        "real normal (control), outlined",
        "RICORD positive, outlined",
        "CT-2, exact mask",
        "CT-2, outlined",
    ]
    assert data["hu_counts"]["CT-2, exact mask"] == 2
    assert data["sources"] == {
        "real CT-1 (MosMedData)": None,
        "SBU": None,
        "RICORD positive": str(real_dir),
        "MedSeg": None,
    }
    assert data["ct1_check"] is None
    for rec in data["masks"]:
        assert rec["total_ml"] > 0 and rec["n_pieces"] == len(rec["piece_ml"]) >= 1
        assert rec["largest_ml"] == pytest.approx(max(rec["piece_ml"]), abs=1e-3)
    assert (report / "realism_lesions.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    docs = report.parent / "docs"
    page = (docs / "realism.md").read_text()
    assert "## Lesions: synthetic vs real COVID-19" in page and "images/realism_lesions.png" in page
    assert "--lesion-max-per-category 20" in page
    assert (docs / "images" / "realism_lesions.png").is_file()


def test_figures_are_finite_and_plausible(report):
    data = json.loads((report / "realism.json").read_text())
    scans = data["scans"]
    assert len(scans) == 6
    for rec in scans:
        for key in ("lung_volume_ml", "lung_hu_median", "aerated_pct", "haa_pct", "noise_hu", "lung_height_mm"):
            assert rec[key] is not None and np.isfinite(rec[key]), (rec["name"], key)
        assert 500 < rec["lung_volume_ml"] < 12000
        assert 0 <= rec["aerated_pct"] <= 100 and 0 <= rec["haa_pct"] <= 100
        assert 0.9 < sum(rec["lung_hist"]) <= 1 + 1e-6  # shares of lung voxels; above +100 HU left out
    ct0 = [r for r in scans if r["group"] == "CT-0"]
    ct2 = [r for r in scans if r["group"] == "CT-2"]
    for r in ct0:
        assert -950 < r["lung_hu_median"] < -600
    assert np.median([r["haa_pct"] for r in ct2]) > np.median([r["haa_pct"] for r in ct0])
    # the copied phantom measures exactly as it did in the cohort: same mask, same figures
    real = next(r for r in scans if r["group"] == "real normal")
    twin = next(r for r in ct0 if r["lung_volume_ml"] == real["lung_volume_ml"])
    assert twin["lung_hu_median"] == real["lung_hu_median"]


def test_verdicts_place_the_normal_synthetic_median_against_the_real_range():
    def rec(group, value, volume):
        r = dict.fromkeys(realism.FIGURES, float("nan"))
        return {**r, "group": group, "lung_hu_median": value, "lung_volume_ml": volume}

    records = [
        rec("real normal", -850, 4000),
        rec("real normal", -800, 5000),
        rec("RICORD negative", -700, 600),  # a slab: counts for HU, not for volume
        rec("CT-0", -650, 4500),
        rec("CT-0", -640, 4600),
        rec("CT-2", -500, 300),
    ]
    target, marks = realism.verdicts(records, ["real normal", "RICORD negative", "CT-0", "CT-2"])
    assert target == "CT-0"
    assert marks["lung_hu_median"] == "above (+55.0); real median -800"
    assert marks["lung_volume_ml"] == "within; real median 4500"
    assert marks["noise_hu"] == "-"


def test_white_noise_spectrum_is_flat_and_integrates_to_its_variance():
    rng = np.random.default_rng(0)
    pixel, sd = 0.7, 20.0
    patches = rng.normal(0, sd, (300, 48, 48))
    freqs, psd = realism.power_spectrum(patches, pixel)
    inner = freqs < 0.5 / pixel
    np.testing.assert_allclose(psd[inner].mean(), sd**2 * pixel**2, rtol=0.05)
    assert abs(realism._psd_slope(freqs, psd)) < 0.15
    lo, hi = 0.16, 0.32
    expected = sd * np.sqrt(pixel**2 * np.pi * (hi**2 - lo**2))
    assert realism.band_rms(freqs, psd, (lo, hi), pixel, 48) == pytest.approx(expected, rel=0.08)
    # a band above the Nyquist frequency is not measurable
    assert np.isnan(realism.band_rms(freqs, psd, (0.16, 0.32), 2.0, 48))


def test_power_law_field_gives_its_slope():
    rng = np.random.default_rng(1)
    n, pixel = 64, 0.8
    f = np.fft.fftfreq(n, d=pixel)
    radius = np.hypot(f[:, None], f[None, :])
    radius[0, 0] = np.inf
    amplitude = radius**-1.5  # power ~ f^-3
    fields = np.real(np.fft.ifft2(np.fft.fft2(rng.normal(size=(200, n, n))) * amplitude))
    freqs, psd = realism.power_spectrum(fields, pixel)
    assert realism._psd_slope(freqs, psd) == pytest.approx(-3.0, abs=0.3)


def _block_phantom() -> np.ndarray:
    """A noiseless (X, Y, Z) chest: air, an elliptic soft-tissue body, two -850 HU lungs."""
    x, y = np.mgrid[-80:80, -60:60].astype(float)
    body = (x / 75) ** 2 + (y / 50) ** 2 <= 1
    lungs = ((np.abs(x) - 32) / 24) ** 2 + (y / 32) ** 2 <= 1
    sl = np.where(body, 40.0, -1000.0)
    sl[lungs] = -850.0
    return np.repeat(sl[..., None], 12, axis=2).astype(np.float32)


def test_noise_figure_rises_by_the_added_noise():
    from pipeline.transforms.plausibility import body_mask

    clean = _block_phantom()
    rng = np.random.default_rng(2)
    noisy = clean + rng.normal(0, 30, clean.shape).astype(np.float32)
    assert realism.noise_level(clean, body_mask(clean)) < 1.0
    assert realism.noise_level(noisy, body_mask(noisy)) == pytest.approx(30, rel=0.1)


def test_noise_adds_in_quadrature_on_a_phantom():
    from pipeline.synth.phantom import generate_study
    from pipeline.transforms.plausibility import body_mask

    volume = generate_study("CT-0", 5, matrix=128, _n_slices=12).image.astype(np.float32)
    body = body_mask(volume)
    n0 = realism.noise_level(volume, body)
    more = volume + np.random.default_rng(3).normal(0, 30, volume.shape).astype(np.float32)
    n1 = realism.noise_level(more, body)
    assert n1 == pytest.approx(np.hypot(n0, 30), rel=0.1)


def test_a_failing_lung_mask_leaves_lung_figures_out(monkeypatch):
    class Broken:
        @staticmethod
        def lung_mask(volume, spacing):
            raise ValueError("no lungs here")

        @staticmethod
        def lung_volume_ml(mask, spacing):
            return float(mask.sum() * np.prod(spacing) / 1000)

    monkeypatch.setattr(realism, "_lung_module", lambda: Broken)
    rec = realism.measure(_block_phantom(), (2.0, 2.0, 5.0))
    assert rec["lung_mask_error"] == "ValueError: no lungs here"
    assert rec["lung_volume_ml"] == 0 and np.isnan(rec["lung_hu_median"]) and np.isnan(rec["lung_height_mm"])
    assert rec["noise_hu"] < 1


def test_real_scans_are_found_and_grouped_by_path(tmp_path):
    for rel in ("ricord_slabs/covid_positive/patient_1", "ricord_slabs/covid_negative/patient_2", "dicom/chest"):
        (tmp_path / rel).mkdir(parents=True)
        (tmp_path / rel / "1-01.dcm").write_bytes(b"x")
    (tmp_path / "nifti").mkdir()
    (tmp_path / "nifti" / "a.nii.gz").write_bytes(b"x")
    (tmp_path / "nifti" / "notes.txt").write_text("ignored")
    groups = {s.name: s.group for s in realism.find_real_scans(tmp_path)}
    assert groups == {
        "dicom/chest": "real normal",
        "nifti/a.nii.gz": "real normal",
        "ricord_slabs/covid_negative/patient_2": "RICORD negative",
        "ricord_slabs/covid_positive/patient_1": "RICORD positive",
    }


def test_bad_input_is_an_input_error_naming_the_file(tmp_path, cohort, real_dir, capsys):
    out = str(tmp_path / "out")
    assert main(["realism", str(tmp_path / "nope"), str(real_dir), "--out", out]) == 2
    assert "nope" in capsys.readouterr().err
    assert main(["realism", str(cohort), str(real_dir), "--out", out, "--lesion-max-per-category", "0"]) == 2
    assert "--lesion-max-per-category must be >= 1" in capsys.readouterr().err
    assert main(["realism", str(cohort), str(tmp_path / "no_real"), "--out", out]) == 2
    assert "no_real" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["realism", str(cohort), str(empty), "--out", out]) == 2
    assert "no NIfTI files" in capsys.readouterr().err
    bad = tmp_path / "bad_real"
    bad.mkdir()
    (bad / "broken.nii.gz").write_bytes(b"not a nifti")
    assert main(["realism", str(cohort), str(bad), "--out", out]) == 2
    assert "broken.nii.gz" in capsys.readouterr().err
    with pytest.raises(InputError, match=r"flat\.nii\.gz"):
        flat = tmp_path / "flat.nii.gz"
        nib.save(nib.Nifti1Image(np.zeros((8, 8), np.int16), np.eye(4)), str(flat))
        realism.load_ras(flat)
    assert not (tmp_path / "out").exists()


def test_real_normal_lungs_measure_like_lungs(shared_realct):  # ../shared/realct, never copied into the repo
    scans = [s for s in realism.find_real_scans(shared_realct) if s.group == realism.REAL_NORMAL]
    names = {s.name for s in scans}
    assert "nifti/abdomen_ct.nii.gz" in names  # found by path, then moved by its measurements
    records = realism.compare(scans)
    by_name = {r["name"]: r for r in records}
    assert by_name["nifti/abdomen_ct.nii.gz"]["group"] == realism.REAL_NONCHEST
    chests = [r for r in records if r["group"] == realism.REAL_NORMAL]
    assert len(chests) == 3
    for r in chests:
        # measured -829 (A0001), -742..-767 (A0002, 8 mm slices; the mask's fill holds some soft tissue at the
        # bases), -762 (CTA crop); an abdomen reads about -630, a consolidated slab -250
        assert -900 <= r["lung_hu_median"] <= -700, (r["name"], r["lung_hu_median"])
        assert 2000 < r["lung_volume_ml"] < 8000, (r["name"], r["lung_volume_ml"])
        assert 50 < r["aerated_pct"] <= 100
        assert np.isfinite(r["psd_slope"]) and r["n_patches"] >= 10


def test_short_slabs_of_covid_lungs_stay_chests(shared_realct):
    """The RICORD COVID-19 slabs, one with only 178 mL of aerated lung, pass the chain's chest check, so the
    realism report keeps them in their group instead of moving them to "real non-chest"."""
    scans = [s for s in realism.find_real_scans(shared_realct) if s.group == realism.RICORD_POS]
    assert len(scans) == 3
    assert {r["group"] for r in realism.compare(scans)} == {realism.RICORD_POS}
