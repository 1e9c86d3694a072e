"""RunState: refuses another configuration or cohort, restores each rank's random state and the AMP GradScaler."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
from ignite.engine import Engine
from torch import nn

from pipeline.engine import resume
from pipeline.engine.resume import RunState, restore_latest
from pipeline.utils.errors import InputError

CONFIG = {"learning_rate": 0.001, "batch_size": 2, "preprocessing": {"spatial_size": (32, 32, 16)}}


def _save(path, **objects) -> None:
    torch.save({k: v.state_dict() for k, v in objects.items()}, path)


def test_another_configuration_or_cohort_is_refused_before_anything_is_loaded(tmp_path):
    model = nn.Linear(2, 1)
    _save(tmp_path / "state_checkpoint_epoch=1.pt", model=model, run_state=RunState(config=CONFIG, cohort="abc"))
    other = nn.Linear(2, 1)
    before = other.weight.clone()
    changed = {**CONFIG, "learning_rate": 0.01, "preprocessing": {"spatial_size": [64, 64, 32]}}
    with pytest.raises(InputError) as err:
        restore_latest(tmp_path, {"model": other, "run_state": RunState(config=changed, cohort="abd")})
    message = str(err.value)
    assert "learning_rate: saved 0.001, this run 0.01" in message and "spatial_size" in message
    assert "cohort or split: saved fingerprint abc, this run abd" in message and "batch_size" not in message
    assert torch.equal(other.weight, before), "nothing was loaded"
    with pytest.raises(ValueError, match="learning_rate"):
        RunState(config=changed, cohort="abc").load_state_dict(RunState(config=CONFIG, cohort="abc").state_dict())
    restore_latest(tmp_path, {"model": other, "run_state": RunState(config=CONFIG, cohort="abc")})  # same: resumes
    assert torch.equal(other.weight, model.weight)


def test_a_state_without_a_configuration_is_refused(tmp_path):
    torch.save({"run_state": {"rngs": [], "best_metrics": []}}, tmp_path / "state_checkpoint_epoch=1.pt")
    with pytest.raises(InputError, match="records no configuration"):
        restore_latest(tmp_path, {"run_state": RunState(config=CONFIG, cohort="abc")})


def test_grad_scaler_is_saved_and_restored_when_the_run_starts():
    """MONAI's trainer creates its GradScaler in ``run()``, after a resume: the state is loaded when the run starts."""
    trainer = Engine(lambda engine, batch: None)
    trainer.scaler = torch.amp.GradScaler("cpu", init_scale=512.0)
    saved = RunState(config=CONFIG, cohort="abc")
    saved.attach(trainer)
    state = saved.state_dict()
    assert state["scaler"]["scale"] == 512.0

    resumed = Engine(lambda engine, batch: None)
    run_state = RunState(config=CONFIG, cohort="abc")
    run_state.attach(resumed)
    run_state.load_state_dict(state)
    resumed.scaler = torch.amp.GradScaler("cpu")  # what Trainer.run() does before ignite's run
    assert resumed.scaler.get_scale() == 65536.0
    resumed.run([0], max_epochs=1)
    assert resumed.scaler.get_scale() == 512.0


#: Run by ``torchrun --nproc_per_node=2`` (gloo): rank 0 saves the state of both ranks, each rank restores its own.
RANK_SCRIPT = """
import sys
import torch
import torch.distributed as dist
from ignite.engine import Engine
from pipeline.engine.resume import RunState

dist.init_process_group("gloo")
rank, state_file = dist.get_rank(), sys.argv[1]
torch.manual_seed(100 + rank)  # set_determinism(seed + rank), as the bundle does
trainer = Engine(lambda engine, batch: torch.rand(1))
run_state = RunState(config={"batch_size": 2}, cohort="abc")
run_state.attach(trainer)
trainer.run([0], max_epochs=1)  # the epoch's end gathers every rank's state
expected = torch.rand(3)  # what this rank draws next
if rank == 0:
    torch.save({"run_state": run_state.state_dict()}, state_file)
dist.barrier()
torch.manual_seed(0)
RunState(config={"batch_size": 2}, cohort="abc").load_state_dict(torch.load(state_file, weights_only=True)["run_state"])
assert torch.equal(torch.rand(3), expected), f"rank {rank} did not get its own random state back"
dist.destroy_process_group()
"""


def test_each_rank_restores_its_own_random_state(tmp_path, monkeypatch):
    script, state_file = tmp_path / "ranks.py", tmp_path / "state.pt"
    script.write_text(RANK_SCRIPT)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    proc = subprocess.run(
        [*torchrun, str(script), str(state_file)],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore", "PYTHONPATH": os.getcwd()},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    state = torch.load(state_file, weights_only=True)["run_state"]
    assert len(state["rngs"]) == 2 and not torch.equal(state["rngs"][0]["torch_rng"], state["rngs"][1]["torch_rng"])
    monkeypatch.setattr(resume, "_world", lambda: (0, 1))  # one process cannot take over a two-process run
    with pytest.raises(ValueError, match="processes: saved by 2, this run has 1"):
        RunState(config={"batch_size": 2}, cohort="abc").load_state_dict(state)
