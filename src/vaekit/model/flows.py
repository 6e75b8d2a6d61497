"""Inverse autoregressive flow (Kingma et al. 2016): MADE networks (Germain et al. 2015) and the flow step as a
``torch.distributions`` transform, so that a flow posterior is a ``TransformedDistribution`` with an exact
log q(z|x) (the base density minus the log-determinants).

One step maps z to sigma * z + (1 - sigma) * m with (m, s) = MADE(z, context) and sigma = sigmoid(s): each
output dimension depends on the earlier dimensions only, so the Jacobian is triangular with diagonal sigma and
log |det| = sum_i log sigma_i. Steps alternate the order of the dimensions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.distributions import constraints
from torch.distributions.transforms import Transform

GATE_BIAS = 2.0  # sigma starts near sigmoid(2) = 0.88: each step starts close to the identity (Kingma et al. 2016)


class MaskedLinear(nn.Linear):
    """A linear layer whose weight is multiplied by a fixed 0/1 mask (out, in)."""

    def __init__(self, d_in: int, d_out: int, mask: Tensor) -> None:
        super().__init__(d_in, d_out)
        self.register_buffer("mask", mask.float(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return F.linear(x, self.weight * self.mask, self.bias)


class MADE(nn.Module):
    """(m, s) = MADE(z, c): outputs i depend on the inputs before i in ``order`` and on the context c only."""

    def __init__(self, d: int, hidden: int, d_context: int, reverse: bool) -> None:
        super().__init__()
        order = torch.arange(d, 0, -1) if reverse else torch.arange(1, d + 1)  # (d,) degrees of the inputs
        degrees = torch.arange(hidden) % max(1, d - 1) + 1  # (H,) each hidden unit sees inputs of degree <= it
        self.hidden = MaskedLinear(d, hidden, degrees[:, None] >= order[None, :])
        self.context = nn.Linear(d_context, hidden)
        out_mask = order[:, None] > degrees[None, :]  # (d, H): strictly earlier inputs only
        self.m = MaskedLinear(hidden, d, out_mask)
        self.s = MaskedLinear(hidden, d, out_mask)
        for layer in (self.m, self.s):  # start near the identity map
            nn.init.zeros_(layer.weight)
            nn.init.zeros_(layer.bias)

    def forward(self, z: Tensor, c: Tensor) -> tuple[Tensor, Tensor]:
        """z (..., B, d), context c (B, C) broadcast over the leading sample dimensions; m and s (..., B, d)."""
        h = F.elu(self.hidden(z) + self.context(c))
        return self.m(h), self.s(h) + GATE_BIAS


class IAFStep(Transform):
    """One IAF step given the context of a batch of inputs; caches its last pair so that log_prob(z) of a
    z it produced needs no (sequential) inverse."""

    domain = constraints.independent(constraints.real, 1)
    codomain = constraints.independent(constraints.real, 1)
    bijective = True

    def __init__(self, made: MADE, context: Tensor) -> None:
        super().__init__(cache_size=1)
        self.made, self.c = made, context
        self._log_det: tuple[Tensor | None, Tensor | None] = (None, None)

    def _call(self, x: Tensor) -> Tensor:
        m, s = self.made(x, self.c)
        y = torch.sigmoid(s) * x + torch.sigmoid(-s) * m  # 1 - sigmoid(s) = sigmoid(-s)
        self._log_det = (x, F.logsigmoid(s).sum(-1))  # (..., B)
        return y

    def _inverse(self, y: Tensor) -> Tensor:
        """Dimension by dimension: after i passes the first i dimensions (in the step's order) are exact."""
        x = torch.zeros_like(y)
        for _ in range(y.shape[-1]):
            m, s = self.made(x, self.c)
            x = (y - torch.sigmoid(-s) * m) / torch.sigmoid(s)
        return x

    def log_abs_det_jacobian(self, x: Tensor, y: Tensor) -> Tensor:
        cached_x, log_det = self._log_det
        if x is cached_x:
            return log_det
        return F.logsigmoid(self.made(x, self.c)[1]).sum(-1)
