"""Priors p(z): one class each, chosen by ``model.prior`` through the registry ``PRIORS``.

A prior is an ``nn.Module`` (it may learn parameters) whose call returns p(z) as a ``torch.distributions``
object with event shape (L,). Registering a new one is one class and one ``register`` call.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from vaekit.errors import ConfigError


class Prior(nn.Module):
    """p(z) over ``latent_dim`` dimensions; ``prior()`` returns the distribution."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # follows the model's device and dtype

    def forward(self) -> Distribution:
        raise NotImplementedError

    def zeros(self) -> Tensor:
        """(L,) zeros on the model's device and in its dtype: a place to start a fixed prior's parameters."""
        return self._anchor.expand(self.latent_dim)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """n draws (n, L); ``temperature`` T scales each draw's distance from the prior's mean by T.

        With ``generator`` the draws come from a global RNG seeded from it and restored afterwards, since
        ``torch.distributions`` samplers take no generator.
        """
        pz = self()
        devices = [self._anchor.device] if self._anchor.is_cuda else []
        with torch.random.fork_rng(devices=devices, enabled=generator is not None):
            if generator is not None:
                torch.manual_seed(int(torch.randint(2**62, (), generator=generator, device=generator.device)))
            z = pz.sample((n,))  # (n, L)
        return z if temperature == 1.0 else pz.mean + temperature * (z - pz.mean)


class StandardNormal(Prior):
    """p(z) = N(0, I)."""

    def forward(self) -> Distribution:
        zero = self.zeros()  # (L,)
        cached = getattr(self, "_pz", None)  # a fixed distribution: built once per device and dtype, not per step
        if cached is None or cached.mean.device != zero.device or cached.mean.dtype != zero.dtype:
            cached = Independent(Normal(zero, torch.ones_like(zero), validate_args=False), 1, validate_args=False)
            self._pz = cached
        return cached

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """z = T eps with eps ~ N(0, I) drawn from ``generator``; (n, L)."""
        return torch.randn(n, self.latent_dim, generator=generator, device=self._anchor.device,
                           dtype=self._anchor.dtype) * temperature


PRIORS: dict[str, type[Prior]] = {"standard-normal": StandardNormal}


def register(name: str, cls: type[Prior]) -> None:
    """Make ``cls`` available as ``model.prior = name``."""
    PRIORS[name] = cls


def build(name: str, latent_dim: int) -> Prior:
    """The prior registered under ``name``, over ``latent_dim`` dimensions."""
    if name not in PRIORS:
        raise ConfigError(f"unknown prior {name!r}; valid priors: {', '.join(PRIORS)}")
    return PRIORS[name](latent_dim)
