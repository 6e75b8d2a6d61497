"""Posterior families q(z|x): one class each, chosen by ``model.posterior`` through the registry ``POSTERIORS``.

A family turns the encoder's output h into q(z|x) (a ``torch.distributions`` object with event shape (L,)),
draws reparameterised samples from it, optionally from noise shared by all inputs (common random numbers, so
that a score does not depend on the batch an input is in), and says what the embedding of x is.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal, TransformedDistribution

from vaekit.config import ModelConfig
from vaekit.model.flows import MADE, IAFStep
from vaekit.model.registry import lookup

# log sigma^2 is clamped so that exp() neither overflows nor underflows to a zero scale in fp32/bf16.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class Posterior(nn.Module):
    """A family of posteriors over ``latent_dim`` dimensions, parameterised by ``n_inputs`` encoder outputs.

    ``config`` (the model's) carries a family's own settings, e.g. ``flow_steps``.
    """

    def __init__(self, latent_dim: int, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.latent_dim = latent_dim

    @property
    def n_inputs(self) -> int:
        """Encoder outputs per input that parameterise q(z|x)."""
        raise NotImplementedError

    def forward(self, h: Tensor) -> Distribution:
        """q(z|x) from the encoder output h (B, n_inputs); batch shape (B,), event shape (L,)."""
        raise NotImplementedError

    def rsample(self, qz_x: Distribution, k: int | None = None, eps: Tensor | None = None) -> Tensor:
        """A reparameterised draw z (B, L), or k of them (k, B, L).

        ``eps`` (k, L) are standard-normal draws shared by every input: the family maps them to z.
        """
        if eps is None:
            return qz_x.rsample(() if k is None else (k,))
        return self.from_noise(qz_x, eps[:, None, :])

    def from_noise(self, qz_x: Distribution, eps: Tensor) -> Tensor:
        """z from standard-normal noise eps (k, 1, L), differentiable in q's parameters."""
        raise NotImplementedError(f"the {type(self).__name__} posterior cannot map shared noise to z")

    def mean(self, qz_x: Distribution) -> Tensor:
        """E_q[z] (B, L): the embedding of x."""
        return qz_x.mean

    def init_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Set data-dependent initial values from training inputs x before training starts (none by default)."""


class DiagonalGaussian(Posterior):
    """q(z|x) = N(mu, diag(exp(logvar))) with (mu, logvar) the two halves of h (Kingma & Welling 2014)."""

    @property
    def n_inputs(self) -> int:
        return 2 * self.latent_dim

    def forward(self, h: Tensor) -> Distribution:
        mu, logvar = h.chunk(2, dim=-1)  # (B, L) each
        logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        return Independent(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1, validate_args=False)

    def from_noise(self, qz_x: Distribution, eps: Tensor) -> Tensor:
        return qz_x.mean + qz_x.stddev * eps  # mu + sigma * eps  # (k, B, L)


class InverseAutoregressiveFlow(DiagonalGaussian):
    """q(z|x): a diagonal Gaussian transformed by T inverse autoregressive steps (Kingma et al. 2016).

    The encoder gives (mu, log sigma^2, context); each step's MADE reads the context, so the flow adapts to x.
    log q(z|x) is exact: the Gaussian's density minus the steps' log-determinants.
    """

    def __init__(self, latent_dim: int, config: ModelConfig | None = None) -> None:
        super().__init__(latent_dim, config)
        steps, hidden = (config.flow_steps, config.flow_hidden) if config is not None else (2, 256)
        self.made = nn.ModuleList(MADE(latent_dim, hidden, latent_dim, reverse=t % 2 == 1) for t in range(steps))

    @property
    def n_inputs(self) -> int:
        return 3 * self.latent_dim  # mu, log sigma^2 and the flow's context

    def forward(self, h: Tensor) -> Distribution:
        gauss, context = h[..., : 2 * self.latent_dim], h[..., 2 * self.latent_dim :]  # (B, 2L), (B, L)
        base = super().forward(gauss)
        return TransformedDistribution(base, [IAFStep(made, context) for made in self.made], validate_args=False)

    def from_noise(self, qz_x: Distribution, eps: Tensor) -> Tensor:
        return _through(qz_x, super().from_noise(qz_x.base_dist, eps))

    def mean(self, qz_x: Distribution) -> Tensor:
        """The flow applied to the Gaussian's mean: a deterministic code for x (E_q[z] has no closed form)."""
        return _through(qz_x, qz_x.base_dist.mean)


def _through(qz_x: TransformedDistribution, z: Tensor) -> Tensor:
    """z0 of the base distribution through the flow's steps; the steps cache it, so log_prob(z) is cheap."""
    for step in qz_x.transforms:
        z = step(z)
    return z


POSTERIORS: dict[str, type[Posterior]] = {"diagonal-gaussian": DiagonalGaussian, "iaf": InverseAutoregressiveFlow}


def register(name: str, cls: type[Posterior]) -> None:
    """Make ``cls`` available as ``model.posterior = name``."""
    POSTERIORS[name] = cls


def build(name: str, latent_dim: int, config: ModelConfig | None = None) -> Posterior:
    """The posterior family registered under ``name``, over ``latent_dim`` dimensions."""
    return lookup(POSTERIORS, name, "posterior")(latent_dim, config)
