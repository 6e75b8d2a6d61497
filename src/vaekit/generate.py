"""Putting a trained VAE to work in the latent space: sampling, interpolation, latent traversals.

Every function decodes to E[x|z], the mean of p(x|z), which is what one looks at; all are seeded.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch
from torch import Tensor

from vaekit.batches import batched, sum_in_order
from vaekit.embedding import posterior_means
from vaekit.errors import DataError
from vaekit.model import VAE, NotAvailable

SAMPLERS = ("prior", "gmm")
INTERPOLATIONS = ("lerp", "slerp")


@dataclass(frozen=True)
class LatentGMM:
    """A Gaussian mixture fitted to posterior means: a better-matched prior to sample from than N(0, I)."""

    weights: np.ndarray  # (K,)
    means: np.ndarray  # (K, L)
    chol: np.ndarray  # (K, L, L) Cholesky factors of the covariances


def fit_latent_gmm(model: VAE, x: Tensor, n_components: int = 10, seed: int = 0,
                   y: Tensor | None = None) -> LatentGMM:
    """Fit a full-covariance Gaussian mixture to mu(x) (mu(x, y) given labels y) over the data x."""
    from sklearn.mixture import GaussianMixture

    mu = posterior_means(model, x, y=y).double().numpy()
    if len(mu) < n_components:
        raise DataError(f"cannot fit {n_components} mixture components to {len(mu)} examples")
    gmm = GaussianMixture(n_components, covariance_type="full", random_state=seed, reg_covar=1e-4).fit(mu)
    return LatentGMM(gmm.weights_, gmm.means_, np.linalg.cholesky(gmm.covariances_))


@torch.no_grad()
def sample(model: VAE, n: int, temperature: float = 1.0, seed: int = 0, gmm: LatentGMM | None = None,
           label: str | None = None) -> Tensor:
    """n decoded samples: z ~ N(0, T^2 I), or z ~ the mixture with each component's spread scaled by T.

    A conditional model decodes them all with the class ``label`` (one of ``model.config.labels``).
    """
    y = model.labels_named(label, n)
    if gmm is None:
        return model.sample(n, temperature, torch.Generator().manual_seed(seed), y).cpu()
    rng = np.random.default_rng(seed)
    k = rng.choice(len(gmm.weights), size=n, p=gmm.weights / gmm.weights.sum())
    eps = rng.standard_normal((n, gmm.means.shape[1]))
    z = gmm.means[k] + temperature * np.einsum("nij,nj->ni", gmm.chol[k], eps)
    return decode_mean(model, torch.as_tensor(z, dtype=torch.float32), y)


def sample_per_label(model: VAE, per_label: int, temperature: float = 1.0, seed: int = 0,
                     gmm: LatentGMM | None = None) -> Tensor:
    """``per_label`` samples of each class of a conditional model, class by class: (C * per_label, *shape)."""
    labels = model.config.labels or ()
    if not model.config.conditional:
        raise DataError("sampling per label needs a conditional model (trained with --conditional)")
    return torch.cat([sample(model, per_label, temperature, seed, gmm, label=name) for name in labels])


@torch.no_grad()
def decode_mean(model: VAE, z: Tensor, y: Tensor | None = None) -> Tensor:
    """E[x|z] (or E[x|z, y]) for latent codes z (N, L), on the CPU."""
    return model.decode(z.to(model.device), None if y is None else y.to(model.device)).mean.cpu()


def path(za: Tensor, zb: Tensor, steps: int, method: str = "lerp") -> Tensor:
    """``steps`` codes from za to zb (both ends included): straight (lerp) or along the great circle (slerp).

    Slerp (Shoemake 1985; White 2016 for latent spaces) keeps the path at the norms typical of N(0, I)
    samples instead of cutting through the low-norm middle.
    """
    if steps < 2:
        raise ValueError(f"steps must be >= 2, got {steps}")
    t = torch.linspace(0, 1, steps, dtype=za.dtype)[:, None]  # (S, 1)
    if method == "lerp":
        return (1 - t) * za + t * zb
    if method != "slerp":
        raise ValueError(f"unknown interpolation {method!r}; valid: {', '.join(INTERPOLATIONS)}")
    cos = torch.dot(za, zb) / (za.norm() * zb.norm()).clamp_min(1e-12)
    omega = torch.arccos(cos.clamp(-1, 1))
    if omega.abs() < 1e-6:  # parallel codes: the great circle degenerates to the line
        return (1 - t) * za + t * zb
    return (torch.sin((1 - t) * omega) * za + torch.sin(t * omega) * zb) / torch.sin(omega)


@torch.no_grad()
def interpolate(model: VAE, xa: Tensor, xb: Tensor, steps: int = 10, method: str = "lerp",
                label: str | None = None, y_ends: Tensor | None = None) -> Tensor:
    """Decoded path between the posterior means of two inputs (each of shape ``data_shape``).

    A conditional model decodes the path with the class ``label``; it encodes the two inputs with their own
    labels ``y_ends`` (2,) where they are known, else with ``label`` too.
    """
    y = model.labels_named(label, steps)
    y_ends = y_ends if y_ends is not None or y is None else y[:2]
    za, zb = posterior_means(model, torch.stack([xa, xb]), y=y_ends)
    return decode_mean(model, path(za, zb, steps, method), y)


@torch.no_grad()
def kl_per_dimension(model: VAE, x: Tensor, batch_size: int = 1000, y: Tensor | None = None) -> Tensor:
    """Average over x of KL(q(z_j|x) || p(z_j)) (q(z_j|x, y) given labels y) for each dimension j of the top
    layer; shape (L,).

    NotAvailable when the model's posterior and prior do not factorise over the dimensions. A Monte-Carlo KL
    draws under a fixed seed, leaving the caller's random state as it was.
    """
    def batch_sum(xb: Tensor, yb: Tensor | None) -> Tensor:
        return model.infer(xb, yb)[0].kl_per_dimension().sum(0).double().cpu()  # (L,)

    with torch.random.fork_rng(devices=[model.device] if model.device.type == "cuda" else []):
        torch.manual_seed(0)
        total = batched(batch_sum, x, y, batch_size, model.device,
                        combine=sum_in_order)
    return total / len(x)


@torch.no_grad()
def prior_mean(model: VAE) -> Tensor:
    """E_p[z] (L,) on the CPU: the centre of the latent space."""
    return model.prior().mean.cpu()


@dataclass(frozen=True)
class Conditioning:
    """What a conditional model's traversal encodes and decodes with: the labels of x (N,), that of the base
    input (1,) and the class ``label`` the grid is decoded with (the base's own when None)."""

    y: Tensor | None = None
    base_y: Tensor | None = None
    label: str | None = None


class Ranking(NamedTuple):
    """Latent dimensions, most informative first, their scores (L,) and what the scores are."""

    dims: list[int]
    scores: Tensor
    ranked_by: str
    measure: str  # "kl" or "variance"


@torch.no_grad()
def rank_dimensions(model: VAE, x: Tensor, y: Tensor | None = None) -> Ranking:
    """The dimensions by average KL(q(z_j|x) || p(z_j)) over x, where posterior and prior factorise; otherwise
    (a mixture or flow) by the variance of the posterior means over x, the statistic behind active units."""
    try:
        scores, how = kl_per_dimension(model, x, y=y), f"average KL(q(z_j|x) || p(z_j)) over {len(x)} inputs"
        measure = "kl"
    except NotAvailable:
        scores = posterior_means(model, x, y=y).double().var(0, unbiased=False)
        how = f"variance of the posterior means over {len(x)} inputs (this model has no KL per dimension)"
        measure = "variance"
    return Ranking(torch.argsort(scores, descending=True).tolist(), scores, how, measure)


class Traversal(NamedTuple):
    """A traversal grid (rows * steps, *data_shape), the dimension of each row, how they were chosen, each row's
    ranking score (its ``measure``: "kl" or "variance") and the value of each column."""

    grid: Tensor
    dims: list[int]
    ranked_by: str
    scores: list[float]
    measure: str
    values: list[float]


@torch.no_grad()
def traverse(model: VAE, x: Tensor, base: Tensor | None = None, n_dims: int = 8, steps: int = 9,
             span: float = 3.0, cond: Conditioning = Conditioning()) -> Traversal:
    """Sweep the ``n_dims`` most informative dimensions (``rank_dimensions`` over x) from -span to +span.

    The other dimensions stay at the base code (the posterior mean of ``base``, or the prior's mean). Returns
    the decoded grid (n_dims * steps, *data_shape), row by row, and the dimensions in the order of the rows.
    """
    ranking = rank_dimensions(model, x, cond.y)
    dims = ranking.dims[: min(n_dims, model.latent_dim)]
    n = len(dims) * steps
    if cond.label is None and cond.base_y is not None:  # decode with the base input's own class
        y = cond.base_y.to(model.device).expand(n)
    else:
        y = model.labels_named(cond.label, n)
    base_y = cond.base_y if cond.base_y is not None or y is None else y[:1]
    z0 = posterior_means(model, base[None], y=base_y)[0] if base is not None else prior_mean(model)
    values = torch.linspace(-span, span, steps)
    codes = z0.repeat(n, 1)  # (R*S, L)
    for row, d in enumerate(dims):
        codes[row * steps : (row + 1) * steps, d] = values
    scores = [float(ranking.scores[d]) for d in dims]
    return Traversal(decode_mean(model, codes, y), dims, ranking.ranked_by, scores, ranking.measure, values.tolist())

