"""Milliseconds per training step of the seed VAE on the CPU: autograd's gradients against the fused step's.

Both run ``vaekit.training.steps.train_step`` (forward, gradients, fused Adam) on MNIST-sized batches of 128 in one
process, in alternating blocks so that the machine's changing speed affects both alike; the table gives the
median and the best block of each, and their ratio. The gradients themselves agree (tests/test_fused.py).

    python benchmarks/fused_step.py --blocks 8 --steps 150
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import torch

import vaekit
from vaekit.training import fused, steps


def alternating_blocks(model: vaekit.VAE, opt: torch.optim.Optimizer, batches: tuple[torch.Tensor, ...],
                       variants: dict[str, steps.StepOptions], blocks: int) -> dict[str, list[float]]:
    """ms per step of each variant's ``train_step`` over ``batches``, in ``blocks`` alternating blocks after one
    that warms all of them up: a change in the machine's speed hits every variant alike."""
    times: dict[str, list[float]] = {name: [] for name in variants}
    for block in range(blocks + 1):
        for name, options in variants.items():
            start = time.perf_counter()
            for xb in batches:
                steps.train_step(model, opt, xb, 1.0, options=options)
            if block:
                times[name].append((time.perf_counter() - start) / len(batches) * 1e3)
    return times


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=8, help="timed blocks per variant, alternating")
    p.add_argument("--steps", type=int, default=150, help="steps per block")
    p.add_argument("--batch-size", type=int, default=128)
    args = p.parse_args()
    torch.manual_seed(0)
    config = vaekit.preset("seed").override({"model.data_shape": [1, 28, 28]})
    model = vaekit.VAE(config.model)
    opt = steps.make_optimizer(model, config.train.lr)
    by_hand = fused.FusedELBO(model)
    x = torch.rand(args.steps * args.batch_size, 1, 28, 28)
    batches = x.split(args.batch_size)
    variants = {"autograd": steps.StepOptions(), "fused": steps.StepOptions(fused=by_hand)}
    times = alternating_blocks(model, opt, batches, variants, args.blocks)
    print(f"seed VAE (784-400-20), batch {args.batch_size}, {args.blocks} blocks of {args.steps} steps each, "
          f"{platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print("| gradients | median ms/step | best block ms/step |")
    print("|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f} |")
    ratio = statistics.median(a / b for a, b in zip(times["autograd"], times["fused"], strict=True))
    print(f"\nmedian of the per-block ratios autograd / fused: {ratio:.2f}x")


if __name__ == "__main__":
    main()
