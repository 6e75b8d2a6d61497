"""ROC AUC of vaekit's anomaly score on the ODDS outlier sets, against IsolationForest in the same run.

Protocol (PyOD's benchmark): for each set and seed, a seeded 60/40 train/test split; both detectors are fitted
on the (unlabelled, contaminated) training part and score the test part; features are standardized with the
training part's statistics. vaekit's detectors: ``VAEAnomalyDetector()`` with its defaults (chosen on
benchmarks/anomaly_suite.py), and the ``outliers`` preset that ``vaekit train --preset outliers`` trains (a
Gaussian likelihood with sigma = 1 on standardized features, 64 hidden units, z = 4, 5 epochs, beta = 4),
scored by the negative ELBO averaged over 10 posterior draws and, from the same model, by the squared
reconstruction error. The preset was chosen on seeds 0-4; report seeds kept apart from those. Where PyOD is
installed, its ``VAE``, ``KNN`` and ``AutoEncoder`` detectors with their defaults (seeded with the split's
seed, on the same standardized features) are columns too, for people coming from PyOD.

    VAEKIT_DATA=../shared/data python benchmarks/anomaly_odds.py --first-seed 5 --seeds 10
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import numpy as np
import torch
from sklearn.ensemble import IsolationForest

import vaekit
from vaekit import anomaly
from vaekit.config import PRESETS, parse_assignment
from vaekit.detector import VAEAnomalyDetector

SETS = ("cardio", "pendigits", "wbc")
DETECTOR = {**PRESETS["outliers"], "data.test_size": 0.4, "train.device": "cpu", "train.checkpoint_every": 0}


def pyod(name: str, x_train: np.ndarray, x_test: np.ndarray, seed: int) -> np.ndarray | None:
    """Outlier scores of PyOD's ``VAE``, ``KNN`` or ``AutoEncoder`` with their defaults (higher = more abnormal);
    None without PyOD."""
    try:
        from pyod.models.auto_encoder import AutoEncoder
        from pyod.models.knn import KNN
        from pyod.models.vae import VAE
    except ImportError:
        return None
    made = {"vae": lambda: VAE(random_state=seed, verbose=0, device="cpu"), "knn": KNN,
            "ae": lambda: AutoEncoder(random_state=seed, verbose=0, device="cpu")}[name]()
    return made.fit(x_train).decision_function(x_test)


def run(path: Path, seed: int, overrides: dict, steps: int | None = None) -> tuple[float, ...]:
    config = vaekit.Config().override({**DETECTOR, **overrides, "data.dataset": str(path),
                                       "data.split_seed": seed, "train.seed": seed})
    splits = vaekit.load_data(config.data)
    model = vaekit.train(config, splits=splits).model
    y = splits.test.y.numpy()
    elbo, recon = (anomaly.auc_scores(y, anomaly.score(model, splits.test.x, s).numpy())["roc_auc"]
                   for s in ("elbo", "recon"))
    x_train, x_test = splits.train.x.numpy(), splits.test.x.numpy()
    detector = VAEAnomalyDetector(random_state=seed, steps=steps).fit(x_train)
    default = anomaly.auc_scores(y, -detector.score_samples(x_test))["roc_auc"]
    forest = IsolationForest(random_state=seed).fit(x_train)
    iforest = anomaly.auc_scores(y, -forest.score_samples(x_test))["roc_auc"]
    theirs = [pyod(name, x_train, x_test, seed) for name in ("vae", "knn", "ae")]
    return default, elbo, recon, iforest, *(float("nan") if t is None else anomaly.auc_scores(y, t)["roc_auc"]
                                            for t in theirs)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=5, help="how many seeded splits")
    p.add_argument("--first-seed", type=int, default=0, help="seeds are first-seed .. first-seed + seeds - 1")
    p.add_argument("--data-dir", default=os.environ.get("VAEKIT_DATA", "../shared/data"))
    p.add_argument("--set", action="append", default=[], help="outliers preset config overrides KEY=VALUE")
    p.add_argument("--sets", nargs="+", default=list(SETS), choices=SETS)
    p.add_argument("--detector-steps", type=int, help="VAEAnomalyDetector(steps=N) (default: its own choice)")
    args = p.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    overrides = dict(parse_assignment(a) for a in args.set)
    seeds = range(args.first_seed, args.first_seed + args.seeds)
    print(f"detector: {dict(DETECTOR, **overrides)}; seeds {seeds.start}..{seeds.stop - 1}; mean ROC AUC over seeds")
    print("| set | `VAEAnomalyDetector()` | outliers preset, -ELBO | outliers preset, reconstruction error | "
          "IsolationForest | PyOD VAE | PyOD KNN | PyOD AutoEncoder | seconds |")
    print("|---|---|---|---|---|---|---|---|---|")
    means = []
    for name in args.sets:
        t0 = time.perf_counter()
        runs = [run(Path(args.data_dir) / "odds" / f"{name}.mat", s, overrides, args.detector_steps) for s in seeds]
        means.append([statistics.mean(r[i] for r in runs) for i in range(len(runs[0]))])
        cells = " | ".join(f"{m:.4f}" for m in means[-1])
        print(f"| {name} | {cells} | {time.perf_counter() - t0:.0f} |", flush=True)
    print("| **mean** | " + " | ".join(f"**{m:.4f}**" for m in np.mean(means, axis=0)) + " | |")


if __name__ == "__main__":
    main()
