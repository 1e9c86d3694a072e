"""Transfer: how the trained bundle does on data it never trained, selected or thresholded on.

Three tiers, all from the same checkpoint (``--ckpt-dir``, default the bundle's ``models/``):

1. **Out of generator** (synthetic, labelled): a freshly seeded cohort of the training scanner profile and a
   ``--scanner shifted`` cohort (2.5-5 mm slices, RAS, sharper kernels, other noise and padding), CT-0 to CT-4,
   evaluated through the bundle (``python -m monai.bundle run`` with ``evaluate.json``, the stored threshold):
   AUC with its DeLong interval, accuracy, and sensitivity per category at the threshold; for a network with a
   lesion output, the severity: Spearman and mean absolute error (percentage points) of the predicted against the
   true lung involvement (the generator's lesion masks), quadratic-weighted kappa of the MosMed category.
2. **Real scans** in ``--realct DIR`` (third-party, read in place, never copied): P(pneumonia) of each real chest
   CT without pneumonia (each should fall below the threshold) and of the RICORD 30 mm slabs of COVID-19 positive and
   negative patients (partial scans: reported, never tuned on), and the share of the lung its lesion map covers.
   Same chain as the bundle (the checkpoint's record).
3. **Where it looks**: Grad-CAM of the pneumonia class over each real scan, the share of its mass that lies on
   lung voxels (the chain sets everything outside the lung mask to air, 0) beside the share of the input that is
   lung (equal shares: no preference); a PNG montage.

Example (the README's figures)::

    python -m benchmarks.bench_transfer --per-category 12 --matrix 256 --realct ../shared/realct
"""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from monai.transforms import Compose
from monai.visualize import GradCAM

from benchmarks.common import BUNDLE, REPO, RESULTS, TRAIN_JSON, write_results
from pipeline.engine.record import read as read_record
from pipeline.engine.threshold import load as load_threshold
from pipeline.evaluation.saliency import last_conv_layer
from pipeline.inferers.ensemble import load_model_weights
from pipeline.networks.nets import ClassLogits, build_network, has_lesion_output, split_output
from pipeline.synth.generate import generate_cohort
from pipeline.transforms.chain import deterministic_transforms, in_channels
from pipeline.transforms.severity import involvement
from pipeline.utils.atomic import atomic_write_text
from pipeline.utils.errors import find_input_error

EVALUATE_JSON = BUNDLE / "configs" / "evaluate.json"
IMAGES = REPO / "docs" / "images"


def real_scans(root: Path) -> dict[str, list[Path]]:
    """The real chest CTs of the folder ``root`` (a copy of the shared ``realct``) by group: normal (no pneumonia),
    RICORD negative, RICORD positive."""
    slabs = root / "ricord_slabs"
    return {
        "real, no pneumonia": [*sorted((root / "dicom").glob("Lung_Dx-*")), root / "nifti" / "chest_cta_crop.nii.gz"],
        "RICORD COVID-19 negative (30 mm slab)": sorted((slabs / "covid_negative").glob("patient_*")),
        "RICORD COVID-19 positive (30 mm slab)": sorted((slabs / "covid_positive").glob("patient_*")),
    }


def evaluate_cohort(cohort: Path, ckpt_dir: Path, out: Path, record: dict[str, Any]) -> dict[str, Any]:
    """``metrics.json`` of the bundle's evaluation of ``cohort`` with the checkpoint in ``ckpt_dir`` and its record."""
    chain = [arg for key, value in record["preprocessing"].items() for arg in (f"--{key}", json.dumps(value))]
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str([str(TRAIN_JSON), str(EVALUATE_JSON)]), "--bundle_root", str(BUNDLE),
        "--dataset_dir", str(cohort), "--ckpt_dir", str(ckpt_dir), "--output_dir", str(out),
        "--network_name", record["network_name"], *chain,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"evaluation of {cohort} failed:\n{proc.stderr[-3000:]}")
    metrics = json.loads((out / "metrics.json").read_text())
    keep = ("n", "auc", "auc_ci95", "auc_ci_method", "accuracy", "sensitivity", "specificity", "threshold")
    per_category = {c: {"n": m["n"], "sensitivity": m.get("sensitivity"), "specificity": m.get("specificity")}
                    for c, m in metrics["per_category"].items()}  # fmt: skip
    return {**{k: metrics.get(k) for k in keep}, "per_category": per_category, "severity": metrics.get("severity")}


