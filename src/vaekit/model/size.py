"""What a model of a given config holds and what training it needs, found without allocating it.

The model is built on PyTorch's meta device, where tensors have shapes but no storage, so a config asking for
billions of parameters (a typo, or a hostile ``config.json``) costs microseconds here instead of an allocator
failure deep inside ``nn.Linear``. Loading compares these shapes with the weights file before building the
real model; training compares the estimate with the memory the device has.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch import nn

from vaekit.config import Config, ModelConfig
from vaekit.model.vae import VAE

log = logging.getLogger(__name__)

ADAM_COPIES = 4  # fp32 weights, their gradients, and Adam's two moment estimates
SAVED_COPIES = 2  # each module output is kept for the backward pass and meets a gradient of its size there


def on_meta(config: ModelConfig) -> VAE:
    """The model of ``config`` with shapes and no storage: its ``state_dict`` says what a weights file must hold."""
    with torch.device("meta"):
        return VAE(config)


def n_parameters(model: nn.Module) -> int:
    """Trainable numbers of ``model`` (a meta model's included)."""
    return sum(p.numel() for p in model.parameters())


def activation_bytes(model: VAE, batch_size: int, iw_k: int = 1) -> int:
    """Bytes of the module outputs of one training forward pass of ``batch_size`` examples (``iw_k``
    posterior samples each), measured by running a meta ``model`` on meta inputs; 0 for a model with a part
    that needs values to run (e.g. a registered distribution that validates its arguments)."""
    x = torch.empty(batch_size, *model.data_shape, device="meta")  # (B, *data_shape)
    y = torch.zeros(batch_size, dtype=torch.long, device="meta") if model.n_classes else None
    with _output_bytes() as total, torch.no_grad():
        try:
            model(x, y, k=iw_k if iw_k > 1 else None)
        except (RuntimeError, NotImplementedError, ValueError) as e:  # the weights alone are estimated then
            log.debug("no activation estimate for this model on the meta device: %s", e)
            return 0
    return total[0]


def forward_multiply_adds(config: ModelConfig, batch_size: int) -> int:
    """Multiply-adds of the linear layers and convolutions in one forward pass of ``batch_size`` examples of a
    model of ``config`` (``model.data_shape`` set), counted on the meta device; 0 for a model with a part that
    needs values to run. Products outside those modules (a mixture prior's, a flow's masks) are not counted."""
    model = on_meta(config)
    x = torch.empty(batch_size, *model.data_shape, device="meta")  # (B, *data_shape)
    y = torch.zeros(batch_size, dtype=torch.long, device="meta") if model.n_classes else None
    total = [0]

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(module, nn.Linear):  # every output is a dot product of in_features terms
            total[0] += output.numel() * module.in_features
        elif isinstance(module, nn.modules.conv._ConvTransposeNd):  # each input meets its kernel slice once
            total[0] += inputs[0].numel() * module.out_channels // module.groups * math.prod(module.kernel_size)
        elif isinstance(module, nn.modules.conv._ConvNd):  # each output: (in_channels / groups) x kernel terms
            total[0] += output.numel() * module.in_channels // module.groups * math.prod(module.kernel_size)

    handle = nn.modules.module.register_module_forward_hook(count)
    try:
        with torch.no_grad():
            model(x, y)
    except (RuntimeError, NotImplementedError, ValueError) as e:
        log.debug("no multiply-add count for this model on the meta device: %s", e)
        return 0
    finally:
        handle.remove()
    return total[0]


@contextmanager
def _output_bytes() -> Iterator[list[int]]:
    """A one-item list that sums the bytes of every module output produced inside the block."""
    total = [0]

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        outputs = output if isinstance(output, (tuple, list)) else (output,)
        total[0] += sum(t.numel() * t.element_size() for t in outputs if isinstance(t, torch.Tensor))

    handle = nn.modules.module.register_module_forward_hook(count)
    try:
        yield total
    finally:
        handle.remove()


def training_bytes(config: Config) -> tuple[int, int]:
    """(bytes of the weights, gradients and Adam state, bytes of one batch's activations and their gradients)
    for training ``config``, whose ``model.data_shape`` must be set."""
    model = on_meta(config.model)
    tc = config.train
    k = tc.iw_k if tc.objective == "iwae" else 1
    return ADAM_COPIES * 4 * n_parameters(model), SAVED_COPIES * activation_bytes(model, tc.batch_size, k)
