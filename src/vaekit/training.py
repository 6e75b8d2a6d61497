"""The training loop: device-resident data, index-slice batches, no per-step host synchronisation.

Per-step losses are written into a device tensor and read once per epoch; a non-finite value then stops
training with the epoch and step where it first appeared, before any checkpoint is overwritten, and the
message names the last good checkpoint. With ``train.nonfinite = "skip"`` such a step's update is cancelled on
the device instead (fused Adam's ``found_inf`` flag, as under a GradScaler), and the skips are counted once per
epoch against ``train.max_skipped_steps``.

Every checkpoint of a run holds what exact continuation needs: weights, Adam's moments and step counts, the
epoch and step (which also place the KL warm-up), the state of every random-number generator drawn from (the
global CPU RNG for posterior noise, the CUDA RNG on a GPU, and ``Run.gen`` for permutations and dynamic
binarization; one CPU/CUDA state per process under torchrun), early-stopping state and the metric history.
``resume`` continues a run from it, and the continuation is bitwise the uninterrupted run.
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
import torch.distributed as dist
from torch import Tensor

from vaekit import (
    checkpoint,
    data,
    distributed,
    fused,
    generate,
    graphs,
    images,
    likelihoods,
    objectives,
    plots,
    runstate,
)
from vaekit.config import Config
from vaekit.errors import TrainingError
from vaekit.fileio import crash_point
from vaekit.model import VAE
from vaekit.steps import TERMS, batch_bounds, epoch_means, make_optimizer, train_step

log = logging.getLogger(__name__)


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
    best_epoch: int | None = None  # early stopping: the epoch whose weights ``model`` holds
    stopped: str | None = None  # "early_stopping" or "callback" when training ended before train.epochs
    skipped_steps: int = 0  # updates cancelled for a non-finite loss or gradient (train.nonfinite = "skip")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise TrainingError("--device cuda was asked for, but PyTorch sees no CUDA GPU")
    return torch.device(name)


class EarlyStopping:
    """Stop once the validation negative ELBO has not improved for ``patience`` epochs; keep the best weights."""

    def __init__(self, patience: int) -> None:
        self.patience = patience
        self.best_val: float | None = None
        self.best_epoch: int | None = None
        self.bad_epochs = 0
        self.best: dict[str, Tensor] | None = None  # a copy of the best weights, on the training device

    def update(self, epoch: int, val: float, model: VAE) -> None:
        """Record epoch ``epoch``'s validation -ELBO; a strictly better one becomes the best, with its weights."""
        if self.best_val is None or val < self.best_val:
            self.best_val, self.best_epoch, self.bad_epochs = val, epoch, 0
            self.best = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            self.bad_epochs += 1

    @property
    def exhausted(self) -> bool:
        """True once ``patience`` epochs in a row brought no improvement."""
        return self.bad_epochs >= self.patience


@dataclass
class Run:
    """Everything one training run holds while it goes: model, optimiser, data on the device, RNG, progress."""

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
    fused_elbo: fused.FusedELBO | None = None  # the hand-differentiated CPU step, when it can be used
    step: int = 0  # optimizer steps taken so far
    warmup_steps: int = 0  # length of the linear KL warm-up, in steps
    epoch: int = 0  # epochs completed
    history: list[dict[str, Any]] = field(default_factory=list)
    stopping: EarlyStopping | None = None  # on rank 0, with train.early_stopping_patience > 0
    skipped: int = 0  # steps skipped for a non-finite loss or gradient, over the whole run
    stopped: str | None = None  # why training ended before train.epochs
    finished: bool = False
    checkpoints: bool = False  # whether the run writes checkpoints (the same answer in every process)
    out: Path | None = None  # the run directory, on rank 0
    preprocess: Any = None  # a table's standardization, saved with every checkpoint
    last_checkpoint: int | None = None  # the epoch of the newest checkpoint written

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
    skip = run.config.train.nonfinite == "skip"
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
                                      None if yb is None else yb[a:b], objective, skip, run.fused_elbo)
        run.step += 1
        crash_point("step")
        for cb in run.callbacks:
            cb.on_step(epoch, step)
    return distributed.mean_over_ranks(step_terms, ctx)


