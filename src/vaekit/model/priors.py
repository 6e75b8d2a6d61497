"""Priors p(z): one class each, chosen by ``model.prior`` through the registry ``PRIORS``.

A prior is an ``nn.Module`` (it may learn parameters) whose call returns p(z) as a ``torch.distributions``
object with event shape (L,). Registering a new one is one class and one ``register`` call.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn
from torch.distributions import Categorical, Distribution, Independent, MixtureSameFamily, Normal

from vaekit.batches import floats
from vaekit.config import ModelConfig
from vaekit.errors import ConfigError
from vaekit.model.registry import lookup

# log scale of the mixture prior's components: exp(-7) ~ 1e-3 keeps densities finite in fp32 and bf16
LOG_SCALE_MIN, LOG_SCALE_MAX = -7.0, 5.0


class Prior(nn.Module):
    """p(z) over ``latent_dim`` dimensions; ``prior()`` returns the distribution.

    ``config`` (the model's) carries a prior's own settings, e.g. ``prior_components``.
    """

    def __init__(self, latent_dim: int, config: ModelConfig | None = None) -> None:
        super().__init__()
        self.latent_dim = latent_dim
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # follows the model's device and dtype

    def forward(self) -> Distribution:
        raise NotImplementedError

    def zeros(self) -> Tensor:
        """(L,) zeros on the model's device and in its dtype: a place to start a fixed prior's parameters."""
        return self._anchor.expand(self.latent_dim)

    def bind(self, encode: Callable[..., Distribution]) -> None:
        """Called by the model with its q(z|x): a prior defined through the encoder (VampPrior) keeps it."""

    def init_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Set data-dependent initial values from training inputs x before training starts (none by default)."""

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


class MixturePrior(Prior):
    """p(z) = sum_k pi_k N(z; m_k, diag(s_k^2)): K components with learned weights, means and scales."""

    def __init__(self, latent_dim: int, config: ModelConfig | None = None) -> None:
        super().__init__(latent_dim, config)
        k = config.prior_components if config is not None else 10
        self.logits = nn.Parameter(torch.zeros(k))  # (K,)
        self.means = nn.Parameter(torch.randn(k, latent_dim))  # (K, L): spread like draws from N(0, I)
        self.log_scales = nn.Parameter(torch.zeros(k, latent_dim))  # (K, L)

    def forward(self) -> Distribution:
        scales = self.log_scales.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX).exp()
        components = Independent(Normal(self.means, scales, validate_args=False), 1, validate_args=False)
        return GaussianMixture(Categorical(logits=self.logits, validate_args=False), components, validate_args=False)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """A component k ~ pi, then z = m_k + T s_k eps: the temperature narrows each component."""
        return sample_mixture(self(), n, temperature, generator)


