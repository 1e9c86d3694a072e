"""The operating threshold: choice on validation data, the handler in a real evaluator, storage and loading."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import torch
from monai.engines import SupervisedEvaluator
from monai.handlers import ROCAUC, from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose
from torch import nn

from pipeline.__main__ import main
from pipeline.engine.threshold import (
    ENSEMBLE_FILENAME,
    FILENAME,
    ThresholdSelector,
    choose_ensemble_threshold,
    choose_threshold,
    ensemble_threshold_file,
    load,
    read,
)
from pipeline.evaluation.report import COLUMNS
from pipeline.utils.errors import InputError

# 4 normal, 3 pneumonia. ROC points (cut: TPR, FPR): 0.9: 1/3, 0; 0.7: 2/3, 0; 0.6: 2/3, 1/4;
# 0.4: 1, 1/4; 0.3: 1, 1/2; ... Youden's J is largest (3/4) at the cut 0.4, so the threshold is 0.35, midway to
# the next lower score 0.3; AUC 11/12.
LABELS = [0, 0, 0, 0, 1, 1, 1]
PROBS = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.9]


@pytest.mark.parametrize(
    "method, target, threshold, between, sensitivity, specificity",
    [
        ("fixed", None, 0.5, None, 2 / 3, 3 / 4),
        ("youden", None, 0.35, [0.3, 0.4], 1.0, 3 / 4),
        ("sensitivity", 0.9, 0.35, [0.3, 0.4], 1.0, 3 / 4),
        ("sensitivity", 0.5, 0.65, [0.6, 0.7], 2 / 3, 1.0),
        ("sensitivity", 0.7, 0.35, [0.3, 0.4], 1.0, 3 / 4),
    ],
)
def test_choose_threshold(method, target, threshold, between, sensitivity, specificity):
    record = choose_threshold(LABELS, PROBS, method, target)
    assert record["threshold"] == pytest.approx(threshold) and record["threshold"] not in PROBS
    assert record["between"] == (pytest.approx(between) if between else None)
    assert record["sensitivity"] == pytest.approx(sensitivity)
    assert record["specificity"] == pytest.approx(specificity)
    assert record["method"] == method and record["chosen_on"] == "validation"
    assert record["target_sensitivity"] == (target if method == "sensitivity" else None)
    assert (record["n"], record["n_positive"], record["n_negative"]) == (7, 3, 4)
    assert record["auc"] == pytest.approx(11 / 12)


@pytest.mark.parametrize("method, target", [("otsu", None), ("sensitivity", None), ("sensitivity", 0.0)])
def test_bad_method_or_target(method, target):
    with pytest.raises(ValueError, match=r"threshold method|target_sensitivity"):
        choose_threshold(LABELS, PROBS, method, target)
    with pytest.raises(ValueError):
        ThresholdSelector("unused", method=method, target_sensitivity=target)


def test_one_class_falls_back_to_fixed(tmp_path):
    with pytest.raises(ValueError, match="both classes"):
        choose_threshold([1, 1, 1], [0.2, 0.6, 0.9], "youden")
    record = ThresholdSelector(tmp_path, method="youden").write(
        np.array([1, 1, 1]), np.array([0.2, 0.6, 0.9]), epoch=3, metric_name="val_auc", metric=0.5
    )
    assert record["threshold"] == 0.5 and record["method"] == "fixed" and "youden" in record["fallback"]
    assert read(tmp_path) == record


def test_load_one_model_and_defaults(tmp_path):
    fold0, fold1, bare = tmp_path / "fold0", tmp_path / "fold1", tmp_path / "bare"
    for folder, (labels, probs) in ((fold0, (LABELS, PROBS)), (fold1, ([0, 1, 1], [0.2, 0.35, 0.8]))):
        ThresholdSelector(folder, method="youden").write(np.array(labels), np.array(probs), 1, "val_auc", 1.0)
    assert load(fold0) == pytest.approx(0.35)
    assert load(fold0 / "model.pt") == pytest.approx(0.35)  # beside a checkpoint file
    assert load(str(fold1 / "model.pt")) == pytest.approx(0.275)  # midway between 0.2 and 0.35
    assert load(bare / "model.pt") == 0.5 and load([bare], default=0.3) == 0.3
    record = json.loads((fold0 / FILENAME).read_text())
    assert record["epoch"] == 1 and record["key_metric"] == {"val_auc": 1.0} and record["model"] == "model.pt"
    assert not list(fold0.glob(".*.tmp")), "written atomically, nothing left behind"


def fold_models(root, methods=("youden", "fixed", "youden")):
    """Checkpoint files (bytes are enough: members are recognised by their SHA-256) with their threshold.json."""
    files = []
    for k, method in enumerate(methods):
        folder = root / f"fold{k}"
        ThresholdSelector(folder, method=method).write(np.array(LABELS), np.array(PROBS), 1, "val_auc", 0.9)
        (folder / "model.pt").write_bytes(f"weights of fold {k}".encode())
        files.append(folder / "model.pt")
    return files


def ensemble_predictions(path, labels, probs):
    """The predictions.csv an evaluation of the ensemble writes, with one refused study."""
    rows = [[f"s{i}", f"s{i}.nii", y, "", 1 - p, p, ""] for i, (y, p) in enumerate(zip(labels, probs))]
    rows.append(["r0", "r0.nii", 1, "", "", "", ""])
    with path.open("w", newline="") as f:
        csv.writer(f).writerows([[*COLUMNS, "status"], *[[*r, "ok"] for r in rows[:-1]], [*rows[-1], "refused"]])
    return path


def test_an_ensemble_needs_its_own_threshold(tmp_path):
    """The members' thresholds (chosen on their own validation data) are never averaged into the ensemble's."""
    files = fold_models(tmp_path / "models")
    with pytest.raises(InputError, match=r"threshold_ensemble\.json: not found; members chose.*fold0.*youden 0\.35"):
        load(files)
    assert load([tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt"], default=0.4) == 0.4  # none chose one
    assert load(files[1:2] + files[1:2]) == 0.5  # fixed members need no choice either

    labels, probs = [0, 0, 0, 1, 1, 1, 0, 1], [0.05, 0.2, 0.42, 0.4, 0.6, 0.95, 0.1, 0.5]
    predictions = ensemble_predictions(tmp_path / "val_predictions.csv", labels, probs)
    record = choose_ensemble_threshold([str(f) for f in files], predictions, "youden")
    assert ensemble_threshold_file(files) == tmp_path / "models" / ENSEMBLE_FILENAME
    assert record == {
        **choose_threshold(labels, probs, "youden", chosen_on=str(predictions)),
        "members": [{"file": f"fold{k}/model.pt", "sha256": record["members"][k]["sha256"]} for k in range(3)],
    }
    # J = 3/4 at the cuts 0.5 and 0.4; the higher one, midway to the next lower score 0.42; the refused study left out
    assert record["threshold"] == pytest.approx(0.46) and record["n"] == 8
    assert load(files) == record["threshold"] == load(list(reversed(files)))  # any order, any spelling
    assert load([f.parent for f in files]) == record["threshold"]

    with pytest.raises(InputError, match="chosen for another ensemble"):
        load(files[:2])
    files[2].write_bytes(b"retrained")
    with pytest.raises(InputError, match="or for other weights"):
        load(files)


def test_ensemble_threshold_cli(tmp_path, capsys):
    files = [str(f) for f in fold_models(tmp_path / "models", ("youden", "youden"))]
    predictions = ensemble_predictions(tmp_path / "predictions.csv", [0, 1, 0, 1], [0.1, 0.7, 0.3, 0.8])
    argv = ["ensemble-threshold", str(predictions), "--ckpt-files", *files]
    assert main([*argv, "--method", "sensitivity", "--target-sensitivity", "1.0"]) == 0
    out = capsys.readouterr().out
    assert "threshold 0.5 (sensitivity, between scores 0.3 and 0.7)" in out and ENSEMBLE_FILENAME in out
    assert load(files) == pytest.approx(0.5)

    single = ensemble_predictions(tmp_path / "normals.csv", [0, 0], [0.1, 0.3])
    for bad, problem in (
        ([*argv[:2], "--ckpt-files", files[0]], "at least two members"),
        (["ensemble-threshold", str(single), "--ckpt-files", *files], "needs both classes"),
        ([*argv[:3], files[0], str(tmp_path / "missing.pt")], "missing.pt: checkpoint not found"),
        ([*argv, "--method", "sensitivity"], "target_sensitivity"),
    ):
        assert main(bad) == 2
        assert problem in capsys.readouterr().err
    assert load(files) == pytest.approx(0.5), "a refused choice leaves the stored one"


@pytest.mark.parametrize("content", ["{not json", '{"threshold": 1.5}', '{"threshold": "0.4"}', "[0.4]"])
def test_bad_threshold_file(tmp_path, content):
    (tmp_path / FILENAME).write_text(content)
    with pytest.raises(InputError, match=FILENAME):
        load(tmp_path)


class Scorer(nn.Module):
    """Logits ``(-s * mean(x), s * mean(x))`` of a ``(B, 1, 2, 2, 2)`` batch; ``s`` is set by the test."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(4.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        score = self.scale * x.mean(dim=(1, 2, 3, 4))
        return torch.stack([-score, score], dim=1)


