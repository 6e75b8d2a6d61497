"""Decoder output -> a torch.distributions object for p(x|z).

This is the one place that knows the likelihoods. Each entry says how many decoder outputs it needs per data
dimension, how to turn them into a distribution, which data it supports and whether its log_prob is a
probability (discrete data on a grid) or a density.

    bernoulli             logits; a probability on binary data, an unnormalised score on grey levels
    gaussian              mean, fixed standard deviation ``obs_std``; a density
    gaussian-learned      mean and log standard deviation; a density
    laplace               location, fixed scale ``obs_std``; a density whose -log grows as |x - m|, not its
                          square, so a few large values weigh less against the rest (robust reconstruction)
    laplace-learned       location and log scale; a density
    continuous-bernoulli  logits of the normalised density on [0, 1] (Loaiza-Ganem & Cunningham 2019)
    logistic              location and log-scale of a logistic discretized to the 8-bit grid k/255
                          (Salimans et al. 2017; Kingma et al. 2016); a probability
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.distributions import (
    Bernoulli,
    ContinuousBernoulli,
    Distribution,
    Independent,
    Laplace,
    Normal,
    constraints,
)

from vaekit.batches import floats
from vaekit.errors import DataError
from vaekit.model.registry import lookup

# Bounds on the learned log standard deviation: exp(-7) ~ 1e-3 keeps densities finite in fp32 and bf16.
LOGSTD_MIN, LOGSTD_MAX = -7.0, 2.0
# Bounds on the discretized logistic's log-scale. A probability cannot exceed 1, so a small scale cannot make
# the likelihood diverge as it does for a density; the lower bound only caps the gradients w.r.t. the location
# (they grow as 1/s) and is set where it costs nothing: at s = exp(-8) half a bin (1/510) is 5.8 scales, so a
# bin centred on its location still gets probability 0.994 (PixelCNN++'s -7 on [-1, 1] data is -7.7 here).
# The upper bound (s = 7.4, far wider than [0, 1]) keeps exp() finite and a bin's probability above zero.
LOG_SCALE_MIN, LOG_SCALE_MAX = -8.0, 2.0
# Distance from the grid, in grid steps, beyond which data counts as off the grid (float32 k/255 is ~1e-5 off).
GRID_TOLERANCE = 1e-3


@dataclass(frozen=True)
class Likelihood:
    """How decoder outputs parameterise p(x|z)."""

    name: str
    n_params: int  # decoder outputs per data dimension
    build: Callable[[tuple[Tensor, ...], float], Distribution]  # (one (..., *shape) per param, obs_std)
    support: tuple[float, float] | None  # closed range the data must lie in, None for the real line
    levels: int | None = None  # log_prob is a probability for data on the grid k/levels; None: a density
    grid_required: bool = False  # check_support refuses data off that grid
    # (decoder outputs (B, D), x (B, D), obs_std) -> (sum of -log p(x|z) over the batch, its gradient in the
    # outputs), written out for the CPU step that differentiates by hand (vaekit.training.fused); None: autograd only
    nll_and_grad: Callable[[Tensor, Tensor, float], tuple[Tensor, Tensor]] | None = None


def _bernoulli(params: tuple[Tensor, ...], obs_std: float) -> Distribution:
    # Logits, not probabilities: log_prob is then computed stably as -BCE-with-logits.
    # validate_args=False lets it score grey levels in [0, 1], as the seed tutorials do.
    return Bernoulli(logits=params[0], validate_args=False)


def _bernoulli_nll_and_grad(logits: Tensor, x: Tensor, obs_std: float) -> tuple[Tensor, Tensor]:
    # -log p = softplus(l) - x l (BCE with logits); d/dl = sigmoid(l) - x. The sum of x l as one dot product
    # spares two passes over (B, D) temporaries.
    return F.softplus(logits).sum() - torch.dot(x.reshape(-1), logits.reshape(-1)), torch.sigmoid(logits).sub_(x)


def _gaussian(params: tuple[Tensor, ...], obs_std: float) -> Distribution:
    return Normal(params[0], torch.full_like(params[0], obs_std), validate_args=False)


def _gaussian_nll_and_grad(mean: Tensor, x: Tensor, obs_std: float) -> tuple[Tensor, Tensor]:
    # -log p = (x - m)^2 / (2 s^2) + log s + log(2 pi) / 2 per dimension; d/dm = (m - x) / s^2
    diff = mean - x
    const = x.numel() * (math.log(obs_std) + 0.5 * math.log(2 * math.pi))
    return 0.5 * (diff * diff).sum() / obs_std**2 + const, diff.div_(obs_std**2)


def _gaussian_learned(params: tuple[Tensor, ...], obs_std: float) -> Distribution:
    mean, log_std = params
    return Normal(mean, log_std.clamp(LOGSTD_MIN, LOGSTD_MAX).exp(), validate_args=False)


def _gaussian_learned_nll_and_grad(params: Tensor, x: Tensor, obs_std: float) -> tuple[Tensor, Tensor]:
    # params (B, 2D): the means, then the log standard deviations r (vae.py's (P, *shape) layout), s = exp(r)
    # clamped. -log p = (x - m)^2 / (2 s^2) + log s + log(2 pi) / 2; d/dm = (m - x) / s^2 and
    # d/dr = 1 - (x - m)^2 / s^2 where the clamp passes r, 0 where it holds
    mean, raw = params.chunk(2, dim=1)
    log_std = raw.clamp(LOGSTD_MIN, LOGSTD_MAX)
    diff = mean - x
    inv_var = torch.exp(-2.0 * log_std)
    z2 = diff * diff * inv_var  # ((x - m) / s)^2
    nll = 0.5 * z2.sum() + log_std.sum() + x.numel() * 0.5 * math.log(2 * math.pi)
    grad = torch.empty_like(params)
    d_mean, d_raw = grad.chunk(2, dim=1)
    torch.mul(diff, inv_var, out=d_mean)
    torch.sub(1.0, z2, out=d_raw)
    d_raw.mul_(log_std == raw)
    return nll, grad


def _laplace(params: tuple[Tensor, ...], obs_std: float) -> Distribution:
    return Laplace(params[0], torch.full_like(params[0], obs_std), validate_args=False)


def _laplace_nll_and_grad(loc: Tensor, x: Tensor, obs_std: float) -> tuple[Tensor, Tensor]:
    # -log p = |x - m| / b + log(2 b) per dimension; d/dm = sign(m - x) / b (0 where m = x, as autograd's abs)
    diff = loc - x
    const = x.numel() * math.log(2 * obs_std)
    return diff.abs().sum() / obs_std + const, diff.sign_().div_(obs_std)


def _laplace_learned(params: tuple[Tensor, ...], obs_std: float) -> Distribution:
    loc, log_scale = params
    return Laplace(loc, log_scale.clamp(LOGSTD_MIN, LOGSTD_MAX).exp(), validate_args=False)


def _laplace_learned_nll_and_grad(params: Tensor, x: Tensor, obs_std: float) -> tuple[Tensor, Tensor]:
    # params (B, 2D): the locations, then the log scales r, b = exp(r) clamped. -log p = |x - m| / b + r + log 2;
    # d/dm = sign(m - x) / b and d/dr = 1 - |x - m| / b where the clamp passes r, 0 where it holds
    loc, raw = params.chunk(2, dim=1)
    log_scale = raw.clamp(LOGSTD_MIN, LOGSTD_MAX)
    diff = loc - x
    inv_b = torch.exp(-log_scale)
    t = diff.abs().mul_(inv_b)  # |x - m| / b
    nll = t.sum() + log_scale.sum() + x.numel() * math.log(2.0)
    grad = torch.empty_like(params)
    d_loc, d_raw = grad.chunk(2, dim=1)
    torch.mul(diff.sign_(), inv_b, out=d_loc)
    torch.sub(1.0, t, out=d_raw)
    d_raw.mul_(log_scale == raw)
    return nll, grad


class StableContinuousBernoulli(ContinuousBernoulli):
    """torch's ContinuousBernoulli with log_prob, mean and icdf computed from the logits eta.

    torch works from probs = sigmoid(eta), clamped to [eps, 1 - eps]: in float32 its log_prob is off by
    0.01 nat per dimension at eta = 15, 0.9 at |eta| = 40 and more beyond (past |eta| = 16 the density is
    no longer normalised and the normaliser's gradient vanishes), and its mean is off by 3e-3 just outside its
    Taylor region |probs - 0.5| < 1e-3. Written in eta, p(x) = eta exp(eta x) / expm1(eta) (Loaiza-Ganem &
    Cunningham 2019), every term is stable; the removable singularity at eta = 0 is handled by Taylor series.
    """

    def log_prob(self, value: Tensor) -> Tensor:
        return self.logits * value + _cb_log_norm(self.logits)

    @property
    def mean(self) -> Tensor:
        """E[x] = 1 / (1 - exp(-eta)) - 1 / eta = 1/2 + eta/12 - eta^3/720 + eta^5/30240 - ..."""
        eta = self.logits
        small = eta.abs() < 0.5  # series error < eta^7 / 1.2e6 < 1e-8; cancellation error below 1e-6 outside
        safe = torch.where(small, torch.ones_like(eta), eta)
        taylor = 0.5 + eta / 12 - eta**3 / 720 + eta**5 / 30240
        return torch.where(small, taylor, 1 / -torch.expm1(-safe) - 1 / safe)

    def icdf(self, value: Tensor) -> Tensor:
        """Inverse of F(x) = expm1(eta x) / expm1(eta), written for eta <= 0 and mirrored (x -> 1 - x)."""
        eta = self.logits
        a, v = eta.abs(), torch.where(eta > 0, 1 - value, value)  # X ~ CB(eta) <=> 1 - X ~ CB(-eta)
        small = a < 1e-6
        safe = torch.where(small, torch.ones_like(a), a)
        x = torch.where(small, v - a * v * (1 - v) / 2, torch.log1p(v * torch.expm1(-safe)) / -safe)
        return torch.where(eta > 0, 1 - x, x)


def _cb_log_norm(eta: Tensor) -> Tensor:
    """log C = log(eta / expm1(eta)) = -eta/2 - eta^2/24 + eta^4/2880 - ...; stable for any eta."""
    a = eta.abs()
    small = a < 1e-3  # series error < a^6 / 1e5
    safe = torch.where(small, torch.ones_like(a), a)
    exact = torch.log(safe / -torch.expm1(-safe)) - eta.clamp(min=0)
    return torch.where(small, -eta / 2 - eta**2 / 24, exact)


def _continuous_bernoulli(params: tuple[Tensor, ...], obs_std: float) -> Distribution:
    return StableContinuousBernoulli(logits=params[0], validate_args=False)


class DiscretizedLogistic(Distribution):
    """A logistic(loc, exp(log_scale)) discretized to the grid k/255, k = 0..255, of 8-bit data in [0, 1].

    P(x) = F(x + 1/510) - F(x - 1/510), with the bins of 0 and 1 extended to -inf and +inf
    (Salimans et al. 2017, PixelCNN++). In log space, with a = (x - 1/510 - loc)/s,
    b = (x + 1/510 - loc)/s: sigmoid(b) - sigmoid(a) = sigmoid(b) sigmoid(-a) (1 - exp(-(b - a))), a sum of
    three logs that never cancels or underflows (b - a = 1/(255 s) is at least 5e-4), so PixelCNN++'s
    fallback to the mid-bin density is not needed. Batch shape is the parameters' shape; no event dims.
    """

    arg_constraints: ClassVar[dict[str, constraints.Constraint]] = {
        "loc": constraints.real, "log_scale": constraints.real}
    support = constraints.unit_interval  # the grid k/255 within it
    levels: ClassVar[int] = 255

    def __init__(self, loc: Tensor, log_scale: Tensor, validate_args: bool | None = False) -> None:
        self.loc, log_scale = torch.broadcast_tensors(loc, log_scale)
        self.log_scale = log_scale.clamp(LOG_SCALE_MIN, LOG_SCALE_MAX)
        super().__init__(self.loc.shape, validate_args=validate_args)

    def log_prob(self, value: Tensor) -> Tensor:
        inv_s = torch.exp(-self.log_scale)
        half = 0.5 / self.levels
        a, b = (value - half - self.loc) * inv_s, (value + half - self.loc) * inv_s  # bin edges, in scales
        bottom, top = value < half, value > 1 - half  # the edge bins reach to -inf and +inf
        zero = torch.zeros((), dtype=a.dtype, device=a.device)
        log_width = torch.log(-torch.expm1(-inv_s / self.levels))  # log(1 - exp(-(b - a)))
        return (torch.where(bottom, zero, F.logsigmoid(-a)) + torch.where(top, zero, F.logsigmoid(b))
                + torch.where(bottom | top, zero, log_width))

    def sample(self, sample_shape: torch.Size | tuple[int, ...] = ()) -> Tensor:
        """A logistic draw loc + s log(u / (1 - u)), rounded to the grid and clamped to [0, 1]."""
        shape = self._extended_shape(torch.Size(sample_shape))
        with torch.no_grad():
            u = torch.rand(shape, dtype=self.loc.dtype, device=self.loc.device).clamp(1e-6, 1 - 1e-6)
            x = self.loc + self.log_scale.exp() * (torch.log(u) - torch.log1p(-u))
            return (x * self.levels).round().clamp(0, self.levels) / self.levels

    @property
    def mean(self) -> Tensor:
        """The exact mean sum_k (k/255) P(k) = (1/255) sum_{j=1..255} P(X >= j/255): 255 sigmoids a value.

        Summed in chunks of about 2**20 values: about 1 ms per 784-pixel image on one CPU core.
        """
        inv_s = torch.exp(-self.log_scale)
        edges = (torch.arange(1, self.levels + 1, dtype=self.loc.dtype, device=self.loc.device) - 0.5) / self.levels
        total = torch.zeros_like(self.loc)
        for t in edges.split(max(1, 2**20 // max(1, self.loc.numel()))):  # lower edges of bins 1..255  # (c,)
            t = t.view(-1, *([1] * self.loc.dim()))  # (c, 1, ..., 1)
            total = total + torch.sigmoid((self.loc - t) * inv_s).sum(0)  # P(X >= t) = 1 - F(t)
        return total / self.levels


def _logistic(params: tuple[Tensor, ...], obs_std: float) -> Distribution:
    loc, log_scale = params
    return DiscretizedLogistic(loc, log_scale)


LIKELIHOODS: dict[str, Likelihood] = {
    "bernoulli": Likelihood("bernoulli", 1, _bernoulli, (0.0, 1.0), levels=1, nll_and_grad=_bernoulli_nll_and_grad),
    "gaussian": Likelihood("gaussian", 1, _gaussian, None, nll_and_grad=_gaussian_nll_and_grad),
    "gaussian-learned": Likelihood("gaussian-learned", 2, _gaussian_learned, None,
                                   nll_and_grad=_gaussian_learned_nll_and_grad),
    "laplace": Likelihood("laplace", 1, _laplace, None, nll_and_grad=_laplace_nll_and_grad),
    "laplace-learned": Likelihood("laplace-learned", 2, _laplace_learned, None,
                                  nll_and_grad=_laplace_learned_nll_and_grad),
    "continuous-bernoulli": Likelihood("continuous-bernoulli", 1, _continuous_bernoulli, (0.0, 1.0)),
    "logistic": Likelihood("logistic", 2, _logistic, (0.0, 1.0), levels=255, grid_required=True),
}


def get(name: str) -> Likelihood:
    """The likelihood registered under ``name``."""
    return lookup(LIKELIHOODS, name, "likelihood")


def px_z(name: str, params: Tensor, event_ndim: int, obs_std: float = 1.0) -> Distribution:
    """p(x|z) from decoder outputs ``params`` of shape (..., n_params, *shape), ``len(shape) == event_ndim``.

    The leading dimensions are batch dimensions, so one call can hold several posterior samples per input.
    """
    dim = -1 - event_ndim
    # one parameter: a view, where unbind's backward would copy the whole gradient into a new tensor
    parts = (params.squeeze(dim),) if params.shape[dim] == 1 else params.unbind(dim)
    base = get(name).build(parts, obs_std)
    return Independent(base, event_ndim, validate_args=False)


def distinct_values(x: Tensor) -> Tensor:
    """Bytes: the values of the byte values present (at most 256, counted in one pass); else x itself. Range
    and grid checks on it say what they would on all of x, without making its float32 values."""
    if x.dtype != torch.uint8:
        return x
    return floats(torch.bincount(x.flatten(), minlength=256).nonzero().flatten().to(torch.uint8))


def _pieces(x: Tensor | Sequence[Tensor], rows: int = 4096) -> Iterator[Tensor]:
    """x's distinct values (bytes) or values, flat, in pieces; data read from disk (anything sliceable that
    is not a tensor) a few thousand rows at a time."""
    if isinstance(x, Tensor):
        yield from distinct_values(x.detach()).flatten().split(2**22)
        return
    for s in range(0, len(x), rows):
        yield from distinct_values(x[s : s + rows]).flatten().split(2**22)


def off_grid(x: Tensor, levels: int) -> float | None:
    """A value of ``x`` farther than GRID_TOLERANCE steps from the grid k/levels, or None if all lie on it."""
    for part in _pieces(x):
        scaled = part.to(torch.promote_types(part.dtype, torch.float32)) * levels  # float32: 255 k/255 +- 2e-5
        bad = (scaled - scaled.round()).abs() > GRID_TOLERANCE
        if bool(bad.any()):
            return float(part[bad][0])
    return None


def density_kind(name: str, x: Tensor) -> str:
    """What the likelihood's log_prob is on data ``x``: "discrete", "continuous" or "unnormalized".

    "discrete": a probability of x on its grid (bernoulli on binary data, logistic on 8-bit data);
    "continuous": a density, comparable only with densities on the same data scaling;
    "unnormalized": a discrete likelihood applied off its grid (bernoulli on grey levels), not a likelihood.
    """
    levels = get(name).levels
    if levels is None:
        return "continuous"
    return "discrete" if off_grid(x, levels) is None else "unnormalized"


def check_support(name: str, x: Tensor, what: str = "data") -> None:
    """Refuse data outside the likelihood's support or with NaN/inf, naming the observed range."""
    if x.numel() == 0:
        raise DataError(f"{what} is empty")
    x = distinct_values(x)
    lo, hi = float(x.min()), float(x.max())
    if not (math.isfinite(lo) and math.isfinite(hi)):  # min/max propagate NaN
        raise DataError(f"{what} contains NaN or infinite values")
    lk = get(name)
    if lk.support is not None and (lo < lk.support[0] or hi > lk.support[1]):
        raise DataError(
            f"the {name} likelihood needs {what} in [{lk.support[0]:g}, {lk.support[1]:g}], but it spans "
            f"[{lo:g}, {hi:g}]; rescale the data or choose --likelihood gaussian"
        )
    if lk.grid_required and lk.levels is not None and (bad := off_grid(x, lk.levels)) is not None:
        raise DataError(
            f"the {name} likelihood is for {math.log2(lk.levels + 1):g}-bit data on the grid k/{lk.levels}, but "
            f"{what} has values off that grid (e.g. {bad:.6g}); for continuous data in [0, 1] choose "
            "--likelihood continuous-bernoulli or gaussian-learned"
        )
