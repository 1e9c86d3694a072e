"""Time one training step of each network on CPU and print JSON.

For every network: parameters, forward GFLOPs per volume, and the minimum over ``--repeats`` of the
seconds per volume of forward + backward + optimiser step (the machine may be shared, so the minimum
is the least disturbed run). Example::

    python -m benchmarks.bench_networks --threads 2 --size 128 128 64 --batch 2 --repeats 3
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from torch import nn

from benchmarks.common import multitask_target
from pipeline.engine.multitask import MultiTaskLoss
from pipeline.networks.nets import NETWORKS, build_network, count_flops, count_parameters


def step_seconds(
    name: str, model: nn.Module, shape: tuple[int, ...], repeats: int, memory_format: torch.memory_format
) -> float:
    """Minimum wall seconds of one SGD step of network ``name`` (its training loss: the multi-task loss for a
    network with a lesion output) on a random batch of ``shape``, after one warm-up step."""
    model.train().to(memory_format=memory_format)
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(shape).contiguous(memory_format=memory_format)
    y = multitask_target(name, torch.arange(shape[0]) % 2, x)
    loss_fn = MultiTaskLoss()
    times = []
    for _ in range(repeats + 1):
        start = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        optimizer.step()
        times.append(time.perf_counter() - start)
    return min(times[1:])


def main(argv: list[str] | None = None) -> None:
    """Parse ``argv``, time the chosen networks and print one JSON object."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--networks", nargs="+", default=sorted(NETWORKS), choices=sorted(NETWORKS))
    parser.add_argument("--size", nargs=3, type=int, default=[128, 128, 64], metavar=("H", "W", "D"))
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--channels-last", action="store_true", help="also time torch.channels_last_3d")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    shape = (args.batch, 1, *args.size)
    formats = {"contiguous": torch.contiguous_format}
    if args.channels_last:
        formats["channels_last_3d"] = torch.channels_last_3d
    report: dict[str, object] = {"input_shape": list(shape), "threads": args.threads, "repeats": args.repeats}
    for name in args.networks:
        model = build_network(name)
        entry: dict[str, float | int] = {
            "parameters": count_parameters(model),
            "gflops_per_volume": round(count_flops(model, (1, *shape[1:])) / 1e9, 3),
        }
        for label, memory_format in formats.items():
            seconds = step_seconds(name, model, shape, args.repeats, memory_format)
            entry[f"train_step_s_per_volume_{label}"] = round(seconds / args.batch, 4)
        report[name] = entry
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
