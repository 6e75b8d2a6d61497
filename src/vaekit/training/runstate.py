"""What a checkpoint must hold to continue a training run exactly, and putting a run back from it.

The training state is the optimizer's moments and step counts, every random-number generator's state (the
shared permutation/binarization generator, and each process's CPU and CUDA RNG), the epoch and step (which
place the KL warm-up), early-stopping state and the metric history. Tensors go to safetensors, the rest to
JSON (``checkpoint.TrainingState``); nothing is pickled.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor

from vaekit import checkpoint
from vaekit.config import Config, flatten
from vaekit.errors import CheckpointError, ConfigError
from vaekit.fileio import atomic_write_bytes
from vaekit.training import distributed

if TYPE_CHECKING:
    from vaekit.training.run import Run

log = logging.getLogger(__name__)
# What may differ from the saved config on resume: none of these changes what the run computes.
RESUMABLE_CHANGES = ("train.epochs", "train.checkpoint_every", "data.data_dir", "data.download",
                     "data.max_memory_gb")  # where the data lives, not what it is
RESOLVED_KEYS = ("model.data_shape", "model.labels", "data.channels", "data.image_size")  # set from the data
ADAM_STATE = frozenset({"step", "exp_avg", "exp_avg_sq"})


def resume_config(directory: str | Path, overrides: dict[str, Any] | None = None) -> Config:
    """The saved config of the run in ``directory`` with ``overrides`` applied, refused if they change the run."""
    if Path(directory).is_dir() and not (Path(directory) / checkpoint.CONFIG_FILE).exists() \
            and not (Path(directory) / checkpoint.LATEST_FILE).exists():
        raise CheckpointError(f"cannot resume {directory}: it holds no completed checkpoint (the run stopped "
                              "before its first checkpoint was written, or this is not a run directory); start "
                              "the run again with the same `vaekit train` command without --resume")
    saved = checkpoint.load_config(directory)
    return check_resume_config(saved, saved.override(dict(overrides or {})), directory)


def check_resume_config(saved: Config, given: Config, directory: str | Path) -> Config:
    """``saved`` with the allowed changes of ``given``; a ConfigError naming every other key that differs.

    Keys the data resolves (``RESOLVED_KEYS``, e.g. ``model.data_shape``) are compared only where ``given``
    sets them.
    """
    old, new = flatten(saved.to_dict()), flatten(given.to_dict())
    differ = [k for k in old if new[k] != old[k] and not (k in RESOLVED_KEYS and new[k] is None)]
    refused = [k for k in differ if k not in RESUMABLE_CHANGES]
    if refused:
        listed = "; ".join(f"{k} = {new[k]!r} (the run has {old[k]!r})" for k in refused)
        raise ConfigError(f"cannot resume {directory} with settings that differ from its config.json: {listed}. "
                          f"Leave them out (only {', '.join(RESUMABLE_CHANGES)} may change on resume), "
                          "or start a new run in another directory")
    return saved.override({k: new[k] for k in differ})


def resume_point(directory: Path, config: Config) -> tuple[Config, checkpoint.TrainingState, int]:
    """The config to continue with, the saved training state, and the epochs the saved config asked for."""
    ckpt = checkpoint.resolve(directory)  # the config and the state (and, in restore, the weights) of one checkpoint
    saved = checkpoint.load_config(ckpt)
    config = check_resume_config(saved, config, directory)
    state = checkpoint.load_state(ckpt)
    if config.train.epochs < state.epoch:
        raise ConfigError(f"train.epochs = {config.train.epochs} is below the {state.epoch} epochs {directory} "
                          "has already trained")
    log.info("resuming %s after epoch %d (step %d)", directory, state.epoch, state.step)
    return config, state, saved.train.epochs


def training_state(run: Run, rng: dict[str, Tensor], last_weights: dict[str, Tensor] | None,
                    ) -> checkpoint.TrainingState:
    tensors = {f"optimizer.{i}.{k}": v for i, s in run.opt.state_dict()["state"].items() for k, v in s.items()}
    tensors.update(rng)
    es = run.stopping
    if es is not None and es.best is not None:
        tensors.update({f"best.{k}": v for k, v in es.best.items()})
    if last_weights is not None:  # the model file holds the best weights; an extension continues from these
        tensors.update({f"last.{k}": v for k, v in last_weights.items()})
    return checkpoint.TrainingState(
        run.epoch, run.step, run.history, tensors, run.finished, run.stopped, run.ctx.world_size,
        es.best_epoch if es else None, es.best_val if es else None, es.bad_epochs if es else 0, run.skipped)


def rng_tensors(run: Run) -> dict[str, Tensor]:
    """The state of every generator the run draws from: ``run.gen`` (shared by all processes), and each
    process's global CPU RNG (posterior noise) and, on a GPU, its CUDA RNG, gathered from every process."""
    own = {"cpu": torch.get_rng_state()}
    if run.device.type == "cuda":
        own["cuda"] = torch.cuda.get_rng_state(run.device)
    out = {"rng.gen": run.gen.get_state()}
    for name, state in own.items():
        for rank, s in enumerate(_all_gather(state, run.ctx, run.device)):
            out[f"rng.{name}.{rank}"] = s
    return out


