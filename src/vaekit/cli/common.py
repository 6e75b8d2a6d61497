"""Helpers shared by the commands."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from vaekit import data, hub, plots
from vaekit.batches import floats
from vaekit.config import Config, DataConfig
from vaekit.errors import VaekitError

MODEL_HELP = "run or checkpoint directory, or a Hugging Face Hub id hf://owner/name[@revision]"


def model_source(text: str) -> str | Path:
    """A command's model argument: a Hub id stays a string (a Path would fold its '//'), a directory a Path."""
    return text if hub.is_hub_id(text) else Path(text)


def require_images(model: Any, what: str) -> None:
    if not plots.is_image_shape(model.data_shape):
        raise VaekitError(f"{what} writes images, but this model's data has shape {model.data_shape}")


def data_config(config: Config, data_dir: str | None = None, dataset: str | None = None) -> DataConfig:
    """The run's data settings with the command's --data-dir and --dataset, where given (another dataset brings
    its own test split: the run's separate test set belongs to the run's data)."""
    overrides = {f"data.{k}": v for k, v in (("dataset", dataset), ("data_dir", data_dir)) if v}
    if dataset:
        overrides["data.test_dataset"] = None
    return config.override(overrides).data if overrides else config.data


def input_example(spec: str, split: data.Split, shape: tuple[int, ...]):
    """A dataset index or an image file, as a tensor of the model's data shape."""
    if spec.lstrip("-").isdigit():
        i = int(spec)
        if not -len(split) <= i < len(split):
            raise VaekitError(f"index {i} is outside the {split.name} split of {len(split)} examples")
        return floats(split.stored[i])  # the values of that one only
    return plots.read_image(Path(spec), shape)


def write_scores(path: Path, scores: np.ndarray, flags: np.ndarray | None) -> None:
    """A CSV of every row's index and anomaly score (and 0/1 flag), written atomically."""
    from vaekit.fileio import atomic_path

    columns = ["index", "score"] + ([] if flags is None else ["flag"])
    table = [np.arange(len(scores)), scores] + ([] if flags is None else [flags.astype(int)])
    fmt = ["%d", "%.6g"] + ([] if flags is None else ["%d"])
    with atomic_path(path) as tmp:
        np.savetxt(tmp, np.column_stack(table), delimiter=",", header=",".join(columns), comments="", fmt=fmt)
