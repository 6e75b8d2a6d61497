"""kNN accuracy of a VAE's MNIST latent against PCA with the same number of dimensions, in one run.

Takes a checkpoint trained with the CLI, e.g.

    vaekit train --preset seed --dataset mnist --latent-dim 32 --epochs 10 --out runs/z32
    VAEKIT_DATA=../shared/data python benchmarks/embedding_probe.py runs/z32

Features: posterior means mu(x) of the 60,000 training and 10,000 test images (the test set as the model's
evaluation sees it: grey levels, or one fixed seeded binarization for a binarized model); PCA is fitted on the
same training pixels. A k-NN classifier is fitted on the training features and scored on the test features.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import vaekit
from vaekit import data, embedding


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="checkpoint directory")
    p.add_argument("--k", type=int, nargs="+", default=[1, 5])
    args = p.parse_args()
    model, config = vaekit.load_run(args.run)
    splits = data.load(config.data)
    train = data.evaluation_split(splits, "train", config.data)
    test = data.evaluation_split(splits, "test", config.data)
    print(f"{args.run}: {config.data.dataset}, latent {model.latent_dim}, hidden {config.model.hidden}, "
          f"{config.train.epochs} epochs, test binarization {test.binarization}")
    print(f"| k | VAE latent ({model.latent_dim}-d) | PCA-{model.latent_dim} | train / test | seconds |")
    print("|---|---|---|---|---|")
    for k in args.k:
        t0 = time.perf_counter()
        r = embedding.probe(model, train.x, train.y, test.x, test.y, k)
        print(f"| {k}-NN | {r.vae_accuracy:.4f} | {r.pca_accuracy:.4f} | {r.n_train:,} / {r.n_test:,} | "
              f"{time.perf_counter() - t0:.0f} |")


if __name__ == "__main__":
    main()
