"""One-class MNIST: train on one digit's training images, score all 10,000 test images, the other nine
digits being the anomalies; ROC AUC per digit and the mean.

Each model is the CLI's ``seed`` preset (784-400-20 MLP, Bernoulli on grey levels) trained on the ~6,000
training images of its digit (``data.train_classes``); the score is the negative ELBO averaged over 10
seeded posterior draws.

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
    p.add_argument("--score", default="elbo", choices=list(anomaly.SCORES))
    p.add_argument("--digits", type=int, nargs="+", default=list(range(10)))
    p.add_argument("--set", action="append", default=[], help="config overrides KEY=VALUE")
    args = p.parse_args()
    base = vaekit.preset("seed").override({"data.dataset": "mnist", "train.epochs": args.epochs,
                                           "train.checkpoint_every": 0, **dict(parse_assignment(a) for a in args.set)})
    print(f"one-class MNIST, preset seed, {args.epochs} epochs, score {args.score}")
    print("| digit | training images | ROC AUC | seconds |")
    print("|---|---|---|---|")
    aucs = []
    for d in args.digits:
        t0 = time.perf_counter()
        config = base.override({"data.train_classes": [d]})
        splits = data.load(config.data)
        model = vaekit.train(config, splits=splits).model
        test = data.evaluation_split(splits, "test", config.data)
        scores = anomaly.score(model, test.x, args.score)
        truth = (test.y != d).to(torch.int64).numpy()
        aucs.append(anomaly.auc_scores(truth, scores.numpy())["roc_auc"])
        print(f"| {d} | {len(splits.train):,} | {aucs[-1]:.4f} | {time.perf_counter() - t0:.0f} |", flush=True)
    print(f"| **mean** | | **{statistics.mean(aucs):.4f}** | |")


if __name__ == "__main__":
    main()
