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
        if config.conditional and not config.labels:
            raise ConfigError("a conditional model needs model.labels, the class names (set from the data)")
        self.config = config
        self.data_shape = tuple(config.data_shape)
        self.n_params = likelihoods.get(config.likelihood).n_params
        self.n_classes = len(config.labels) if config.conditional else 0
        self.encoder, self.decoder = _networks(config, self.data_shape, self.n_params, self.n_classes)
        self.register_buffer("_zero", torch.zeros(config.latent_dim), persistent=False)

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    def encode(self, x: Tensor, y: Tensor | None = None) -> Distribution:
        """q(z|x) = N(mu, diag(exp(logvar))) for x of shape (B, *data_shape); q(z|x, y) given labels y (B,)."""
        self._check_shape(x)
        h = x.flatten(1) if self.config.arch == "mlp" else x
        h = self.encoder(h, self._condition(y, len(x))).to(self._zero.dtype)  # (B, 2L), model dtype under autocast
        mu, logvar = h.chunk(2, dim=-1)  # (B, L) each
        logvar = logvar.clamp(LOGVAR_MIN, LOGVAR_MAX)
        return Independent(Normal(mu, torch.exp(0.5 * logvar), validate_args=False), 1, validate_args=False)

    def decode(self, z: Tensor, y: Tensor | None = None) -> Distribution:
        """p(x|z) (or p(x|z, y)) with event shape ``data_shape`` for z of shape (..., B, L); batch shape (..., B)."""
        c = self._condition(y, z.shape[-2] if z.dim() > 1 else 1)
        params = self.decoder(z, c).to(self._zero.dtype)  # (..., P*D); likelihood in the model's dtype
        params = params.unflatten(-1, (self.n_params, *self.data_shape))  # (..., P, *shape)
        return likelihoods.px_z(self.config.likelihood, params, len(self.data_shape), self.config.obs_std)

    def prior(self) -> Distribution:
        """p(z) = N(0, I)."""
        return Independent(Normal(self._zero, torch.ones_like(self._zero), validate_args=False), 1,
                           validate_args=False)

    def forward(self, x: Tensor, y: Tensor | None = None, k: int | None = None
                ) -> tuple[Distribution, Tensor, Distribution]:
        """One reparameterised pass: (q(z|x), z ~ q(z|x), p(x|z)), conditioned on y for a conditional model.

        With ``k``, z holds k posterior samples per input, shape (k, B, L), and p(x|z) has batch shape (k, B).
        """
        qz_x = self.encode(x, y)
        z = qz_x.rsample(() if k is None else (k,))  # mu + sigma * eps, differentiable in mu and sigma
        return qz_x, z, self.decode(z, y)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               y: Tensor | None = None) -> Tensor:
        """n draws of E[x|z] with z ~ N(0, temperature^2 I) (given labels y (n,)); returns (n, *data_shape)."""
        if n < 1 or temperature < 0:
            raise ValueError(f"need n >= 1 and temperature >= 0, got n={n}, temperature={temperature}")
        z = torch.randn(n, self.latent_dim, generator=generator, device=self._zero.device) * temperature
        return self.decode(z, y).mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """E[x|z] at the posterior mean z = mu(x); same shape as x."""
        return self.decode(self.encode(x, y).mean, y).mean

    def label_index(self, name: str) -> int:
        """The class index of the label called ``name`` (as given by the data, e.g. "7" or "cat")."""
        labels = self.config.labels or ()
        if not self.config.conditional:
            raise ConfigError("this model is not conditional: it takes no label")
        if name not in labels:
            raise ConfigError(f"unknown label {name!r}; this model's labels are {', '.join(labels)}")
        return labels.index(name)

    def _condition(self, y: Tensor | None, batch: int) -> Tensor | None:
        """One-hot labels (B, n_classes) for a conditional model; None for an unconditional one."""
        if not self.config.conditional:
            if y is not None:
                raise ConfigError("this model is not conditional: it takes no labels")
            return None
        if y is None:
            raise ConfigError(f"this model is conditional: pass the labels ({', '.join(self.config.labels)})")
        if y.shape != (batch,) or y.dtype not in (torch.int64, torch.int32):
            raise DataError(f"labels must be integers of shape ({batch},), got {y.dtype} {tuple(y.shape)}")
        # reading the range back syncs the host, which a CUDA graph being captured forbids; the training data's
        # labels were checked when the graph's inputs were built
        capturing = y.is_cuda and torch.cuda.is_current_stream_capturing()
        if len(y) and not capturing and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise DataError(f"labels must lie in 0..{self.n_classes - 1} ({', '.join(self.config.labels)}), "
                            f"got {int(y.min())}..{int(y.max())}")
        return nn.functional.one_hot(y.long(), self.n_classes).to(self._zero.dtype)

    def _check_shape(self, x: Tensor) -> None:
        if tuple(x.shape[1:]) != self.data_shape:
            raise DataError(
                f"input has shape {tuple(x.shape)}, expected (batch, {', '.join(map(str, self.data_shape))})"
            )



def _networks(config: ModelConfig, shape: tuple[int, ...], n_params: int, d_c: int) -> tuple[nn.Module, nn.Module]:
    """Encoder x -> (mu, logvar) and decoder z -> likelihood parameters, of the configured architecture."""
    d_x, d_z, act = math.prod(shape), config.latent_dim, config.activation
    if config.arch == "mlp":
        return (nets.MLP(d_x + d_c, config.hidden, 2 * d_z, act),
                nets.MLP(d_z + d_c, tuple(reversed(config.hidden)), n_params * d_x, act))
    if len(shape) != 3:
        raise ConfigError(f"model.arch = conv needs images of shape (channels, height, width), got data of "
                          f"shape {shape}; use model.arch = mlp for tables")
    channels, hidden = config.channels, config.hidden
    return (nets.ConvEncoder(shape, channels, hidden, 2 * d_z, act, d_c),
            nets.ConvDecoder(d_z + d_c, shape, channels, hidden, n_params * shape[0], act))