def test_selector_writes_for_each_new_best_model_only(tmp_path):
    """In a MONAI evaluator, the file follows the best key metric: written at epoch 1, kept when epoch 2 is worse."""
    values = torch.tensor([-0.6, -0.2, 0.3, 0.0, 0.1, 0.5])
    labels = [0, 0, 0, 1, 1, 1]
    data = [{"image": torch.full((1, 2, 2, 2), float(v)), "label": torch.tensor([y])} for v, y in zip(values, labels)]
    network = Scorer()
    evaluator = SupervisedEvaluator(
        device=torch.device("cpu"),
        val_data_loader=torch.utils.data.DataLoader(data, batch_size=4),
        network=network,
        postprocessing=Compose([Activationsd("pred", softmax=True), AsDiscreted("label", to_onehot=2)]),
        key_val_metric={"val_auc": ROCAUC(output_transform=from_engine(["pred", "label"]))},
        val_handlers=[ThresholdSelector(tmp_path, method="youden")],
    )
    evaluator.run(global_epoch=1)
    first = read(tmp_path)
    probs = torch.softmax(network(torch.stack([d["image"] for d in data])), dim=1)[:, 1].detach().numpy()
    assert first == {
        **choose_threshold(labels, probs, "youden"),
        "model": "model.pt",
        "epoch": 1,
        "key_metric": {"val_auc": pytest.approx(evaluator.state.best_metric)},
    }
    assert first["threshold"] == pytest.approx((probs[3] + probs[1]) / 2)  # J = 2/3 at the lowest pneumonia score
    with torch.no_grad():
        network.scale.fill_(-4.0)  # an inverted, worse model: no new best, the file stays
    evaluator.run(global_epoch=2)
    assert evaluator.state.best_metric_epoch == 1 and read(tmp_path) == first


@pytest.mark.slow
def test_training_stores_the_threshold(trained_bundle):
    record = read(trained_bundle / "models")
    assert record["method"] == "fixed" and record["threshold"] == 0.5 and record["chosen_on"] == "validation"
    assert record["epoch"] in (1, 2) and record["n"] > 0
