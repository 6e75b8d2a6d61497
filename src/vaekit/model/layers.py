"""Stochastic layers: the model's stack, top first. The top layer's prior is the model's p(z); each lower
layer (a Ladder-style hierarchy, Sonderby et al. 2016) has a conditional prior p(z_l | z_{l+1}) and a posterior
q(z_l | x, z_{l+1}) that share the top-down features of the generative path.

A layer's ``infer`` returns its ``Latent``: z is drawn from q (or, for the lowest layers of the bound behind the
likelihood-ratio score, from the conditional prior), or set to the posterior mean for deterministic uses.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vaekit.model import nets, posteriors
from vaekit.model.latent import Latent


class LatentLayer(nn.Module):
    """The top stochastic layer: the posterior family q(z|h) over its ``latent_dim`` dimensions."""

    def __init__(self, posterior: posteriors.Posterior) -> None:
        super().__init__()
        self.posterior = posterior

    @property
    def latent_dim(self) -> int:
        return self.posterior.latent_dim

    def infer(self, h: Tensor, pz: Distribution, k: int | None, eps: Tensor | None, mean: bool = False) -> Latent:
        """This layer's part of a pass, from the encoder's output h (B, n_inputs) and the layer's prior."""
        qz_x = self.posterior(h)
        draw = (lambda: self.posterior.mean(qz_x)) if mean else (lambda: self.posterior.rsample(qz_x, k, eps))
        return Latent(qz_x, pz, draw, lambda: self.posterior.mean(qz_x))


class ConditionalLayer(nn.Module):
    """A lower layer: h = f(z_{l+1}); p(z_l | z_{l+1}) = N(head_p(h)); q(z_l | x, z_{l+1}) = N(head_q(h, d(x)))
    with d(x) the model's bottom-up features. Both are diagonal Gaussians with bounded log-variances."""

    def __init__(self, d_above: int, d: int, hidden: int, act: str) -> None:
        super().__init__()
        self.family = posteriors.DiagonalGaussian(d)
        self.top_down = nn.Sequential(nn.Linear(d_above, hidden), nets.activation(act))
        self.prior_head = nn.Linear(hidden, 2 * d)
        self.posterior_head = nets.MLP(2 * hidden, (hidden,), 2 * d, act)

    @property
    def latent_dim(self) -> int:
        return self.family.latent_dim

    def conditional_prior(self, z_above: Tensor) -> tuple[Distribution, Tensor]:
        """p(z_l | z_{l+1}) for z_{l+1} (..., B, d_above), and the top-down features h (..., B, hidden)."""
        h = self.top_down(z_above)
        return self.family(self.prior_head(h).to(z_above.dtype)), h  # distributions in the model's dtype (autocast)

    def infer(self, z_above: Tensor, features: Tensor, eps: Tensor | None, mean: bool = False,
              from_prior: bool = False) -> Latent:
        """This layer's part of a pass given the layer above's z and the bottom-up features d(x) (B, hidden);
        one z per z above. ``eps`` (k, d) is shared noise; ``from_prior`` draws z from p(z_l | z_{l+1})."""
        pz, h = self.conditional_prior(z_above)
        inputs = torch.cat([h, features.to(h.dtype).expand(*h.shape[:-1], -1)], dim=-1)
        qz_x = self.family(self.posterior_head(inputs).to(z_above.dtype))
        source = pz if from_prior else qz_x

        def draw() -> Tensor:
            if mean:
                return qz_x.mean
            return source.rsample() if eps is None else self.family.from_noise(source, eps[:, None, :])

        return Latent(qz_x, pz, draw, lambda: qz_x.mean, from_prior)

    @torch.no_grad()
    def sample(self, z_above: Tensor, temperature: float, generator: torch.Generator | None) -> Tensor:
        """z_l ~ p(z_l | z_{l+1}) with its spread scaled by the temperature (0: the conditional mean)."""
        pz, _ = self.conditional_prior(z_above)
        eps = torch.randn(pz.mean.shape, generator=generator, device=pz.mean.device, dtype=pz.mean.dtype)
        return pz.mean + temperature * pz.stddev * eps

    def prior_mean(self, z_above: Tensor) -> Tensor:
        """E[z_l | z_{l+1}]: how a code of the layer above is decoded without drawing the lower layers."""
        return self.conditional_prior(z_above)[0].mean
