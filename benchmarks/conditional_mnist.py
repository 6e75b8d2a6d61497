"""Does a conditional VAE draw the digit it is asked for? A classifier trained on real MNIST judges its samples.

Takes a conditional checkpoint trained with the CLI, e.g.

    vaekit train --preset seed --dataset mnist --conditional --epochs 10 --out runs/cvae
    VAEKIT_DATA=../shared/data python benchmarks/conditional_mnist.py runs/cvae --grid docs/conditional.png

Draws --per-label samples of each digit from the prior (z ~ N(0, I), decoded given the label), trains a small
MLP classifier (784-512-10, ReLU, Adam, 3 epochs) on the 60,000 real training images, and reports its accuracy
on the real test set (a sanity check of the judge) and on the generated digits, overall and per label.
Writes the grid with one row per label.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch import nn

import vaekit
from vaekit import data, generate, plots


def train_classifier(x: torch.Tensor, y: torch.Tensor, epochs: int = 3, seed: int = 0) -> nn.Module:
    """A 784-512-10 MLP on flattened images, minibatch Adam."""
    torch.manual_seed(seed)
    net = nn.Sequential(nn.Flatten(), nn.Linear(x[0].numel(), 512), nn.ReLU(), nn.Linear(512, 10))
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    for _ in range(epochs):
        for idx in torch.randperm(len(x)).split(128):
            loss = nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@torch.no_grad()
def accuracy(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((net(x).argmax(1) == y).float().mean())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("runs", type=Path, nargs="+", help="checkpoint directories of conditional MNIST models")
    p.add_argument("--per-label", type=int, default=100)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grid", type=Path, default=Path("conditional_samples.png"), help="a grid of the first run")
    p.add_argument("--dataset", default="mnist", help="the runs' data set of digits (digits: a smoke test)")
    p.add_argument("--judge-epochs", type=int, default=3, help="epochs of the judge's training")
    args = p.parse_args()
    splits = data.load(vaekit.DataConfig(dataset=args.dataset, val_size=0))
    t0 = time.perf_counter()
    judge = train_classifier(splits.train.x, splits.train.y, args.judge_epochs)
    print(f"judge: {accuracy(judge, splits.test.x, splits.test.y):.4f} on the real test digits, trained in "
          f"{time.perf_counter() - t0:.0f} s")
    print("| run | model | judge accuracy on generated digits | per label 0..9 |")
    print("|---|---|---|---|")
    first = None
    for run in args.runs:
        model, config = vaekit.load_run(run)
        first = model if first is None else first
        fake = generate.sample_per_label(model, args.per_label, seed=args.seed)  # (10 * per_label, *image shape)
        labels = torch.tensor([int(n) for n in model.config.labels]).repeat_interleave(args.per_label)
        per_label = [accuracy(judge, fake[labels == c], labels[labels == c]) for c in range(10)]
        print(f"| {run} | {config.model.arch} {list(config.model.hidden)}, z = {model.latent_dim}, "
              f"{config.train.epochs} epochs | **{accuracy(judge, fake, labels):.4f}** ({len(fake):,} samples, "
              f"z ~ N(0, I)) | {' '.join(f'{a:.2f}' for a in per_label)} |")
    print(f"wrote {plots.save_grid(generate.sample_per_label(first, 10, seed=args.seed), args.grid, nrow=10)}")


if __name__ == "__main__":
    main()
