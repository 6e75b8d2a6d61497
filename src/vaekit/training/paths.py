"""The choice of step path for a run, made once when it starts, with the reason logged.

In order of preference: the whole step captured as one CUDA graph (any model, on a GPU, one process); the
hand-written CPU step (``training.fused``) for the models on its allow-list; autograd otherwise.
"""

from __future__ import annotations

import dataclasses
import logging

from torch import Tensor

from vaekit import devices, objectives
from vaekit.model import size
from vaekit.training import distributed, fused, graphs
from vaekit.training.run import Run
from vaekit.training.steps import StepOptions, train_step

log = logging.getLogger(__name__)


def choose(run: Run) -> str:
    """Set ``run.options``, ``run.precision`` (and ``run.static`` for the CUDA-graph step) for this run's model
    and device; return a line saying which step runs, in which precision and why."""
    tc, device, world = run.config.train, run.device, run.ctx.world_size
    blocker = graphs.fast_path_blocker(device, world, tc.cuda_graph)
    if blocker is None and run.streamed:
        blocker = "the data is read from disk in pieces, and the graph gathers its batches on the device"
    why_not = fused.blocker(run.model, tc, device, world)  # off the CPU: that it is the CPU's step
    macs = _multiply_adds(run, why_not is None) if device.type == "cpu" and tc.precision == "auto" else None
    precision, why_precision = devices.resolve_precision(tc.precision, device, macs, run.model.config.likelihood,
                                                         fused_step=why_not is None)
    run.precision = precision
    options = StepOptions(objectives.Objective(tc.objective, tc.iw_k, tc.free_bits_floor),
                          distributed.wrap(run.model, run.ctx, device), precision == "bf16",
                          tc.skips_steps, grad_clip=tc.grad_clip, grad_skip=tc.grad_skip)
    if blocker is None:
        run.options = options
        use_static_step(run)
        return f"step: one CUDA graph, {precision} ({why_precision})"
    if device.type == "cuda":
        path = f"step: autograd, not captured as a CUDA graph: {blocker}"
    elif why_not is None:
        by_hand = fused.FusedELBO(run.model, tc.free_bits_floor, bf16=precision == "bf16")
        options = dataclasses.replace(options, fused=by_hand, bf16=False)
        path = "step: the fused CPU step (gradients written out by hand)"
    else:
        path = f"step: autograd, not the fused CPU step: {why_not}"
    run.options = options
    return f"{path}; {precision} ({why_precision})"


def _multiply_adds(run: Run, fused_step: bool) -> int:
    """One step's forward multiply-adds: the fused step's products, or those of the model's layers on the meta
    device (0 where they cannot be counted there)."""
    if fused_step:
        return fused.multiply_adds(run.model, run.config.train.batch_size)
    return size.forward_multiply_adds(run.model.config, run.config.train.batch_size)


def use_static_step(run: Run) -> None:
    """Switch ``run`` to the static-buffer step; a graph needs every batch to have the same size."""
    start, stop = run.bounds[-1]
    if stop - start < run.config.train.batch_size and len(run.bounds) > 1:
        run.bounds.pop()
        log.info("dropping the last partial batch (%d examples) each epoch: the CUDA graph needs a fixed batch; "
                 "the per-epoch permutation still shows every example", stop - start)
    batch = run.bounds[0][1] - run.bounds[0][0]

    def step_fn(xb: Tensor, yb: Tensor | None, beta: Tensor) -> Tensor:
        return train_step(run.model, run.opt, xb, beta, yb, 1.0, run.options)

    dynamic = run.config.data.binarize == "dynamic"
    run.static = graphs.StaticStep(run.x, batch, len(run.bounds), step_fn, dynamic, capture=True, y=run.y)
