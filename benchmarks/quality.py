"""Test log-likelihood of a preset on MNIST, with its full protocol, appended to a results file.

Trains the preset (dynamically binarized MNIST unless --binarize says otherwise), then evaluates the test
set under a fixed seeded binarization: negative ELBO, the importance-sampled NLL with K samples, active
units. Prints one Markdown table row and appends the full record to --results (JSON lines).

    VAEKIT_DATA=../shared/data python benchmarks/quality.py --preset iwae --epochs 50 --iw-samples 1000
    VAEKIT_DATA=../shared/data python benchmarks/quality.py --preset hvae --minutes 10 --epochs 100000 \
        --device cuda --out runs/hvae-gpu      # a GPU row: all 10,000 test images, K = 5000, and the checkpoint
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch

import vaekit
from vaekit.config import parse_assignment


class Budget(vaekit.Callback):
    """Prints each epoch and ends training once the wall-clock budget is spent (checked between epochs)."""

    def __init__(self, minutes: float | None) -> None:
        self.deadline = None if minutes is None else time.perf_counter() + 60 * minutes

    def on_epoch_end(self, record: dict) -> None:
        print(f"epoch {record['epoch']}: train -ELBO {record['train_neg_elbo']:.2f} ({record['time_s']:.1f} s)",
              flush=True)
        self.stop_training = self.deadline is not None and time.perf_counter() > self.deadline


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="iwae")
    p.add_argument("--epochs", type=int, default=50)
    p.add_argument("--minutes", type=float, help="stop after the first epoch that ends past this budget")
    p.add_argument("--binarize", default="dynamic")
    p.add_argument("--iw-samples", type=int, help="importance samples K of the test NLL (default: the issue's "
                   "protocol, 5000 on a GPU and 1000 on the CPU)")
    p.add_argument("--test-n", type=int, help="evaluate on the first N test images only (default: all 10,000)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--device", default="auto")
    p.add_argument("--set", action="append", default=[], help="extra config overrides KEY=VALUE")
    p.add_argument("--out", type=Path, help="also keep the checkpoint here")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/quality.jsonl"))
    args = p.parse_args()

    config = vaekit.preset(args.preset).override({
        "data.dataset": "mnist", "data.binarize": args.binarize, "data.val_size": 0,
        "train.epochs": args.epochs, "train.seed": args.seed, "train.device": args.device,
        **dict(parse_assignment(a) for a in args.set),
    })
    splits = vaekit.load_data(config.data)
    t0 = time.perf_counter()
    result = vaekit.train(config, args.out, callbacks=[Budget(args.minutes)], splits=splits)
    model, history = result.model, result.history
    train_s = time.perf_counter() - t0
    device = next(model.parameters()).device
    args.iw_samples = args.iw_samples or (5000 if device.type == "cuda" else 1000)
    x_test = splits.test.x[: args.test_n].to(device)
    t0 = time.perf_counter()
    metrics = vaekit.evaluate_model(model.eval(), x_test, args.iw_samples,
                                    seed=config.data.eval_seed,
                                    protocol={"binarization": splits.test.binarization})
    eval_s = time.perf_counter() - t0
    epochs_s = [r["time_s"] for r in history]
    epoch_s = statistics.median(epochs_s[1:] or epochs_s)  # the first epoch warms up (or captures a graph)
    record = {
        "preset": args.preset, "epochs": len(history), "train_minutes": round(train_s / 60, 2),
        "step": result.step_path, "epoch_s": {"first": epochs_s[0], "median_after_first": epoch_s},
        "train_samples_per_s": round(len(splits.train) / epoch_s), "eval_s": round(eval_s, 2),
        "eval_samples_per_s": round(len(x_test) / eval_s, 1),
        "device": torch.cuda.get_device_name() if device.type == "cuda" else f"cpu ({platform.machine()}, "
        f"{torch.get_num_threads()} threads)",
        "torch": torch.__version__, "config": config.to_dict(), "test": metrics,
        "protocol": f"MNIST test set ({'all' if args.test_n is None else 'first'} {len(x_test):,}), training "
                    f"binarization {args.binarize}, test {metrics['binarization']}, "
                    f"K = {args.iw_samples} importance samples, batch {config.train.batch_size}, seed {args.seed}",
    }
    args.results.parent.mkdir(parents=True, exist_ok=True)
    with args.results.open("a") as f:
        f.write(json.dumps(record) + "\n")
    print(f"{result.step_path}; training {record['train_samples_per_s']:,} samples/s (median epoch after the "
          f"first, {epoch_s:.2f} s; the first {epochs_s[0]:.2f} s), evaluation with K = {args.iw_samples} "
          f"{record['eval_samples_per_s']:,} images/s ({eval_s:.1f} s)")
    print("| preset | epochs | train time | test -ELBO | test NLL (K) | active units | protocol |")
    print("|---|---|---|---|---|---|---|")
    print(f"| {args.preset} | {record['epochs']} | {record['train_minutes']} min ({record['device']}) | "
          f"{metrics['neg_elbo']:.2f} | {metrics.get('nll', float('nan')):.2f} (K={args.iw_samples}) | "
          f"{metrics['active_units']}/{sum(metrics.get('latent_dims', [metrics['latent_dim']]))} | "
          f"{record['protocol']} |")


if __name__ == "__main__":
    main()