def lung_share(cam: np.ndarray, image: np.ndarray) -> float:
    """Share of the Grad-CAM mass on lung voxels (the chain leaves them above 0; outside the mask is air, 0)."""
    total = float(cam.sum())
    return float(cam[image > 0].sum()) / total if total > 0 else float("nan")


def score_real(network: torch.nn.Module, chain: Compose, scans: dict[str, list[Path]]) -> tuple[list[dict], list]:
    """P(pneumonia), involvement, Grad-CAM lung share of every real scan; (name, image, cam) triples for the figure."""
    rows, panels = [], []
    classifier = ClassLogits(network)
    layer = getattr(classifier, "gradcam_layer", None) or last_conv_layer(classifier)
    cam = GradCAM(nn_module=classifier, target_layers=layer)
    for group, paths in scans.items():
        for path in paths:
            label = f"{path.parent.name}/{path.name}" if "ricord" in str(path) else path.name
            try:
                item = chain({"image": str(path)})
            except Exception as err:  # MONAI wraps a transform's InputError in RuntimeError
                refusal = find_input_error(err)
                if refusal is None:
                    raise
                rows.append({"group": group, "scan": label, "refused": refusal.problem})
                continue
            image = item["image"].float()
            x = image[None]
            with torch.no_grad():
                logits, lesion = split_output(network(x))
            prob = float(torch.softmax(logits, 1)[0, 1])
            heat = cam(x, class_idx=1)[0, 0].detach().numpy()
            volume = image[0].numpy()
            row = {"group": group, "scan": label, "p_pneumonia": round(prob, 4),
                   "gradcam_on_lung": round(lung_share(heat, volume), 3),
                   "lung_share_of_input": round(float((volume > 0).mean()), 3)}  # fmt: skip
            if lesion is not None:
                row["involvement"] = round(involvement(torch.sigmoid(lesion[0]), item["lung"]), 4)
            rows.append(row)
            panels.append((f"{label} P={prob:.2f}", volume, heat))
    return rows, panels


def montage(panels: list, out: Path) -> Path:
    """One row per scan: the middle axial slice and a coronal slice of the network input with Grad-CAM over it."""
    fig = Figure(figsize=(4.4, 2.0 * len(panels)), dpi=90)
    axes = fig.subplots(len(panels), 2, squeeze=False)
    for (title, volume, heat), (ax_axial, ax_coronal) in zip(panels, axes):
        k = volume.shape[2] // 2
        j = volume.shape[1] // 2
        for ax, img, cam in ((ax_axial, volume[..., k], heat[..., k]), (ax_coronal, volume[:, j, :], heat[:, j, :])):
            ax.imshow(np.rot90(img), cmap="gray", vmin=0, vmax=0.8)
            ax.imshow(np.rot90(cam), cmap="jet", vmin=0, vmax=1, alpha=0.35)
            ax.axis("off")
        ax_axial.set_title(title, fontsize=7, loc="left")
    fig.suptitle("Grad-CAM (pneumonia) over the network input of real scans\n(TCIA Lung-PET-CT-Dx, TotalSegmentator, "
                 "MIDRC-RICORD)", fontsize=7)  # fmt: skip
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.5 / len(panels)))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    out.write_bytes(buf.getvalue())
    return out


