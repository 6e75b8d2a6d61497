"""Plain nn.Module building blocks for encoders and decoders, and a registry of activations."""

from __future__ import annotations

import itertools

from torch import nn

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


def mlp(d_in: int, hidden: tuple[int, ...], d_out: int, act: str) -> nn.Sequential:
    """Linear layers d_in -> hidden... -> d_out with ``act`` between them and no activation at the end."""
    widths = (d_in, *hidden)
    layers: list[nn.Module] = []
    for a, b in itertools.pairwise(widths):
        layers += [nn.Linear(a, b), activation(act)]
    layers.append(nn.Linear(widths[-1], d_out))
    return nn.Sequential(*layers)


ARCHS = ("mlp",)
