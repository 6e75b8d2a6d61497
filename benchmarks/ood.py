"""Out-of-distribution detection with a trained VAE: ROC AUC of each anomaly score, in-distribution test set
against another data set's test set (Nalisnick et al. 2019: a Fashion-MNIST model can give MNIST digits a
higher likelihood than its own data; Havtorn et al. 2021: a hierarchy's likelihood ratio L - L^{>K} does not).

Trains the preset on --train for a wall-clock budget, then scores the first --test-n test images of --train
(label 0, in) and of --ood (label 1, out), both under the evaluation's fixed seeded binarization, with every
score: elbo, nll, recon, kl and, for a hierarchy, llr>K for each K. Prints a table and appends a JSON record.

    VAEKIT_DATA=../shared/data python benchmarks/ood.py --preset hvae --train fashion-mnist --ood mnist --minutes 10
    VAEKIT_DATA=../shared/data python benchmarks/ood.py --from RUN --iw-samples 1000   # score a kept checkpoint
"""

from __future__ import annotations

import argparse
import json
import platform
import subprocess
import time
from pathlib import Path

import numpy as np
import torch

import vaekit
from vaekit import anomaly, data
from vaekit.cli.curves import read_metrics
from vaekit.config import parse_assignment


class Budget(vaekit.Callback):
    """Prints each epoch; ends training after the first epoch that ends past the budget."""

    def __init__(self, minutes: float) -> None:
        self.deadline = time.perf_counter() + 60 * minutes

    def on_epoch_end(self, record: dict) -> None:
        print(f"epoch {record['epoch']}: train -ELBO {record['train_neg_elbo']:.2f} ({record['time_s']:.1f} s)",
              flush=True)
        self.stop_training = time.perf_counter() > self.deadline


def test_images(config: vaekit.Config, dataset: str, n: int) -> torch.Tensor:
    """The first n test images of ``dataset``, binarized as the run's evaluation binarizes its own."""
    cfg = config.override({"data.dataset": dataset}).data
    return data.evaluation_split(data.load(cfg), "test", cfg).x[:n]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="hvae")
    p.add_argument("--train", default="fashion-mnist")
    p.add_argument("--ood", default="mnist")
    p.add_argument("--minutes", type=float, default=10)
    p.add_argument("--epochs", type=int, default=1000)
    p.add_argument("--test-n", type=int, default=2000)
    p.add_argument("--iw-samples", type=int, default=100, help="importance samples of nll and llr")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], help="extra config overrides KEY=VALUE")
    p.add_argument("--out", type=Path, help="also keep the trained checkpoint here")
    p.add_argument("--from", dest="source", type=Path, help="score this checkpoint instead of training one")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/ood.jsonl"))
    args = p.parse_args()
    model, config, history = trained(args)
    x_in, x_out = test_images(config, args.train, args.test_n), test_images(config, args.ood, args.test_n)
    aucs = roc_aucs(model, x_in, x_out, args.iw_samples)
    print(f"\n{args.preset} trained on {args.train} ({len(history)} epochs); in: {len(x_in)} {args.train} test "
          f"images, out: {len(x_out)} {args.ood} test images")
    print("| score | ROC AUC |\n|---|---|")
    for method, auc in aucs.items():
        print(f"| {method} | {auc:.4f} |")
    kl_per_layer = history[-1].get("kl_per_layer") if history else None
    if kl_per_layer:
        print(f"KL per layer, top first (last epoch): {', '.join(f'{v:.1f}' for v in kl_per_layer)} nats")
    record = {"preset": args.preset, "train": args.train, "ood": args.ood, "epochs": len(history),
              "minutes": None if args.source else args.minutes, "from": str(args.source) if args.source else None,
              "test_n": args.test_n, "iw_samples": args.iw_samples, "roc_auc": aucs, "set": args.set,
              "kl_per_layer": kl_per_layer, "commit": _commit(),
              "machine": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    with args.results.open("a") as f:
        f.write(json.dumps(record) + "\n")


def trained(args: argparse.Namespace) -> tuple[vaekit.VAE, vaekit.Config, list[dict]]:
    """The model to score, its config and its epoch records: trained for the budget, or read from --from."""
    if args.source is not None:
        model, config = vaekit.load_run(args.source)
        return model.eval(), config, read_metrics(args.source / "metrics.jsonl")
    config = vaekit.preset(args.preset).override({
        "data.dataset": args.train, "data.val_size": 0, "train.epochs": args.epochs, "train.seed": args.seed,
        "train.device": args.device, **dict(parse_assignment(a) for a in args.set)})
    result = vaekit.train(config, args.out, callbacks=[Budget(args.minutes)])
    return result.model.eval(), result.config, result.history


def roc_aucs(model: vaekit.VAE, x_in: torch.Tensor, x_out: torch.Tensor, iw_samples: int) -> dict[str, float]:
    """ROC AUC of every score the model has, with x_out as the anomalies."""
    truth = np.r_[np.zeros(len(x_in)), np.ones(len(x_out))]
    aucs = {}
    for method in anomaly.available_scores(len(model.layers)):
        samples = iw_samples if method.startswith(("nll", "llr")) else None
        scores = torch.cat([anomaly.score(model, x, method, samples) for x in (x_in, x_out)]).numpy()
        aucs[method] = anomaly.auc_scores(truth, scores)["roc_auc"]
    return aucs


def _commit() -> str | None:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                              check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return None


if __name__ == "__main__":
    main()
