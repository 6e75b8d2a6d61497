"""Plain nn.Module building blocks for encoders and decoders, and a registry of activations.

Every network takes an optional condition ``c`` (e.g. a one-hot class label), concatenated to the input of its
fully connected part: that is how a conditional VAE feeds y to q(z|x, y) and p(x|z, y).
"""

from __future__ import annotations

import itertools
import math

import torch
from torch import Tensor, nn

from vaekit.errors import ConfigError

ACTIVATIONS: dict[str, type[nn.Module]] = {
    "relu": nn.ReLU,
    "tanh": nn.Tanh,
    "elu": nn.ELU,
    "gelu": nn.GELU,
    "silu": nn.SiLU,
    "softplus": nn.Softplus,
    "leaky_relu": nn.LeakyReLU,
}


def activation(name: str) -> nn.Module:
    """A fresh activation module by name."""
    if name not in ACTIVATIONS:
        raise ConfigError(f"unknown activation {name!r}; valid activations: {', '.join(ACTIVATIONS)}")
    return ACTIVATIONS[name]()


class MLP(nn.Sequential):
    """Linear layers d_in -> hidden... -> d_out with activations between them and none at the end."""

    def __init__(self, d_in: int, hidden: tuple[int, ...], d_out: int, act: str) -> None:
        widths = (d_in, *hidden)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [nn.Linear(a, b), activation(act)]
        layers.append(nn.Linear(widths[-1], d_out))
        super().__init__(*layers)

    def forward(self, h: Tensor, c: Tensor | None = None) -> Tensor:
        """h (..., d_in - d_c) and condition c (B, d_c), broadcast over h's leading sample dimensions."""
        if c is not None:
            h = torch.cat([h, c.expand(*h.shape[:-1], c.shape[-1])], dim=-1)
        return super().forward(h)


def downsampled(size: tuple[int, int], n: int) -> list[tuple[int, int]]:
    """Spatial sizes after 0..n stride-2 convolutions (kernel 3, padding 1): each halves, rounding up."""
    sizes = [size]
    for _ in range(n):
        h, w = sizes[-1]
        sizes.append((math.ceil(h / 2), math.ceil(w / 2)))
    return sizes


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1)


def _deconv(c_in: int, c_out: int, size_in: tuple[int, int], size_out: tuple[int, int]) -> nn.ConvTranspose2d:
    # ceil(s / 2) -> s: output_padding restores the row or column an odd size lost on the way down
    pad = tuple(o - (2 * i - 1) for i, o in zip(size_in, size_out, strict=True))
    return nn.ConvTranspose2d(c_in, c_out, kernel_size=3, stride=2, padding=1, output_padding=pad)


class ConvEncoder(nn.Module):
    """(B, C, H, W) -> stride-2 convolutions -> flatten -> MLP -> (B, d_out); any H and W."""

    def __init__(self, shape: tuple[int, int, int], channels: tuple[int, ...], hidden: tuple[int, ...],
                 d_out: int, act: str, d_cond: int = 0) -> None:
        super().__init__()
        widths = (shape[0], *channels)
        layers: list[nn.Module] = []
        for a, b in itertools.pairwise(widths):
            layers += [_conv(a, b), activation(act)]
        self.convs = nn.Sequential(*layers)
        h, w = downsampled(shape[1:], len(channels))[-1]
        self.head = MLP(channels[-1] * h * w + d_cond, hidden, d_out, act)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return self.head(self.convs(x).flatten(1), c)  # (B, d_out)


class ConvDecoder(nn.Module):
    """(..., d_in) -> MLP -> (C_last, h, w) -> stride-2 transposed convolutions -> (..., n_out * H * W).

    The mirror of ConvEncoder: each transposed convolution doubles the size (restoring odd sizes exactly) and
    the last one emits the ``n_out`` likelihood parameters per pixel, so no layer runs many channels at full
    resolution (on a CPU that layer would cost more than all the others). The output is flat so that the
    model treats both architectures alike.
    """

    def __init__(self, d_in: int, shape: tuple[int, int, int], channels: tuple[int, ...], hidden: tuple[int, ...],
                 n_out: int, act: str) -> None:
        super().__init__()
        sizes = downsampled(shape[1:], len(channels))
        self.start = (channels[-1], *sizes[-1])
        self.head = MLP(d_in, tuple(reversed(hidden)), math.prod(self.start), act)
        self.head_act = activation(act)
        layers: list[nn.Module] = []
        for i in range(len(channels), 0, -1):  # from size level i to i - 1
            c_out = channels[i - 2] if i > 1 else n_out
            layers.append(_deconv(channels[i - 1], c_out, sizes[i], sizes[i - 1]))
            if i > 1:
                layers.append(activation(act))
        self.convs = nn.Sequential(*layers)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        lead = z.shape[:-1]  # posterior samples and batch, flattened into one batch for the convolutions
        h = self.head_act(self.head(z, c)).reshape(-1, *self.start)  # (N, C_last, h, w)
        return self.convs(h).reshape(*lead, -1)  # (..., n_out * H * W)

