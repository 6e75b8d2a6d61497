"""Evaluation: negative ELBO and its parts, importance-sampled log-likelihood, active units.

Every result carries its protocol (split, binarization, number of importance samples, likelihood), since
a number without it cannot be compared with anything.
"""

from __future__ import annotations

import math
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaekit import checkpoint, data, objectives
from vaekit.batches import batched, sum_in_order
from vaekit.data.mapped import MappedRows
from vaekit.devices import resolve_device
from vaekit.errors import DataError
from vaekit.model import VAE, likelihoods, nets


@torch.no_grad()
def importance_sampled_nll(model: VAE, x: Tensor, k: int, batch_size: int = 100,
                           max_elements: int | None = None, eps: Tensor | None = None,
                           y: Tensor | None = None) -> Tensor:
    """-log p(x) per example (-log p(x|y) given the labels of a conditional model), estimated by L_k with k
    importance samples; shape (N,).

    Samples are drawn in chunks so that no decoder activation exceeds about ``max_elements`` values. The CPU
    default (16 MB of float32) stays under glibc's largest mmap threshold, so buffers are reused instead of
    being mapped and page-faulted afresh for every chunk: with 32 MB chunks, K = 1000 on the MNIST test set
    spent 112 of its 166 s in the kernel; with 16 MB it takes 90 s, 12 s of them in the kernel.
    """
    chunk = sample_chunk(model, batch_size, x.device, max_elements)
    return batched(lambda xb, yb: -objectives.iwae_bound(model, xb, k, chunk, eps, yb), x, y, batch_size,
                   model.device)


