"""The training loop: device-resident data, index-slice batches, no per-step host synchronisation.

Per-step losses are written into a device tensor and read once per epoch; a non-finite value then stops
training with the epoch and step where it first appeared, before any checkpoint is overwritten.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaekit import checkpoint, data, distributed, generate, graphs, images, likelihoods, objectives, plots
from vaekit.config import Config
from vaekit.errors import TrainingError
from vaekit.model import VAE

log = logging.getLogger(__name__)
TERMS = ("loss", "recon", "kl")


class Callback:
    """Hooks for progress reporting; the library itself never prints.

    Setting ``stop_training = True`` (e.g. in ``on_epoch_end``) ends training after the current epoch,
    which is then checkpointed as the final one.
    """

    stop_training: bool = False

    def on_train_start(self, config: Config, steps_per_epoch: int) -> None: ...
    def on_step(self, epoch: int, step: int) -> None: ...
    def on_epoch_end(self, record: dict[str, Any]) -> None: ...


@dataclass
class TrainResult:
    """The trained model, its resolved config (with ``model.data_shape``) and one record per epoch."""

    model: VAE
    config: Config
    history: list[dict[str, Any]] = field(default_factory=list)
    rank: int = 0  # this process's rank under torchrun; only rank 0 writes files


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    return torch.device(name)


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


def train_step(model: VAE, opt: torch.optim.Optimizer, x: Tensor, beta: float | Tensor,
               forward: objectives.Forward | None = None, weight: float = 1.0, bf16: bool = False,
               y: Tensor | None = None, objective: objectives.Objective = objectives.ELBO) -> Tensor:
    """One Adam step on ``weight`` times the objective (by default the beta-weighted negative ELBO); returns the
    weighted (loss, recon, kl) without syncing. The weight lets the slices of a global batch count by their size
    across processes. With ``bf16`` the networks run under bfloat16 autocast; distributions and the loss stay in
    fp32. ``y`` are the labels of a conditional model.
    """
    # no cast cache: each weight is used once per step, and a cache would not survive graph replays
    with torch.autocast(x.device.type, torch.bfloat16, enabled=bf16, cache_enabled=False):
        terms = objective(model, x, beta, forward, y)
    opt.zero_grad(set_to_none=True)
    (terms.loss * weight if weight != 1.0 else terms.loss).backward()
    opt.step()
    stacked = torch.stack(terms).detach()  # (3,)
    return stacked * weight if weight != 1.0 else stacked


@dataclass
class Run:
    """Everything one training run holds while it goes: model, optimiser, data on the device, RNG."""

    config: Config
    model: VAE
    forward: objectives.Forward  # the model, or its DistributedDataParallel wrapper
    opt: torch.optim.Optimizer
    x: Tensor  # this process's training examples, on the device
    y: Tensor | None  # their labels, for a conditional model
    x_val: Tensor | None
    y_val: Tensor | None
    bounds: list[tuple[int, int]]  # batch slices of one epoch
    gen: torch.Generator  # permutations and dynamic binarization
    ctx: distributed.Context
    callbacks: Sequence[Callback]
    static: graphs.StaticStep | None = None  # the CUDA-graph step, when it can be used
    step: int = 0  # optimizer steps taken so far
    warmup_steps: int = 0  # length of the linear KL warm-up, in steps

    @property
    def objective(self) -> objectives.Objective:
        tc = self.config.train
        return objectives.Objective(tc.objective, tc.iw_k, tc.free_bits)

    def beta(self) -> float:
        """The KL weight in force for the next step."""
        return objectives.kl_weight(self.config.train.beta, self.step + 1, self.warmup_steps)


def run_epoch(run: Run, epoch: int) -> Tensor:
    """One pass over a fresh permutation of the data; returns the per-step terms, shape (steps, 3)."""
    x, gen, ctx = run.x, run.gen, run.ctx
    perm = torch.randperm(len(x), device=x.device, generator=gen)
    if run.static is not None:
        return _run_epoch_static(run, epoch, perm)
    step_terms = torch.empty(len(run.bounds), len(TERMS), device=x.device)
    dynamic = run.config.data.binarize == "dynamic"
    bf16, objective = run.config.train.precision == "bf16", run.objective
    run.model.train()
    for step, (start, stop) in enumerate(run.bounds):
        idx = perm[start:stop]
        xb = x.index_select(0, idx)  # (B, *shape); faster than x[idx] on CPU
        yb = None if run.y is None else run.y.index_select(0, idx)
        if dynamic:  # a fresh binarization of every image each time it is seen
            xb = torch.bernoulli(xb, generator=gen)
        a, b = distributed.rank_slice(len(xb), ctx)  # the whole batch in a single-process run
        weight = (b - a) * ctx.world_size / len(xb)
        step_terms[step] = train_step(run.model, run.opt, xb[a:b], run.beta(), run.forward, weight, bf16,
                                      None if yb is None else yb[a:b], objective)
        run.step += 1
        for cb in run.callbacks:
            cb.on_step(epoch, step)
    return distributed.mean_over_ranks(step_terms, ctx)


def _run_epoch_static(run: Run, epoch: int, perm: Tensor) -> Tensor:
    """The epoch on the static-buffer step: one index copy and one graph replay per batch."""
    static = run.static
    static.start_epoch()
    for step, (start, stop) in enumerate(run.bounds):
        if run.step < run.warmup_steps + 1:  # the graph reads beta from a device buffer
            static.beta.fill_(run.beta())
        static(perm[start:stop])
        run.step += 1
        for cb in run.callbacks:
            cb.on_step(epoch, step)
    return static.step_terms.clone()


def epoch_means(step_terms: Tensor, bounds: list[tuple[int, int]], epoch: int) -> dict[str, float]:
    """Example-weighted means of the per-step terms; raises TrainingError at the first non-finite one."""
    terms = step_terms.cpu()
    bad = ~torch.isfinite(terms)
    if bad.any():
        step = int(bad.any(dim=1).nonzero()[0])
        which = [t for t, b in zip(TERMS, bad[step].tolist(), strict=False) if b and t != "loss"] or ["loss"]
        raise TrainingError(f"non-finite {' and '.join(which)} at epoch {epoch}, step {step + 1}: "
                            f"values {dict(zip(TERMS, terms[step].tolist(), strict=False))}")
    sizes = torch.tensor([b - a for a, b in bounds], dtype=torch.float64)
    means = (terms.double() * sizes[:, None]).sum(0) / sizes.sum()
    loss, recon, kl = means.tolist()
    return {"loss": loss, "neg_elbo": recon + kl, "recon": recon, "kl": kl}


def train(config: Config, out_dir: str | Path | None = None, callbacks: Sequence[Callback] = (),
          splits: data.Splits | None = None) -> TrainResult:
    """Train a VAE as ``config`` says; with ``out_dir``, write checkpoints, metrics.jsonl and PNG previews.

    ``splits`` may be passed to reuse data already in memory; otherwise ``config.data`` is loaded. Under
    ``torchrun`` the run is data-parallel across the processes (see ``vaekit.distributed``).
    """
    ctx, device = distributed.from_env(resolve_device(config.train.device))
    try:
        splits = splits if splits is not None else data.load(config.data)
        run = _start(config, splits, device, ctx, callbacks)
        out = Path(out_dir) if out_dir is not None and ctx.is_main else None
        result = TrainResult(run.model, run.config, rank=ctx.rank)
        if out is not None:
            out.mkdir(parents=True, exist_ok=True)
            (out / "metrics.jsonl").write_text("")
        for epoch in range(1, run.config.train.epochs + 1):
            record = _epoch(run, epoch)
            result.history.append(record)
            stop = any(cb.stop_training for cb in run.callbacks)  # callbacks run on rank 0 only
            stop = distributed.any_rank(stop, ctx, run.x.device)
            last = epoch == run.config.train.epochs or stop
            if out is not None:
                _save(run, out, record, last, splits.preprocess)
            if last:
                break
        run.model.eval()
        if out is not None:
            _write_previews(run.model, splits.test, out)
        return result
    finally:
        distributed.close(ctx)


@torch.no_grad()
def _write_previews(model: VAE, test: data.Split, out: Path, n: int = 8) -> None:
    """reconstructions.png and samples.png; a conditional model's samples come one row per class."""
    if not model.config.conditional:
        plots.write_previews(model, test.x, out)
        return
    if not plots.is_image_shape(test.shape):
        return
    device = next(model.parameters()).device
    x, y = test.x[:n].to(device), test.y[:n].to(device)
    plots.save_grid(torch.cat([x, model.reconstruct(x, y)]), out / "reconstructions.png", nrow=len(x))
    plots.save_grid(generate.sample_per_label(model, n), out / "samples.png", nrow=n)


