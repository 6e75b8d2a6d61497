"""Milliseconds per training step of the seed VAE on the CPU: autograd's gradients against the fused step's.

Both run ``vaekit.training.steps.train_step`` (forward, gradients, fused Adam) on MNIST-sized batches of 128 in one
process, in alternating blocks so that the machine's changing speed affects both alike; the table gives the
median and the best block of each, and their ratio. The gradients themselves agree (tests/test_fused.py).
``--bf16`` runs both in bfloat16 (autocast; the fused step's bf16 products); ``--compile`` adds the fused step
compiled by ``torch.compile`` (its compile time printed apart); ``--skip-nonfinite`` adds the fused step with
``train.nonfinite = "skip"`` and times its gradient check against the infinity norms it replaced.

    python benchmarks/fused_step.py --blocks 8 --steps 150
    python benchmarks/fused_step.py --blocks 6 --steps 150 --bf16 --compile
    python benchmarks/fused_step.py --table 21 --threads 1    # the anomaly detector's model of a 21-feature table
"""

from __future__ import annotations

import argparse
import math
import platform
import statistics
import time

import torch

import vaekit
from vaekit import detector
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


def compiled(by_hand: fused.FusedELBO, model: vaekit.VAE, opt: torch.optim.Optimizer,
             x: torch.Tensor) -> fused.FusedELBO:
    """``by_hand`` with its call compiled by torch.compile, compiled here on one step (its time printed)."""
    call = torch.compile(by_hand.__call__, dynamic=False)

    class Compiled(fused.FusedELBO):
        def __call__(self, x: torch.Tensor, beta: float, y: torch.Tensor | None = None):
            return call(x, beta, y)

    step = Compiled.__new__(Compiled)
    start = time.perf_counter()
    steps.train_step(model, opt, x, 1.0, options=steps.StepOptions(fused=step))
    print(f"torch.compile of the fused step: {time.perf_counter() - start:.1f} s for its first step")
    return step


def check_timings(opt: torch.optim.Optimizer, repeats: int = 300) -> None:
    """Microseconds of the non-finite gradient check (aminmax per gradient) and of the infinity norms it replaced."""
    grads = [p.grad for group in opt.param_groups for p in group["params"]]
    checks = {"aminmax (steps._cancel_if_nonfinite)": lambda: [torch.aminmax(g) for g in grads],
              "_foreach_norm(grads, inf)": lambda: torch._foreach_norm(grads, math.inf)}
    for name, check in checks.items():
        check()
        start = time.perf_counter()
        for _ in range(repeats):
            check()
        print(f"gradient check, {name}: {(time.perf_counter() - start) / repeats * 1e6:.0f} us")


def model_and_data(args: argparse.Namespace) -> tuple[vaekit.VAE, torch.Tensor, str]:
    """The seed VAE on MNIST-sized inputs in [0, 1], or (``--table``) the anomaly detector's model of a table on
    standard-normal rows; the batch size defaults to each one's."""
    if args.table is None:
        likelihood = args.likelihood or "bernoulli"
        config = vaekit.preset("seed").override({"model.data_shape": [1, 28, 28], "model.likelihood": likelihood})
        args.batch_size = args.batch_size or 128
        x, what = torch.rand(args.steps * args.batch_size, 1, 28, 28), "seed VAE (784-400-20)"
    else:
        likelihood = args.likelihood or "gaussian-learned"
        hidden, latent = detector.auto_sizes(args.table)
        config = vaekit.Config().override({"model.data_shape": [args.table], "model.hidden": list(hidden),
                                           "model.latent_dim": latent, "model.likelihood": likelihood})
        args.batch_size = args.batch_size or 64
        x = torch.randn(args.steps * args.batch_size, args.table)
        what = f"the detector's VAE of {args.table} features ({args.table}-{hidden[0]}-{latent})"
    return vaekit.VAE(config.model), x, f"{what}, {likelihood}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=8, help="timed blocks per variant, alternating")
    p.add_argument("--steps", type=int, default=150, help="steps per block")
    p.add_argument("--batch-size", type=int, help="default: 128 (seed), 64 (--table, the detector's)")
    p.add_argument("--table", type=int, metavar="FEATURES", help="instead of the seed model, the anomaly "
                   "detector's model of a table of this many features (vaekit.detector.auto_sizes)")
    p.add_argument("--likelihood", help="the model's (default: bernoulli; gaussian-learned with --table)")
    p.add_argument("--threads", type=int, help="torch's CPU threads (default: as it is)")
    p.add_argument("--bf16", action="store_true", help="bfloat16 products in both steps")
    p.add_argument("--compile", action="store_true", help="also time the fused step under torch.compile")
    p.add_argument("--skip-nonfinite", action="store_true", help="also time the step that cancels non-finite ones")
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    model, x, what = model_and_data(args)
    opt = steps.make_optimizer(model, 1e-3)
    by_hand = fused.FusedELBO(model, bf16=args.bf16)
    batches = x.split(args.batch_size)
    variants = {"autograd": steps.StepOptions(bf16=args.bf16), "fused": steps.StepOptions(fused=by_hand)}
    if args.compile:
        variants["fused, compiled"] = steps.StepOptions(fused=compiled(by_hand, model, opt, batches[0]))
    if args.skip_nonfinite:
        variants["fused, nonfinite = skip"] = steps.StepOptions(fused=by_hand, skip_nonfinite=True)
    times = alternating_blocks(model, opt, batches, variants, args.blocks)
    if args.skip_nonfinite:
        check_timings(opt)
    print(f"{what}, batch {args.batch_size}, {'bf16' if args.bf16 else 'fp32'}, {args.blocks} blocks "
          f"of {args.steps} steps each, {platform.processor() or platform.machine()}, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}")
    print("| gradients | median ms/step | best block ms/step |")
    print("|---|---|---|")
    for name, t in times.items():
        print(f"| {name} | {statistics.median(t):.2f} | {min(t):.2f} |")
    ratio = statistics.median(a / b for a, b in zip(times["autograd"], times["fused"], strict=True))
    print(f"\nmedian of the per-block ratios autograd / fused: {ratio:.2f}x")


if __name__ == "__main__":
    main()
