"""Training speed of the tutorial network (``seed``) and the default (``chestnet``) against the machine's peak.

On CUDA when available (with AMP, float16 autocast and a gradient scaler, as the bundle's ``amp``),
otherwise on the CPU with 2 threads. Side by side, one Adam step per variant per round, batch 2 of
128x128x64 volumes:

- ``seed``, ``chestnet``: contiguous tensors; ``*_channels_last``: ``torch.channels_last_3d`` model and
  input; ``chestnet_compiled`` (not with ``--quick``): ``torch.compile`` (compile time recorded apart,
  steady state timed).
- FLOPs: forward FLOPs per volume from :func:`pipeline.networks.nets.count_flops`; a training step is
  counted as 3x forward. Achieved GFLOP/s is set against the peak of ``torch.mm`` on large float32
  matrices on the same device and threads.
- Loader: one epoch over float16 volumes as cached by the bundle, through the bundle's
  ``train#random_transforms`` (float32, ``RandRotated``) into ``chestnet`` training, with
  ``ThreadDataLoader`` (augmentation in a thread beside the step) against ``DataLoader``
  (``num_workers=0``). Example::

    python -m benchmarks.bench_training --repeats 5
"""

from __future__ import annotations

import argparse
import contextlib
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from monai.data import DataLoader, Dataset, ThreadDataLoader
from monai.transforms import Compose

from benchmarks.common import THREADS, bundle_config, interleaved, median, multitask_target, ratio, write_results
from pipeline.engine.handlers import prepare_float_batch
from pipeline.engine.multitask import MultiTaskLoss
from pipeline.networks.nets import build_network, count_flops, count_parameters