def _start(config: Config, splits: data.Splits, device: torch.device, ctx: distributed.Context,
           callbacks: Sequence[Callback]) -> Run:
    likelihoods.check_support(config.model.likelihood, splits.train.x, f"the {config.data.dataset} training set")
    config = _resolve(config, splits)
    torch.manual_seed(config.train.seed)  # the same initial weights in every process
    model = VAE(config.model).to(device)
    forward = distributed.wrap(model, ctx, device)
    if ctx.world_size > 1:  # but independent posterior noise in each
        torch.manual_seed(config.train.seed + ctx.rank)
    x = splits.train.x.to(device)
    bounds = batch_bounds(len(x), config.train.batch_size, config.train.drop_last)
    if bounds and bounds[-1][1] - bounds[-1][0] < ctx.world_size:  # a last batch too small to split
        bounds.pop()
    if not bounds:
        raise TrainingError(f"batch size {config.train.batch_size} with drop_last leaves no batch of {len(x)} "
                            f"examples for {ctx.world_size} process(es)")
    x_val, y_val = _labelled(splits.val, config, device) if splits.val is not None and ctx.is_main else (None, None)
    gen = torch.Generator(device).manual_seed(config.train.seed)  # one permutation shared by all processes
    callbacks = callbacks if ctx.is_main else ()
    blocker = graphs.fast_path_blocker(device, ctx.world_size, config.train.cuda_graph)
    opt = make_optimizer(model, config.train.lr, capturable=blocker is None)
    y = _labelled(splits.train, config, device)[1]
    run = Run(config, model, forward, opt, x, y, x_val, y_val, bounds, gen, ctx, callbacks)
    if blocker is None:
        _use_static_step(run)
    elif device.type == "cuda":
        log.info("training step not captured as a CUDA graph: %s", blocker)
    tc = config.train
    run.warmup_steps = tc.kl_warmup_steps or round(tc.kl_warmup_epochs * len(run.bounds))
    for cb in callbacks:
        cb.on_train_start(config, len(run.bounds))
    return run


