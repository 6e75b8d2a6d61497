"""One-class MNIST: train on one digit's training images, score all 10,000 test images, the other nine
digits being the anomalies; ROC AUC per digit and the mean.

Each model is the CLI's ``seed`` preset (784-400-20 MLP, Bernoulli on grey levels) trained on the ~6,000
training images of its digit (``data.train_classes``). Every score asked for is reported side by side from
the same model: the negative ELBO (10 seeded posterior draws) and the squared reconstruction error at the
posterior mean (and the importance-sampled NLL with ``--scores elbo recon nll``).

    VAEKIT_DATA=../shared/data python benchmarks/anomaly_mnist.py --epochs 20
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import vaekit
from vaekit import anomaly, data
from vaekit.config import parse_assignment


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=20)
    p.add_argument("--scores", nargs="+", default=["elbo", "recon"], choices=list(anomaly.SCORES))
    p.add_argument("--digits", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--set", action="append", default=[], help="config overrides KEY=VALUE")
    args = p.parse_args()
    base = vaekit.preset("seed").override({"data.dataset": "mnist", "train.epochs": args.epochs,
                                           "train.checkpoint_every": 0, **dict(parse_assignment(a) for a in args.set)})
    print(f"one-class MNIST, preset seed, {args.epochs} epochs; ROC AUC per score")
    print(f"| digit | training images | {' | '.join(args.scores)} | seconds |")
    print("|---|---|" + "---|" * len(args.scores) + "---|")
    aucs: dict[str, list[float]] = {s: [] for s in args.scores}
    for d in args.digits:
        t0 = time.perf_counter()
        config = base.override({"data.train_classes": [d]})
        splits = data.load(config.data)
        model = vaekit.train(config, splits=splits).model
        test = data.evaluation_split(splits, "test", config.data)
        truth = (test.y != d).to(torch.int64).numpy()
        for s in args.scores:
            aucs[s].append(anomaly.auc_scores(truth, anomaly.score(model, test.x, s).numpy())["roc_auc"])
        row = " | ".join(f"{aucs[s][-1]:.4f}" for s in args.scores)
        print(f"| {d} | {len(splits.train):,} | {row} | {time.perf_counter() - t0:.0f} |", flush=True)
    means = " | ".join(f"**{statistics.mean(aucs[s]):.4f}**" for s in args.scores)
    print(f"| **mean** | | {means} | |")


if __name__ == "__main__":
    main()
