"""Transfer: how the trained bundle decides on data it never trained, selected or thresholded on.

Every decision rule of the model (:mod:`pipeline.transforms.decision`: the classifier head, the lesion evidence,
their combination) side by side, from the same checkpoint (``--ckpt-dir``, default the bundle's ``models/``):

1. **Synthetic transfer cohorts** (:data:`COHORTS`, labelled, CT-0 to CT-4): a freshly seeded cohort of the
   training scanner profile, a ``shifted`` scanner cohort (2.5-5 mm slices, RAS, sharper kernels, other noise and
   padding) and the ``foreign`` profile (another texture, noise, anatomy and lesion draws; skipped, saying so,
   where the generator lacks it), evaluated through the bundle (``evaluate.json``). Per rule: AUC with its DeLong
   interval, sensitivity and specificity at the rule's threshold chosen on validation (the record's decision),
   sensitivity per category; the severity: Spearman and mean absolute error (percentage points) of the measured
   and of the calibrated involvement against the true one (the generator's lesion masks), quadratic-weighted
   kappa of the MosMed category (calibrated involvement, the rule the model applies: its record's ``rule``).
2. **Real scans** in ``--realct DIR`` (third-party, read in place, never copied): each rule's P(pneumonia) of the
   real chest CTs without pneumonia and of the RICORD 30 mm slabs (partial scans; never tuned on), and the AUC of
   the RICORD positives against all the others; refused scans are listed as refused. Same chain as the bundle.
3. **Where it looks**: Grad-CAM of the pneumonia class over each real scan, the share of its mass that lies on
   lung voxels beside the share of the input that is lung (equal shares: no preference); a PNG montage.

The rule to decide by is chosen by transfer: the best mean AUC over the synthetic transfer cohorts
(:func:`choose_rule`, reported for every draw), never on validation alone nor on the real scans. That choice, and
choices about the recipe (augmentation strengths, cohort size, generator settings), are made on the **development
draw** (``--draw development``): the same three profiles drawn with other seeds (:data:`DRAWS`), without the real
scans and without figures, written to ``NAME_development``. The model applies the rule its record names
(``decision_rule`` in train.json); the report draw then measures it once, and the real scans only there. A model whose
record has no decision (trained before decisions) gets one fitted on a stand-in validation cohort of the training
generator (``--fit-seed``), said so in the results.

Example (the README's figures)::

    python -m benchmarks.bench_transfer --per-category 12 --matrix 256 --realct ../shared/realct
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import math
import subprocess
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from monai.transforms import Compose
from monai.visualize import GradCAM

from benchmarks.common import BUNDLE, REPO, RESULTS, TRAIN_JSON, write_results
from pipeline.engine.decision import fit_decision
from pipeline.engine.record import read as read_record
from pipeline.engine.threshold import read as read_threshold
from pipeline.evaluation.metrics import category_agreement, classification_metrics, involvement_agreement
from pipeline.evaluation.saliency import last_conv_layer
from pipeline.inferers.ensemble import load_model_weights
from pipeline.networks.nets import ClassLogits, build_network, has_lesion_output, split_output
from pipeline.synth.generate import generate_cohort
from pipeline.synth.phantom import SCANNERS
from pipeline.transforms.chain import deterministic_transforms, in_channels
from pipeline.transforms.decision import RULES, calibrate_involvement, decide
from pipeline.transforms.hounsfield import voxel_ml
from pipeline.transforms.severity import category, involvement, lesion_evidence
from pipeline.utils.atomic import atomic_write_text
from pipeline.utils.errors import find_input_error
from pipeline.utils.guard import EXIT_OK, EXIT_PARTIAL

EVALUATE_JSON = BUNDLE / "configs" / "evaluate.json"
IMAGES = REPO / "docs" / "images"
#: The synthetic transfer cohorts: (name, scanner profile of :func:`generate_cohort`, seed). The rule is chosen on
#: their development draw; none shares a seed with the training cohort (0) or the stand-in validation cohort
#: (``--fit-seed``).
COHORTS = (("fresh seed", "mosmed", 101), ("shifted scanner", "shifted", 202), ("foreign", "foreign", 505))
#: Seed offset of each draw of :data:`COHORTS`: ``report`` gives the README's figures, ``development`` the cohorts
#: that recipe choices are made on (module docstring).
DRAWS = {"report": 0, "development": 1000}
EVIDENCE_KEYS = ("lesion_ml", "focus_ml", "involvement", "involvement_true")


def real_scans(root: Path) -> dict[str, list[Path]]:
    """The real chest CTs of the folder ``root`` (a copy of the shared ``realct``) by group: normal (no pneumonia),
    RICORD negative, RICORD positive."""
    slabs = root / "ricord_slabs"
    return {
        "real, no pneumonia": [*sorted((root / "dicom").glob("Lung_Dx-*")), root / "nifti" / "chest_cta_crop.nii.gz"],
        "RICORD COVID-19 negative (30 mm slab)": sorted((slabs / "covid_negative").glob("patient_*")),
        "RICORD COVID-19 positive (30 mm slab)": sorted((slabs / "covid_positive").glob("patient_*")),
    }


def evaluate_cohort(cohort: Path, ckpt_dir: Path, out: Path, record: dict[str, Any]) -> list[dict[str, str]]:
    """The rows of ``predictions.csv`` of the bundle's evaluation of ``cohort`` with the checkpoint in ``ckpt_dir``:
    every study, ``status`` ``ok`` or ``refused`` (a partial run, exit 3, is a result: its refusals are counted)."""
    chain = [arg for key, value in record["preprocessing"].items() for arg in (f"--{key}", json.dumps(value))]
    cmd = [
        sys.executable, "-m", "monai.bundle", "run",
        "--config_file", str([str(TRAIN_JSON), str(EVALUATE_JSON)]), "--bundle_root", str(BUNDLE),
        "--dataset_dir", str(cohort), "--ckpt_dir", str(ckpt_dir), "--output_dir", str(out),
        "--network_name", record["network_name"], *chain,
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode not in (EXIT_OK, EXIT_PARTIAL):
        raise RuntimeError(f"evaluation of {cohort} failed:\n{proc.stderr[-3000:]}")
    with (out / "predictions.csv").open(newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


def scored(rows: Sequence[Mapping[str, str]]) -> list[Mapping[str, str]]:
    """The rows of :func:`evaluate_cohort` that were predicted (``status`` ``ok``)."""
    return [row for row in rows if row["status"] == "ok"]


def _number(text: str | None) -> float:
    return math.nan if text in (None, "") else float(text)


def evidence_of(rows: Sequence[Mapping[str, str]]) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
    """``(labels, the head's P, evidence)`` of prediction rows; the involvement as measured, before calibration."""
    labels = np.array([int(r["label"]) for r in rows])
    prob = np.array([_number(r.get("prob_classifier") or r["prob_pneumonia"]) for r in rows])
    evidence = {k: np.array([_number(r.get(k)) for r in rows]) for k in EVIDENCE_KEYS}
    evidence["involvement"] = np.array([_number(r.get("involvement_raw") or r.get("involvement")) for r in rows])
    return labels, prob, evidence


def generator_fractions(cohort: Path, rows: Sequence[Mapping[str, str]]) -> np.ndarray:
    """The involvement each study was drawn with (``lesion_fraction`` of the cohort's registry: lesion voxels over
    the generator's true lung, on the scan's own grid), in the order of ``rows``."""
    with (cohort / "dataset_registry.csv").open(newline="", encoding="utf-8") as f:
        drawn = {r["study_id"]: float(r["lesion_fraction"]) for r in csv.DictReader(f)}
    return np.array([drawn[r["study_id"]] for r in rows])


def rule_metrics(
    decision: Mapping[str, Any], labels: np.ndarray, prob: np.ndarray, evidence: Mapping, categories: Sequence[str]
) -> dict[str, dict[str, Any]]:
    """Per rule: AUC with its DeLong interval, sensitivity and specificity at the rule's validation threshold."""
    out = {}
    for rule, fit in decision["rules"].items():
        p = decide(fit, prob, evidence)
        m = classification_metrics(labels, p, threshold=fit.get("threshold", 0.5), n_bootstrap=0, categories=categories)
        keep = ("n", "auc", "auc_ci95", "auc_ci_reason", "threshold", "sensitivity", "specificity")
        per_category = {c: v.get("sensitivity") for c, v in m["per_category"].items() if c != "CT-0"}
        out[rule] = {**{k: m.get(k) for k in keep}, "sensitivity_per_category": per_category}
    return out


def severity(
    decision: Mapping[str, Any], rule: str, prob: np.ndarray, evidence: Mapping, categories: Sequence[str]
) -> dict[str, Any]:
    """Involvement agreement as measured and calibrated, against the truth on the network's grid (the lesion mask
    in the chain's lung mask) and against the generator's (``evidence["involvement_generator"]``); the category's
    agreement (calibrated involvement, ``rule``'s P and threshold)."""
    fit = decision["rules"][rule]
    true = [None if math.isnan(t) else float(t) for t in evidence["involvement_true"]]
    drawn = list(evidence["involvement_generator"])
    raw = evidence["involvement"]
    calibrated = calibrate_involvement(decision.get("involvement"), raw)
    p = decide(fit, prob, evidence)
    predicted = [category(float(q), float(c), fit.get("threshold", 0.5)) for q, c in zip(p, calibrated)]
    return {
        "measured": involvement_agreement(list(raw), true),
        "calibrated": involvement_agreement(list(calibrated), true),
        "measured_vs_generator": involvement_agreement(list(raw), drawn),
        "calibrated_vs_generator": involvement_agreement(list(calibrated), drawn),
        "grid_truth_vs_generator": involvement_agreement(true, drawn),
        "category": {k: v for k, v in category_agreement(predicted, list(categories)).items() if k != "labels"},
        "rule": rule,
    }


def choose_rule(results: Mapping[str, Any], cohorts: Sequence[str]) -> dict[str, Any]:
    """The rule with the best mean AUC over the synthetic transfer ``cohorts`` (ties: the earlier of RULES)."""
    means = {
        rule: float(np.mean([results[c]["rules"][rule]["auc"] for c in cohorts]))
        for rule in RULES
        if all(rule in results[c]["rules"] for c in cohorts)
    }
    return {"rule": max(means, key=lambda r: (round(means[r], 6), -list(RULES).index(r))), "mean_auc": means}


def lung_share(cam: np.ndarray, image: np.ndarray) -> float:
    """Share of the Grad-CAM mass on lung voxels (the chain leaves them above 0; outside the mask is air, 0)."""
    total = float(cam.sum())
    return float(cam[image > 0].sum()) / total if total > 0 else float("nan")


def score_real(
    network: torch.nn.Module, chain: Compose, scans: dict[str, list[Path]], decision: Mapping[str, Any]
) -> tuple[list[dict], list]:
    """Each rule's P(pneumonia), the calibrated involvement, the Grad-CAM lung share of every real scan; (name,
    image, cam) triples for the figure. Refused scans get ``refused`` and the reason."""
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
            evidence = {}
            if lesion is not None:
                evidence = lesion_evidence(torch.sigmoid(lesion[0]), item["lung"], voxel_ml(item["lung"].affine))
            heat = cam(x, class_idx=1)[0, 0].detach().numpy()
            volume = image[0].numpy()
            row = {"group": group, "scan": label,
                   "p_pneumonia": {rule: round(float(decide(fit, [prob], {k: [v] for k, v in evidence.items()})[0]), 4)
                                   for rule, fit in decision["rules"].items()},
                   "gradcam_on_lung": round(lung_share(heat, volume), 3),
                   "lung_share_of_input": round(float((volume > 0).mean()), 3)}  # fmt: skip
            if evidence:
                row["lesion_ml"], row["focus_ml"] = round(evidence["lesion_ml"], 1), round(evidence["focus_ml"], 1)
                row["involvement"] = round(
                    float(calibrate_involvement(decision.get("involvement"), evidence["involvement"])), 4
                )
            rows.append(row)
            panels.append((f"{label} P={prob:.2f}", volume, heat))
    return rows, panels


def real_auc(rows: Sequence[Mapping[str, Any]], decision: Mapping[str, Any]) -> dict[str, Any]:
    """Per rule: the AUC (DeLong) of the RICORD positives against every other real scan that was scored."""
    scored = [r for r in rows if "refused" not in r]
    labels = [int("positive" in r["group"]) for r in scored]
    out = {}
    for rule in decision["rules"]:
        m = classification_metrics(labels, [r["p_pneumonia"][rule] for r in scored], n_bootstrap=0)
        out[rule] = {k: m.get(k) for k in ("n", "n_positive", "auc", "auc_ci95", "auc_ci_reason")}
    return out


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
    for grade in ("CT-1", "CT-2", "CT-3", "CT-4"):
        image = sorted((cohort / "studies" / grade).glob("*.nii.gz"))[0]
        mask = cohort / "masks" / image.name.replace(".nii.gz", "_mask.nii.gz")
        scans.append((f"{grade} {image.name[:-7]}", {"image": str(image), "mask": str(mask)}))
    if realct is not None and realct.is_dir():
        for group, paths in real_scans(realct).items():
            if "RICORD" in group:
                scans += [(f"{p.parent.name}/{p.name}", {"image": str(p)}) for p in paths]
    return scans


def _shown(path: Path) -> str:
    """``path`` relative to the repository when it lies in it (the README's figures), else as given."""
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def _fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _with_ci(value: float | None, ci: Sequence[float] | None, digits: int) -> str:
    """``value [low, high]``, or ``value`` alone without an interval."""
    return f"{_fmt(value, digits)} [{_fmt(ci[0], digits)}, {_fmt(ci[1], digits)}]" if ci else _fmt(value, digits)


def _auc_text(m: Mapping[str, Any]) -> str:
    ci = m.get("auc_ci95")
    return _with_ci(m.get("auc"), ci, 3) if ci else f"{_fmt(m.get('auc'))} (no DeLong CI)"


def cohort_metrics(decision: Mapping[str, Any], rows: Sequence[Mapping[str, str]]) -> dict[str, Any]:
    """:func:`rule_metrics` of the predicted rows of :func:`evaluate_cohort`, and the refused studies with reasons."""
    ok = scored(rows)
    labels, prob, evidence = evidence_of(ok)
    return {
        "rules": rule_metrics(decision, labels, prob, evidence, [r["category"] for r in ok]),
        "refused": [f"{r['study_id']}: {r['reason']}" for r in rows if r["status"] != "ok"],
    }


def rule_row(prefix: str, m: Mapping[str, Any]) -> str:
    """A markdown row ``| prefix | n | AUC [CI] | threshold | sensitivity | specificity | per category |``."""
    sens = " / ".join(_fmt(m["sensitivity_per_category"].get(c), 2) for c in ("CT-1", "CT-2", "CT-3", "CT-4"))
    return (f"| {prefix} | {m['n']} | {_auc_text(m)} | {_fmt(m['threshold'])} | {_fmt(m['sensitivity'])} "
            f"| {_fmt(m['specificity'])} | {sens} |")  # fmt: skip


def markdown(results: dict[str, Any]) -> str:
    """The tables of ``results``: each rule on each synthetic cohort, the severity, then every real scan."""
    cohorts = [name for name, _, _ in COHORTS if isinstance(results.get(name), dict)]
    rules = list(results["decision"]["rules"])
    draw = results.get("draw", "report")
    lines = [f"Cohorts: the {draw} draw (seeds {', '.join(str(s) for _, _, s in COHORTS)} + {DRAWS[draw]}). "
             f"Decision fitted on: {results['decision_source']}. "
             f"Rule applied (the record's): **{results['decision'].get('rule')}**. Best rule on this draw: "
             f"**{results['chosen']['rule']}** (mean AUC over {', '.join(cohorts)}: "
             + ", ".join(f"{r} {v:.3f}" for r, v in results["chosen"]["mean_auc"].items()) + ").", ""]  # fmt: skip
    lines += [f"- {name}: {results[name]}" for name, _, _ in COHORTS if isinstance(results.get(name), str)]
    lines += [f"- {name}, refused (not scored, not in n): {'; '.join(results[name]['refused'])}"
              for name in cohorts if results[name].get("refused")]  # fmt: skip
    lines += ["", "| cohort (never trained on) | rule | n | AUC [95 % CI, DeLong] | threshold (validation) "
              "| sensitivity | specificity | sensitivity CT-1 / CT-2 / CT-3 / CT-4 |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    lines += [rule_row(f"{name} | {rule}", results[name]["rules"][rule]) for name in cohorts for rule in rules]
    lines += ["", "Involvement: MAE in percentage points against the truth on the network's grid (lesion mask in the "
              "chain's lung mask) and against the generator's drawn fraction (its own lung); category: calibrated "
              "involvement, the rule applied; intervals: percentile bootstrap over the studies.", "",
              "| cohort (never trained on) | n | Spearman (calibrated) "
              "| MAE measured / calibrated [95 % CI], grid truth | MAE measured / calibrated [95 % CI], generator "
              "| MAE grid truth vs generator | category kappa (quadratic) [95 % CI] | category accuracy |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for name in (c for c in cohorts if "severity" in results[c]):
        sev = results[name]["severity"]
        cal, cat = sev["calibrated"], sev["category"]
        pairs = (("measured", "calibrated"), ("measured_vs_generator", "calibrated_vs_generator"))
        mae = " | ".join(f"{_fmt(sev[a]['mae_pp'], 1)} / {_with_ci(sev[b]['mae_pp'], sev[b].get('mae_pp_ci95'), 1)}"
                         for a, b in pairs)  # fmt: skip
        mae += f" | {_fmt(sev['grid_truth_vs_generator']['mae_pp'], 1)}"
        kappa = _with_ci(cat["kappa_quadratic"], cat.get("kappa_quadratic_ci95"), 3)
        lines.append(f"| {name} | {cal['n']} | {_fmt(cal['spearman'])} | {mae} | {kappa} | {_fmt(cat['accuracy'])} |")
    if isinstance(results.get("real"), list):
        lines += ["", "| real scan | group | " + " | ".join(f"P {r}" for r in rules)
                  + " | lesion (mL) | involvement (calibrated) | Grad-CAM mass on lung |",
                  "|---|---|" + "---|" * len(rules) + "---|---|---|"]  # fmt: skip
        for row in results["real"]:
            if "refused" in row:
                cells = " |" * (len(rules) + 2)
                lines.append(f"| {row['scan']} | {row['group']} | refused: {row['refused']} |{cells}")
                continue
            inv = row.get("involvement")
            probs = " | ".join(f"{row['p_pneumonia'][r]:.3f}" for r in rules)
            inv = "-" if inv is None else f"{100 * inv:.1f} %"
            lines.append(f"| {row['scan']} | {row['group']} | {probs} | {_fmt(row.get('lesion_ml'), 1)} | {inv} "
                         f"| {row['gradcam_on_lung']:.2f} |")  # fmt: skip
        auc = results["real_auc"]
        lines += [
            "",
            "Real scans, RICORD positives against all others: "
            + "; ".join(f"{r} {_auc_text(m)} (n {m['n']}, {m['n_positive']} positive)" for r, m in auc.items()),
        ]
    return "\n".join(lines) + "\n"


def stand_in_decision(work: Path, ckpt_dir: Path, record: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """A decision for a model whose record has none: fitted on a fresh cohort of the training generator (seed
    ``args.fit_seed``) with the threshold method of its ``threshold.json``."""
    cohort = work / "stand_in_validation"
    if not (cohort / "dataset_registry.csv").is_file():
        generate_cohort(cohort, per_category=args.per_category, seed=args.fit_seed, matrix=args.matrix,
                        workers=2, progress=False)  # fmt: skip
    labels, prob, evidence = evidence_of(
        scored(evaluate_cohort(cohort, ckpt_dir, work / args.name / "eval_stand_in", record))
    )
    stored = read_threshold(ckpt_dir) or {}
    lesion = has_lesion_output(record["network_name"])
    return fit_decision("classifier", labels, prob, evidence if lesion else None,
                        threshold_method=stored.get("method", "fixed"),
                        target_sensitivity=stored.get("target_sensitivity"))  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ckpt-dir", type=Path, default=BUNDLE / "models")
    parser.add_argument("--per-category", type=int, default=12)
    parser.add_argument("--matrix", type=int, default=256)
    parser.add_argument("--fit-seed", type=int, default=303, help="seed of the stand-in validation cohort")
    parser.add_argument(
        "--work",
        type=Path,
        default=None,
        help="folder for the cohorts (reused by every checkpoint) and, in NAME/, this run's evaluations; default: temp",
    )
    parser.add_argument("--figure", type=Path, default=IMAGES / "transfer_real_gradcam.png")
    parser.add_argument("--lesion-figure", type=Path, default=IMAGES / "transfer_lesion_maps.png")
    parser.add_argument("--name", default="transfer", help="results file stem (benchmarks/results/NAME.json, .md)")
    parser.add_argument("--realct", type=Path, default=None, help="the real CT folder (third-party; read in place)")
    parser.add_argument("--draw", choices=sorted(DRAWS), default="report",
                        help="cohort seeds: report (the README's figures) or development (recipe choices; no real "
                        "scans, no figures, results in NAME_development)")  # fmt: skip
    args = parser.parse_args()
    development = args.draw == "development"
    if development:
        args.name, args.realct = f"{args.name}_development", None
    torch.set_num_threads(2)
    work = args.work or Path(tempfile.mkdtemp(prefix="transfer-"))
    model = args.ckpt_dir / "model.pt"
    record = read_record(model)
    prep = record["preprocessing"]
    decision = record.get("decision")
    source = "the model's validation split (its record)"
    if decision is None:
        decision = stand_in_decision(work, args.ckpt_dir, record, args)
        source = f"a stand-in validation cohort of the training generator (seed {args.fit_seed}; the record has none)"
    results: dict[str, Any] = {"checkpoint": str(model), "record": record, "decision": decision,
                               "decision_source": source, "draw": args.draw}  # fmt: skip
    tables: dict[str, tuple[np.ndarray, dict[str, np.ndarray], list[str]]] = {}
    for name, scanner, seed in COHORTS:
        if scanner not in SCANNERS:
            results[name] = f"skipped: the generator has no {scanner!r} scanner profile"
            continue
        cohort = work / (name.replace(" ", "_") + ("_development" if development else ""))
        if not (cohort / "dataset_registry.csv").is_file():
            generate_cohort(cohort, per_category=args.per_category, seed=seed + DRAWS[args.draw], matrix=args.matrix,
                            scanner=scanner, workers=2, progress=False)  # fmt: skip
        every = evaluate_cohort(cohort, args.ckpt_dir, work / args.name / f"eval_{cohort.name}", record)
        rows = scored(every)
        _, prob, evidence = evidence_of(rows)
        evidence["involvement_generator"] = generator_fractions(cohort, rows)
        tables[name] = prob, evidence, [r["category"] for r in rows]
        results[name] = cohort_metrics(decision, every)
        print(name, json.dumps(results[name]), flush=True)
    results["chosen"] = choose_rule(results, list(tables))
    if has_lesion_output(record["network_name"]):
        rule = decision.get("rule", results["chosen"]["rule"])
        for name, (prob, evidence, categories) in tables.items():
            results[name]["severity"] = severity(decision, rule, prob, evidence, categories)
            print(name, json.dumps(results[name]["severity"]), flush=True)
    network = build_network(record["network_name"], in_channels=in_channels(prep["outside_lung"]), num_classes=2)
    load_model_weights(network, model).eval()
    if args.realct is not None and args.realct.is_dir():
        lesion = has_lesion_output(record["network_name"])
        chain = Compose(deterministic_transforms(**prep, dtype=torch.float32, lesion=lesion))
        results["real"], panels = score_real(network, chain, real_scans(args.realct), decision)
        results["real_auc"] = real_auc(results["real"], decision)
        for row in results["real"]:
            print(json.dumps(row), flush=True)
        results["figure"] = _shown(montage(panels, args.figure.resolve()))
    else:
        results["real"] = f"skipped: no --realct folder ({args.realct})"
    if has_lesion_output(record["network_name"]) and not development:
        chain = Compose(deterministic_transforms(**prep, dtype=torch.float32, lesion=True))
        scans = []
        for title, item in lesion_examples(work / "fresh_seed", args.realct):
            try:
                scans.append((title, chain(item)))
            except Exception as err:  # a refused scan (MONAI wraps the InputError) is left out of the figure
                if find_input_error(err) is None:
                    raise
        results["lesion_figure"] = _shown(lesion_montage(network, scans, args.lesion_figure.resolve()))
    print("results:", write_results(args.name, results))
    atomic_write_text(RESULTS / f"{args.name}.md", markdown(results))


if __name__ == "__main__":
    main()
