"""Training and evaluation objectives: the ELBO (beta, free bits) and the importance-weighted bound (IWAE).

Each reads one ``Pass`` of the model, whatever its prior, posterior family or number of stochastic layers.
All values are in nats per example: summed over data dimensions, averaged over the batch.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple

import torch
from torch import Tensor

from vaekit.batches import batched, sum_in_order
from vaekit.model import VAE, NotAvailable, Pass

# Burda et al. 2015: a latent unit is active when Cov_x(E_q[u]) exceeds 0.01.
ACTIVE_UNIT_THRESHOLD = 1e-2
# model(x, y, k) -> Pass; a DistributedDataParallel wrapper has the same call signature
Forward = Callable[..., Pass]
# nats per latent dimension: one floor for every layer, or one per layer, top first
FreeBits = float | tuple[float, ...]


class ELBOTerms(NamedTuple):
    """Batch means of the loss and its parts (scalars)."""

    loss: Tensor  # what training minimises: recon + beta * kl, or -L_k for the IWAE objective
    recon: Tensor  # -E_q[log p(x|z)], one-sample (or k-sample) estimate
    kl: Tensor  # KL(q(z|x) || p(z)): analytic where the parts have it, else a Monte-Carlo estimate


def elbo_per_example(model: VAE, x: Tensor, forward: Forward | None = None,
                     y: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """Per-example reconstruction term -log p(x|z), z ~ q(z|x), and KL; each (B,).

    ``forward`` replaces ``model``, e.g. by a DistributedDataParallel wrapper; ``y`` are the labels of a
    conditional model.
    """
    out = (forward or model)(x, y)
    return -out.px_z.log_prob(x), out.kl


def elbo(model: VAE, x: Tensor, beta: float | Tensor = 1.0, forward: Forward | None = None,
         y: Tensor | None = None, free_bits: FreeBits = 0.0) -> ELBOTerms:
    """Negative ELBO, -E_q[log p(x|z)] + beta * KL(q(z|x) || p(z)) (Higgins et al. 2017 for beta != 1).

    With ``free_bits`` = lambda > 0, the loss counts each latent dimension's batch-mean KL as at least
    lambda nats, sum_j max(lambda, E_x KL_j) (Kingma et al. 2016, eq. 15), so no dimension is pushed all the
    way to the prior early in training; the reported ``kl`` stays the true KL. A tuple gives each stochastic
    layer its own lambda (top first), e.g. to keep the top of a hierarchy in use. Free bits need a posterior
    and prior that factorise over the dimensions.
    """
    out = (forward or model)(x, y)
    recon = -out.px_z.log_prob(x).mean()
    floors = per_layer(free_bits, len(out.latents))
    kl_j = batch_kl_per_dimension(out, required=any(floors))  # (L,) or None
    kl = out.kl.mean() if kl_j is None else kl_j.sum()
    kl_loss = _floored(kl_j, out, floors) if any(floors) else kl
    return ELBOTerms(recon + beta * kl_loss, recon, kl)


def per_layer(free_bits: FreeBits, layers: int) -> tuple[float, ...]:
    """The free-bits floor of each of ``layers`` stochastic layers: one value for all, or one each."""
    if isinstance(free_bits, tuple):
        if len(free_bits) != layers:
            raise ValueError(f"free bits for {len(free_bits)} layers given to a model with {layers}")
        return free_bits
    return (free_bits,) * layers


def _floored(kl_j: Tensor, out: Pass, floors: tuple[float, ...]) -> Tensor:
    """sum_j max(lambda_l(j), KL_j), each layer's dimensions floored at its own lambda."""
    widths = [latent.qz_x.event_shape[-1] for latent in out.latents]
    return sum(part.clamp(min=floor).sum() for part, floor in zip(kl_j.split(widths), floors, strict=True))


def batch_kl_per_dimension(out: Pass, required: bool = False) -> Tensor | None:
    """The batch-mean KL of each latent dimension (L,), or None (NotAvailable when ``required``) where the
    parts do not factorise."""
    try:
        return out.kl_per_dimension().mean(0)
    except NotAvailable:
        if required:
            raise
        return None


