"""Where bfloat16 products start to pay on the CPU: float32 against bf16 steps, by model size.

Each size is a fully connected Gaussian VAE (a table of ``d`` features) or the seed model on MNIST-sized rows;
both precisions of each size run in alternating blocks, so a change in the machine's speed hits both alike.
The table gives each size's multiply-adds per step (the batch times the networks' weights) and the ratio of
the float32 step's time to the bf16 step's: above 1, bf16 is faster. ``train.precision = auto`` takes bf16 from
``devices.AUTO_BF16_MIN_MACS`` multiply-adds on a CPU with native bfloat16 products. By default the steps are
the fused CPU step's (bf16 products written out); ``--autograd`` times autograd's step instead, float32 against
bfloat16 autocast, the step every other model family takes.

    python benchmarks/bf16_crossover.py --blocks 6 --steps 60
    python benchmarks/bf16_crossover.py --blocks 6 --steps 60 --autograd
"""

from __future__ import annotations

import argparse
import statistics
import sys
from pathlib import Path

import torch

import vaekit
from vaekit import devices
from vaekit.training import fused, steps

sys.path.insert(0, str(Path(__file__).parent))
import fused_step  # benchmarks/fused_step.py, beside this script

SIZES = [  # (features, hidden widths, latent size, likelihood)
    (6, [32], 2, "gaussian"), (30, [60], 8, "gaussian"), (100, [200], 16, "gaussian"),
    (274, [256], 16, "gaussian"), (274, [512, 512], 32, "gaussian"), (784, [400], 20, "bernoulli")]


def step_times(features: int, hidden: list[int], latent: int, likelihood: str,
               args: argparse.Namespace) -> tuple[int, dict[str, float]]:
    """The step's multiply-adds and the median ms per step of each precision."""
    torch.manual_seed(0)
    config = vaekit.Config().override({"model.data_shape": [features], "model.hidden": hidden,
                                       "model.latent_dim": latent, "model.likelihood": likelihood})
    model = vaekit.VAE(config.model)
    opt = steps.make_optimizer(model, 1e-3)
    x = torch.rand(args.steps * args.batch_size, features)
    batches = x.split(args.batch_size)
    if args.autograd:
        variants = {p: steps.StepOptions(bf16=p == "bf16") for p in ("fp32", "bf16")}
    else:
        variants = {p: steps.StepOptions(fused=fused.FusedELBO(model, bf16=p == "bf16")) for p in ("fp32", "bf16")}
    times = fused_step.alternating_blocks(model, opt, batches, variants, args.blocks)
    return fused.multiply_adds(model, args.batch_size), {p: statistics.median(t) for p, t in times.items()}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--blocks", type=int, default=6, help="timed blocks per precision, alternating")
    p.add_argument("--steps", type=int, default=60, help="steps per block")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--sizes", type=int, help="only the first N sizes (a smoke test)")
    p.add_argument("--autograd", action="store_true", help="autograd's step (bf16: autocast), not the fused one")
    args = p.parse_args()
    least = devices.AUTO_BF16_MIN_MACS_AUTOGRAD if args.autograd else devices.AUTO_BF16_MIN_MACS
    print(f"{'autograd' if args.autograd else 'fused CPU'} step, batch {args.batch_size}, {devices.cpu_name()} "
          f"(bfloat16 products: {devices.cpu_bf16_isa() or 'emulated'}), {torch.get_num_threads()} threads, torch "
          f"{torch.__version__}; auto takes bf16 for a Bernoulli model from {least:,} multiply-adds per step")
    print("| features | hidden | latent | multiply-adds per step | fp32 ms/step | bf16 ms/step | fp32 / bf16 | auto |")
    print("|---|---|---|---|---|---|---|---|")
    for features, hidden, latent, likelihood in SIZES[: args.sizes]:
        macs, t = step_times(features, hidden, latent, likelihood, args)
        auto = devices.resolve_precision("auto", torch.device("cpu"), macs, likelihood, not args.autograd)[0]
        print(f"| {features} | {','.join(map(str, hidden))} | {latent} | {macs:,} | {t['fp32']:.3f} | "
              f"{t['bf16']:.3f} | {t['fp32'] / t['bf16']:.2f}x | {auto} |", flush=True)


if __name__ == "__main__":
    main()