def _run_epoch_static(run: Run, epoch: int, perm: Tensor) -> Tensor:
    """The epoch on the static-buffer step: one index copy and one graph replay per batch."""
    static = run.static
    static.start_epoch()
    static.beta.fill_(run.beta())  # also right after a resume, when the warm-up may be long over
    for step, (start, stop) in enumerate(run.bounds):
        if run.step < run.warmup_steps + 1:  # the graph reads beta from a device buffer
            static.beta.fill_(run.beta())
        static(perm[start:stop])
        run.step += 1
        crash_point("step")
        for cb in run.callbacks:
            cb.on_step(epoch, step)
    return static.step_terms.clone()


def train(config: Config, out_dir: str | Path | None = None, callbacks: Sequence[Callback] = (),
          splits: data.Splits | None = None, resume: bool = False) -> TrainResult:
    """Train a VAE as ``config`` says; with ``out_dir``, write checkpoints, metrics.jsonl and PNG previews.

    ``splits`` may be passed to reuse data already in memory; otherwise ``config.data`` is loaded. Under
    ``torchrun`` the run is data-parallel across the processes (see ``vaekit.distributed``). With ``resume``,
    ``out_dir`` is a run directory written by ``train`` and training continues from its latest checkpoint;
    ``config`` must be the saved one, apart from the keys in ``RESUMABLE_CHANGES`` (see ``resume``).
    """
    state, saved_epochs = None, 0
    if resume:
        if out_dir is None:
            raise TrainingError("resume needs out_dir: the run directory to continue")
        config, state, saved_epochs = runstate.resume_point(Path(out_dir), config)
    ctx, device = distributed.from_env(resolve_device(config.train.device))
    try:
        splits = splits if splits is not None else data.load(config.data)
        run = _start(config, splits, device, ctx, callbacks)
        _attach_output(run, out_dir, splits.preprocess, resumed=state is not None)
        if state is not None:
            runstate.restore(run, state, Path(out_dir), saved_epochs)
        _loop(run)
        run.model.eval()
        if run.out is not None:
            _write_previews(run.model, splits.test, run.out)
        distributed.leave_together(ctx)
        best = run.stopping.best_epoch if run.stopping is not None else None
        return TrainResult(run.model, run.config, run.history, ctx.rank, best, run.stopped, run.skipped)
    finally:
        distributed.close(ctx)


def resume(directory: str | Path, overrides: dict[str, Any] | None = None, callbacks: Sequence[Callback] = (),
           splits: data.Splits | None = None) -> TrainResult:
    """Continue the training run in ``directory`` from its latest checkpoint, exactly where it stood.

    ``overrides`` are dotted config keys; values that repeat the saved config are accepted, others are refused
    with the differing keys named, except ``RESUMABLE_CHANGES``: ``train.epochs`` may be raised to extend a run
    (even a finished one: it continues from its last weights) or lowered down to the epochs already trained;
    ``train.checkpoint_every`` and where the data lives may change. A finished run whose ``train.epochs`` is not
    raised is not trained further: the result is the saved model and history.
    """
    return train(runstate.resume_config(directory, overrides), directory, callbacks, splits, resume=True)


def _loop(run: Run) -> None:
    """Epochs from the one after ``run.epoch`` to the last, checkpointing as configured."""
    epochs = run.config.train.epochs
    if not run.finished and run.epoch >= epochs:  # resumed with train.epochs lowered to where the run stood
        _finish(run, None)
    while not run.finished:
        epoch = run.epoch + 1
        record = _epoch(run, epoch)
        run.history.append(record)
        run.epoch = epoch
        stop = any(cb.stop_training for cb in run.callbacks)  # callbacks run on rank 0 only
        exhausted = run.stopping is not None and run.stopping.exhausted
        if distributed.any_rank(stop or exhausted, run.ctx, run.x.device):
            run.stopped = "early_stopping" if exhausted else "callback"
            log.info("stopping after epoch %d (%s)", epoch, run.stopped.replace("_", " "))
        if epoch == epochs or run.stopped is not None:
            _finish(run, record)
        else:
            _save(run, record)


def _finish(run: Run, record: dict[str, Any] | None) -> None:
    """The final checkpoint; under early stopping it holds the best weights, and the model gets them back."""
    run.finished = True
    last = None
    if run.config.train.early_stopping_patience:
        last = {k: v.detach().clone() for k, v in run.model.state_dict().items()}
        if run.stopping is not None and run.stopping.best is not None:
            run.model.load_state_dict(run.stopping.best)
            log.info("restored the weights of epoch %d, the best on validation", run.stopping.best_epoch)
        _share_weights_of_rank0(run)
    _save(run, record, final=True, last_weights=last)


