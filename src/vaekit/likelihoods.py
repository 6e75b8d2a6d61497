"""Decoder output -> a torch.distributions object for p(x|z).

This is the one place that knows the likelihoods. Each entry says how many decoder outputs it needs per data
dimension, how to turn them into a distribution, and which data it supports.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.distributions import Bernoulli, Distribution, Independent, Normal

from vaekit.errors import ConfigError, DataError

# Bounds on the learned log standard deviation: exp(-7) ~ 1e-3 keeps densities finite in fp32 and bf16.
LOGSTD_MIN, LOGSTD_MAX = -7.0, 2.0


@dataclass(frozen=True)
class Likelihood:
    """How decoder outputs parameterise p(x|z)."""

    name: str
    n_params: int  # decoder outputs per data dimension
    build: Callable[[tuple[Tensor, ...], float], Distribution]  # (one (..., *shape) per param, obs_std)
    support: tuple[float, float] | None  # closed range the data must lie in, None for the real line


def _bernoulli(params: tuple[Tensor, ...], obs_std: float) -> Distribution:
    # Logits, not probabilities: log_prob is then computed stably as -BCE-with-logits.
    # validate_args=False lets it score grey levels in [0, 1], as the seed tutorials do.
    return Bernoulli(logits=params[0], validate_args=False)


def _gaussian(params: tuple[Tensor, ...], obs_std: float) -> Distribution:
    return Normal(params[0], torch.full_like(params[0], obs_std), validate_args=False)


def _gaussian_learned(params: tuple[Tensor, ...], obs_std: float) -> Distribution:
    mean, log_std = params
    return Normal(mean, log_std.clamp(LOGSTD_MIN, LOGSTD_MAX).exp(), validate_args=False)


LIKELIHOODS: dict[str, Likelihood] = {
    "bernoulli": Likelihood("bernoulli", 1, _bernoulli, (0.0, 1.0)),
    "gaussian": Likelihood("gaussian", 1, _gaussian, None),
    "gaussian-learned": Likelihood("gaussian-learned", 2, _gaussian_learned, None),
}


def get(name: str) -> Likelihood:
    """The likelihood registered under ``name``."""
    if name not in LIKELIHOODS:
        raise ConfigError(f"unknown likelihood {name!r}; valid likelihoods: {', '.join(LIKELIHOODS)}")
    return LIKELIHOODS[name]


def px_z(name: str, params: Tensor, event_ndim: int, obs_std: float = 1.0) -> Distribution:
    """p(x|z) from decoder outputs ``params`` of shape (..., n_params, *shape), ``len(shape) == event_ndim``.

    The leading dimensions are batch dimensions, so one call can hold several posterior samples per input.
    """
    base = get(name).build(params.unbind(dim=-1 - event_ndim), obs_std)
    return Independent(base, event_ndim, validate_args=False)


def check_support(name: str, x: Tensor, what: str = "data") -> None:
    """Refuse data outside the likelihood's support or with NaN/inf, naming the observed range."""
    if x.numel() == 0:
        raise DataError(f"{what} is empty")
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):  # min/max propagate NaN
        raise DataError(f"{what} contains NaN or infinite values")
    support = get(name).support
    if support is not None and (lo < support[0] or hi > support[1]):
        raise DataError(
            f"the {name} likelihood needs {what} in [{support[0]:g}, {support[1]:g}], but it spans "
            f"[{lo:g}, {hi:g}]; rescale the data or choose --likelihood gaussian"
        )
