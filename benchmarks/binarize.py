"""What dynamic binarization costs a CPU training step: the 16-bit draw of ``training.loop.binarize_part``
against one float uniform per pixel (``torch.rand``, what it drew before), alone and in whole epochs.

Both run in one process in alternating blocks (the batch alone) and alternating epochs (a preset's training on
dynamically binarized MNIST), so that a change in the machine's speed affects both alike. The epochs run the
same model and data; only the binarization differs. Medians, and the ratio reference / 16-bit.

    VAEKIT_DATA=../shared/data python benchmarks/binarize.py --preset iwae --epochs 3
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vaekit
from vaekit import allocator, devices
from vaekit.training import loop


def float_uniforms(p: torch.Tensor, gen: torch.Generator, n: int, a: int) -> torch.Tensor:
    """The reference: a float32 uniform per pixel of the whole batch, rows a .. a + len(p) thresholded."""
    u = torch.rand((n, *p.shape[1:]), generator=gen, device=p.device)[a : a + len(p)]
    return (u < p).to(p.dtype)


WAYS = {"float uniforms (before)": float_uniforms, "16-bit draws": loop.binarize_part}


def batch_us(batch: int, blocks: int, calls: int) -> dict[str, list[float]]:
    """Microseconds per binarized batch of MNIST-sized grey levels, per way, in alternating blocks."""
    p = torch.randint(0, 256, (batch, 1, 28, 28), generator=torch.Generator().manual_seed(0)).float() / 255
    gen = torch.Generator().manual_seed(0)
    times: dict[str, list[float]] = {name: [] for name in WAYS}
    for block in range(blocks + 1):  # the first warms up
        for name, way in WAYS.items():
            start = time.perf_counter()
            for _ in range(calls):
                way(p, gen, batch, 0)
            if block:
                times[name].append((time.perf_counter() - start) / calls * 1e6)
    return times


def epoch_s(preset: str, epochs: int) -> dict[str, list[float]]:
    """Seconds per training epoch of ``preset`` on dynamically binarized MNIST, per way, alternating."""
    config = vaekit.preset(preset).override({"data.dataset": "mnist", "data.val_size": 0, "train.epochs": 1,
                                             "data.binarize": "dynamic"})
    splits = vaekit.load_data(config.data)
    times: dict[str, list[float]] = {name: [] for name in WAYS}
    for round_ in range(epochs + 1):  # the first warms up
        for name, way in WAYS.items():
            loop.binarize_part = way  # the loop calls it by this name
            result = vaekit.train(config, splits=splits)
            if round_:
                times[name].append(result.history[0]["time_s"])
    loop.binarize_part = WAYS["16-bit draws"]
    return times


def report(title: str, unit: str, times: dict[str, list[float]]) -> None:
    before, after = (statistics.median(t) for t in times.values())
    print(f"\n{title}\n| binarization | median {unit} | blocks |\n|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.3g} | {len(t)} |")
    print(f"ratio before / 16-bit: {before / after:.2f}x")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="iwae", help="whose epochs to time (a binarized preset)")
    p.add_argument("--epochs", type=int, default=3, help="timed epochs per way, after one each of warm-up")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--blocks", type=int, default=8)
    args = p.parse_args()
    allocator.keep_freed_memory()  # as the vaekit command line does
    print(f"{devices.cpu_name()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    report(f"one batch of {args.batch_size} MNIST images", "us", batch_us(args.batch_size, args.blocks, 200))
    if args.epochs:
        report(f"`{args.preset}` epochs on MNIST (60,000 images)", "s", epoch_s(args.preset, args.epochs))


if __name__ == "__main__":
    main()