def iwae(model: VAE, x: Tensor, k: int, beta: float | Tensor = 1.0, forward: Forward | None = None,
         y: Tensor | None = None) -> ELBOTerms:
    """The IWAE training objective -L_k (Burda et al. 2015) with its k-sample reconstruction and the KL.

    ``beta`` scales log p(z) - log q(z|x) inside each weight, which is how a KL warm-up acts on this bound.
    """
    out = (forward or model)(x, y, k)  # z: (k, B, L)
    log_px_z = out.px_z.log_prob(x)  # (k, B)
    log_w = out.log_weights(x, beta, log_px_z)  # (k, B)
    bound = torch.logsumexp(log_w, dim=0) - math.log(k)  # (B,)
    return ELBOTerms(-bound.mean(), -log_px_z.mean(), out.kl.mean())


@dataclass(frozen=True)
class Objective:
    """What a training step minimises: the ELBO (with free bits) or the IWAE bound with k samples."""

    name: str = "elbo"
    k: int = 1
    free_bits: FreeBits = 0.0

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


def log_weights(model: VAE, x: Tensor, k: int, eps: Tensor | None = None, y: Tensor | None = None,
                prior_below: int = 0) -> Tensor:
    """log w_i = log p(x, z_i) - log q(z_i|x) for k reparameterised z_i ~ q(z|x); shape (k, B).

    With ``eps`` (k, L), the z_i come from the same standard-normal draws for every input (common random
    numbers), so an input's value does not depend on the batch it is in. ``prior_below`` draws the lowest
    layers of a hierarchy from their conditional priors (the weights of Havtorn et al.'s bound L^{>K}).
    """
    return model(x, y, k, eps, prior_below=prior_below).log_weights(x)


def iwae_bound(model: VAE, x: Tensor, k: int, chunk: int | None = None, eps: Tensor | None = None,
               y: Tensor | None = None, prior_below: int = 0) -> Tensor:
    """Importance-weighted bound L_k = log (1/k) sum_i w_i (Burda et al. 2015, eq. 8); shape (B,).

    L_1 is the one-sample ELBO and L_k rises towards log p(x) as k grows. Samples are drawn ``chunk`` at
    a time (default: all k) and combined with a log-sum-exp, so memory stays bounded for large k.
    ``eps`` (k, L) fixes the standard-normal draws, shared by all inputs (see ``log_weights``);
    ``prior_below`` = K gives L^{>K}, the bound with the lowest K layers from their conditional priors.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    chunk = k if chunk is None else max(1, min(chunk, k))
    draw = model.passes(x, y, prior_below)  # x encoded once for all the chunks
    partial = [
        torch.logsumexp(draw(min(chunk, k - start), None if eps is None else eps[start : start + chunk])
                        .log_weights(x), dim=0)  # (B,)
        for start in range(0, k, chunk)
    ]
    return torch.logsumexp(torch.stack(partial), dim=0) - math.log(k)


@torch.no_grad()
def dataset_elbo(model: VAE, x: Tensor, batch_size: int = 1000, y: Tensor | None = None) -> dict[str, float]:
    """Negative ELBO and its parts averaged over all of ``x`` (every example counted, none dropped)."""
    sums = batched(lambda xb, yb: torch.stack([t.sum() for t in elbo_per_example(model, xb, None, yb)]).double(),
                   x, y, batch_size, model.device, combine=sum_in_order)
    recon_mean, kl_mean = (sums / len(x)).tolist()
    return {"neg_elbo": recon_mean + kl_mean, "recon": recon_mean, "kl": kl_mean}


def count_active(mu: Tensor) -> int:
    """Active latent units (Burda et al. 2015): those whose posterior mean mu (N, L) varies over the inputs by
    more than ``ACTIVE_UNIT_THRESHOLD``."""
    return int((mu.double().var(dim=0, unbiased=False) > ACTIVE_UNIT_THRESHOLD).sum())
