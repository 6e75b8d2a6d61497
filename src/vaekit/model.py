"""The variational autoencoder (Kingma & Welling 2014): q(z|x), p(x|z) and the prior p(z) = N(0, I).

The model knows the math only: no loss, no optimizer, no device choice, no files.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.distributions import Distribution, Independent, Normal

from vaekit import likelihoods, nets
from vaekit.config import ModelConfig
from vaekit.errors import ConfigError, DataError

# log sigma^2 is clamped so that exp() neither overflows nor underflows to a zero scale in fp32/bf16.
LOGVAR_MIN, LOGVAR_MAX = -30.0, 20.0


class VAE(nn.Module):
    """A VAE whose ``encode`` returns q(z|x) and whose ``decode`` returns p(x|z), both distributions."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        if config.data_shape is None:
            raise ConfigError("model.data_shape is not set: it comes from the data the model is trained on")
        if config.arch not in nets.ARCHS:
            raise ConfigError(f"unknown architecture {config.arch!r}; valid: {', '.join(nets.ARCHS)}")
        self.config = config
        self.data_shape = tuple(config.data_shape)
        self.n_params = likelihoods.get(config.likelihood).n_params
        d_x, d_z = math.prod(self.data_shape), config.latent_dim
        self.encoder = nets.mlp(d_x, config.hidden, 2 * d_z, config.activation)
        self.decoder = nets.mlp(d_z, tuple(reversed(config.hidden)), self.n_params * d_x, config.activation)
        self.register_buffer("_zero", torch.zeros(d_z), persistent=False)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def encode(self, x: Tensor) -> Distribution:
        """q(z|x) = N(mu, diag(exp(logvar))) for x of shape (B, *data_shape)."""
        self._check_shape(x)
        h = self.encoder(x.flatten(1)).to(self._zero.dtype)  # (B, 2L); the model's dtype even under autocast
        mu, logvar = h.chunk(2, dim=-1)  # (B, L) each
        logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        return Independent(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1, validate_args=False)

    def decode(self, z: Tensor) -> Distribution:
        """p(x|z) with event shape ``data_shape`` for z of shape (..., L); batch shape (...)."""
        params = self.decoder(z).to(self._zero.dtype)  # (..., P*D); likelihood in the model's dtype
        params = params.unflatten(-1, (self.n_params, *self.data_shape))  # (..., P, *shape)
        return likelihoods.px_z(self.config.likelihood, params, len(self.data_shape), self.config.obs_std)

    def prior(self) -> Distribution:
        """p(z) = N(0, I)."""
        return Independent(Normal(self._zero, torch.ones_like(self._zero), validate_args=False), 1,
                           validate_args=False)

    def forward(self, x: Tensor) -> tuple[Distribution, Tensor, Distribution]:
        """One reparameterised pass: (q(z|x), z ~ q(z|x), p(x|z))."""
        qz_x = self.encode(x)
        z = qz_x.rsample()  # mu + sigma * eps, differentiable in mu and sigma  # (B, L)
        return qz_x, z, self.decode(z)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None) -> Tensor:
        """n draws of E[x|z] with z ~ N(0, temperature^2 I); returns (n, *data_shape)."""
        if n < 1 or temperature < 0:
            raise ValueError(f"need n >= 1 and temperature >= 0, got n={n}, temperature={temperature}")
        z = torch.randn(n, self.latent_dim, generator=generator, device=self._zero.device) * temperature
        return self.decode(z).mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor) -> Tensor:
        """E[x|z] at the posterior mean z = mu(x); same shape as x."""
        return self.decode(self.encode(x).mean).mean

    def _check_shape(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.data_shape:
            raise DataError(
                f"input has shape {tuple(x.shape)}, expected (batch, {', '.join(map(str, self.data_shape))})"
            )