def _all_gather(t: Tensor, ctx: distributed.Context, device: torch.device) -> list[Tensor]:
    if ctx.world_size == 1:
        return [t]
    local = t.to(device)  # NCCL gathers device tensors; gloo takes CPU ones, and device is the CPU there
    parts = [torch.empty_like(local) for _ in range(ctx.world_size)]
    dist.all_gather(parts, local)
    return [p.cpu() for p in parts]


def restore(run: Run, state: checkpoint.TrainingState, directory: Path, saved_epochs: int) -> None:
    """Put ``run`` back where the checkpoint left it: weights, Adam, RNGs, progress, early stopping, metrics."""
    ckpt = state.source or checkpoint.resolve(directory)  # the weights of the checkpoint the state came from
    path = ckpt.snapshot / checkpoint.STATE_TENSORS_FILE  # named in error messages
    t = state.tensors
    run.finished = state.finished and run.config.train.epochs <= saved_epochs
    weights = checkpoint.load_weights(ckpt, run.model)
    last = _prefixed(t, "last.")
    if last and not run.finished:  # the model file holds the best weights; training goes on from the last
        weights = checkpoint.check_tensors(path, last, run.model.state_dict(), "the model (last.*)")
    run.model.load_state_dict(weights)
    _restore_optimizer(run.opt, _prefixed(t, "optimizer."), path)
    _restore_rng(run, t, path, state.world_size)
    run.epoch, run.step, run.history, run.skipped = state.epoch, state.step, list(state.history), state.skipped_steps
    run.stopped, run.last_checkpoint = (state.stopped if run.finished else None), state.epoch
    if run.stopping is not None:
        _restore_stopping(run, state, _prefixed(t, "best."), path)
    if run.out is not None:  # drop records of epochs after the checkpoint: they are trained again
        lines = "".join(json.dumps(r) + "\n" for r in run.history)
        atomic_write_bytes(run.out / "metrics.jsonl", lines.encode())


def _prefixed(tensors: dict[str, Tensor], prefix: str) -> dict[str, Tensor]:
    return {k.removeprefix(prefix): v for k, v in tensors.items() if k.startswith(prefix)}


def _restore_optimizer(opt: torch.optim.Optimizer, saved: dict[str, Tensor], path: Path) -> None:
    params = [p for group in opt.param_groups for p in group["params"]]
    state: dict[int, dict[str, Tensor]] = {}
    for key, t in saved.items():
        index, _, name = key.partition(".")
        if not index.isdigit() or int(index) >= len(params) or name not in ADAM_STATE:
            raise CheckpointError(f"{path}: unexpected optimizer tensor {'optimizer.' + key!r}")
        state.setdefault(int(index), {})[name] = t
    for i, p in enumerate(params):
        s = state.get(i, {})
        if set(s) != ADAM_STATE or s["exp_avg"].shape != p.shape or s["exp_avg_sq"].shape != p.shape \
                or s["step"].numel() != 1:
            raise CheckpointError(f"{path}: the Adam state of parameter {i} does not fit the model: expected "
                                  f"step, exp_avg and exp_avg_sq of shape {tuple(p.shape)}, found "
                                  f"{ {k: tuple(v.shape) for k, v in s.items()} }")
    sd = opt.state_dict()
    sd["state"] = state  # the hyperparameters stay those of the config
    opt.load_state_dict(sd)


def _restore_rng(run: Run, t: dict[str, Tensor], path: Path, world_size: int) -> None:
    if world_size != run.ctx.world_size:
        raise CheckpointError(f"{path}: the run was trained by {world_size} process(es); resume it with as many, "
                              f"not {run.ctx.world_size}, to continue it exactly")
    rank, cuda = run.ctx.rank, run.device.type == "cuda"
    needed = ["rng.gen", f"rng.cpu.{rank}"] + ([f"rng.cuda.{rank}"] if cuda else [])
    missing = [k for k in needed if k not in t]
    if missing:
        raise CheckpointError(f"{path} lacks the random-number state(s) {missing}; was it trained on another device?")
    try:
        run.gen.set_state(t["rng.gen"])
        torch.set_rng_state(t[f"rng.cpu.{rank}"])
        if cuda:
            torch.cuda.set_rng_state(t[f"rng.cuda.{rank}"], run.device)
    except (RuntimeError, TypeError, ValueError) as e:
        raise CheckpointError(f"{path}: a random-number state does not fit this generator ({e}); was the run "
                              "trained on another device?") from e


def _restore_stopping(run: Run, state: checkpoint.TrainingState, best: dict[str, Tensor], path: Path) -> None:
    es = run.stopping
    es.best_epoch, es.best_val, es.bad_epochs = state.best_epoch, state.best_val, state.bad_epochs
    if state.best_epoch is not None:
        device = run.device
        es.best = {k: v.to(device) for k, v in
                   checkpoint.check_tensors(path, best, run.model.state_dict(), "the model (best.*)").items()}
