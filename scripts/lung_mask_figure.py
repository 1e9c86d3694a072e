"""Draw docs/images/lung_mask_real.png: the lung mask outline on real chest CTs read from ../shared/realct.

Rows: the two Lung-PET-CT-Dx DICOM series (three axial slices and one coronal section each); the TotalSegmentator
contrast chest crop (axial and coronal), a COVID-19 positive RICORD slab (consolidation in both dorsal lungs,
held by the dependent rule) and a negative one (middle slice). Lung window (-1350..150 HU), radiological
convention (the patient's right on the left of each image), outline of
:func:`pipeline.transforms.lung.lung_mask` on the scan's own grid (as the chain computes it) in orange, the mask's
voxels above -300 HU (soft tissue: vessels and airway walls, dense disease, or what is not lung) tinted red; each
title gives the lung volume and that soft-tissue share of the whole mask. The images are read from
``../shared/realct`` at run time; only this rendering is kept. Usage::

    python scripts/lung_mask_figure.py [--realct DIR] [--out PNG]
"""

from __future__ import annotations

import argparse
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from monai.transforms import LoadImage, Orientation
from PIL import Image

from pipeline.transforms.lung import lung_mask, lung_volume_ml

REPO = Path(__file__).resolve().parents[1]
WINDOW = (-1350.0, 150.0)
SERIES = ("dicom/Lung_Dx-A0001_chest_5mm", "dicom/Lung_Dx-A0002_thorax_8mm_B40f")
CROP = "nifti/chest_cta_crop.nii.gz"
SLABS = ("ricord_slabs/covid_positive/patient_1", "ricord_slabs/covid_negative/patient_4")
#: Soft tissue: CT numbers above this inside the mask are tinted.
SOFT_HU = -300.0
CREDIT = (
    "Data: TCIA Lung-PET-CT-Dx (Li P. et al., 2020, DOI 10.7937/TCIA.2020.NNC2-0461, CC BY 4.0); TotalSegmentator "
    "test crop (Wasserthal J. et al., 2023, Apache-2.0); MIDRC-RICORD-1A/1B (Tsai E. et al., Radiology 2021)"
)


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(X, Y, Z)`` HU volume in RAS and its spacing (mm), read as the pipeline reads it."""
    img = Orientation(axcodes="RAS")(LoadImage(image_only=True, ensure_channel_first=True)(str(path)))
    return img[0].numpy(), np.asarray(img.pixdim, dtype=float)


def show(ax, image: np.ndarray, mask: np.ndarray, aspect: float, title: str) -> None:
    """One section (first axis across, second up), flipped to the radiological convention, with the outline and
    the mask's soft tissue tinted."""
    ax.imshow(image[::-1].T, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], origin="lower", aspect=aspect)
    if mask.any():
        soft = (mask & (image > SOFT_HU))[::-1].T
        ax.imshow(np.ma.masked_where(~soft, soft), cmap="autumn", alpha=0.5, origin="lower", aspect=aspect)
        ax.contour(mask[::-1].T.astype(float), [0.5], colors="orange", linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def summary(volume: np.ndarray, mask: np.ndarray, spacing: np.ndarray) -> str:
    """``"lungs x.x L, soft y %"``: the mask's volume and its share above :data:`SOFT_HU`."""
    soft = 100.0 * float((mask & (volume > SOFT_HU)).sum() / max(mask.sum(), 1))
    return f"lungs {lung_volume_ml(mask, spacing) / 1000.0:.1f} L, soft {soft:.0f} %"


def draw(realct: Path, out: Path) -> Path:
    """Render the figure from the scans in ``realct`` into ``out``; return ``out``."""
    fig, axes = plt.subplots(3, 4, figsize=(12, 9.4))
    for row, name in enumerate(SERIES):
        volume, spacing = load(realct / name)
        mask = lung_mask(volume, spacing)
        slices = np.flatnonzero(mask.any(axis=(0, 1)))
        for col, frac in enumerate((0.2, 0.5, 0.8)):
            z = int(slices[int(frac * (len(slices) - 1))])
            show(axes[row, col], volume[..., z], mask[..., z], 1.0, f"{Path(name).name}, slice {z}")
        y = int(np.argmax(mask.sum(axis=(0, 2))))
        show(axes[row, 3], volume[:, y], mask[:, y], spacing[2] / spacing[0], summary(volume, mask, spacing))
    volume, spacing = load(realct / CROP)
    mask = lung_mask(volume, spacing)
    z = int(np.argmax(mask.sum(axis=(0, 1))))
    show(axes[2, 0], volume[..., z], mask[..., z], 1.0, f"contrast chest crop, slice {z}")
    y = int(np.argmax(mask.sum(axis=(0, 2))))
    show(axes[2, 1], volume[:, y], mask[:, y], spacing[2] / spacing[0], summary(volume, mask, spacing))
    for col, name in enumerate(SLABS, start=2):
        volume, spacing = load(realct / name)
        mask = lung_mask(volume, spacing)
        z = volume.shape[2] // 2
        label = "RICORD COVID+" if "positive" in name else "RICORD COVID-"
        show(
            axes[2, col],
            volume[..., z],
            mask[..., z],
            1.0,
            f"{label} {Path(name).name[-1]}, {summary(volume, mask, spacing)}",
        )
    fig.suptitle(
        "Classical lung mask (pipeline.transforms.lung) on real chest CT, lung window; red: mask above -300 HU",
        fontsize=11,
    )
    fig.text(0.5, 0.01, CREDIT, ha="center", fontsize=7)
    fig.tight_layout(rect=(0, 0.025, 1, 0.97))
    buffer = io.BytesIO()
    fig.savefig(buffer, dpi=72)
    plt.close(fig)
    # gray and one orange: a 64-colour palette keeps the file small
    out.parent.mkdir(parents=True, exist_ok=True)
    Image.open(buffer).convert("RGB").quantize(colors=64).save(out, optimize=True)
    return out


def main(argv: list[str] | None = None) -> Path:
    """Parse ``argv`` and draw the figure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--realct", type=Path, required=True, help="real CT folder (third-party, not in the repo)")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "images" / "lung_mask_real.png")
    args = parser.parse_args(argv)
    return draw(args.realct, args.out)


if __name__ == "__main__":
    print(main())