def sample_chunk(model: VAE, batch_size: int, device: torch.device, max_elements: int | None = None) -> int:
    """Latent samples per decoder call for batches of ``batch_size`` inputs, so that no decoder activation
    exceeds about ``max_elements`` values (by default 16 MB of float32 on the CPU, 256 MB on a GPU)."""
    if max_elements is None:  # a GPU runs best on large chunks; 256 MB of float32 is small next to its memory
        max_elements = 2**26 if device.type == "cuda" else 2**22
    return max(1, max_elements // (batch_size * decoder_width(model)))


def decoder_width(model: VAE) -> int:
    """Values in the decoder's largest activation for one latent sample: what bounds a chunk's memory."""
    cfg, shape = model.config, model.data_shape
    widths = [math.prod(shape) * model.n_params, *cfg.hidden]
    if cfg.arch == "conv":
        sizes = nets.downsampled(shape[1:], len(cfg.channels))[1:]
        widths += [c * h * w for c, (h, w) in zip(cfg.channels, sizes, strict=True)]
        widths.append(cfg.channels[0] * math.prod(shape[1:]))  # a margin for convolution workspace at full size
    return max(widths)


@torch.no_grad()
def active_units(model: VAE, x: Tensor, batch_size: int = 1000, y: Tensor | None = None) -> int:
    """Latent dimensions whose posterior mean varies across the data (Burda et al. 2015), in all layers."""
    return sum(active_units_per_layer(model, x, batch_size, y))


@torch.no_grad()
def active_units_per_layer(model: VAE, x: Tensor, batch_size: int = 1000, y: Tensor | None = None) -> list[int]:
    """Latent dimensions whose posterior mean varies across the data, per layer, top first.

    In a hierarchy each layer's posterior is taken at the posterior means of the layers above.
    """
    def means(xb: Tensor, yb: Tensor | None) -> Tensor:
        return torch.cat([latent.mean for latent in model.infer(xb, yb, mean=True)], dim=-1)  # (B, noise_dim)

    mu = batched(means, x, y, batch_size, model.device).split([layer.latent_dim for layer in model.layers], dim=-1)
    return [objectives.count_active(m) for m in mu]


@torch.no_grad()
def per_layer(model: VAE, x: Tensor, batch_size: int = 1000, y: Tensor | None = None) -> dict[str, Any]:
    """Active units (in all) and, for a hierarchy, each layer's size, active units and KL averaged over x."""
    active = active_units_per_layer(model, x, batch_size, y)
    if len(model.layers) == 1:
        return {"active_units": active[0]}
    kl = batched(lambda xb, yb: torch.stack([t.sum() for t in model(xb, yb).kl_per_layer]).double(), x, y,
                 batch_size, model.device, combine=sum_in_order) / len(x)
    return {"active_units": sum(active), "active_units_per_layer": active, "kl_per_layer": kl.tolist(),
            "latent_dims": [layer.latent_dim for layer in model.layers]}


@torch.no_grad()
def evaluate_model(model: VAE, x: Tensor, iw_samples: int = 1000, seed: int = 0, y: Tensor | None = None,
                   batch_size: int = 1000, protocol: dict[str, str] | None = None) -> dict[str, Any]:
    """All metrics for data ``x`` in nats per example, with the protocol that produced them.

    ``y`` are the labels a conditional model needs; its numbers are then -log p(x|y) and its bounds.
    ``protocol`` says how x was drawn, reported with the numbers: ``split`` (default "test") and
    ``binarization`` (default "none", e.g. "static (seed 0)").

    ``density`` says what the numbers are: "discrete" (log-probabilities; also given in bits per dimension),
    "continuous" (log-densities, comparable only on the same data scaling) or "unnormalized" (a Bernoulli on
    grey levels: not a likelihood).

    Seeded (the caller's random state is left untouched), so the same model and data give the same numbers.
    """
    model.eval()
    t0 = time.perf_counter()
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        result: dict[str, Any] = objectives.dataset_elbo(model, x, batch_size, y)
        if iw_samples > 0:
            result["nll"] = float(importance_sampled_nll(model, x, iw_samples, y=y).double().mean())
        result.update(per_layer(model, x, batch_size, y))
    result["density"] = likelihoods.density_kind(model.config.likelihood, x)
    if result["density"] == "discrete":  # log-probabilities, so also in bits per dimension: nats / (D ln 2)
        per_bit = math.prod(model.data_shape) * math.log(2)
        result["neg_elbo_bits_per_dim"] = result["neg_elbo"] / per_bit
        if "nll" in result:
            result["bits_per_dim"] = result["nll"] / per_bit
    result.update({
        "iw_samples": iw_samples,
        "n": len(x),
        "split": "test", "binarization": "none", **(protocol or {}),
        "likelihood": model.config.likelihood,
        "conditional": model.config.conditional,
        "latent_dim": model.latent_dim,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 3),
    })
    return result


def evaluate(directory: str | Path, split: str = "test", iw_samples: int = 1000, device: str = "auto",
             data_overrides: dict[str, Any] | None = None, seed: int | None = None,
             limit: int | None = None) -> dict[str, Any]:
    """Evaluate the checkpoint in ``directory`` on a split of the data it was trained on (its first ``limit``
    examples when given).

    ``data_overrides`` replaces data settings, e.g. ``{"data_dir": "/data"}``; the binarization of the
    evaluation set follows the run's config (a fixed, seeded sample for binarized runs).
    """
    if limit is not None and limit < 1:
        raise DataError(f"limit must be a count >= 1, got {limit}")
    model, config = checkpoint.load_run(directory, resolve_device(device))
    if data_overrides:
        config = config.override({f"data.{k}": v for k, v in data_overrides.items()})
    part = data.evaluation_split(data.load(config.data), split, config.data)
    y = model.labels_of(part.y, f"the {split} split of {config.data.dataset}")
    # as stored (images as bytes, a quarter of float32 on the device; data on disk stays there): each batch is
    # made values, on the model's device, as it is scored
    x = part.stored if limit is None else part.stored[:limit]
    x, y = x if isinstance(x, MappedRows) else x.to(model.device), None if y is None else y[:limit].to(model.device)
    seed = config.data.eval_seed if seed is None else seed
    return evaluate_model(model, x, iw_samples, seed, y, config.train.eval_batch_size,
                          {"split": split, "binarization": part.binarization})
