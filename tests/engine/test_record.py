"""The record beside the weights: written by the best-model saver, tied by sha256, checked before any weights load."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import save_model
from ignite.engine import Engine, Events
from torch import nn

from pipeline.__main__ import main
from pipeline.engine.checkpoint import CheckpointLoader, CheckpointSaver, load_torchscript, migrate
from pipeline.engine.record import MIGRATE_COMMAND, ChainRecord, read, record_path, sha256
from pipeline.utils.errors import InputError

CHAIN = {"spatial_size": [32, 32, 16], "pixdim": [6.0, 6.0, 8.0]}


def test_the_best_model_saver_writes_plain_weights_and_the_whole_record_beside_them(tmp_path):
    network = nn.Linear(3, 2)
    record = ChainRecord("tiny", CHAIN, augmentation={"recipe": "hospital"})
    evaluator = Engine(lambda engine, batch: None)
    scores = iter([0.5, 0.7, 0.6])

    @evaluator.on(Events.EPOCH_COMPLETED)
    def score(engine: Engine) -> None:  # registered before the saver, as the bundle's metrics are
        engine.state.metrics = {"val_score": next(scores)}
        nn.init.constant_(network.bias, engine.state.epoch)

    saver = CheckpointSaver(
        str(tmp_path), {"model": network}, record=record, save_key_metric=True, key_metric_name="val_score",
        key_metric_filename="model.pt",
    )  # fmt: skip
    saver.attach(evaluator)
    evaluator.run([0], max_epochs=3)
    weights = torch.load(tmp_path / "model.pt", weights_only=True)
    assert set(weights) == {"weight", "bias"} and float(weights["bias"][0]) == 2.0  # epoch 2 had the best score
    nn.Linear(3, 2).load_state_dict(weights)  # what the model zoo and MONAI's docs expect
    saved = json.loads((tmp_path / "model.json").read_text())
    assert saved == {"weights": "model.pt", "weights_sha256": sha256(tmp_path / "model.pt"), **record.state_dict()}
    assert read(tmp_path / "model.pt") == saved
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.json", "model.pt"]


def test_a_missing_or_mismatched_record_is_refused_naming_both_files(tmp_path):
    path = save_model(nn.Linear(3, 2).state_dict(), tmp_path / "model.pt", "tiny", **CHAIN)
    assert record_path(path) == tmp_path / "model.json"
    torch.save(nn.Linear(3, 2).state_dict(), path)  # other weights, same name
    with pytest.raises(InputError, match=r"model\.json: describes other weights than .*model\.pt \(sha256") as err:
        read(path)
    assert err.value.path == str(tmp_path / "model.json")
    record_path(path).write_text("{not json")
    with pytest.raises(InputError, match=r"model\.json: not valid JSON .* the record of .*model\.pt"):
        read(path)
    record_path(path).unlink()
    with pytest.raises(InputError, match=rf"model\.json: missing: the weights .*model\.pt .*'{MIGRATE_COMMAND} "):
        read(path)
    with pytest.raises(InputError, match=r"absent\.pt: checkpoint not found"):
        read(tmp_path / "absent.pt")


def test_the_loader_checks_the_record_before_it_loads_the_weights(tmp_path):
    trained = nn.Linear(3, 2)
    path = save_model(trained.state_dict(), tmp_path / "model.pt", "tiny", **CHAIN)
    network = nn.Linear(3, 2)
    other_chain = ChainRecord("tiny", {**CHAIN, "spatial_size": [64, 64, 32]})
    loader = CheckpointLoader(load_path=str(path), load_dict={"model": network}, record=other_chain)
    with pytest.raises(InputError, match=r"model\.pt: .*spatial_size: trained \[32, 32, 16\], this run \[64, 64, 32\]"):
        loader(Engine(lambda engine, batch: None))
    assert not torch.equal(network.weight, trained.weight), "no weights loaded"
    CheckpointLoader(load_path=str(path), load_dict={"model": network}, record=ChainRecord("tiny", CHAIN))(
        Engine(lambda engine, batch: None)
    )
    assert torch.equal(network.weight, trained.weight)
    record_path(path).unlink()
    with pytest.raises(InputError, match=r"model\.json: missing: the weights .*model\.pt"):
        CheckpointLoader(load_path=str(path), load_dict={"model": network})(Engine(lambda engine, batch: None))


def test_a_one_file_checkpoint_is_refused_and_migrated_by_the_documented_command(tmp_path, capsys):
    network = nn.Linear(3, 2)
    old = tmp_path / "model.pt"
    saved = {"network_name": "tiny", "preprocessing": CHAIN}
    torch.save({"model": network.state_dict(), "record": saved}, old)
    with pytest.raises(InputError, match="migrate-checkpoint"):
        read(old)
    assert main(["migrate-checkpoint", str(old)]) == 0
    assert "model.json" in capsys.readouterr().out
    weights = torch.load(old, weights_only=True)
    assert all(torch.equal(weights[k], v) for k, v in network.state_dict().items()) and len(weights) == 2
    assert read(old) == {"weights": "model.pt", "weights_sha256": sha256(old), **saved}
    with pytest.raises(InputError, match=r"model\.pt: not a one-file checkpoint .*found \['bias', 'weight'\]"):
        migrate(old)  # already plain: nothing rewritten
    assert main(["migrate-checkpoint", str(old)]) == 2


def test_the_torchscript_route_loads_only_a_model_ts_exported_from_the_recorded_weights(tmp_path):
    trained = nn.Linear(3, 2)
    weights = save_model(trained.state_dict(), tmp_path / "model.pt", "tiny", **CHAIN)
    torch.jit.script(trained).save(str(tmp_path / "model.ts"))
    x = torch.rand(4, 3)
    torch.testing.assert_close(load_torchscript(tmp_path / "model.ts", weights)(x), trained(x))
    torch.jit.script(nn.Linear(3, 2)).save(str(tmp_path / "other.ts"))
    with pytest.raises(InputError, match=r"other\.ts: not exported from .*model\.pt \(2 tensors differ, e\.g\. 'bias'"):
        load_torchscript(tmp_path / "other.ts", weights)
    with pytest.raises(InputError, match=r"absent\.ts: not a readable TorchScript file"):
        load_torchscript(tmp_path / "absent.ts", weights)
    record_path(weights).unlink()
    with pytest.raises(InputError, match=r"model\.json: missing"):
        load_torchscript(tmp_path / "model.ts", weights)
