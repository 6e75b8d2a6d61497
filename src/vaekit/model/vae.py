"""The variational autoencoder (Kingma & Welling 2014), assembled from parts: networks, a stack of stochastic
layers (the top one with its posterior family; ``model.lower_latent_dims`` adds a Ladder-style hierarchy below
it), a prior p(z) and a likelihood p(x|z).

The model knows the math only: no loss, no optimizer, no device choice, no files.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from torch.distributions import Distribution

from vaekit.config import ModelConfig
from vaekit.errors import ConfigError, DataError
from vaekit.model import likelihoods, nets, posteriors, priors
from vaekit.model.latent import Latent, Pass
from vaekit.model.layers import ConditionalLayer, LatentLayer, SpatialLayer
from vaekit.model.registry import lookup


@dataclass(frozen=True)
class _Encoded:
    """What a pass computes from its inputs x before drawing any z."""

    h: Tensor  # the encoder's output, which the top layer's posterior reads (B, n_inputs)
    pz: Distribution  # the top layer's prior p(z)
    vector: Tensor | None  # the bottom-up features of a hierarchy's lower layers (B, hidden), else None
    grid: Tensor | None  # a spatial bottom layer's feature map, flat (B, channels[0] * h * w), else None


class VAE(nn.Module):
    """A VAE whose ``encode`` returns q(z|x), ``decode`` p(x|z) and ``prior()`` p(z), all distributions;
    ``forward`` returns one ``Pass`` that objectives and uses read."""

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
        self.prior = priors.build(config.prior, config.latent_dim, config)
        self.layers = nn.ModuleList([LatentLayer(posteriors.build(config.posterior, config.latent_dim, config)),
                                     *_lower_layers(config)])
        self.encoder, self.decoder = _networks(config, self.data_shape, self.layers[0].posterior.n_inputs,
                                               _code_width(config, self.layers), self.n_params, self.n_classes)
        if len(self.layers) > 1:  # the bottom-up features d(x) that the lower layers' posteriors read
            self.bottom_up = _bottom_up(config, self.data_shape, self.n_classes, self.layers)
        self.prior.bind(self.encode)
        self.register_buffer("_anchor", torch.zeros(()), persistent=False)  # the model's device and dtype

    @property
    def latent_dim(self) -> int:
        """Dimensions of the top layer's code z: what ``decode`` takes, ``sample`` draws and embeddings hold."""
        return self.config.latent_dim

    @property
    def noise_dim(self) -> int:
        """Standard-normal draws per posterior sample across all layers: the width of ``eps`` in ``infer``."""
        return sum(layer.latent_dim for layer in self.layers)

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    @property
    def parts(self) -> tuple[str, int, str, str, str]:
        """What the model is made of: (arch, stochastic layers, posterior, prior, likelihood), e.g. for the
        fast paths that handle only some models."""
        c = self.config
        return c.arch, len(self.layers), c.posterior, c.prior, c.likelihood

    def encode(self, x: Tensor, y: Tensor | None = None) -> Distribution:
        """q(z|x) for x of shape (B, *data_shape); q(z|x, y) given labels y (B,)."""
        return self.layers[0].posterior(self._features(x, self.condition(y, len(x))))

    def decode(self, z: Tensor, y: Tensor | None = None) -> Distribution:
        """p(x|z) (or p(x|z, y)) with event shape ``data_shape`` for top-layer codes z (..., B, L); batch shape
        (..., B). In a hierarchy each lower layer is set to its conditional prior's mean E[z_l | z_{>l}]."""
        return self.likelihood_from(self.likelihood_params(z, y))

    def likelihood_params(self, z: Tensor, y: Tensor | None = None) -> Tensor:
        """The parameters of ``decode(z, y)`` as one tensor (..., B, P, *data_shape), e.g. Bernoulli logits
        (P = 1): what an exported decoder returns."""
        c, h = self.condition(y, z.shape[-2] if z.dim() > 1 else 1), None
        for layer in self.layers[1:]:
            z, h = layer.prior_mean(z, h)
        return self._params(z, h, c)

    def _likelihood(self, z: Tensor, h: Tensor | None, c: Tensor | None) -> Distribution:
        """p(x | z) from the bottom layer's z (..., B, L_bottom) and, in a hierarchy, its top-down state h
        (..., B, hidden), through which the decoder reads the layers above directly; c is the one-hot condition
        (``condition``), checked where the labels came in."""
        return self.likelihood_from(self._params(z, h, c))

    def _params(self, z: Tensor, h: Tensor | None, c: Tensor | None) -> Tensor:
        code = z if h is None else torch.cat([z, h.to(z.dtype)], dim=-1)
        params = self.decoder(code, c).to(self._anchor.dtype)  # (..., P*D); likelihood in the model's dtype
        return params.unflatten(-1, (self.n_params, *self.data_shape))  # (..., P, *shape)

    def likelihood_from(self, params: Tensor) -> Distribution:
        """p(x|z) from its parameters (..., P, *data_shape), as ``likelihood_params`` gives them."""
        return likelihoods.px_z(self.config.likelihood, params, len(self.data_shape), self.config.obs_std)

    def infer(self, x: Tensor, y: Tensor | None = None, k: int | None = None, eps: Tensor | None = None,
              mean: bool = False, prior_below: int = 0) -> tuple[Latent, ...]:
        """The stochastic layers' part of a pass, top first, without decoding; the top z is drawn when read.

        ``k`` draws k samples per input ((k, B, L)); ``eps`` (k, noise_dim) makes them from standard-normal noise
        shared by all inputs (common random numbers), so an input's values do not depend on its batch. ``mean``
        sets every z to its posterior mean instead. ``prior_below`` draws the lowest layers from their
        conditional priors (the bound L^{>k} of Havtorn et al. 2021).
        """
        c = self.condition(y, len(x))
        return self._descend(self._encoded(x, c), k, eps, mean, prior_below)[0]

    def _encoded(self, x: Tensor, c: Tensor | None) -> _Encoded:
        """What a pass computes from x (B, *data_shape) and the one-hot condition c alone, before any z."""
        vector, grid = self._bottom_up(x, c) if len(self.layers) > 1 else (None, None)
        return _Encoded(self._features(x, c), self.prior(), vector, grid)

    def _descend(self, enc: _Encoded, k: int | None, eps: Tensor | None, mean: bool,
                 prior_below: int) -> tuple[tuple[Latent, ...], Tensor | None]:
        """``infer``'s latents from the encoded inputs, and the bottom layer's top-down state (None for one layer)."""
        k = len(eps) if eps is not None else k
        noise = self._split(eps)
        latents, h = [self.layers[0].infer(enc.h, enc.pz, k, noise[0], mean)], None
        for i, layer in enumerate(self.layers[1:], start=1):
            from_prior = i >= len(self.layers) - prior_below
            features = enc.grid if layer.spatial else enc.vector
            latent, h = layer.infer(latents[-1].z, h, features, noise[i], mean, from_prior)
            latents.append(latent)
        return tuple(latents), h

    def _bottom_up(self, x: Tensor, c: Tensor | None) -> tuple[Tensor, Tensor | None]:
        """The bottom-up features d(x) the lower layers' posteriors read: a vector (B, hidden) and, where the
        bottom layer is spatial, the first convolution's map (B, channels[0] * h * w)."""
        if not self.layers[-1].spatial:
            return self.bottom_up(self._net_input(x), c), None
        if len(self.layers) == 2:  # the spatial layer alone below the top: the map is all it reads
            return None, self.bottom_up(self._net_input(x)).flatten(1)
        return self.bottom_up.with_map(x, c)

    def forward(self, x: Tensor, y: Tensor | None = None, k: int | None = None, eps: Tensor | None = None,
                mean: bool = False, prior_below: int = 0) -> Pass:
        """One reparameterised pass: every layer's z ~ q(z|x) with log q, log p and the KL, and p(x|z)."""
        c = self.condition(y, len(x))  # checked once: a label check reads the labels back from the device
        return self._pass(self._encoded(x, c), c, k, eps, mean, prior_below)

    def passes(self, x: Tensor, y: Tensor | None = None, prior_below: int = 0) -> Callable[..., Pass]:
        """``draw(k, eps=None)``, the pass ``self(x, y, k, eps, prior_below=prior_below)``, for the same inputs
        many times: x is encoded, its labels checked and the prior built once, not for each call. An
        importance-sampled bound draws its K samples in chunks that bound the decoder's memory (3 at a time for
        the conv preset's batches of 100), and each chunk would otherwise encode the whole batch again (and a
        VampPrior its K pseudo-inputs); the draws, and so the values, are those of the separate calls."""
        c = self.condition(y, len(x))
        enc = self._encoded(x, c)
        return lambda k, eps=None: self._pass(enc, c, k, eps, False, prior_below)

    def inferences(self, x: Tensor, y: Tensor | None = None) -> Callable[..., tuple[Latent, ...]]:
        """``draw(k, eps=None)``, ``self.infer(x, y, k, eps)`` for the same inputs many times, as ``passes`` is
        for whole passes: x encoded once, and nothing decoded (what the KL alone needs)."""
        c = self.condition(y, len(x))
        enc = self._encoded(x, c)
        return lambda k, eps=None: self._descend(enc, k, eps, False, 0)[0]

    def _pass(self, enc: _Encoded, c: Tensor | None, k: int | None, eps: Tensor | None, mean: bool,
              prior_below: int) -> Pass:
        """The pass from encoded inputs and their one-hot condition c: the latents, then p(x|z)."""
        latents, h = self._descend(enc, k, eps, mean, prior_below)
        return Pass(latents, self._likelihood(latents[-1].z, h, c))

    def _split(self, eps: Tensor | None) -> list[Tensor | None]:
        """Shared noise (k, noise_dim) cut into each layer's (k, L_l)."""
        if eps is None:
            return [None] * len(self.layers)
        return list(eps.split([layer.latent_dim for layer in self.layers], dim=-1))

    def init_from_data(self, x: Tensor, generator: torch.Generator) -> None:
        """Data-dependent initial values of the parts (e.g. a VampPrior's pseudo-inputs) from training inputs x."""
        self.prior.init_from_data(x, generator)
        self.layers[0].posterior.init_from_data(x, generator)

    @torch.no_grad()
    def sample(self, n: int, temperature: float = 1.0, generator: torch.Generator | None = None,
               y: Tensor | None = None) -> Tensor:
        """n draws of E[x|z] (given labels y (n,)); (n, *data_shape). z comes from the prior at ``temperature``,
        and in a hierarchy each lower layer from its conditional prior at the same temperature."""
        if n < 1 or temperature < 0:
            raise ValueError(f"need n >= 1 and temperature >= 0, got n={n}, temperature={temperature}")
        z, h = self.prior.sample(n, temperature, generator), None
        for layer in self.layers[1:]:  # down the hierarchy, each layer from its conditional prior
            z, h = layer.sample(z, h, temperature, generator)
        return self._likelihood(z, h, self.condition(y, n)).mean

    @torch.no_grad()
    def reconstruct(self, x: Tensor, y: Tensor | None = None) -> Tensor:
        """E[x|z] at the posterior means (every layer's, top down); same shape as x."""
        return self(x, y, mean=True).px_z.mean

    # ---- labels of a conditional model: checked and encoded here, for every caller -------------------------

    def label_index(self, name: str) -> int:
        """The class index of the label called ``name`` (as given by the data, e.g. "7" or "cat")."""
        labels = self.config.labels or ()
        if not self.config.conditional:
            raise ConfigError(f"this model is not conditional: it takes no label (got {name!r})")
        if name not in labels:
            raise ConfigError(f"unknown label {name!r}; this model's labels are {', '.join(labels)}")
        return labels.index(name)

    def labels_named(self, label: str | None, n: int) -> Tensor | None:
        """n copies of the class index of ``label`` for a conditional model (which needs one); None otherwise."""
        if label is None and not self.config.conditional:
            return None
        if label is None:
            raise DataError(f"this model is conditional: give a label, one of {', '.join(self.config.labels)}")
        return torch.full((n,), self.label_index(label), dtype=torch.long, device=self.device)

    def labels_of(self, y: Tensor | None, what: str) -> Tensor | None:
        """The labels y of ``what`` (e.g. "the test split") that a conditional model encodes it with; None for
        an unconditional model."""
        if not self.config.conditional:
            return None
        if y is None:
            raise DataError(f"this model is conditional and encodes each input with its label, but {what} has "
                            "no labels")
        return y

    def condition(self, y: Tensor | None, batch: int) -> Tensor | None:
        """One-hot labels (B, n_classes) for a conditional model; None for an unconditional one."""
        if not self.config.conditional:
            if y is not None:
                raise ConfigError("this model is not conditional: it takes no labels")
            return None
        if y is None:
            raise ConfigError(f"this model is conditional: pass the labels ({', '.join(self.config.labels)})")
        if y.shape != (batch,) or y.dtype not in (torch.int64, torch.int32):
            raise DataError(f"labels must be integers of shape ({batch},), got {y.dtype} {tuple(y.shape)}")
        # reading the range back syncs the host, which a CUDA graph being captured forbids (the training data's
        # labels were checked when the graph's inputs were built), a traced export would bake it in, and a meta
        # tensor (a size estimate) has no values
        unreadable = (y.is_cuda and torch.cuda.is_current_stream_capturing()) or torch.jit.is_tracing() or y.is_meta
        if len(y) and not unreadable and (int(y.min()) < 0 or int(y.max()) >= self.n_classes):
            raise DataError(f"labels must lie in 0..{self.n_classes - 1} ({', '.join(self.config.labels)}), "
                            f"got {int(y.min())}..{int(y.max())}")
        return nn.functional.one_hot(y.long(), self.n_classes).to(self._anchor.dtype)

    def _features(self, x: Tensor, c: Tensor | None) -> Tensor:
        """The encoder's output h (B, n_inputs) for x (B, *data_shape) and the one-hot condition c, in the
        model's dtype under autocast."""
        return self.encoder(self._net_input(x), c).to(self._anchor.dtype)

    def _net_input(self, x: Tensor) -> Tensor:
        """x (B, *data_shape) as the networks take it: flat for an MLP, as images for convolutions."""
        if tuple(x.shape[1:]) != self.data_shape:
            raise DataError(
                f"input has shape {tuple(x.shape)}, expected (batch, {', '.join(map(str, self.data_shape))})"
            )
        return x.flatten(1) if self.config.arch == "mlp" else x


