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


def down_conv(c_in: int, c_out: int) -> nn.Conv2d:
    """A stride-2 3x3 convolution: half the size, rounding up."""
    return nn.Conv2d(c_in, c_out, kernel_size=3, stride=2, padding=1)


def up_conv(c_in: int, c_out: int, size_in: tuple[int, int], size_out: tuple[int, int],
            method: str = "transposed") -> nn.Module:
    """ceil(s / 2) -> s: a stride-2 3x3 transposed convolution (output_padding restores the row or column an odd
    size lost on the way down), or "resize": nearest-neighbour resizing then a 3x3 convolution, where every
    output pixel sums the same number of kernel taps, so there is no checkerboard pattern (Odena et al. 2016)
    at four times the transposed convolution's multiply-adds."""
    if method == "resize":
        return nn.Sequential(nn.Upsample(size=size_out, mode="nearest"), nn.Conv2d(c_in, c_out, 3, padding=1))
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
            layers += [down_conv(a, b), activation(act)]
        self.convs = nn.Sequential(*layers)
        h, w = downsampled(shape[1:], len(channels))[-1]
        self.head = MLP(channels[-1] * h * w + d_cond, hidden, d_out, act)

    def forward(self, x: Tensor, c: Tensor | None = None) -> Tensor:
        return self.head(self.convs(x).flatten(1), c)  # (B, d_out)

    def with_map(self, x: Tensor, c: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """The output (B, d_out) and the first convolution's feature map, flat (B, channels[0] * h * w)."""
        first = self.convs[:2](x)  # the first stride-2 convolution and its activation
        return self.head(self.convs[2:](first).flatten(1), c), first.flatten(1)


class ConvDecoder(nn.Module):
    """(..., d_in) -> MLP -> (C_last, h, w) -> stride-2 upsampling convolutions -> (..., n_out * H * W).

    The mirror of ConvEncoder: each upsampling convolution (``up_conv``) doubles the size (restoring odd sizes
    exactly) and the last one emits the ``n_out`` likelihood parameters per pixel, so no layer runs many channels
    at full resolution (on a CPU that layer would cost more than all the others). The output is flat so that
    the model treats both architectures alike.
    """

    def __init__(self, d_in: int, shape: tuple[int, int, int], channels: tuple[int, ...], hidden: tuple[int, ...],
                 n_out: int, act: str, upsample: str = "transposed") -> None:
        super().__init__()
        sizes = downsampled(shape[1:], len(channels))
        self.start = (channels[-1], *sizes[-1])
        self.head = MLP(d_in, tuple(reversed(hidden)), math.prod(self.start), act)
        self.head_act = activation(act)
        layers: list[nn.Module] = []
        for i in range(len(channels), 0, -1):  # from size level i to i - 1
            c_out = channels[i - 2] if i > 1 else n_out
            layers.append(up_conv(channels[i - 1], c_out, sizes[i], sizes[i - 1], upsample))
            if i > 1:
                layers.append(activation(act))
        self.convs = nn.Sequential(*layers)

    def forward(self, z: Tensor, c: Tensor | None = None) -> Tensor:
        lead = z.shape[:-1]  # posterior samples and batch, flattened into one batch for the convolutions
        h = self.head_act(self.head(z, c)).reshape(-1, *self.start)  # (N, C_last, h, w)
        return self.convs(h).reshape(*lead, -1)  # (..., n_out * H * W)


class MapNet(nn.Module):
    """Flat maps (..., C_in * h * w) -> same-size 3x3 convolutions with activations between them ->
    (..., C_out * h * w). Spatial latents travel through the model flat, channel-major, like vector ones, so a
    concatenation of two flat maps is their concatenation along the channels."""

    def __init__(self, c_in: int, widths: tuple[int, ...], c_out: int, size: tuple[int, int], act: str) -> None:
        super().__init__()
        self.shape = (c_in, *size)
        chans = (c_in, *widths, c_out)
        layers: list[nn.Module] = []
        for i, (a, b) in enumerate(itertools.pairwise(chans)):
            layers.append(nn.Conv2d(a, b, kernel_size=3, padding=1))
            if i < len(chans) - 2:
                layers.append(activation(act))
        self.convs = nn.Sequential(*layers)

    def forward(self, h: Tensor) -> Tensor:
        lead = h.shape[:-1]
        return self.convs(h.reshape(-1, *self.shape)).reshape(*lead, -1)


class ResidualBlock(nn.Module):
    """x + conv(act(conv(act(x)))): two same-size 3x3 convolutions around a skip connection."""

    def __init__(self, channels: int, act: str) -> None:
        super().__init__()
        self.body = nn.Sequential(activation(act), nn.Conv2d(channels, channels, 3, padding=1), activation(act),
                                  nn.Conv2d(channels, channels, 3, padding=1))

    def forward(self, x: Tensor) -> Tensor:
        return x + self.body(x)


class MapDecoder(nn.Module):
    """The decoder of a model whose bottom layer is a spatial map at half the image size: flat maps
    (..., C_in * h * w) (the latent map and the top-down state's map) and a condition -> a 3x3 convolution to
    ``width`` channels -> residual blocks -> an upsampling convolution (``up_conv``) to the image size ->
    (..., n_out * H * W)."""

    BLOCKS = 2  # residual blocks at half the image size

    def __init__(self, c_in: int, shape: tuple[int, int, int], width: int, n_out: int, act: str,
                 d_cond: int = 0, upsample: str = "transposed") -> None:
        super().__init__()
        full, half = downsampled(shape[1:], 1)
        self.shape = (c_in, *half)
        layers: list[nn.Module] = [nn.Conv2d(c_in + d_cond, width, 3, padding=1)]
        layers += [ResidualBlock(width, act) for _ in range(self.BLOCKS)]
        layers += [activation(act), up_conv(width, n_out, half, full, upsample)]
        self.convs = nn.Sequential(*layers)

    def forward(self, code: Tensor, c: Tensor | None = None) -> Tensor:
        lead = code.shape[:-1]
        maps = code.reshape(-1, *self.shape)  # (N, C_in, h, w)
        if c is not None:  # the condition as constant channels, one copy per posterior sample
            c = c.expand(*lead, c.shape[-1]).reshape(-1, c.shape[-1], 1, 1)
            maps = torch.cat([maps, c.to(maps.dtype).expand(-1, -1, *self.shape[1:])], dim=1)
        return self.convs(maps).reshape(*lead, -1)
