"""Stochastic layers: the model's stack, top first. The top layer's prior is the model's p(z); each lower
layer (a Ladder-style hierarchy, Sonderby et al. 2016) has a conditional prior p(z_l | z_{>l}) and a posterior
q(z_l | x, z_{>l}) that share the deterministic top-down state of the generative path.

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

    spatial = False

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
    """A lower layer. A deterministic top-down state carries what the layers above decided (the generative path
    of NVAE / very deep VAEs, Vahdat & Kautz 2020, Child 2021): h_l = f_l(z_{l+1}) below the top layer and
    h_l = h_{l+1} + f_l(z_{l+1}, h_{l+1}) further down (a residual cell). p(z_l | z_{>l}) = N(head_p(h_l)) and
    q(z_l | x, z_{>l}) = N(head_q(h_l, d(x))) with d(x) the model's bottom-up features: inference shares the
    generative path. Both are diagonal Gaussians with bounded log-variances."""

    spatial = False  # reads the bottom-up feature vector, not a feature map

    def __init__(self, d_above: int, d: int, hidden: int, act: str, first: bool) -> None:
        super().__init__()
        self.family = posteriors.DiagonalGaussian(d)
        self.first = first  # the layer right below the top one: no state from above yet
        self.top_down = nn.Sequential(nn.Linear(d_above + (0 if first else hidden), hidden), nets.activation(act))
        self.prior_head = nn.Linear(hidden, 2 * d)
        self.posterior_head = nets.MLP(2 * hidden, (hidden,), 2 * d, act)

    @property
    def latent_dim(self) -> int:
        return self.family.latent_dim

    def descend(self, z_above: Tensor, h_above: Tensor | None) -> Tensor:
        """The top-down state h_l (..., B, hidden) from the layer above's z (..., B, d_above) and state."""
        if h_above is None:
            return self.top_down(z_above)
        return h_above + self.top_down(torch.cat([z_above, h_above.to(z_above.dtype)], dim=-1))

    def conditional_prior(self, h: Tensor, dtype: torch.dtype) -> Distribution:
        """p(z_l | z_{>l}) from the top-down state, as a distribution in ``dtype`` (fp32 under autocast)."""
        return self.family(self.prior_head(h).to(dtype))

    def infer(self, z_above: Tensor, h_above: Tensor | None, features: Tensor, eps: Tensor | None,
              mean: bool = False, from_prior: bool = False) -> tuple[Latent, Tensor]:
        """This layer's part of a pass given the layer above's z and state and the bottom-up features d(x)
        (B, hidden); one z per z above. ``eps`` (k, d) is shared noise; ``from_prior`` draws z from
        p(z_l | z_{>l}). Returns the layer's ``Latent`` and its top-down state."""
        h = self.descend(z_above, h_above)
        pz = self.conditional_prior(h, z_above.dtype)
        inputs = torch.cat([h, features.to(h.dtype).expand(*h.shape[:-1], -1)], dim=-1)
        qz_x = self.family(self.posterior_head(inputs).to(z_above.dtype))
        source = pz if from_prior else qz_x

        def draw() -> Tensor:
            if mean:
                return qz_x.mean
            return source.rsample() if eps is None else self.family.from_noise(source, eps[:, None, :])

        return Latent(qz_x, pz, draw, lambda: qz_x.mean, from_prior), h

    @torch.no_grad()
    def sample(self, z_above: Tensor, h_above: Tensor | None, temperature: float,
               generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """z_l ~ p(z_l | z_{>l}) with its spread scaled by the temperature (0: the conditional mean), and h_l."""
        h = self.descend(z_above, h_above)
        pz = self.conditional_prior(h, z_above.dtype)
        eps = torch.randn(pz.mean.shape, generator=generator, device=pz.mean.device, dtype=pz.mean.dtype)
        return pz.mean + temperature * pz.stddev * eps, h

    def prior_mean(self, z_above: Tensor, h_above: Tensor | None) -> tuple[Tensor, Tensor]:
        """E[z_l | z_{>l}] and h_l: how a code of the layers above is decoded without drawing this layer."""
        h = self.descend(z_above, h_above)
        return self.conditional_prior(h, z_above.dtype).mean, h


class SpatialLayer(ConditionalLayer):
    """A bottom layer whose z is a map of ``channels`` x h x w (held flat, channel-major, like a vector layer):
    the low-level features Havtorn et al. (2021) separate from the semantic ones above them. The vector state
    h_l of the layers above is projected to a map m_l; p(z_l | z_{>l}) = N(conv(m_l)) and
    q(z_l | x, z_{>l}) = N(conv(m_l, d(x))) with d(x) the bottom-up path's first feature map. The state handed
    to the decoder is m_l."""

    spatial = True

    def __init__(self, d_above: int, channels: int, size: tuple[int, int], hidden: int, width: int, act: str,
                 first: bool) -> None:
        super().__init__(d_above, channels * size[0] * size[1], hidden, act, first)
        self.shape = (channels, *size)
        self.to_map = nn.Sequential(nn.Linear(hidden, width * size[0] * size[1]), nets.activation(act))
        self.prior_head = nets.MapNet(width, (width,), 2 * channels, size, act)
        self.posterior_head = nets.MapNet(2 * width, (width,), 2 * channels, size, act)

    def descend(self, z_above: Tensor, h_above: Tensor | None) -> Tensor:
        """The top-down map m_l (..., B, width * h * w) from the layer above's z and vector state."""
        return self.to_map(super().descend(z_above, h_above))