def _resolve(config: Config, splits: data.Splits) -> Config:
    """The config with what the data decides: the data shape, and the class names of a conditional model."""
    resolved: dict[str, Any] = {"model.data_shape": list(splits.train.shape)}
    if images.is_image_path(config.data.dataset):  # later commands convert the folder the same way
        resolved.update({"data.channels": splits.train.shape[0], "data.image_size": list(splits.train.shape[1:])})
    if config.model.conditional:
        if splits.train.y is None or splits.classes is None:
            raise TrainingError(f"a conditional model needs labelled data, and {config.data.dataset} has no "
                                "labels (image folders get them from one sub-folder per class)")
        resolved["model.labels"] = list(splits.classes)
    if config.train.objective == "iwae" and config.train.free_bits > 0:
        raise TrainingError("train.free_bits applies to the ELBO objective; the iwae objective takes none")
    return config.override(resolved)


def _labelled(split: data.Split, config: Config, device: torch.device) -> tuple[Tensor, Tensor | None]:
    """A split's data on the device, with its labels when the model is conditional."""
    y = split.y.to(device) if config.model.conditional else None
    return split.x.to(device), y


def _use_static_step(run: Run) -> None:
    """Switch ``run`` to the static-buffer step; a graph needs every batch to have the same size."""
    tc = run.config.train
    start, stop = run.bounds[-1]
    if stop - start < tc.batch_size and len(run.bounds) > 1:
        run.bounds.pop()
        log.info("dropping the last partial batch (%d examples) each epoch: the CUDA graph needs a fixed batch; "
                 "the per-epoch permutation still shows every example", stop - start)
    batch = run.bounds[0][1] - run.bounds[0][0]
    objective, bf16 = run.objective, tc.precision == "bf16"

    def step_fn(xb: Tensor, yb: Tensor | None, beta: Tensor) -> Tensor:
        return train_step(run.model, run.opt, xb, beta, run.forward, 1.0, bf16, yb, objective)

    dynamic = run.config.data.binarize == "dynamic"
    run.static = graphs.StaticStep(run.x, batch, len(run.bounds), step_fn, dynamic, capture=True, y=run.y)


def _epoch(run: Run, epoch: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    step_terms = run_epoch(run, epoch)
    record = _epoch_record(epoch, epoch_means(step_terms, run.bounds, epoch), run, t0)
    log.debug("epoch %d: %s", epoch, record)
    for cb in run.callbacks:
        cb.on_epoch_end(record)
    return record


def _save(run: Run, out: Path, record: dict[str, Any], last: bool, preprocess: Any) -> None:
    _append_jsonl(out / "metrics.jsonl", record)
    every = run.config.train.checkpoint_every
    if last or (every and record["epoch"] % every == 0):
        checkpoint.save(run.model, run.config, out, preprocess)


def _epoch_record(epoch: int, train: dict[str, float], run: Run, t0: float) -> dict[str, Any]:
    record: dict[str, Any] = {"epoch": epoch, "time_s": round(time.perf_counter() - t0, 4),
                              "beta": objectives.kl_weight(run.config.train.beta, run.step, run.warmup_steps)}
    record.update({f"train_{k}": v for k, v in train.items()})
    model, config = run.model, run.config
    model.eval()
    devices = [run.x.device] if run.x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.data.eval_seed)  # the same posterior draws every epoch
        if run.x_val is not None:
            record.update({f"val_{k}": v for k, v in objectives.dataset_elbo(
                model, run.x_val, config.train.eval_batch_size, run.y_val).items()})
        record.update(_latent_usage(run))
    return record


@torch.no_grad()
def _latent_usage(run: Run, n: int = 1000) -> dict[str, Any]:
    """KL per latent dimension and active units on the validation set (or the first n training examples)."""
    x, y = (run.x_val, run.y_val) if run.x_val is not None else (run.x[:n], None if run.y is None else run.y[:n])
    qz_x = run.model.encode(x[:n], None if y is None else y[:n])
    kl_j = objectives.kl_per_dimension(qz_x, run.model.prior()).mean(0)  # (L,)
    active = qz_x.mean.double().var(dim=0, unbiased=False) > 1e-2  # Burda et al. 2015
    return {"kl_per_dim": [round(v, 4) for v in kl_j.tolist()], "active_units": int(active.sum())}


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
