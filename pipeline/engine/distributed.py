"""Data-parallel training under ``torchrun``: join the process group, pick the device, shard validation.

Used by the bundle's ``configs/multi_gpu_train.json``. ``torchrun`` sets ``RANK``, ``LOCAL_RANK``,
``WORLD_SIZE``, ``MASTER_ADDR`` and ``MASTER_PORT`` in every worker; :func:`setup` reads them,
chooses the backend (``nccl`` when CUDA is available, ``gloo`` otherwise) and the device
(``cuda:LOCAL_RANK`` or the CPU), so one config serves one GPU per process, several nodes, or
CPU-only machines. Training items are dealt out anew every epoch by the training sampler
(:class:`pipeline.data.sampler.EpochSampler` with ``num_replicas`` and ``rank``, DistributedSampler
semantics), so every rank holds the whole training split; validation is sharded once (:func:`shard`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
from ignite.engine import Engine
from monai.data import partition_dataset

TORCHRUN_ENV = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@dataclass(frozen=True)
class DistContext:
    """Where this process sits in the job.

    Attributes:
        rank: global rank in ``[0, world_size)``; rank 0 writes checkpoints and logs.
        local_rank: rank on this node; the CUDA device index.
        world_size: number of processes over all nodes.
        backend: ``"nccl"`` or ``"gloo"``.
        device: ``cuda:LOCAL_RANK`` or ``cpu``.
    """

    rank: int
    local_rank: int
    world_size: int
    backend: str
    device: torch.device

    @property
    def is_main(self) -> bool:
        """True on the process that writes checkpoints, TensorBoard events and learning curves."""
        return self.rank == 0

    @property
    def device_ids(self) -> list[int] | None:
        """``device_ids`` for ``DistributedDataParallel``: ``[local_rank]`` on CUDA, None on the CPU."""
        return [self.device.index] if self.device.type == "cuda" else None


def setup(timeout_s: float = 1800.0) -> DistContext:
    """Join the ``torchrun`` process group (once per process; later calls return the same context).

    Args:
        timeout_s: seconds a collective may wait for the other processes before failing.

    Raises:
        RuntimeError: when not started by ``torchrun`` (its environment variables are missing).
    """
    missing = [k for k in TORCHRUN_ENV if k not in os.environ]
    if missing and not dist.is_initialized():
        raise RuntimeError(
            f"multi_gpu_train.json needs torchrun (missing environment variables {', '.join(missing)}); run "
            "torchrun --nproc_per_node=N -m monai.bundle run training --config_file "
            "\"['configs/train.json','configs/multi_gpu_train.json']\""
        )
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.set_device(local_rank)
    backend = "nccl" if cuda else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend, timeout=timedelta(seconds=timeout_s))
    return DistContext(
        rank=dist.get_rank(),
        local_rank=local_rank,
        world_size=dist.get_world_size(),
        backend=dist.get_backend(),
        device=torch.device("cuda", local_rank) if cuda else torch.device("cpu"),
    )


def shard(items: Sequence, ctx: DistContext) -> list:
    """This rank's share of the validation datalist: every item on exactly one rank, shares differing by at
    most one, so that each study counts once in the metrics gathered over the ranks.

    Args:
        items: the whole datalist (every rank passes the same list).
        ctx: this process's place in the job.

    Raises:
        ValueError: when a rank would get no items.
    """
    if len(items) < ctx.world_size:
        raise ValueError(f"{len(items)} items cannot be shared among {ctx.world_size} processes: use fewer processes")
    return partition_dataset(list(items), num_partitions=ctx.world_size, shuffle=False, even_divisible=False)[ctx.rank]


def cleanup() -> None:
    """Leave the process group (the ``finalize`` step of the bundle); rank 0 first says who took part."""
    if dist.is_initialized():
        if dist.get_rank() == 0:
            print("trained on", dist.get_world_size(), "processes with backend", dist.get_backend(), flush=True)
        dist.destroy_process_group()


def quiet(engines: Sequence[Engine]) -> None:
    """Log only warnings from ``engines`` (the ranks other than 0, so each message is printed once)."""
    for engine in engines:
        engine.logger.setLevel(logging.WARNING)