def _share_weights_of_rank0(run: Run) -> None:
    """Under torchrun only rank 0 validates, so it alone knows the best weights: every process takes its copy."""
    if run.ctx.world_size > 1:
        for t in run.model.state_dict().values():
            dist.broadcast(t, src=0)


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
    x, y = _labelled(splits.train, config, device)
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
    if config.train.nonfinite == "skip" and not opt.defaults.get("fused"):
        raise TrainingError(f"train.nonfinite = 'skip' cancels updates inside PyTorch's fused Adam, which this "
                            f"PyTorch lacks on {device}; use train.nonfinite = 'stop'")
    run = Run(config, model, forward, opt, x, y, x_val, y_val, bounds, gen, ctx, callbacks)
    if blocker is None:
        _use_static_step(run)
    elif device.type == "cuda":
        log.info("training step not captured as a CUDA graph: %s", blocker)
    elif (why_not := fused.blocker(config, device, ctx.world_size)) is None:
        run.fused_elbo = fused.FusedELBO(model, config.train.free_bits)
    else:
        log.info("gradients by autograd, not the fused CPU step: %s", why_not)
    tc = config.train
    run.warmup_steps = tc.kl_warmup_steps or round(tc.kl_warmup_epochs * len(run.bounds))
    if tc.early_stopping_patience and ctx.is_main:
        run.stopping = EarlyStopping(tc.early_stopping_patience)
    for cb in callbacks:
        cb.on_train_start(config, len(run.bounds))
    return run


def _resolve(config: Config, splits: data.Splits) -> Config:
    """The config with what the data decides: the data shape, and the class names of a conditional model."""
    resolved: dict[str, Any] = {"model.data_shape": list(splits.train.shape)}
    # later commands convert the folder the same way; a registered name wins over a folder of that name, as
    # in data.load
    if config.data.dataset not in data.DATASETS and images.is_image_path(config.data.dataset):
        resolved.update({"data.channels": splits.train.shape[0], "data.image_size": list(splits.train.shape[1:])})
    if config.model.conditional:
        if splits.train.y is None or splits.classes is None:
            raise TrainingError(f"a conditional model needs labelled data, and {config.data.dataset} has no "
                                "labels (image folders get them from one sub-folder per class)")
        resolved["model.labels"] = list(splits.classes)
    if config.train.objective == "iwae" and config.train.free_bits > 0:
        raise TrainingError("train.free_bits applies to the ELBO objective; the iwae objective takes none")
    if config.train.early_stopping_patience and splits.val is None:
        raise TrainingError(f"train.early_stopping_patience = {config.train.early_stopping_patience} watches the "
                            f"validation -ELBO, and this run has no validation split (data.val_size = "
                            f"{config.data.val_size}): set data.val_size, e.g. 0.1, or patience 0 (off)")
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
    objective, bf16, skip = run.objective, tc.precision == "bf16", tc.nonfinite == "skip"

    def step_fn(xb: Tensor, yb: Tensor | None, beta: Tensor) -> Tensor:
        return train_step(run.model, run.opt, xb, beta, run.forward, 1.0, bf16, yb, objective, skip)

    dynamic = run.config.data.binarize == "dynamic"
    run.static = graphs.StaticStep(run.x, batch, len(run.bounds), step_fn, dynamic, capture=True, y=run.y)


