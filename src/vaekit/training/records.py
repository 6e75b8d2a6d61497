"""The record of one epoch, as written to metrics.jsonl: train and validation terms, the KL weight, the KL of
each latent dimension and the active units (where the model's parts define them)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import torch

from vaekit import objectives
from vaekit.batches import floats
from vaekit.errors import DataError
from vaekit.model import NotAvailable
from vaekit.training.run import Run


def epoch_record(epoch: int, train: dict[str, float], run: Run, t0: float) -> dict[str, Any]:
    """The epoch's record: its training means, the KL weight in force, validation terms and latent usage."""
    record: dict[str, Any] = {"epoch": epoch, "time_s": round(time.perf_counter() - t0, 4),
                              "beta": objectives.kl_weight(run.config.train.beta, run.step, run.warmup_steps)}
    record.update({f"train_{k}": v for k, v in train.items()})
    model, config = run.model, run.config
    model.eval()
    if run.x_val is not None:
        devices = [run.device] if run.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(config.data.eval_seed)  # the same posterior draws every epoch
            record.update({f"val_{k}": v for k, v in objectives.dataset_elbo(
                model, run.x_val, config.train.eval_batch_size, run.y_val).items()})
    record.update(latent_usage(run))
    return record


@torch.no_grad()
def latent_usage(run: Run, n: int = 1000) -> dict[str, Any]:
    """KL per latent dimension (and per layer, in a hierarchy) and active units on the validation set (or the
    first n training examples). A Monte-Carlo KL draws under a fixed seed, leaving the run's random state as it
    was; where the model has no KL per dimension, the record says why.
    """
    x, y = (run.x_val, run.y_val) if run.x_val is not None else (run.x, run.y)
    x, y = floats(x[:n]).to(run.device), None if y is None else y[:n]
    out: dict[str, Any] = {}
    devices = [run.device] if run.device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(run.config.data.eval_seed)
        latents = run.model.infer(x, y)
        try:
            kl_j = torch.cat([latent.kl_per_dimension().mean(0) for latent in latents])  # (sum of L,)
            out["kl_per_dim"] = [round(v, 4) for v in kl_j.tolist()]
        except NotAvailable as e:
            out["kl_per_dim"], out["kl_per_dim_unavailable"] = None, str(e)
        if len(latents) > 1:
            out["kl_per_layer"] = [round(float(latent.kl.mean()), 4) for latent in latents]
        means = [latent.mean for latent in latents]  # a lower layer's given the drawn z above it
    out["active_units"] = sum(objectives.count_active(m) for m in means)
    out["latent_units"] = sum(m.shape[-1] for m in means)
    return out


def read_metrics(path: Path) -> list[dict]:
    """The epoch records of a run, in order; a DataError naming the file and line when one is unreadable."""
    try:
        lines = path.read_text().splitlines()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from None
    records = []
    for number, line in enumerate(lines, start=1):
        try:
            record = json.loads(line)
        except ValueError:
            raise DataError(f"{path}, line {number}: not a JSON record") from None
        if not isinstance(record, dict) or "epoch" not in record:
            raise DataError(f"{path}, line {number}: not an epoch record")
        records.append(record)
    if not records:
        raise DataError(f"{path} holds no epoch yet: the run has not finished its first epoch")
    return records