def lesion_montage(network: torch.nn.Module, scans: list[tuple[str, dict]], out: Path) -> Path:
    """One row per preprocessed scan (the lesion chain's output): the axial slice with the most lesion (true, else
    predicted) of the network input, the true mask's outline (green, when known) and P(lesion) >= 0.5 (red)."""
    fig = Figure(figsize=(4.4, 2.0 * len(scans)), dpi=90)
    axes = fig.subplots(len(scans), 2, squeeze=False)
    for (title, data), (ax_true, ax_pred) in zip(scans, axes):
        with torch.no_grad():
            _, lesion = split_output(network(data["image"].float()[None]))
        pred = torch.sigmoid(lesion[0, 0]).numpy() >= 0.5
        truth = data["mask"][0].float().numpy() >= 0.5 if float(data["has_mask"]) else None
        area = (truth if truth is not None and truth.any() else pred).sum(axis=(0, 1))
        k = int(np.argmax(area)) if area.any() else pred.shape[2] // 2
        volume = data["image"][0].float().numpy()
        for ax in (ax_true, ax_pred):
            ax.imshow(np.rot90(volume[..., k]), cmap="gray", vmin=0, vmax=0.8)
            ax.axis("off")
        if truth is not None:
            ax_true.contour(np.rot90(truth[..., k]).astype(float), levels=[0.5], colors="lime", linewidths=0.8)
        ax_pred.imshow(np.ma.masked_where(~np.rot90(pred[..., k]), np.rot90(pred[..., k])), cmap="autumn", alpha=0.5)
        truth_text = "" if truth is None else f", true {100 * involvement(data['mask'], data['lung']):.0f} %"
        ax_true.set_title(f"{title}{truth_text}", fontsize=7, loc="left")
        ax_pred.set_title(f"predicted {100 * involvement(torch.sigmoid(lesion[0]), data['lung']):.0f} % of the lung",
                          fontsize=7, loc="left")  # fmt: skip
    fig.suptitle("Lesion maps on scans never trained on: truth (green outline), prediction (red)", fontsize=7)
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / len(scans)))
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    out.write_bytes(buf.getvalue())
    return out


def lesion_examples(cohort: Path, realct: Path | None) -> list[tuple[str, dict]]:
    """The first study of each of CT-1 ... CT-4 of a synthetic ``cohort`` (with its mask), then the RICORD slabs."""
    scans = []
    for category in ("CT-1", "CT-2", "CT-3", "CT-4"):
        image = sorted((cohort / "studies" / category).glob("*.nii.gz"))[0]
        mask = cohort / "masks" / image.name.replace(".nii.gz", "_mask.nii.gz")
        scans.append((f"{category} {image.name[:-7]}", {"image": str(image), "mask": str(mask)}))
    if realct is not None and realct.is_dir():
        for group, paths in real_scans(realct).items():
            if "RICORD" in group:
                scans += [(f"{p.parent.name}/{p.name}", {"image": str(p)}) for p in paths]
    return scans


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def cohort_rows(name: str, m: dict[str, Any]) -> str:
    """One markdown row: AUC [CI], accuracy, specificity, sensitivity per category."""
    ci = m.get("auc_ci95") or [None, None]
    sens = " / ".join(
        _fmt(m["per_category"].get(c, {}).get("sensitivity"), 2) for c in ("CT-1", "CT-2", "CT-3", "CT-4")
    )
    return (f"| {name} | {m['n']} | {_fmt(m['auc'])} [{_fmt(ci[0])}, {_fmt(ci[1])}] | {_fmt(m['accuracy'])} | "
            f"{_fmt(m['specificity'])} | {sens} |")  # fmt: skip


