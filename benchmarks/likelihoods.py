"""Grey-level MNIST under each likelihood, in one run: what each reports and in which units.

    VAEKIT_DATA=../shared/data python benchmarks/likelihoods.py --epochs 10 --iw-samples 100

Trains the same MLP (784-400-20, ReLU, Adam 1e-3, batch 128, seed 1, all 60,000 grey-level training images)
once per likelihood and evaluates each on the 10,000 grey-level test images: negative ELBO and the importance-
sampled NLL with K samples, in nats, and in bits per dimension where the number is a probability. The table
says which numbers can be compared with which (see README, "Which numbers are comparable"). ``--seed`` trains
from another seed, ``--autograd`` with autograd's gradients instead of the fused CPU step's.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from pathlib import Path

import vaekit

LIKELIHOODS = ("bernoulli", "continuous-bernoulli", "gaussian", "gaussian-learned", "logistic")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--iw-samples", type=int, default=100)
    p.add_argument("--likelihoods", nargs="+", default=list(LIKELIHOODS))
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/likelihoods.jsonl"))
    p.add_argument("--limit", type=int, help="only the first N training and test images (a smoke test)")
    p.add_argument("--seed", type=int, default=1, help="train.seed")
    p.add_argument("--autograd", action="store_true", help="train.fused_step = false: autograd's gradients")
    args = p.parse_args()
    base = vaekit.preset("seed").override({"data.dataset": "mnist", "train.epochs": args.epochs,
                                           "train.seed": args.seed, "train.fused_step": not args.autograd})
    splits = vaekit.load_data(base.data)
    if args.limit:
        splits = dataclasses.replace(splits, **{
            name: dataclasses.replace(split, stored=split.stored[: args.limit], y=split.y[: args.limit])
            for name, split in (("train", splits.train), ("test", splits.test))})
    rows = []
    for name in args.likelihoods:
        config = base.override({"model.likelihood": name})
        t0 = time.perf_counter()
        model = vaekit.train(config, splits=splits).model.eval()
        m = vaekit.evaluate_model(model, splits.test.x, args.iw_samples,
                                  protocol={"binarization": splits.test.binarization})
        m["train_minutes"] = round((time.perf_counter() - t0) / 60, 2)
        rows.append({"likelihood": name, "epochs": args.epochs, "train_seed": args.seed, "autograd": args.autograd,
                     **m})
        print(json.dumps(rows[-1]), flush=True)
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        f.writelines(json.dumps(r) + "\n" for r in rows)
    print(f"\n| likelihood | what the number is | -ELBO (nats) | NLL, K={args.iw_samples} (nats) | bits/dim |")
    print("|---|---|---|---|---|")
    for r in rows:
        bits = f"{r['bits_per_dim']:.4f}" if "bits_per_dim" in r else "n/a"
        print(f"| {r['likelihood']} | {r['density']} | {r['neg_elbo']:.2f} | {r.get('nll', float('nan')):.2f} | "
              f"{bits} |")


if __name__ == "__main__":
    main()
