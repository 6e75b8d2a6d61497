"""Training and evaluation objectives: the (beta-weighted) ELBO and the importance-weighted bound.

All values are in nats per example: summed over data dimensions, averaged over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import NamedTuple

import torch
from torch import Tensor
from torch.distributions import Distribution, kl_divergence

from vaekit.model import VAE

# model(x) -> (q(z|x), z, p(x|z)); a DistributedDataParallel wrapper has the same call signature
Forward = Callable[[Tensor], tuple[Distribution, Tensor, Distribution]]


class ELBOTerms(NamedTuple):
    """Batch means of the loss and its parts (scalars)."""

    loss: Tensor  # recon + beta * kl, what training minimises
    recon: Tensor  # -E_q[log p(x|z)], one-sample estimate
    kl: Tensor  # KL(q(z|x) || p(z)), analytic for the Gaussian posterior


def elbo_per_example(model: VAE, x: Tensor, forward: Forward | None = None) -> tuple[Tensor, Tensor]:
    """Per-example reconstruction term -log p(x|z), z ~ q(z|x), and analytic KL; each (B,).

    ``forward`` replaces ``model(x)``, e.g. by a DistributedDataParallel wrapper of the model.
    """
    qz_x, _z, px_z = (forward or model)(x)
    recon = -px_z.log_prob(x)  # (B,)
    kl = kl_divergence(qz_x, model.prior())  # (B,)
    return recon, kl


def elbo(model: VAE, x: Tensor, beta: float = 1.0, forward: Forward | None = None) -> ELBOTerms:
    """Negative ELBO, -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)) (Higgins et al. 2017 for beta != 1)."""
    recon, kl = elbo_per_example(model, x, forward)
    recon, kl = recon.mean(), kl.mean()
    return ELBOTerms(recon + beta * kl, recon, kl)


def log_weights(model: VAE, x: Tensor, k: int, eps: Tensor | None = None) -> Tensor:
    """log w_i = log p(x, z_i) - log q(z_i|x) for k reparameterised z_i ~ q(z|x); shape (k, B).

    With ``eps`` (k, L), z_i = mu + sigma * eps_i uses the same standard-normal draws for every input
    (common random numbers), so an input's value does not depend on the batch it is in.
    """
    qz_x = model.encode(x)
    z = qz_x.rsample((k,)) if eps is None else qz_x.mean + qz_x.stddev * eps[:, None, :]  # (k, B, L)
    log_q = qz_x.log_prob(z)  # (k, B)
    log_pz = model.prior().log_prob(z)  # (k, B)
    log_px_z = model.decode(z).log_prob(x)  # x broadcasts over the k samples  # (k, B)
    return log_px_z + log_pz - log_q


def iwae_bound(model: VAE, x: Tensor, k: int, chunk: int | None = None, eps: Tensor | None = None) -> Tensor:
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
                                    None if eps is None else eps[start : start + chunk]), dim=0)  # (B,)
        for start in range(0, k, chunk)
    ]
    return torch.logsumexp(torch.stack(partial), dim=0) - math.log(k)


@torch.no_grad()
def dataset_elbo(model: VAE, x: Tensor, batch_size: int = 1000) -> dict[str, float]:
    """Negative ELBO and its parts averaged over all of ``x`` (every example counted, none dropped)."""
    sums = torch.zeros(2, device=x.device, dtype=torch.float64)
    for start in range(0, len(x), batch_size):
        recon, kl = elbo_per_example(model, x[start : start + batch_size])
        sums += torch.stack([recon.sum(), kl.sum()]).double()
    recon_mean, kl_mean = (sums / len(x)).tolist()
    return {"neg_elbo": recon_mean + kl_mean, "recon": recon_mean, "kl": kl_mean}
