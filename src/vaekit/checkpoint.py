"""Checkpoints: a directory with ``config.json`` and ``model.safetensors``.

Loading reads JSON and safetensors only, so a checkpoint can never run code. Both files are written
atomically, so a crash mid-save leaves the previous checkpoint intact.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from vaekit.config import Config
from vaekit.errors import CheckpointError, ConfigError
from vaekit.fileio import atomic_write_bytes, atomic_write_with
from vaekit.model import VAE
from vaekit.tabular import Standardizer

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESS_FILE = "preprocessing.safetensors"  # the standardization of tabular inputs, when there is one
FORMAT = "vaekit-checkpoint"
VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")


def save(model: VAE, config: Config, directory: str | Path, preprocess: Standardizer | None = None) -> Path:
    """Write ``config``, the model's weights and any input standardization to ``directory``."""
    directory = Path(directory)
    if preprocess is not None:
        tensors = preprocess.tensors()
        atomic_write_with(directory / PREPROCESS_FILE, lambda p: save_file(tensors, str(p)))
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write_with(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    doc = {"format": FORMAT, "version": VERSION, "config": config.to_dict()}
    atomic_write_bytes(directory / CONFIG_FILE, (json.dumps(doc, indent=2) + "\n").encode())
    return directory


def load_config(directory: str | Path) -> Config:
    """The run's Config from ``directory/config.json``; unknown or ill-typed keys are refused by name."""
    path = Path(directory) / CONFIG_FILE
    if not Path(directory).is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    try:
        doc: Any = json.loads(path.read_bytes())
    except FileNotFoundError:
        raise CheckpointError(f"{path} is missing: {directory} is not a vaekit checkpoint") from None
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "config" not in doc:
        raise CheckpointError(f"{path} is not a vaekit checkpoint config (missing format {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise CheckpointError(f"{path} has format version {doc.get('version')!r}; this vaekit reads {VERSION}")
    try:
        return Config.from_dict(doc["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from e


def load_run(directory: str | Path, device: str | torch.device = "cpu") -> tuple[VAE, Config]:
    """The model (in eval mode, on ``device``) and the Config saved in ``directory``."""
    config = load_config(directory)
    model = VAE(config.model)
    model.load_state_dict(_read_weights(Path(directory), model))
    return model.to(device).eval(), config


def load(directory: str | Path, device: str | torch.device = "cpu") -> VAE:
    """The trained model saved in ``directory``, ready for ``sample`` and ``reconstruct``."""
    return load_run(directory, device)[0]


def load_preprocess(directory: str | Path) -> Standardizer | None:
    """The standardization saved with a model trained on a table, or None for other data."""
    path = Path(directory) / PREPROCESS_FILE
    if not path.is_file():
        return None
    try:
        t = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated: {e}") from e
    if set(t) != {"mean", "std"} or t["mean"].shape != t["std"].shape or t["mean"].dim() != 1:
        raise CheckpointError(f"{path} must hold 1-d tensors mean and std of one size; it holds {sorted(t)}")
    return Standardizer(t["mean"], t["std"])


def _read_weights(directory: Path, model: VAE) -> dict[str, torch.Tensor]:
    path = directory / WEIGHTS_FILE
    if not path.is_file():
        pickles = sorted(p.name for p in directory.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = f" ({', '.join(pickles)} present, but vaekit never loads pickle files)" if pickles else ""
        raise CheckpointError(f"{path} is missing{hint}")
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated: {e}") from e
    expected = {k: v.shape for k, v in model.state_dict().items()}
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise CheckpointError(f"{path} does not match config.json: missing {missing}, unexpected {extra}")
    for k, shape in expected.items():
        if tensors[k].shape != shape:
            raise CheckpointError(f"{path}: tensor {k} has shape {tuple(tensors[k].shape)}, expected {tuple(shape)}")
    return tensors