def _epoch(run: Run, epoch: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    step_terms = run_epoch(run, epoch)
    try:
        train = epoch_means(step_terms, run.bounds, epoch, skip=run.config.train.nonfinite == "skip")
        _check_skips(run, train.get("skipped_steps", 0), epoch)
        _check_weights(run, epoch)
    except TrainingError as e:
        raise TrainingError(f"{e}. {_last_good(run)}") from None
    record = _epoch_record(epoch, train, run, t0)
    if run.stopping is not None:
        run.stopping.update(epoch, record["val_neg_elbo"], run.model)
        record["best_epoch"] = run.stopping.best_epoch
    log.debug("epoch %d: %s", epoch, record)
    for cb in run.callbacks:
        cb.on_epoch_end(record)
    return record


def _check_skips(run: Run, skipped: int, epoch: int) -> None:
    run.skipped += skipped
    limit = run.config.train.max_skipped_steps
    if run.skipped > limit:
        raise TrainingError(f"{run.skipped} steps had a non-finite loss or gradient and were skipped by the end of "
                            f"epoch {epoch}, more than train.max_skipped_steps = {limit}")
    if skipped:
        log.warning("epoch %d: skipped %d step(s) with a non-finite loss or gradient (%d of at most %d so far)",
                    epoch, skipped, run.skipped, limit)


def _check_weights(run: Run, epoch: int) -> None:
    """A non-finite gradient in an epoch's last step spoils the weights while every recorded loss is finite."""
    if not bool(torch.stack([torch.isfinite(p).all() for p in run.model.parameters()]).all()):
        raise TrainingError(f"non-finite gradient at epoch {epoch}, step {len(run.bounds)}: the weights are no "
                            "longer finite")


def _last_good(run: Run) -> str:
    if not run.checkpoints:
        return "This run writes no checkpoints"
    if run.last_checkpoint is None:
        return "No checkpoint was written before it"
    where = run.out if run.out is not None else "the run directory"
    return (f"The last good checkpoint is {where} (epoch {run.last_checkpoint}); after fixing the cause, continue "
            f"with `vaekit train --resume {where}`, or set train.nonfinite = 'skip'")


def _epoch_record(epoch: int, train: dict[str, float], run: Run, t0: float) -> dict[str, Any]:
    record: dict[str, Any] = {"epoch": epoch, "time_s": round(time.perf_counter() - t0, 4),
                              "beta": objectives.kl_weight(run.config.train.beta, run.step, run.warmup_steps)}
    record.update({f"train_{k}": v for k, v in train.items()})
    model, config = run.model, run.config
    model.eval()
    if run.x_val is not None:
        devices = [run.x.device] if run.x.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.data.eval_seed)  # the same posterior draws every epoch
            record.update({f"val_{k}": v for k, v in objectives.dataset_elbo(
                model, run.x_val, config.train.eval_batch_size, run.y_val).items()})
    record.update(_latent_usage(run))  # posterior means and analytic KL: draws no random numbers
    return record


@torch.no_grad()
def _latent_usage(run: Run, n: int = 1000) -> dict[str, Any]:
    """KL per latent dimension and active units on the validation set (or the first n training examples)."""
    x, y = (run.x_val, run.y_val) if run.x_val is not None else (run.x[:n], None if run.y is None else run.y[:n])
    qz_x = run.model.encode(x[:n], None if y is None else y[:n])
    kl_j = objectives.kl_per_dimension(qz_x, run.model.prior()).mean(0)  # (L,)
    active = qz_x.mean.double().var(dim=0, unbiased=False) > 1e-2  # Burda et al. 2015
    return {"kl_per_dim": [round(v, 4) for v in kl_j.tolist()], "active_units": int(active.sum())}


# --- checkpoints and resume ----------------------------------------------------------------------------------


def _attach_output(run: Run, out_dir: str | Path | None, preprocess: Any, resumed: bool) -> None:
    run.checkpoints, run.preprocess = out_dir is not None, preprocess
    if out_dir is None or not run.ctx.is_main:
        return
    run.out = Path(out_dir)
    run.out.mkdir(parents=True, exist_ok=True)
    if not resumed:
        (run.out / "metrics.jsonl").write_text("")


def _save(run: Run, record: dict[str, Any] | None, final: bool = False,
          last_weights: dict[str, Tensor] | None = None) -> None:
    """Append the epoch's record to metrics.jsonl, and write a checkpoint when one is due."""
    every = run.config.train.checkpoint_every
    due = run.checkpoints and (final or bool(every and run.epoch % every == 0))
    rng = runstate.rng_tensors(run) if due else {}  # a collective under torchrun: every process takes part
    if run.out is None:
        return
    if record is not None:
        _append_jsonl(run.out / "metrics.jsonl", record)
    if due:
        state = runstate.training_state(run, rng, last_weights)
        checkpoint.save_run(run.out, run.config, run.model.state_dict(), state, run.preprocess)
        run.last_checkpoint = run.epoch


def _append_jsonl(path: Path, record: dict[str, Any]) -> None:
    with path.open("a") as f:
        f.write(json.dumps(record) + "\n")