SIZE = (128, 128, 64)


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak_gflops(
    device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048, repeats: int = 5
) -> float:
    """Best GFLOP/s of ``torch.mm`` of two ``n`` x ``n`` matrices of ``dtype`` on ``device`` (2 n^3 FLOPs)."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    best = float("inf")
    for _ in range(repeats + 1):
        synchronize(device)
        start = time.perf_counter()
        torch.mm(a, b)
        synchronize(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best / 1e9


def train_step(
    name: str, device: torch.device, batch: int, channels_last: bool = False, compiled: bool = False
) -> Callable[[], None]:
    """A function doing one Adam step of network ``name`` on a fixed random batch (AMP on CUDA)."""
    memory_format = torch.channels_last_3d if channels_last else torch.contiguous_format
    model = build_network(name).to(device, memory_format=memory_format).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if compiled else model
    x = torch.randn(batch, 1, *SIZE, device=device).contiguous(memory_format=memory_format)
    y = multitask_target(name, torch.arange(batch, device=device) % 2, x)
    loss_fn = MultiTaskLoss()
    amp = device.type == "cuda"
    scaler = torch.amp.GradScaler(device.type, enabled=amp)

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(device.type, enabled=amp):
            loss = loss_fn(forward(x), y)
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
        synchronize(device)

    return step


def loader_epochs(device: torch.device, n: int, batch: int) -> dict[str, Callable[[], None]]:
    """One training epoch of ``chestnet`` over ``n`` cached float16 volumes, per loader class."""
    parser = bundle_config()
    augment = Compose(parser.get_parsed_content("train#random_transforms"))
    cache_dtype = parser.get_parsed_content("cache_dtype")
    items = [{"image": torch.rand(1, *SIZE).to(cache_dtype), "label": i % 2} for i in range(n)]
    for item in items:
        item.update(mask=(item["image"] > 0.9).to(cache_dtype), has_mask=torch.tensor(1.0))
    dataset = Dataset(items, augment)
    model = build_network("chestnet").to(device).train()
    loss_fn = MultiTaskLoss()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    amp = device.type == "cuda"

    def epoch(loader_class: type) -> Callable[[], None]:
        loader = loader_class(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=0)

        def run() -> None:
            for data in loader:
                optimizer.zero_grad(set_to_none=True)
                with torch.autocast(device.type, enabled=amp):
                    image, target = prepare_float_batch(data, device)
                    loss = loss_fn(model(image), target)
                loss.backward()
                optimizer.step()
            synchronize(device)

        return run

    return {"ThreadDataLoader": epoch(ThreadDataLoader), "DataLoader": epoch(DataLoader)}


def run(repeats: int, batch: int = 2, compile_: bool = True, loader_volumes: int = 8) -> dict[str, Any]:
    """Time the variants side by side; return seconds per volume, FLOPs, GFLOP/s and ratios."""
    device = torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    specs: dict[str, dict[str, Any]] = {
        "seed": {"name": "seed"},
        "chestnet": {"name": "chestnet"},
        "seed_channels_last": {"name": "seed", "channels_last": True},
        "chestnet_channels_last": {"name": "chestnet", "channels_last": True},
    }
    if compile_:
        specs["chestnet_compiled"] = {"name": "chestnet", "compiled": True}
    steps, compile_seconds = {}, {}
    for label, spec in specs.items():
        steps[label] = train_step(device=device, batch=batch, **spec)
        if spec.get("compiled"):
            start = time.perf_counter()
            steps[label]()
            compile_seconds[label] = round(time.perf_counter() - start, 1)
    times = interleaved(steps, repeats)
    per_volume = {label: round(median(t) / batch, 4) for label, t in times.items()}

    peak = matmul_peak_gflops(device)
    flops = {n: count_flops(build_network(n), (1, 1, *SIZE)) for n in ("seed", "chestnet")}
    achieved = {label: round(3 * flops[spec["name"]] / per_volume[label] / 1e9, 1) for label, spec in specs.items()}
    loaders = interleaved(loader_epochs(device, loader_volumes, batch), max(2, repeats // 2))
    loader_s = {name: round(median(t) / loader_volumes, 4) for name, t in loaders.items()}
    results: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device)
        if device.type == "cuda"
        else f"cpu, {torch.get_num_threads()} threads",
        "amp": device.type == "cuda",
        "input_shape": [batch, 1, *SIZE],
        "repeats": repeats,
        "parameters": {n: count_parameters(build_network(n)) for n in flops},
        "forward_gflops_per_volume": {n: round(f / 1e9, 2) for n, f in flops.items()},
        "train_seconds_per_volume": per_volume,
        "compile_seconds": compile_seconds,
        "matmul_peak_gflops_fp32": round(peak, 1),
        "achieved_gflops": achieved,
        "fraction_of_peak": {label: round(g / peak, 3) for label, g in achieved.items()},
        "seed_over_chestnet": ratio(per_volume["seed"], per_volume["chestnet"]),
        "channels_last_speedup": {
            n: ratio(per_volume[n], per_volume[f"{n}_channels_last"]) for n in ("seed", "chestnet")
        },
        "loader_epoch_seconds_per_volume": loader_s,
        "threaddataloader_speedup": ratio(loader_s["DataLoader"], loader_s["ThreadDataLoader"]),
        "targets": {"seed_over_chestnet": ">= 5"},
    }
    if compile_:
        results["compile_speedup"] = ratio(per_volume["chestnet"], per_volume["chestnet_compiled"])
    if device.type == "cuda":
        with contextlib.suppress(RuntimeError):
            results["matmul_peak_gflops_fp16"] = round(matmul_peak_gflops(device, torch.float16, n=8192), 1)
    return results


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Parse ``argv``, run the benchmark, write ``results/training.json``; return the results."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="timed steps per variant (after one warm-up)")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile (slow to compile on 2 cores)")
    parser.add_argument("--quick", action="store_true", help="1 step per variant, no torch.compile")
    args = parser.parse_args(argv)
    torch.set_num_threads(THREADS)
    repeats, compile_ = (1, False) if args.quick else (args.repeats, not args.no_compile)
    results = run(repeats, args.batch, compile_, loader_volumes=4 if args.quick else 8)
    write_results("training", results)
    return results


if __name__ == "__main__":
    print(json.dumps(main(), indent=2))
