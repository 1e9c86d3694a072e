"""The operating threshold: choice on validation data, the handler in a real evaluator, storage and loading."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from monai.engines import SupervisedEvaluator
from monai.handlers import ROCAUC, from_engine
from monai.transforms import Activationsd, AsDiscreted, Compose
from torch import nn

from pipeline.engine.threshold import FILENAME, ThresholdSelector, choose_threshold, load, read
from pipeline.utils.errors import InputError

# 4 normal, 3 pneumonia. ROC points (threshold: TPR, FPR): 0.9: 1/3, 0; 0.7: 2/3, 0; 0.6: 2/3, 1/4;
# 0.4: 1, 1/4; 0.3: 1, 1/2; ... Youden's J is largest (3/4) at 0.4; AUC 11/12.
LABELS = [0, 0, 0, 0, 1, 1, 1]
PROBS = [0.1, 0.2, 0.3, 0.6, 0.4, 0.7, 0.9]


@pytest.mark.parametrize(
    "method, target, threshold, sensitivity, specificity",
    [
        ("fixed", None, 0.5, 2 / 3, 3 / 4),
        ("youden", None, 0.4, 1.0, 3 / 4),
        ("sensitivity", 0.9, 0.4, 1.0, 3 / 4),
        ("sensitivity", 0.5, 0.7, 2 / 3, 1.0),
        ("sensitivity", 0.7, 0.4, 1.0, 3 / 4),
    ],
)
def test_choose_threshold(method, target, threshold, sensitivity, specificity):
    record = choose_threshold(LABELS, PROBS, method, target)
    assert record["threshold"] == pytest.approx(threshold)
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


def test_load_one_model_an_ensemble_and_defaults(tmp_path):
    fold0, fold1, bare = tmp_path / "fold0", tmp_path / "fold1", tmp_path / "bare"
    for folder, (labels, probs) in ((fold0, (LABELS, PROBS)), (fold1, ([0, 1, 1], [0.2, 0.35, 0.8]))):
        ThresholdSelector(folder, method="youden").write(np.array(labels), np.array(probs), 1, "val_auc", 1.0)
    assert load(fold0) == pytest.approx(0.4)
    assert load(fold0 / "model.pt") == pytest.approx(0.4)  # beside a checkpoint file
    assert load(str(fold1 / "model.pt")) == pytest.approx(0.35)
    assert load([fold0 / "model.pt", fold1 / "model.pt"]) == pytest.approx((0.4 + 0.35) / 2)
    assert load(bare / "model.pt") == 0.5
    assert load([fold0, bare], default=0.3) == pytest.approx((0.4 + 0.3) / 2)
    record = json.loads((fold0 / FILENAME).read_text())
    assert record["epoch"] == 1 and record["key_metric"] == {"val_auc": 1.0} and record["model"] == "model.pt"
    assert not list(fold0.glob(".*.tmp")), "written atomically, nothing left behind"


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
    assert first["threshold"] == pytest.approx(probs[3])  # J = 1 - 1/3 at the lowest pneumonia score
    with torch.no_grad():
        network.scale.fill_(-4.0)  # an inverted, worse model: no new best, the file stays
    evaluator.run(global_epoch=2)
    assert evaluator.state.best_metric_epoch == 1 and read(tmp_path) == first


@pytest.mark.slow
def test_training_stores_the_threshold(trained_bundle):
    record = read(trained_bundle / "models")
    assert record["method"] == "fixed" and record["threshold"] == 0.5 and record["chosen_on"] == "validation"
    assert record["epoch"] in (1, 2) and record["n"] > 0