def check_parts(config: ModelConfig) -> None:
    """Refuse a prior, posterior family or likelihood that no registry holds, before any data is loaded."""
    lookup(priors.PRIORS, config.prior, "prior")
    lookup(posteriors.POSTERIORS, config.posterior, "posterior")
    likelihoods.get(config.likelihood)


def _lower_layers(config: ModelConfig) -> list[ConditionalLayer]:
    """The layers below the top one, top-down: ``model.lower_latent_dims``, then a spatial bottom layer of
    ``model.latent_channels`` channels at the first convolution's resolution."""
    dims = (config.latent_dim, *config.lower_latent_dims)
    layers = [ConditionalLayer(above, d, config.hidden[-1], config.activation, first=i == 0)
              for i, (above, d) in enumerate(itertools.pairwise(dims))]
    if config.latent_channels:
        if config.arch != "conv" or config.data_shape is None or len(config.data_shape) != 3:
            raise ConfigError("model.latent_channels (a spatial bottom layer) needs model.arch = conv and "
                              "images of shape (channels, height, width)")
        size = nets.downsampled(tuple(config.data_shape[1:]), 1)[1]
        layers.append(SpatialLayer(dims[-1], config.latent_channels, size, config.hidden[-1],
                                   config.channels[0], config.activation, first=not layers))
    return layers


