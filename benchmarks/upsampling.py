"""Transposed convolutions against resize-then-convolve in conv decoders: test likelihood, speed, checkerboard.

For each data set and seed, the same preset is trained twice in one run, once per ``model.upsample``, for the
same number of epochs; then, on the first --test-n test images under the run's fixed seeded binarization:
the importance-sampled NLL (K = --iw-samples) and the negative ELBO; the median epoch time; and the
checkerboard share of 64 samples' decoded means: the power of their 2x2-periodic component (the spatial
frequencies (H/2, 0), (0, W/2) and (H/2, W/2), where transposed stride-2 convolutions leave their pattern)
over all power but the mean's, averaged over the samples (Odena et al. 2016 describe the artefact).
Prints one Markdown row per run and appends the records to --results.

    VAEKIT_DATA=../shared/data python benchmarks/upsampling.py --epochs 10 --seeds 1
    VAEKIT_DATA=../shared/data python benchmarks/upsampling.py --epochs 20 --methods transposed  # equal time
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
from vaekit import generate
from vaekit.config import PRESETS, parse_assignment


class Times(vaekit.Callback):
    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_epoch_end(self, record: dict) -> None:
        self.seconds.append(record["time_s"])


def checkerboard_share(images: torch.Tensor) -> float:
    """Mean over images of the 2x2-periodic power over the power of everything but the image mean."""
    x = images.double().flatten(0, -3)  # (N, H, W): every channel of every image
    power = torch.fft.fft2(x - x.mean(dim=(-2, -1), keepdim=True)).abs() ** 2
    h, w = x.shape[-2:]
    nyquist = torch.zeros(h, w, dtype=torch.bool)
    for i, j in ((h // 2, 0), (0, w // 2), (h // 2, w // 2)):
        if (i == 0 or h % 2 == 0) and (j == 0 or w % 2 == 0):
            nyquist[i, j] = True
    share = power[:, nyquist].sum(-1) / power.flatten(1).sum(-1).clamp_min(1e-12)
    return float(share.mean())


def run(dataset: str, method: str, seed: int, args: argparse.Namespace) -> dict:
    overrides = {**PRESETS[args.preset], **dict(parse_assignment(a) for a in args.set), "data.dataset": dataset,
                 "data.data_dir": args.data_dir, "model.upsample": method, "train.epochs": args.epochs,
                 "train.seed": seed, "train.device": args.device, "train.checkpoint_every": 0}
    config = vaekit.Config().override(overrides)
    splits = vaekit.load_data(config.data)
    times = Times()
    model = vaekit.train(config, splits=splits, callbacks=[times]).model
    test = vaekit.data.evaluation_split(splits, "test", config.data)
    x = test.x[: args.test_n].to(model.device)
    result = vaekit.evaluate_model(model, x, args.iw_samples, config.data.eval_seed)
    with torch.no_grad():
        samples = generate.sample(model, 64, seed=seed)
    return {"dataset": dataset, "upsample": method, "seed": seed, "preset": args.preset, "epochs": args.epochs,
            "nll": result["nll"], "neg_elbo": result["neg_elbo"], "n": result["n"], "iw_samples": args.iw_samples,
            "epoch_s": statistics.median(times.seconds), "checkerboard": checkerboard_share(samples.cpu()),
            "parameters": sum(p.numel() for p in model.parameters()), "cpu": platform.processor() or
            platform.machine(), "threads": torch.get_num_threads(), "torch": torch.__version__}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="conv")
    p.add_argument("--datasets", default="mnist,fashion-mnist")
    p.add_argument("--epochs", type=int, default=10)
    p.add_argument("--seeds", type=int, default=1, help="seeds 1..N")
    p.add_argument("--methods", default="transposed,resize", help="which model.upsample values to train")
    p.add_argument("--iw-samples", type=int, default=1000)
    p.add_argument("--test-n", type=int, default=2000)
    p.add_argument("--device", default="cpu")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--set", action="append", default=[], help="extra config overrides KEY=VALUE")
    p.add_argument("--results", type=Path, default=Path("benchmarks/results/upsampling.jsonl"))
    args = p.parse_args()
    print(f"preset {args.preset}, {args.epochs} epochs, test NLL with K = {args.iw_samples} on {args.test_n} "
          "test images (nats); checkerboard share of 64 samples")
    print("| data | seed | upsample | NLL | -ELBO | epoch s | checkerboard | parameters |")
    print("|---|---|---|---|---|---|---|---|")
    for dataset in args.datasets.split(","):
        for seed in range(1, args.seeds + 1):
            for method in args.methods.split(","):
                t0 = time.perf_counter()
                r = run(dataset, method, seed, args)
                r["seconds"] = round(time.perf_counter() - t0, 1)
                print(f"| {dataset} | {seed} | {method} | {r['nll']:.2f} | {r['neg_elbo']:.2f} | {r['epoch_s']:.1f} "
                      f"| {r['checkerboard']:.4f} | {r['parameters']:,} |", flush=True)
                args.results.parent.mkdir(parents=True, exist_ok=True)
                with args.results.open("a") as f:
                    f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
