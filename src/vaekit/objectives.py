"""Training and evaluation objectives: the ELBO (beta, free bits) and the importance-weighted bound (IWAE).

All values are in nats per example: summed over data dimensions, averaged over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

from vaekit.model import VAE

# model(x, y) -> (q(z|x), z, p(x|z)); a DistributedDataParallel wrapper has the same call signature
Forward = Callable[..., tuple[Distribution, Tensor, Distribution]]


class ELBOTerms(NamedTuple):
    """Batch means of the loss and its parts (scalars)."""

    loss: Tensor  # what training minimises: recon + beta * kl, or -L_k for the IWAE objective
    recon: Tensor  # -E_q[log p(x|z)], one-sample (or k-sample) estimate
    kl: Tensor  # KL(q(z|x) || p(z)), analytic for the Gaussian posterior


def elbo_per_example(model: VAE, x: Tensor, forward: Forward | None = None,
                     y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-example reconstruction term -log p(x|z), z ~ q(z|x), and analytic KL; each (B,).

    ``forward`` replaces ``model``, e.g. by a DistributedDataParallel wrapper; ``y`` are the labels of a
    conditional model.
    """
    qz_x, _z, px_z = (forward or model)(x, y)
    recon = -px_z.log_prob(x)  # (B,)
    kl = kl_divergence(qz_x, model.prior())  # (B,)
    return recon, kl


def kl_per_dimension(qz_x: Distribution, pz: Distribution) -> Tensor:
    """KL(q(z_j|x) || p(z_j)) for each latent dimension j; shape (B, L)."""
    return kl_divergence(qz_x.base_dist, pz.base_dist)


def elbo(model: VAE, x: Tensor, beta: float | Tensor = 1.0, forward: Forward | None = None,
         y: Tensor | None = None, free_bits: float = 0.0) -> ELBOTerms:
    """Negative ELBO, -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)) (Higgins et al. 2017 for beta != 1).

    With ``free_bits`` = lambda > 0, the loss counts each latent dimension's batch-mean KL as at least
    lambda nats, sum_j max(lambda, E_x KL_j) (Kingma et al. 2016, eq. 15), so no dimension is pushed all the
    way to the prior early in training; the reported ``kl`` stays the true KL.
    """
    qz_x, _z, px_z = (forward or model)(x, y)
    recon = -px_z.log_prob(x).mean()
    kl_j = kl_per_dimension(qz_x, model.prior()).mean(0)  # (L,)
    kl = kl_j.sum()
    kl_loss = kl_j.clamp(min=free_bits).sum() if free_bits > 0 else kl
    return ELBOTerms(recon + beta * kl_loss, recon, kl)


def iwae(model: VAE, x: Tensor, k: int, beta: float | Tensor = 1.0, forward: Forward | None = None,
         y: Tensor | None = None) -> ELBOTerms:
    """The IWAE training objective -L_k (Burda et al. 2015) with its k-sample reconstruction and the KL.

    ``beta`` scales log p(z) - log q(z|x) inside each weight, which is how a KL warm-up acts on this bound.
    """
    qz_x, z, px_z = (forward or model)(x, y, k)  # z: (k, B, L)
    log_px_z = px_z.log_prob(x)  # (k, B)
    log_w = log_px_z + beta * (model.prior().log_prob(z) - qz_x.log_prob(z))  # (k, B)
    bound = torch.logsumexp(log_w, dim=0) - math.log(k)  # (B,)
    kl = kl_divergence(qz_x, model.prior()).mean()
    return ELBOTerms(-bound.mean(), -log_px_z.mean(), kl)


@dataclass(frozen=True)
class Objective:
    """What a training step minimises: the ELBO (with free bits) or the IWAE bound with k samples."""

    name: str = "elbo"
    k: int = 1
    free_bits: float = 0.0

    def __call__(self, model: VAE, x: Tensor, beta: float | Tensor = 1.0, forward: Forward | None = None,
                 y: Tensor | None = None) -> ELBOTerms:
        if self.name == "iwae":
            return iwae(model, x, self.k, beta, forward, y)
        return elbo(model, x, beta, forward, y, self.free_bits)


ELBO = Objective()


def kl_weight(beta: float, step: int, warmup_steps: int) -> float:
    """beta at optimizer step ``step`` (1-based) of a linear KL warm-up from 0 over ``warmup_steps`` steps.

    Annealing the KL weight from 0 (Bowman et al. 2016; Sonderby et al. 2016) lets the decoder learn to use z
    before the KL term pulls the posterior onto the prior.
    """
    return beta * min(1.0, step / warmup_steps) if warmup_steps > 0 else beta


def log_weights(model: VAE, x: Tensor, k: int, eps: Tensor | None = None, y: Tensor | None = None) -> Tensor:
    """log w_i = log p(x, z_i) - log q(z_i|x) for k reparameterised z_i ~ q(z|x); shape (k, B).

    With ``eps`` (k, L), z_i = mu + sigma * eps_i uses the same standard-normal draws for every input
    (common random numbers), so an input's value does not depend on the batch it is in.
    """
    qz_x = model.encode(x, y)
    z = qz_x.rsample((k,)) if eps is None else qz_x.mean + qz_x.stddev * eps[:, None, :]  # (k, B, L)
    log_q = qz_x.log_prob(z)  # (k, B)
    log_pz = model.prior().log_prob(z)  # (k, B)
    log_px_z = model.decode(z, y).log_prob(x)  # x broadcasts over the k samples  # (k, B)
    return log_px_z + log_pz - log_q


def iwae_bound(model: VAE, x: Tensor, k: int, chunk: int | None = None, eps: Tensor | None = None,
               y: Tensor | None = None) -> Tensor:
    """Importance-weighted bound L_k = log (1/k) sum_i w_i (Burda et al. 2015, eq. 8); shape (B,).

    L_1 is the one-sample ELBO and L_k rises towards log p(x) as k grows. Samples are drawn ``chunk`` at
    a time (default: all k) and combined with a log-sum-exp, so memory stays bounded for large k.
    ``eps`` (k, L) fixes the standard-normal draws, shared by all inputs (see ``log_weights``).
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    chunk = k if chunk is None else max(1, min(chunk, k))
    partial = [
        torch.logsumexp(log_weights(model, x, min(chunk, k - start),
                                    None if eps is None else eps[start : start + chunk], y), dim=0)  # (B,)
        for start in range(0, k, chunk)
    ]
    return torch.logsumexp(torch.stack(partial), dim=0) - math.log(k)


@torch.no_grad()
def dataset_elbo(model: VAE, x: Tensor, batch_size: int = 1000, y: Tensor | None = None) -> dict[str, float]:
    """Negative ELBO and its parts averaged over all of ``x`` (every example counted, none dropped)."""
    sums = torch.zeros(2, device=x.device, dtype=torch.float64)
    for start in range(0, len(x), batch_size):
        yb = None if y is None else y[start : start + batch_size]
        recon, kl = elbo_per_example(model, x[start : start + batch_size], None, yb)
        sums += torch.stack([recon.sum(), kl.sum()]).double()
    recon_mean, kl_mean = (sums / len(x)).tolist()
    return {"neg_elbo": recon_mean + kl_mean, "recon": recon_mean, "kl": kl_mean}