def _bottom_up(config: ModelConfig, shape: tuple[int, ...], d_c: int, layers: nn.ModuleList) -> nn.Module:
    """The bottom-up path: a copy of the encoder's kind ending in ``hidden[-1]`` features for vector layers; only
    the first convolution when a spatial layer is the only one below the top (nothing would read the rest, and
    parameters without gradients break DistributedDataParallel)."""
    if len(layers) == 2 and layers[-1].spatial:
        return nn.Sequential(nets.down_conv(shape[0], config.channels[0]), nets.activation(config.activation))
    return _encoder(config, shape, config.hidden[:-1], config.hidden[-1], d_c)


def _code_width(config: ModelConfig, layers: nn.ModuleList) -> int:
    """Width of what the decoder reads: the bottom layer's z and, in a hierarchy, its top-down state."""
    bottom = layers[-1]
    if bottom.spatial:
        return bottom.latent_dim + config.channels[0] * bottom.shape[1] * bottom.shape[2]
    return bottom.latent_dim + (config.hidden[-1] if len(layers) > 1 else 0)


def _networks(config: ModelConfig, shape: tuple[int, ...], d_h: int, d_z: int, n_params: int,
              d_c: int) -> tuple[nn.Module, nn.Module]:
    """Encoder x -> h (B, d_h) and decoder code (the bottom layer's z and state, d_z) -> likelihood parameters."""
    encoder = _encoder(config, shape, config.hidden, d_h, d_c)
    if config.latent_channels:  # the bottom layer is a map at the first convolution's resolution
        width = config.channels[0]
        return encoder, nets.MapDecoder(config.latent_channels + width, shape, width, n_params * shape[0],
                                        config.activation, d_c, upsample=config.upsample)
    if config.arch == "mlp":
        return encoder, nets.MLP(d_z + d_c, tuple(reversed(config.hidden)), n_params * math.prod(shape),
                                 config.activation)
    return encoder, nets.ConvDecoder(d_z + d_c, shape, config.channels, config.hidden, n_params * shape[0],
                                     config.activation, config.upsample)


def _encoder(config: ModelConfig, shape: tuple[int, ...], hidden: tuple[int, ...], d_out: int,
             d_c: int) -> nn.Module:
    """x (B, *shape) and a condition (B, d_c) -> (B, d_out) through ``hidden`` fully connected widths (after
    the convolutions for model.arch = conv)."""
    if config.arch == "mlp":
        return nets.MLP(math.prod(shape) + d_c, hidden, d_out, config.activation)
    if len(shape) != 3:
        raise ConfigError(f"model.arch = conv needs images of shape (channels, height, width), got data of "
                          f"shape {shape}; use model.arch = mlp for tables")
    return nets.ConvEncoder(shape, config.channels, hidden, d_out, config.activation, d_c)