def severity_row(name: str, m: dict[str, Any]) -> str:
    """One markdown row: Spearman and MAE of the involvement, kappa and accuracy of the category."""
    inv = (m.get("severity") or {}).get("involvement") or {}
    cat = (m.get("severity") or {}).get("category") or {}
    return (f"| {name} | {inv.get('n', '-')} | {_fmt(inv.get('spearman'))} | {_fmt(inv.get('mae_pp'), 1)} | "
            f"{_fmt(cat.get('kappa_quadratic'))} | {_fmt(cat.get('accuracy'))} |")  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    """The README tables of ``results``: synthetic cohorts, then every real scan."""
    head = "| cohort (never trained on) | n | AUC [95 % CI] | accuracy | specificity | sensitivity"
    lines = [head + " CT-1 / CT-2 / CT-3 / CT-4 |", "|---|---|---|---|---|---|"]
    cohorts = [name for name in ("fresh seed", "shifted scanner") if name in results]
    lines += [cohort_rows(name, results[name]) for name in cohorts]
    if any(results[name].get("severity") for name in cohorts):
        lines += ["", "| cohort (never trained on) | n | involvement Spearman | MAE (pp) | category kappa (quadratic) "
                  "| category accuracy |", "|---|---|---|---|---|---|"]  # fmt: skip
        lines += [severity_row(name, results[name]) for name in cohorts]
    if isinstance(results.get("real"), list):
        threshold = results["threshold"]
        head = (
            f"| real scan | group | P(pneumonia), threshold {threshold} | involvement | Grad-CAM mass on lung "
            "| lung share of input"
        )
        lines += ["", head + " |", "|---|---|---|---|---|---|"]
        for row in results["real"]:
            if "refused" in row:
                lines.append(f"| {row['scan']} | {row['group']} | refused: {row['refused']} | | | |")
            else:
                share, inv = row.get("lung_share_of_input"), row.get("involvement")
                lines.append(f"| {row['scan']} | {row['group']} | {row['p_pneumonia']:.3f} | "
                             f"{'-' if inv is None else f'{100 * inv:.1f} %'} | "
                             f"{row['gradcam_on_lung']:.2f} | {_fmt(share, 2)} |")  # fmt: skip
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt-dir", type=Path, default=BUNDLE / "models")
    parser.add_argument("--per-category", type=int, default=12)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--seed", type=int, default=101, help="seed of the fresh cohort (not the training seed 0)")
    parser.add_argument("--shifted-seed", type=int, default=202)
    parser.add_argument("--work", type=Path, default=None, help="folder for the cohorts and outputs (default: temp)")
    parser.add_argument("--figure", type=Path, default=IMAGES / "transfer_real_gradcam.png")
    parser.add_argument("--lesion-figure", type=Path, default=IMAGES / "transfer_lesion_maps.png")
    parser.add_argument("--name", default="transfer", help="results file stem (benchmarks/results/NAME.json, .md)")
    parser.add_argument("--realct", type=Path, default=None, help="the real CT folder (third-party; read in place)")
    args = parser.parse_args()
    torch.set_num_threads(2)
    work = args.work or Path(tempfile.mkdtemp(prefix="transfer-"))
    model = args.ckpt_dir / "model.pt"
    record = read_record(model)
    prep = record["preprocessing"]
    results: dict[str, Any] = {"checkpoint": str(model), "record": record, "threshold": load_threshold([model])}
    for name, seed, scanner in (("fresh seed", args.seed, "mosmed"), ("shifted scanner", args.shifted_seed, "shifted")):
        cohort = work / name.replace(" ", "_")
        if not (cohort / "dataset_registry.csv").is_file():
            generate_cohort(cohort, per_category=args.per_category, seed=seed, matrix=args.matrix, scanner=scanner,
                            workers=2, progress=False)  # fmt: skip
        results[name] = evaluate_cohort(cohort, args.ckpt_dir, work / f"eval_{cohort.name}", record)
        print(name, json.dumps(results[name]), flush=True)
    network = build_network(record["network_name"], in_channels=in_channels(prep["outside_lung"]), num_classes=2)
    load_model_weights(network, model).eval()
    if args.realct is not None and args.realct.is_dir():
        lesion = has_lesion_output(record["network_name"])
        chain = Compose(deterministic_transforms(**prep, dtype=torch.float32, lesion=lesion))
        results["real"], panels = score_real(network, chain, real_scans(args.realct))
        for row in results["real"]:
            print(json.dumps(row), flush=True)
        results["figure"] = str(montage(panels, args.figure.resolve()).relative_to(REPO))
    else:
        results["real"] = f"skipped: no --realct folder ({args.realct})"
    if has_lesion_output(record["network_name"]):
        chain = Compose(deterministic_transforms(**prep, dtype=torch.float32, lesion=True))
        scans = []
        for title, item in lesion_examples(work / "fresh_seed", args.realct):
            try:
                scans.append((title, chain(item)))
            except Exception as err:  # a refused scan (MONAI wraps the InputError) is left out of the figure
                if find_input_error(err) is None:
                    raise
        results["lesion_figure"] = str(lesion_montage(network, scans, args.lesion_figure.resolve()).relative_to(REPO))
    print("results:", write_results(args.name, results))
    atomic_write_text(RESULTS / f"{args.name}.md", markdown(results))


if __name__ == "__main__":
    main()
