"""Does bfloat16 keep each model family's likelihood? fp32 against bf16 training, beside fp32's own seed noise.

For each preset: three runs on dynamically binarized MNIST with the same epochs, float32 with seed 1, float32
with seed 2 and bf16 with seed 1 (``train.precision = bf16``: the fused step's bf16 products, or bfloat16
autocast on the autograd step), then the test negative ELBO and the importance-sampled NLL of each under one
fixed binarization of the test images. bf16 keeps the family's quality when it is worse than float32 (same
seed) by no more than the two float32 seeds differ: the change of precision costs less than a change of seed
moves the result (a bf16 run that comes out better passes). The epoch times printed beside them (medians after
the first epoch) are not interleaved, so they only hint at the speed: ``speed.py --presets`` measures it.

    VAEKIT_DATA=../shared/data python benchmarks/bf16_quality.py --epochs 3 \
        --presets iwae,conv,vamp,iaf,hvae,hvae-conv,hvae-spatial --json benchmarks/results/bf16_quality.json
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

import vaekit

RUNS = (("fp32", 1), ("fp32", 2), ("bf16", 1))  # (precision, seed)


def train_and_test(preset: str, precision: str, seed: int, args: argparse.Namespace,
                   splits: vaekit.data.Splits) -> dict:
    """One run of ``preset``: its test -ELBO and NLL, and its median epoch after the first."""
    config = vaekit.preset(preset).override({
        "data.dataset": args.dataset, "data.binarize": "dynamic", "data.val_size": 0, "train.epochs": args.epochs,
        "train.seed": seed, "train.device": "cpu", "train.precision": precision})
    result = vaekit.train(config, splits=splits)
    x = splits.test.x[: args.test_n]
    metrics = vaekit.evaluate_model(result.model.eval(), x, args.iw_samples, seed=config.data.eval_seed,
                                    protocol={"binarization": splits.test.binarization})
    times = [r["time_s"] for r in result.history]
    return {"preset": preset, "precision": result.precision, "seed": seed, "step": result.step_path,
            "neg_elbo": metrics["neg_elbo"], "nll": metrics["nll"],
            "epoch_s": statistics.median(times[1:] or times)}


def verdict(runs: list[dict]) -> dict:
    """The gaps in test NLL and -ELBO: bf16 against fp32 (same seed) and fp32 seed 2 against seed 1."""
    fp32, other_seed, bf16 = runs
    out = {}
    for metric in ("nll", "neg_elbo"):
        out[f"{metric}_bf16_gap"] = bf16[metric] - fp32[metric]
        out[f"{metric}_seed_gap"] = abs(other_seed[metric] - fp32[metric])
    out["holds"] = all(out[f"{m}_bf16_gap"] <= out[f"{m}_seed_gap"] for m in ("nll", "neg_elbo"))
    out["speed_up"] = fp32["epoch_s"] / bf16["epoch_s"]
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--presets", default="iwae,conv,vamp,iaf,hvae,hvae-conv,hvae-spatial")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--iw-samples", type=int, default=100, help="importance samples of the test NLL")
    p.add_argument("--test-n", type=int, default=2000, help="the first N test images")
    p.add_argument("--dataset", default="mnist", help="digits: a smoke test in seconds")
    p.add_argument("--json", type=Path, help="write every run and verdict here")
    args = p.parse_args()
    splits = vaekit.load_data(vaekit.preset("iwae").override({"data.dataset": args.dataset, "data.val_size": 0}).data)
    rows = []
    print(f"{args.epochs} epochs each, dynamically binarized {args.dataset}, test: first {args.test_n} images, "
          f"K = {args.iw_samples}; torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    print("| preset | step | fp32 NLL (seed 1 / 2) | bf16 NLL | bf16 gap | seed gap | fp32 -ELBO | bf16 -ELBO "
          "| bf16 keeps it | fp32 -> bf16 s/epoch |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for preset in args.presets.split(","):
        runs = [train_and_test(preset, precision, seed, args, splits) for precision, seed in RUNS]
        v = verdict(runs)
        rows.append({"runs": runs, **v})
        step = "fused" if runs[0]["step"].startswith("step: the fused") else "autograd"
        print(f"| `{preset}` | {step} | {runs[0]['nll']:.2f} / {runs[1]['nll']:.2f} | {runs[2]['nll']:.2f} | "
              f"{v['nll_bf16_gap']:+.2f} | {v['nll_seed_gap']:.2f} | {runs[0]['neg_elbo']:.2f} | "
              f"{runs[2]['neg_elbo']:.2f} | {'yes' if v['holds'] else 'no'} | {runs[0]['epoch_s']:.2f} -> "
              f"{runs[2]['epoch_s']:.2f} ({v['speed_up']:.2f}x) |", flush=True)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
