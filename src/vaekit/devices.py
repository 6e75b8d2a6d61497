"""Which device a command runs on."""

from __future__ import annotations

import torch

from vaekit.errors import VaekitError


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error; other names as given."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VaekitError(f"--device {name} was asked for, but PyTorch sees no CUDA GPU")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise VaekitError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from e
