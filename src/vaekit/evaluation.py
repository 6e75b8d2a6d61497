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
from vaekit.model import VAE
from vaekit.training import resolve_device

# Burda et al. 2015: a latent unit is active when Cov_x(E_q[u]) exceeds 0.01.
ACTIVE_UNIT_THRESHOLD = 1e-2


@torch.no_grad()
def importance_sampled_nll(model: VAE, x: Tensor, k: int, batch_size: int = 100,
                           max_elements: int | None = None, eps: Tensor | None = None) -> Tensor:
    """-log p(x) per example, estimated by L_k with k importance samples; shape (N,).

    Samples are drawn in chunks so that no decoder output exceeds about ``max_elements`` values. The CPU
    default (16 MB of float32) stays under glibc's largest mmap threshold, so buffers are reused instead of
    being mapped and page-faulted afresh for every chunk: with 32 MB chunks, K = 1000 on the MNIST test set
    spent 112 of its 166 s in the kernel; with 16 MB it takes 90 s, 12 s of them in the kernel.
    """
    if max_elements is None:  # a GPU runs best on large chunks; 256 MB of float32 is small next to its memory
        max_elements = 2**26 if x.device.type == "cuda" else 2**22
    per_sample = batch_size * math.prod(model.data_shape) * model.n_params
    chunk = max(1, max_elements // per_sample)
    return torch.cat([-objectives.iwae_bound(model, x[s : s + batch_size], k, chunk, eps)
                      for s in range(0, len(x), batch_size)])


@torch.no_grad()
def active_units(model: VAE, x: Tensor, batch_size: int = 1000) -> int:
    """Number of latent dimensions whose posterior mean varies across the data (Burda et al. 2015)."""
    mu = torch.cat([model.encode(x[s : s + batch_size]).mean for s in range(0, len(x), batch_size)])
    return int((mu.double().var(dim=0, unbiased=False) > ACTIVE_UNIT_THRESHOLD).sum())


@torch.no_grad()
def evaluate_model(model: VAE, x: Tensor, iw_samples: int = 1000, seed: int = 0, batch_size: int = 1000,
             binarization: str = "none", split: str = "test") -> dict[str, Any]:
    """All metrics for data ``x`` in nats per example, with the protocol that produced them.

    Seeded (the caller's random state is left untouched), so the same model and data give the same numbers.
    """
    model.eval()
    t0 = time.perf_counter()
    devices = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        result: dict[str, Any] = objectives.dataset_elbo(model, x, batch_size)
        if iw_samples > 0:
            result["nll"] = float(importance_sampled_nll(model, x, iw_samples).double().mean())
    result.update({
        "iw_samples": iw_samples,
        "n": len(x),
        "split": split,
        "binarization": binarization,
        "likelihood": model.config.likelihood,
        "active_units": active_units(model, x, batch_size),
        "latent_dim": model.latent_dim,
        "seed": seed,
        "seconds": round(time.perf_counter() - t0, 3),
    })
    return result


def evaluate(directory: str | Path, split: str = "test", iw_samples: int = 1000, device: str = "auto",
             data_overrides: dict[str, Any] | None = None, seed: int | None = None) -> dict[str, Any]:
    """Evaluate the checkpoint in ``directory`` on a split of the data it was trained on.

    ``data_overrides`` replaces data settings, e.g. ``{"data_dir": "/data"}``; the binarization of the
    evaluation set follows the run's config (a fixed, seeded sample for binarized runs).
    """
    model, config = checkpoint.load_run(directory, resolve_device(device))
    if data_overrides:
        config = config.override({f"data.{k}": v for k, v in data_overrides.items()})
    part = data.evaluation_split(data.load(config.data), split, config.data)
    x = part.x.to(next(model.parameters()).device)
    seed = config.data.eval_seed if seed is None else seed
    return evaluate_model(model, x, iw_samples, seed, config.train.eval_batch_size, part.binarization, split)
