"""One optimizer step and what it needs: Adam, the batches of an epoch, the gradient (autograd's, or the fused
CPU step's), the non-finite guard, and the example-weighted means of an epoch's step terms.

A step returns its (loss, recon, kl) as a device tensor and never reads it back, so an epoch of steps runs
without host synchronisation; ``epoch_means`` reads them once, at the epoch's end.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vaekit import objectives
from vaekit.errors import TrainingError
from vaekit.model import VAE
from vaekit.training.fused import FusedELBO

log = logging.getLogger(__name__)
TERMS = ("loss", "recon", "kl")


def make_optimizer(model: VAE, lr: float, capturable: bool = False) -> torch.optim.Optimizer:
    """Adam; the fused kernel where this PyTorch has one for the device (25% faster per step on CPU).

    ``capturable`` keeps Adam's step count on the device, as a CUDA graph needs.
    """
    try:
        return torch.optim.Adam(model.parameters(), lr=lr, fused=True, capturable=capturable)
    except (RuntimeError, TypeError, ValueError) as e:
        log.info("fused Adam unavailable (%s); using the default implementation", e)
        return torch.optim.Adam(model.parameters(), lr=lr)


def batch_bounds(n: int, batch_size: int, drop_last: bool) -> list[tuple[int, int]]:
    """(start, stop) of each batch in an epoch over n examples."""
    stop = n - n % batch_size if drop_last else n
    return [(s, min(s + batch_size, n)) for s in range(0, stop, batch_size)]


@dataclass(frozen=True)
class StepOptions:
    """How every step of a run is taken; chosen once, when the run starts (``training.paths``).

    ``forward`` replaces the model in the objective (a DistributedDataParallel wrapper); with ``bf16`` the
    networks run under bfloat16 autocast while distributions and the loss stay in fp32; with
    ``skip_nonfinite`` (fused Adam only) a step whose loss or gradient is not finite, or whose gradient norm
    exceeds ``grad_skip`` > 0, leaves weights and Adam's state untouched and returns NaN terms, decided on the
    device; ``grad_clip`` > 0 rescales a gradient whose global L2 norm exceeds it to that norm; ``fused``
    computes the ELBO's gradients without autograd (``training.fused``; fp32, one process).
    """

    objective: objectives.Objective = objectives.ELBO
    forward: objectives.Forward | None = None
    bf16: bool = False
    skip_nonfinite: bool = False
    fused: FusedELBO | None = None
    grad_clip: float = 0.0
    grad_skip: float = 0.0


def train_step(model: VAE, opt: torch.optim.Optimizer, x: Tensor, beta: float | Tensor, y: Tensor | None = None,
               weight: float = 1.0, options: StepOptions = StepOptions()) -> Tensor:
    """One Adam step on ``weight`` times the objective (by default the beta-weighted negative ELBO) for the batch
    x (with labels y of a conditional model); returns the weighted (loss, recon, kl) without syncing. The weight
    lets the slices of a global batch count by their size across processes.
    """
    if options.fused is not None:
        terms = options.fused(x, beta, y)
    else:
        terms = _autograd_gradients(model, opt, x, beta, y, weight, options)
    stacked = torch.stack(terms).detach()  # (3,)
    norm = _clip(opt, options.grad_clip) if options.grad_clip or options.grad_skip else None
    if options.skip_nonfinite:
        ok = _cancel_if_nonfinite(opt, terms.loss, norm, options.grad_skip)
        opt.step()
        del opt.found_inf
        stacked = torch.where(ok, stacked, torch.full_like(stacked, math.nan))
    else:
        opt.step()
    return stacked * weight if weight != 1.0 else stacked


def _autograd_gradients(model: VAE, opt: torch.optim.Optimizer, x: Tensor, beta: float | Tensor,
                        y: Tensor | None, weight: float, options: StepOptions) -> objectives.ELBOTerms:
    """The objective's terms, with the gradients of ``weight`` times its loss in the parameters' ``.grad``."""
    # no cast cache: each weight is used once per step, and a cache would not survive graph replays
    with torch.autocast(x.device.type, torch.bfloat16, enabled=options.bf16, cache_enabled=False):
        terms = options.objective(model, x, beta, options.forward, y)
    opt.zero_grad(set_to_none=True)
    (terms.loss * weight if weight != 1.0 else terms.loss).backward()
    return terms


def _with_gradients(opt: torch.optim.Optimizer) -> list[Tensor]:
    return [p for group in opt.param_groups for p in group["params"] if p.grad is not None]


def _clip(opt: torch.optim.Optimizer, max_norm: float) -> Tensor:
    """The gradient's global L2 norm before clipping (a device scalar), rescaling it to ``max_norm`` if larger
    (0: measure only). On the device, without a host sync."""
    return torch.nn.utils.clip_grad_norm_(_with_gradients(opt), max_norm or math.inf, foreach=True)


def _cancel_if_nonfinite(opt: torch.optim.Optimizer, loss: Tensor, norm: Tensor | None = None,
                         grad_skip: float = 0.0) -> Tensor:
    """Set ``opt.found_inf`` to 1.0 when the loss or a gradient is not finite, or the gradient norm ``norm``
    exceeds ``grad_skip`` > 0; returns the device flag "take this step".

    Fused Adam reads ``found_inf`` on the device and then neither moves the weights nor the moments, and takes
    back its step count (GradScaler's mechanism), so the check costs a few kernels and no host sync.
    """
    if norm is not None:  # the global norm: inf or NaN if any element is
        checked = [norm]
    else:  # each gradient's least and greatest element, likewise (NaN propagates): on the CPU far cheaper than
        # the infinity norms (benchmarks/fused_step.py --skip-nonfinite)
        checked = [m for p in _with_gradients(opt) if p.grad.numel() for m in torch.aminmax(p.grad)]
    ok = torch.isfinite(torch.stack([loss.detach().float(), *(g.float() for g in checked)])).all()
    if grad_skip > 0:
        ok = ok & (norm <= grad_skip)
    opt.found_inf = (~ok).float()
    return ok


def epoch_means(step_terms: Tensor, bounds: list[tuple[int, int]], epoch: int,
                skip: bool = False) -> dict[str, float]:
    """Example-weighted means of the per-step terms; raises TrainingError at the first non-finite one.

    With ``skip``, non-finite steps (those whose update was cancelled) are left out of the means instead and
    counted as ``skipped_steps``.
    """
    terms = step_terms.cpu()
    bad_rows = (~torch.isfinite(terms)).any(dim=1)
    if bad_rows.any() and not skip:
        step = int(bad_rows.nonzero()[0])
        bad = ~torch.isfinite(terms[step])
        which = [t for t, b in zip(TERMS, bad.tolist(), strict=False) if b and t != "loss"] or ["loss"]
        raise TrainingError(f"non-finite {' and '.join(which)} at epoch {epoch}, step {step + 1}: "
                            f"values {dict(zip(TERMS, terms[step].tolist(), strict=False))}")
    keep = ~bad_rows
    if not keep.any():
        raise TrainingError(f"every one of the {len(terms)} steps of epoch {epoch} had a non-finite loss or "
                            "gradient (or a gradient norm above train.grad_skip) and was skipped")
    sizes = torch.tensor([b - a for a, b in bounds], dtype=torch.float64)[keep]
    means = (terms[keep].double() * sizes[:, None]).sum(0) / sizes.sum()
    loss, recon, kl = means.tolist()
    out = {"loss": loss, "neg_elbo": recon + kl, "recon": recon, "kl": kl}
    if skip:
        out["skipped_steps"] = int(bad_rows.sum())
    return out
