"""Dimensionality reduction with a trained VAE: posterior means as features, 2-D maps, a kNN probe.

The embedding of x is E[z|x] = mu(x), deterministic, not a random draw from q(z|x).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaekit.batches import batched, floats
from vaekit.errors import DataError
from vaekit.fileio import atomic_path
from vaekit.model import VAE, Latent

PROJECTIONS = ("pca", "tsne")
LAYERS = ("top", "all")
PCA_FIT_BYTES = 2**30  # the probe's PCA is fitted on at most this much float32 data (MNIST: all 60,000 rows)
PCA_BATCH = 10_000  # rows projected at a time


@torch.no_grad()
def posterior_means(model: VAE, x: Tensor, batch_size: int = 1000, y: Tensor | None = None,
                    layers: str = "top") -> Tensor:
    """E_q[z|x] of the top layer for every row of x, in batches; shape (N, L), on the CPU. A conditional
    model's E_q[z|x, y] needs the labels y (N,).

    ``layers = "all"`` joins every stochastic layer's posterior mean, top first, (N, sum of L): each lower
    layer's mean given the posterior means of the layers above it (for one layer, the same as "top").
    """
    model.eval()

    def means(xb: Tensor, yb: Tensor | None) -> Tensor:
        return torch.cat([latent.mean for latent in layer_latents(model, xb, yb, layers)], dim=-1).cpu()

    return batched(means, x, y, batch_size, model.device)


def layer_latents(model: VAE, x: Tensor, y: Tensor | None, layers: str) -> tuple[Latent, ...]:
    """The latents that ``layers`` names: the top layer's, or every layer's, top first, each lower one given
    the posterior means of the layers above it."""
    if layers not in LAYERS:
        raise DataError(f"unknown layers {layers!r} to embed; valid: {', '.join(LAYERS)}")
    latents = model.infer(x, y, mean=layers == "all")
    return latents[:1] if layers == "top" else latents


@dataclass(frozen=True)
class Map2D:
    """Points of z in 2-D and the affine map behind them: (u, v) is the code ``mean + u * axes[0] + v * axes[1]``."""

    points: np.ndarray  # (N, 2), = (z - mean) @ axes.T
    mean: np.ndarray  # (L,)
    axes: np.ndarray  # (2, L), orthonormal rows (for L = 1 the second row is zero)
    axis_labels: tuple[str, str]


def pca_map(z: np.ndarray) -> Map2D:
    """z (N, L) in 2-D: z itself for L <= 2, else its first two principal axes (PCA via the SVD of z - mean).

    The signs of the principal axes are the SVD's: a map may come out mirrored against scikit-learn's PCA.
    """
    dim = z.shape[1]
    if dim <= 2:
        axes = np.eye(2, dim, dtype=z.dtype)  # L = 1: the second axis is all zeros, so the map is a line
        return Map2D(z @ axes.T, np.zeros(dim, z.dtype), axes, ("z[0]", "z[1]" if dim == 2 else "(none)"))
    mean = z.mean(0)
    # full_matrices only for a single point, where the thin SVD has one axis; elsewhere it would cost (N, N)
    _, s, vt = np.linalg.svd(z - mean, full_matrices=len(z) < 2)
    share = np.zeros(2)
    share[: min(2, len(s))] = s[:2] ** 2 / max(float((s**2).sum()), 1e-300)
    return Map2D((z - mean) @ vt[:2].T, mean, vt[:2], (f"PC 1 ({share[0]:.0%} of variance)", f"PC 2 ({share[1]:.0%})"))


def project_2d(z: np.ndarray, method: str = "pca", seed: int = 0) -> tuple[np.ndarray, tuple[str, str]]:
    """2-D coordinates for a map of z, and axis labels: z itself when 2-D, else PCA (``pca_map``) or t-SNE."""
    if z.shape[1] == 2:
        return z, ("z[0]", "z[1]")
    if method == "pca":
        m = pca_map(z)
        return m.points, m.axis_labels
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(2, random_state=seed, init="pca").fit_transform(z), ("t-SNE 1", "t-SNE 2")
    raise DataError(f"unknown projection {method!r}; valid: {', '.join(PROJECTIONS)}")


@dataclass(frozen=True)
class ProbeResult:
    """k-nearest-neighbour test accuracy of the VAE embedding and of PCA with as many dimensions."""

    k: int
    dim: int
    vae_accuracy: float
    pca_accuracy: float
    n_train: int
    n_test: int


def knn_accuracy(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray, y_test: np.ndarray,
                 k: int = 1) -> float:
    """Test accuracy of a k-NN classifier (Euclidean) fitted on the training features."""
    from sklearn.neighbors import KNeighborsClassifier

    return float(KNeighborsClassifier(k).fit(f_train, y_train).score(f_test, y_test))


def probe(model: VAE, x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, k: int = 1,
          layers: str = "top") -> ProbeResult:
    """The kNN probe on posterior means against the same probe on PCA of the raw data, same dimension.

    A conditional model encodes each input with its own label, so the probe measures how much of the class
    its latent code still carries.
    """
    z_train = posterior_means(model, x_train, y=model.labels_of(y_train, "the probe's training data"),
                              layers=layers).numpy()
    z_test = posterior_means(model, x_test, y=model.labels_of(y_test, "the probe's test data"), layers=layers).numpy()
    ytr, yte = y_train.numpy(), y_test.numpy()
    dim = z_train.shape[1]
    p_train, p_test = _pca_features(x_train, x_test, dim)
    return ProbeResult(k, dim, knn_accuracy(z_train, ytr, z_test, yte, k), knn_accuracy(p_train, ytr, p_test, yte, k),
                       len(ytr), len(yte))


def _pca_features(x_train: Tensor, x_test: Tensor, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """The rows' first ``dim`` principal components, in float32: PCA fitted on at most PCA_FIT_BYTES of training
    rows (a seeded random subset beyond that), every row projected a batch at a time, so the probe's memory
    stays bounded however large the data (the bytes of a stored dataset become values one batch at a time)."""
    from sklearn.decomposition import PCA

    rows = min(len(x_train), max(dim + 1, PCA_FIT_BYTES // (4 * x_train[0].numel())))
    if rows < len(x_train):
        x_fit = x_train[torch.from_numpy(np.sort(np.random.default_rng(0).choice(len(x_train), rows, False)))]
    else:
        x_fit = x_train
    pca = PCA(dim, random_state=0).fit(floats(x_fit).flatten(1).numpy())  # seeded: the randomized solver

    def project(xb: Tensor, _: Tensor | None) -> Tensor:
        return torch.from_numpy(pca.transform(xb.flatten(1).numpy()))

    return tuple(batched(project, x, batch_size=PCA_BATCH).numpy() for x in (x_train, x_test))


def save(path: str | Path, z: Tensor, labels: Tensor | None) -> Path:
    """Write embeddings as .npz (arrays ``z`` and, when known, ``labels``) or .csv (index, label, z0...)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in (".npz", ".csv"):
        raise DataError(f"cannot write embeddings to {path}: use a .npz or .csv file name")
    z_np = z.numpy()
    with atomic_path(path) as tmp:
        if suffix == ".npz":
            arrays = {"z": z_np} if labels is None else {"z": z_np, "labels": labels.numpy()}
            with open(tmp, "wb") as f:
                np.savez(f, **arrays)
        else:
            _write_csv(tmp, z_np, None if labels is None else labels.numpy())
    return path


def _write_csv(path: Path, z: np.ndarray, labels: np.ndarray | None) -> None:
    columns = ["index"] + ([] if labels is None else ["label"]) + [f"z{i}" for i in range(z.shape[1])]
    index = np.arange(len(z))[:, None]
    table = np.hstack([index] + ([] if labels is None else [labels[:, None]]) + [z])
    fmt = ["%d"] + ([] if labels is None else ["%d"]) + ["%.6g"] * z.shape[1]
    np.savetxt(path, table, delimiter=",", header=",".join(columns), comments="", fmt=fmt)