class VampPrior(Prior):
    """p(z) = (1/K) sum_k q(z | u_k): the posteriors of K learned pseudo-inputs u_k (Tomczak & Welling 2018),
    initialised from training inputs. Its KL with a posterior has no closed form: it is estimated by Monte Carlo.
    """

    def __init__(self, latent_dim: int, config: ModelConfig | None = None) -> None:
        super().__init__(latent_dim, config)
        if config is None or config.data_shape is None:
            raise ConfigError("the vamp prior needs model.data_shape: its pseudo-inputs are inputs of the encoder")
        if config.conditional:
            raise ConfigError("the vamp prior is not available for conditional models: its pseudo-inputs carry "
                              "no label; use model.prior = standard-normal or mog")
        if config.posterior != "diagonal-gaussian":
            raise ConfigError(f"the vamp prior mixes diagonal-Gaussian posteriors; model.posterior is "
                              f"{config.posterior!r}")
        self.u = nn.Parameter(torch.zeros(config.prior_components, *config.data_shape))  # (K, *shape)
        self._encode: Callable[..., Distribution] | None = None

    def bind(self, encode: Callable[..., Distribution]) -> None:
        self.__dict__["_encode"] = encode  # a plain attribute: the model is not a sub-module of its prior

    def init_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Pseudo-inputs u_k: K training inputs drawn without replacement (with, when there are fewer)."""
        k = len(self.u)
        idx = torch.randperm(len(x), generator=generator, device=generator.device)[:k] if len(x) >= k else \
            torch.randint(len(x), (k,), generator=generator, device=generator.device)
        with torch.no_grad():
            self.u.copy_(floats(x[idx.to(x.device)]))  # x may hold bytes: the pseudo-inputs are values

    def forward(self) -> Distribution:
        if self._encode is None:
            raise ConfigError("the vamp prior is used by the model it belongs to (VAE binds its encoder)")
        components = self._encode(self.u)  # q(z | u_k), batch shape (K,)
        return GaussianMixture(self._uniform(), components, validate_args=False)

    def _uniform(self) -> Categorical:
        """The mixture weights 1/K: a constant, built once per device rather than at every step."""
        cached = getattr(self, "_weights", None)
        if cached is None or cached.logits.device != self.u.device:
            cached = Categorical(logits=torch.zeros(len(self.u), device=self.u.device), validate_args=False)
            self._weights = cached
        return cached

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """A pseudo-input k uniformly, then z = mu(u_k) + T sigma(u_k) eps."""
        return sample_mixture(self(), n, temperature, generator)


class GaussianMixture(MixtureSameFamily):
    """p(z) = sum_k pi_k N(z; m_k, diag(s_k^2)), torch's MixtureSameFamily of diagonal Gaussians, whose log_prob
    scores every z against every component by matrix products instead of dimension by dimension.

    torch builds the (..., K, L) array of per-dimension terms in six element-wise passes, and autograd as many
    again: for the vamp preset (K = 500, L = 40, batch 100) that was 80% of a CPU training step, and in
    evaluation an array of K * L = 20,000 values per latent sample, which the chunking bounds only by the
    decoder's width. The quadratic form is instead
        sum_j (z_j - m_kj)^2 / s_kj^2 = z^2 (1/s^2)^T - 2 z (m/s^2)^T + sum_j m_kj^2 / s_kj^2,
    two products of (..., L) by (L, K), taken in float64 so that the expansion cancels no digit that matters (a
    component as narrow as the posterior's clamp allows weighs 1/s^2 ~ 1e13); autocast leaves float64 alone.
    Values and gradients agree with torch's to float32 rounding (tests/test_families.py).
    """

    def log_prob(self, value: Tensor) -> Tensor:
        normal = self.component_distribution.base_dist  # Normal, batch (K, L)
        m, s = normal.loc.double(), normal.scale.double()  # (K, L)
        z = value.double()  # (..., L)
        precision = s.pow(-2)  # (K, L)
        quad = (z * z) @ precision.T - 2 * (z @ (m * precision).T) + (m * m * precision).sum(-1)  # (..., K)
        log_norm = s.log().sum(-1) + 0.5 * s.shape[-1] * math.log(2 * math.pi)  # (K,)
        log_pz_k = (-0.5 * quad - log_norm).to(value.dtype)  # log N(z; m_k, s_k)  # (..., K)
        return torch.logsumexp(log_pz_k + torch.log_softmax(self.mixture_distribution.logits, dim=-1), dim=-1)


def sample_mixture(pz: MixtureSameFamily, n: int, temperature: float, generator: torch.Generator | None) -> Tensor:
    """n draws (n, L) of a mixture of diagonal Gaussians, each component's spread scaled by the temperature."""
    components = pz.component_distribution.base_dist  # Normal, batch (K, L)
    k = torch.multinomial(pz.mixture_distribution.probs, n, replacement=True, generator=generator)  # (n,)
    eps = torch.randn(n, components.loc.shape[-1], generator=generator, device=components.loc.device,
                      dtype=components.loc.dtype)
    return components.loc[k] + temperature * components.scale[k] * eps


PRIORS: dict[str, type[Prior]] = {"standard-normal": StandardNormal, "mog": MixturePrior, "vamp": VampPrior}


def register(name: str, cls: type[Prior]) -> None:
    """Make ``cls`` available as ``model.prior = name``."""
    PRIORS[name] = cls


def build(name: str, latent_dim: int, config: ModelConfig | None = None) -> Prior:
    """The prior registered under ``name``, over ``latent_dim`` dimensions."""
    return lookup(PRIORS, name, "prior")(latent_dim, config)
