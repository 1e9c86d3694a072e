"""Draw docs/images/lung_mask_real.png: the lung mask outline on real chest CTs read from ../shared/realct.

Rows: the two Lung-PET-CT-Dx DICOM series (three axial slices and one coronal section each) and the three
COVID-19 positive RICORD slabs (the middle slice of each, and one more of the first). Lung window
(-1350..150 HU), radiological convention (the patient's right on the left of each image), outline of
:func:`pipeline.transforms.lung.lung_mask` in orange. The images are read from ``../shared/realct`` at run time;
only this rendering is kept. Usage::

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
SLABS = tuple(f"ricord_slabs/covid_positive/patient_{i}" for i in (1, 2, 3))
CREDIT = (
    "Data: TCIA Lung-PET-CT-Dx (Li P. et al., 2020, DOI 10.7937/TCIA.2020.NNC2-0461, CC BY 4.0); "
    "MIDRC-RICORD-1A (Tsai E. et al., Radiology 2021, DOI 10.1148/radiol.2021203957)"
)


def load(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """``(X, Y, Z)`` HU volume in RAS and its spacing (mm), read as the pipeline reads it."""
    img = Orientation(axcodes="RAS")(LoadImage(image_only=True, ensure_channel_first=True)(str(path)))
    return img[0].numpy(), np.asarray(img.pixdim, dtype=float)


def show(ax, image: np.ndarray, mask: np.ndarray, aspect: float, title: str) -> None:
    """One section (first axis across, second up), flipped to the radiological convention, with the outline."""
    ax.imshow(image[::-1].T, cmap="gray", vmin=WINDOW[0], vmax=WINDOW[1], origin="lower", aspect=aspect)
    if mask.any():
        ax.contour(mask[::-1].T.astype(float), [0.5], colors="orange", linewidths=0.8)
    ax.set_title(title, fontsize=8)
    ax.axis("off")


def draw(realct: Path, out: Path) -> Path:
    """Render the figure from the scans in ``realct`` into ``out``; return ``out``."""
    fig, axes = plt.subplots(3, 4, figsize=(12, 9.4))
    for row, name in enumerate(SERIES):
        volume, spacing = load(realct / name)
        mask = lung_mask(volume, spacing)
        litres = lung_volume_ml(mask, spacing) / 1000.0
        slices = np.flatnonzero(mask.any(axis=(0, 1)))
        for col, frac in enumerate((0.2, 0.5, 0.8)):
            z = int(slices[int(frac * (len(slices) - 1))])
            show(axes[row, col], volume[..., z], mask[..., z], 1.0, f"{Path(name).name}, slice {z}")
        y = int(np.argmax(mask.sum(axis=(0, 2))))
        show(axes[row, 3], volume[:, y], mask[:, y], spacing[2] / spacing[0], f"coronal, lungs {litres:.1f} L")
    for col, name in enumerate((*SLABS, SLABS[0])):
        volume, spacing = load(realct / name)
        mask = lung_mask(volume, spacing)
        z = volume.shape[2] // 2 if col < 3 else 1
        label = "RICORD-1A COVID+ " + Path(name).name.replace("_", " ")
        show(axes[2, col], volume[..., z], mask[..., z], 1.0, f"{label}, slice {z}")
    fig.suptitle("Classical lung mask (pipeline.transforms.lung) on real chest CT, lung window", fontsize=11)
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
