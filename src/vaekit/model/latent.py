"""What one forward pass returns, read by every objective and every use: ``Pass`` and, per layer, ``Latent``.

Values are computed when first read and then kept: an objective that needs only the analytic KL never
evaluates log q(z|x), and reading the KL or the posterior mean draws no random numbers (z is drawn on first
use; in a hierarchy each layer's z is drawn when the layer below is built on it).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, kl_divergence

from vaekit.errors import VaekitError


class NotAvailable(VaekitError):
    """A quantity that this model's parts do not define (e.g. a per-dimension KL of a non-factorised posterior)."""


@dataclass(eq=False)
class Latent:
    """One stochastic layer of a pass: q(z|x), the layer's prior p(z) and a reparameterised z ~ q(z|x)."""

    qz_x: Distribution  # batch shape (B,), or (k, B) below a layer with k samples; event shape (L,)
    pz: Distribution  # event shape (L,)
    draw: Callable[[], Tensor]  # the posterior family's sampler: z (B, L), or (k, B, L)
    embed: Callable[[], Tensor]  # the posterior family's E_q[z] (B, L)
    from_prior: bool = False  # z was drawn from p, not q: the layer adds nothing to the bound's log weight

    @cached_property
    def z(self) -> Tensor:
        return self.draw()

    @cached_property
    def mean(self) -> Tensor:
        """E_q[z] (B, L): the embedding of x."""
        return self.embed()

    @cached_property
    def log_q(self) -> Tensor:
        """log q(z|x) at the sampled z; (B,) or (k, B)."""
        return self.qz_x.log_prob(self.z)

    @cached_property
    def log_p(self) -> Tensor:
        """log p(z) at the sampled z; (B,) or (k, B)."""
        return self.pz.log_prob(self.z)

    @cached_property
    def analytic_kl(self) -> Tensor | None:
        """KL(q(z|x) || p(z)) in closed form (B,) where torch.distributions registers the pair, else None."""
        try:
            return kl_divergence(self.qz_x, self.pz)
        except NotImplementedError:
            return None

    @cached_property
    def kl(self) -> Tensor:
        """KL(q(z|x) || p(z)) per input (B,): analytic where it exists, else log q - log p at the sampled z
        (a one-sample Monte-Carlo estimate). Averaged over the k samples when there are several: of z, or, in a
        lower layer of a hierarchy, of the layer above that q and p are conditioned on."""
        kl = self.analytic_kl if self.analytic_kl is not None else self.log_q - self.log_p  # (B,) or (k, B)
        return _per_input(kl, 0)

    def kl_per_dimension(self) -> Tensor:
        """KL(q(z_j|x) || p(z_j)) for each dimension j, (B, L): analytic or one-sample Monte Carlo.

        Defined only where both q and p factorise over the dimensions (an ``Independent`` of a univariate
        family); NotAvailable otherwise, since a per-dimension split of a joint KL would be made up.
        """
        q, p = self.qz_x, self.pz
        if not (_factorised(q) and _factorised(p)):
            raise NotAvailable(f"the KL per latent dimension needs a posterior and prior that factorise over the "
                               f"dimensions; q(z|x) is {type(q).__name__} and p(z) is {type(p).__name__}")
        try:
            kl = kl_divergence(q.base_dist, p.base_dist)  # (B, L), or (k, B, L) below a sampled layer
        except NotImplementedError:
            kl = q.base_dist.log_prob(self.z) - p.base_dist.log_prob(self.z)
        return _per_input(kl, 1)


def _per_input(t: Tensor, event_dims: int) -> Tensor:
    """The mean over the sample dimensions in front of the batch: (..., B, *event) -> (B, *event)."""
    while t.dim() > 1 + event_dims:
        t = t.mean(0)
    return t


def _factorised(d: Distribution) -> bool:
    return isinstance(d, Independent) and d.reinterpreted_batch_ndims == 1 and d.base_dist.event_shape == ()


@dataclass(eq=False)
class Pass:
    """One pass through the model: each stochastic layer's ``Latent`` (one today) and p(x|z)."""

    latents: tuple[Latent, ...]
    px_z: Distribution  # batch shape (B,) or (k, B), event shape data_shape

    @property
    def z(self) -> Tensor:
        """The code the decoder read: the bottom layer's z."""
        return self.latents[-1].z

    @property
    def kl(self) -> Tensor:
        """Total KL over the layers, per input (B,)."""
        return total_kl(self.latents)

    @property
    def kl_per_layer(self) -> list[Tensor]:
        """The KL of each layer, top first, per input (B,)."""
        return [latent.kl for latent in self.latents]

    def kl_per_dimension(self) -> Tensor:
        """The KL of every latent dimension of every layer, (B, sum of L); NotAvailable where undefined."""
        parts = [latent.kl_per_dimension() for latent in self.latents]
        return parts[0] if len(parts) == 1 else torch.cat(parts, dim=-1)

    def log_weights(self, x: Tensor, beta: float | Tensor | None = None, log_px_z: Tensor | None = None) -> Tensor:
        """log w = log p(x|z) + log p(z) - log q(z|x) at the sampled z; (B,) or (k, B).

        With ``beta`` (a KL warm-up acting on the IWAE objective), log p(x|z) + beta (log p(z) - log q(z|x)).
        ``log_px_z`` passes log p(x|z) when the caller has already computed it.
        """
        drawn_from_q = [latent for latent in self.latents if not latent.from_prior]  # log p - log p = 0 for others
        log_p = _total([latent.log_p for latent in drawn_from_q])
        log_q = _total([latent.log_q for latent in drawn_from_q])
        if log_px_z is None:
            log_px_z = self.px_z.log_prob(x)  # x broadcasts over the k samples
        return log_px_z + log_p - log_q if beta is None else log_px_z + beta * (log_p - log_q)


def total_kl(latents: tuple[Latent, ...]) -> Tensor:
    """The KL of a pass's layers summed, per input (B,): from a ``Pass``, or from ``VAE.infer`` alone."""
    return _total([latent.kl for latent in latents])


def _total(parts: list[Tensor]) -> Tensor:
    out = parts[0]
    for t in parts[1:]:
        out = out + t
    return out
