"""The training loop: device-resident data, index-slice batches, no per-step host synchronisation.

Per-step losses are written into a device tensor and read once per epoch; a non-finite value then stops
training with the epoch and step where it first appeared, before any checkpoint is overwritten, and the
message names the last good checkpoint. With ``train.nonfinite = "skip"`` such a step's update is cancelled on
the device instead (fused Adam's ``found_inf`` flag, as under a GradScaler), and the skips are counted once per
epoch against ``train.max_skipped_steps``.

Every checkpoint of a run holds what exact continuation needs (``training.state``); ``resume`` continues a run
from it, and the continuation is bitwise the uninterrupted run.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from vaekit import checkpoint, data
from vaekit.batches import floats
from vaekit.config import Config
from vaekit.devices import resolve_device
from vaekit.errors import TrainingError
from vaekit.fileio import crash_point
from vaekit.model import check_parts
from vaekit.training import distributed, paths, runlock, runstate, streaming
from vaekit.training.records import epoch_record
from vaekit.training.run import Callback, Run, TrainResult, start
from vaekit.training.steps import TERMS, epoch_means, train_step

log = logging.getLogger(__name__)


def train(config: Config, out_dir: str | Path | None = None, callbacks: Sequence[Callback] = (),
          splits: data.Splits | None = None, resume: bool = False) -> TrainResult:
    """Train a VAE as ``config`` says; with ``out_dir``, write checkpoints and metrics.jsonl.

    ``splits`` may be passed to reuse data already in memory; otherwise ``config.data`` is loaded. Under
    ``torchrun`` the run is data-parallel across the processes (see ``training.distributed``). With ``resume``,
    ``out_dir`` is a run directory written by ``train`` and training continues from its latest checkpoint;
    ``config`` must be the saved one, apart from the keys in ``RESUMABLE_CHANGES`` (see ``resume``). A run
    directory takes one writer: another process training into it is refused with the first one's PID.
    """
    if out_dir is None or distributed.env_rank() != 0:  # under torchrun rank 0 alone writes the run
        return _train(config, out_dir, callbacks, splits, resume)
    with runlock.held(Path(out_dir), create=not resume):  # before a resume reads the state it continues
        return _train(config, out_dir, callbacks, splits, resume)


def _train(config: Config, out_dir: str | Path | None, callbacks: Sequence[Callback], splits: data.Splits | None,
           resume: bool) -> TrainResult:
    state, saved_epochs = None, 0
    if resume:
        if out_dir is None:
            raise TrainingError("resume needs out_dir: the run directory to continue")
        config, state, saved_epochs = runstate.resume_point(Path(out_dir), config)
    check_parts(config.model)
    ctx, device = distributed.from_env(resolve_device(config.train.device))
    run = None
    try:
        splits = splits if splits is not None else data.load(config.data)
        run = start(config, splits, device, ctx, callbacks)
        step_path = paths.choose(run)
        log.info("%s", step_path)
        for cb in run.callbacks:
            cb.on_train_start(run.config, len(run.bounds))
            cb.on_step_path(step_path)
            cb.on_model(run.model, splits.test)
        _attach_output(run, out_dir, splits.preprocess, resumed=state is not None)
        if state is not None:
            runstate.restore(run, state, Path(out_dir), saved_epochs)
        _loop(run)
        run.model.eval()
        for cb in run.callbacks:
            cb.on_train_end(run.model, splits.test)
        distributed.leave_together(ctx)
        best = run.stopping.best_epoch if run.stopping is not None else None
        return TrainResult(run.model, run.config, run.history, ctx.rank, best, run.stopped, run.skipped, step_path,
                           run.precision)
    finally:
        del run  # the DDP wrapper, whose gloo work must be freed before the process group, not at exit
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


def run_epoch(run: Run, epoch: int) -> Tensor:
    """One pass over a fresh permutation of the data; returns the per-step terms, shape (steps, 3)."""
    x, gen, ctx = run.x, run.gen, run.ctx
    perm = torch.randperm(len(x), device=run.device, generator=gen)
    if run.static is not None:
        return _run_epoch_static(run, epoch, perm)
    step_terms = torch.empty(len(run.bounds), len(TERMS), device=run.device)
    dynamic = run.config.data.binarize == "dynamic"
    run.model.train()
    # each process's part of every global batch: read alone from disk, or sliced from the batch in memory
    parts = [distributed.rank_slice(end - begin, ctx) for begin, end in run.bounds]
    stored = streaming.batches(x, perm, run.bounds, run.device, parts) if run.streamed else \
        streaming.in_memory(x, perm, run.bounds, parts)
    for step, ((begin, end), (a, b), xs) in enumerate(zip(run.bounds, parts, stored, strict=True)):
        xb = floats(xs)  # (b - a, *shape): bytes become values
        yb = None if run.y is None else run.y.index_select(0, perm[begin + a : begin + b])
        if dynamic:  # a fresh binarization of every image each time it is seen
            xb = binarize_part(xb, gen, end - begin, a)
        weight = (b - a) * ctx.world_size / (end - begin)
        step_terms[step] = train_step(run.model, run.opt, xb, run.beta(), yb, weight, run.options)
        _after_step(run, epoch, step)
    return distributed.mean_over_ranks(step_terms, ctx)


def binarize_part(p: Tensor, gen: torch.Generator, n: int, a: int) -> Tensor:
    """Rows a .. a + len(p) of a Bernoulli draw for a whole batch of ``n`` rows: uniforms for all n come from
    the shared generator (so every process's generator stays in step, and a process needs only its own rows'
    pixels), and each process thresholds its own. With a = 0 and len(p) = n this is ``torch.bernoulli(p,
    generator=gen)``, draw for draw, on the CPU (tests/test_training.py checks it)."""
    u = torch.rand((n, *p.shape[1:]), generator=gen, device=p.device)[a : a + len(p)]
    return (u < p).to(p.dtype)


def _run_epoch_static(run: Run, epoch: int, perm: Tensor) -> Tensor:
    """The epoch on the static-buffer step: one index copy and one graph replay per batch."""
    static = run.static
    static.start_epoch()
    static.beta.fill_(run.beta())  # also right after a resume, when the warm-up may be long over
    for step, (begin, end) in enumerate(run.bounds):
        if run.step < run.warmup_steps + 1:  # the graph reads beta from a device buffer
            static.beta.fill_(run.beta())
        static(perm[begin:end])
        _after_step(run, epoch, step)
    return static.step_terms.clone()


def _after_step(run: Run, epoch: int, step: int) -> None:
    run.step += 1
    crash_point("step")
    for cb in run.callbacks:
        cb.on_step(epoch, step)


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
        if distributed.any_rank(stop or exhausted, run.ctx, run.device):
            run.stopped = "early_stopping" if exhausted else "callback"
            log.info("stopping after epoch %d (%s)", epoch, run.stopped.replace("_", " "))
        if epoch == epochs or run.stopped is not None:
            _finish(run, record)
        else:
            _save(run, record)


def _epoch(run: Run, epoch: int) -> dict[str, Any]:
    t0 = time.perf_counter()
    step_terms = run_epoch(run, epoch)
    try:
        means = epoch_means(step_terms, run.bounds, epoch, skip=run.config.train.skips_steps)
        _check_skips(run, means.get("skipped_steps", 0), epoch)
        _check_weights(run, epoch)
    except TrainingError as e:
        raise TrainingError(f"{e}. {_last_good(run)}") from None
    record = epoch_record(epoch, means, run, t0)
    if run.stopping is not None:
        run.stopping.update(epoch, record["val_neg_elbo"], run.model)
        record["best_epoch"] = run.stopping.best_epoch
    log.debug("epoch %d: %s", epoch, record)
    for cb in run.callbacks:
        cb.on_epoch_end(record)
    return record


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


_OUTLIER = " (or a gradient norm above train.grad_skip)"


def _check_skips(run: Run, skipped: int, epoch: int) -> None:
    run.skipped += skipped
    limit = run.config.train.max_skipped_steps
    if run.skipped > limit:
        raise TrainingError(f"{run.skipped} steps had a non-finite loss or gradient{_OUTLIER} and were skipped by "
                            f"the end of epoch {epoch}, more than train.max_skipped_steps = {limit}")
    if skipped:
        log.warning("epoch %d: skipped %d step(s) with a non-finite loss or gradient%s (%d of at most %d so far)",
                    epoch, skipped, _OUTLIER, run.skipped, limit)


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


# --- checkpoints and metrics ---------------------------------------------------------------------------------


def _attach_output(run: Run, out_dir: str | Path | None, preprocess: Any, resumed: bool) -> None:
    run.checkpoints, run.preprocess = out_dir is not None, preprocess
    if out_dir is None or not run.ctx.is_main:
        return
    run.out = Path(out_dir)  # made (or found, on a resume) when its lock was taken: see train
    try:  # before any training: a run that cannot keep its results should not start
        if not resumed:
            (run.out / "metrics.jsonl").write_text("")
    except OSError as e:
        raise TrainingError(f"cannot write the run directory {run.out}: {e.strerror or e}") from None


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
    try:
        with path.open("a") as f:
            f.write(json.dumps(record) + "\n")
    except OSError as e:
        raise TrainingError(f"cannot append epoch {record.get('epoch')} to {path}: {e.strerror or e}") from None
