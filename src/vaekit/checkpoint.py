"""Checkpoints: a directory with ``config.json`` and ``model.safetensors`` (+ the training state, for resume).

Two layouts are read, and loading reads JSON and safetensors only, so a checkpoint can never run code.

* A model checkpoint (``save``, and every directory written before resume existed): ``config.json`` and
  ``model.safetensors`` (with ``preprocessing.safetensors`` for tables) at the top, each written atomically.
* A training run (``save_run``, what ``vaekit train`` writes): a checkpoint spans several files (config,
  weights, preprocessing, ``training_state.safetensors`` with the optimizer moments and RNG states, and
  ``training_state.json`` with the rest), so each one is written as a complete set into a fresh sub-directory,
  flushed to disk, renamed to ``checkpoints/<id>/`` in one step, and made current by atomically replacing the
  small pointer file ``latest.json``. A process killed at any moment leaves ``latest.json`` naming either the
  previous complete set or the new one, never a mixture; the previous set is deleted only after the switch.
  ``latest.json`` records the SHA-256 of every file of the set, checked on load, so a file that was
  truncated, altered or copied in from another checkpoint is refused by name (the plain layout has no such
  record: its files are checked for their format, tensor names and shapes only), and ``checkpoints/<id>``
  must lie inside the run directory, not be a link leading elsewhere. After the switch the model files
  are also published at the top of the directory (hard links, else copies; each stamped with the checkpoint
  id), so tools that read ``DIR/model.safetensors`` by name keep working; vaekit itself reads through
  ``latest.json`` whenever it is there.

A load resolves ``latest.json`` once (``resolve``, a ``CheckpointSet``) and reads every file it needs against
that one pointer, so a load racing a writer gets the config, weights, standardization and training state of
one checkpoint, or a CheckpointError saying the checkpoint was replaced while it was read; never a mixture
(``load_run`` of a directory then reads the newer checkpoint instead).

Every reader also takes a Hugging Face Hub id, ``hf://owner/name[@revision]`` (``vaekit.hub``): the repository
is a run directory uploaded as is, read from the local Hub cache after downloading what a model needs.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import os
import re
import secrets
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_bytes
from safetensors.torch import save as to_bytes
from safetensors.torch import save_file

from vaekit import hub
from vaekit.config import Config
from vaekit.data.tabular import Standardizer
from vaekit.errors import CheckpointError, ConfigError
from vaekit.fileio import (
    JSON_LIMIT,
    atomic_link_or_copy,
    atomic_write_bytes,
    atomic_write_with,
    crash_point,
    fsync_dir,
    parse_json,
    read_regular,
    write_synced,
)
from vaekit.model import VAE, size

log = logging.getLogger(__name__)

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
PREPROCESS_FILE = "preprocessing.safetensors"  # the standardization of tabular inputs, when there is one
STATE_TENSORS_FILE = "training_state.safetensors"  # optimizer moments, RNG states, best/last weights
STATE_FILE = "training_state.json"  # epoch, step, metric history, early stopping, skipped steps
LATEST_FILE = "latest.json"  # the pointer to the current checkpoint of a training run
SNAPSHOT_DIR = "checkpoints"
FORMAT = "vaekit-checkpoint"
LATEST_FORMAT = "vaekit-latest"
STATE_FORMAT = "vaekit-training-state"
VERSION = 1
PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin")
ID_PATTERN = re.compile(r"[0-9]{6,}-[0-9a-f]{8}")  # epoch and a random suffix: never a path


def save(model: VAE, config: Config, directory: str | Path, preprocess: Standardizer | None = None) -> Path:
    """Write ``config``, the model's weights and any input standardization to ``directory``.

    This is the plain model layout. Saved over a training run, it replaces the run's current model, so the
    pointer to the run's training state is removed: the run can no longer be resumed from it.
    """
    directory = Path(directory)
    if preprocess is not None:
        tensors = preprocess.tensors()
        atomic_write_with(directory / PREPROCESS_FILE, lambda p: save_file(tensors, str(p)))
    else:  # a standardization left by an earlier model would be applied to this one's inputs (as _publish knows)
        (directory / PREPROCESS_FILE).unlink(missing_ok=True)
    tensors = _cpu(model.state_dict())
    atomic_write_with(directory / WEIGHTS_FILE, lambda p: save_file(tensors, str(p), metadata={"format": FORMAT}))
    atomic_write_bytes(directory / CONFIG_FILE, _config_doc(config, None))
    if (directory / LATEST_FILE).exists():
        os.unlink(directory / LATEST_FILE)
        log.info("%s: a model saved over a training run; its training state no longer applies", directory)
    return directory


@dataclass
class TrainingState:
    """What exact continuation of a run needs besides its weights and config.

    ``tensors`` (optimizer moments and step counts, RNG states as byte tensors, the best weights under early
    stopping, the last weights when the model file holds the best) are stored as safetensors; the other
    fields as JSON, validated field by field on load.
    """

    epoch: int  # epochs completed
    step: int  # optimizer steps taken
    history: list[dict[str, Any]]  # one record per completed epoch, as in metrics.jsonl
    tensors: dict[str, torch.Tensor] = field(default_factory=dict, repr=False)
    finished: bool = False  # the run ended (all epochs, early stopping, or a callback's stop)
    stopped: str | None = None  # "early_stopping" or "callback" when it ended before train.epochs
    world_size: int = 1  # processes that trained it (one RNG state each)
    best_epoch: int | None = None  # early stopping: the epoch of the best validation -ELBO
    best_val: float | None = None
    bad_epochs: int = 0  # early stopping: epochs since the best
    skipped_steps: int = 0  # steps skipped for a non-finite loss or gradient (train.nonfinite = "skip")
    # the checkpoint this state was read from (not saved): what is restored with it is read from the same one
    source: CheckpointSet | None = field(default=None, repr=False, compare=False)


_NOT_JSON = ("tensors", "source")  # the TrainingState fields that training_state.json does not hold


def save_run(directory: str | Path, config: Config, weights: dict[str, torch.Tensor], state: TrainingState,
             preprocess: Standardizer | None = None) -> Path:
    """Write one complete checkpoint of a training run and make it the current one atomically.

    Returns the sub-directory holding it. See the module docstring for why a crash at any point leaves the
    previous checkpoint loadable.
    """
    directory = Path(directory)
    ckpt_id = f"{state.epoch:06d}-{secrets.token_hex(4)}"
    root = directory / SNAPSHOT_DIR
    tmp = root / f".tmp-{ckpt_id}"
    if root.is_dir():  # what an earlier write left half done would hold space the new set needs
        _remove_stale(root, keep=None)
    try:
        tmp.mkdir(parents=True)
        digests = _write_set(tmp, ckpt_id, config, weights, state, preprocess)
        fsync_dir(tmp)
        crash_point("checkpoint-before-rename")
        os.replace(tmp, root / ckpt_id)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a full disk gets its space back
        raise _write_failed(directory, state.epoch, e) from e
    fsync_dir(root)
    crash_point("checkpoint-before-switch")
    pointer = {"format": LATEST_FORMAT, "version": VERSION, "checkpoint": ckpt_id, "epoch": state.epoch,
               "sha256": digests}
    atomic_write_bytes(directory / LATEST_FILE, (json.dumps(pointer, indent=2) + "\n").encode())
    crash_point("checkpoint-after-switch")
    _publish(directory, root / ckpt_id)
    _remove_stale(root, keep=ckpt_id)
    return root / ckpt_id


def _write_set(target: Path, ckpt_id: str, config: Config, weights: dict[str, torch.Tensor], state: TrainingState,
               preprocess: Standardizer | None) -> dict[str, str]:
    """The files of one checkpoint, each stamped with its id and flushed to disk; returns their SHA-256."""
    stamp = {"format": FORMAT, "checkpoint": ckpt_id}
    # not asdict(state): it would deep-copy every tensor (weights, Adam's moments) only to drop them
    meta = {f.name: getattr(state, f.name) for f in fields(state) if f.name not in _NOT_JSON}
    blobs = {
        STATE_TENSORS_FILE: to_bytes(_cpu(state.tensors), metadata=stamp),
        STATE_FILE: _json_bytes({"format": STATE_FORMAT, "version": VERSION, "checkpoint": ckpt_id, **meta}),
        WEIGHTS_FILE: to_bytes(_cpu(weights), metadata=stamp),
        CONFIG_FILE: _config_doc(config, ckpt_id),
    }
    if preprocess is not None:
        blobs[PREPROCESS_FILE] = to_bytes(_cpu(preprocess.tensors()), metadata=stamp)
    for name, blob in blobs.items():
        write_synced(target / name, blob)
        crash_point("checkpoint-file")  # between two files of one checkpoint
    return {name: hashlib.sha256(blob).hexdigest() for name, blob in blobs.items()}


def _publish(directory: Path, snapshot: Path) -> None:
    """Copies of the current model files at the top of the run directory, for tools that read them by name."""
    for name in (PREPROCESS_FILE, WEIGHTS_FILE, CONFIG_FILE):  # config.json last, as in save()
        if (snapshot / name).is_file():
            atomic_link_or_copy(snapshot / name, directory / name)
        elif (directory / name).is_file():  # e.g. a table run overwritten by an image run
            os.unlink(directory / name)


def _remove_stale(root: Path, keep: str | None) -> None:
    """Earlier checkpoints and leftovers of interrupted writes; only names this module creates are touched.
    ``keep=None`` removes the leftovers only (``.tmp-*``), never a complete set."""
    for child in root.iterdir():
        name = child.name.removeprefix(".tmp-")
        stale = child.name != keep if keep is not None else child.name != name
        if stale and child.is_dir() and ID_PATTERN.fullmatch(name):
            shutil.rmtree(child, ignore_errors=True)


def _write_failed(directory: Path, epoch: int, e: OSError) -> CheckpointError:
    """The error for a checkpoint that could not be written, naming the last complete one."""
    try:
        last = resolve(directory).pointer
    except CheckpointError:
        last = None
    kept = f"the last complete one is epoch {last['epoch']}" if last and "epoch" in last else \
        "no complete checkpoint was written before it"
    what = "disk full" if e.errno == errno.ENOSPC else f"cannot write ({e.strerror or e})"
    return CheckpointError(f"{what} while writing the checkpoint of epoch {epoch} in {directory}; {kept}; the "
                           "half-written files were removed")


def exists(directory: str | Path) -> bool:
    """True when ``directory`` holds a checkpoint of either layout."""
    return (Path(directory) / CONFIG_FILE).exists() or (Path(directory) / LATEST_FILE).exists()


@dataclass(frozen=True)
class CheckpointSet:
    """The files of one checkpoint, as ``latest.json`` named them when it was read (see ``resolve``)."""

    directory: Path  # the checkpoint (or run) directory
    snapshot: Path  # where its files are: ``checkpoints/<id>/`` of a training run, else ``directory`` itself
    pointer: dict[str, Any] | None = field(default=None, compare=False)  # latest.json; None for the plain layout

    @property
    def checkpoint_id(self) -> str | None:
        """The id every file of the set is stamped with; None for the plain layout."""
        return None if self.pointer is None else self.pointer["checkpoint"]


Source = str | Path | CheckpointSet  # what the readers take: a directory (or hf:// id), or a set resolved from one


def resolve(source: Source) -> CheckpointSet:
    """The current checkpoint of a directory, fixed: read every file of one load through it.

    Each reader given a directory resolves it anew, so a writer switching ``latest.json`` between two reads
    could pair the config of one checkpoint with the weights of the next; reads through one set cannot.
    A set is returned as it is.
    """
    if isinstance(source, CheckpointSet):
        return source
    directory = hub.snapshot(source) if hub.is_hub_id(source) else Path(source)
    if not directory.is_dir():
        raise CheckpointError(f"checkpoint directory {directory} does not exist")
    for attempt in range(REREADS):  # a writer may publish a newer set and delete the one just named
        try:
            return _resolve_pointer(directory)
        except SetReplaced:
            if attempt == REREADS - 1:
                raise
    raise AssertionError("unreachable")


def _resolve_pointer(directory: Path) -> CheckpointSet:
    """``resolve`` of a directory, once: SetReplaced where the set its pointer named was deleted after a newer
    one replaced it (the pointer names another by then)."""
    path = directory / LATEST_FILE
    if not path.exists():
        return CheckpointSet(directory, directory)
    doc = _read_json(path)
    if not isinstance(doc, dict) or doc.get("format") != LATEST_FORMAT:
        raise CheckpointError(f"{path} is not a vaekit checkpoint pointer (missing format {LATEST_FORMAT!r})")
    if doc.get("version") != VERSION:
        raise CheckpointError(f"{path} has format version {doc.get('version')!r}; this vaekit reads {VERSION}")
    ckpt_id, digests = doc.get("checkpoint"), doc.get("sha256")
    if not isinstance(ckpt_id, str) or not ID_PATTERN.fullmatch(ckpt_id):
        raise CheckpointError(f"{path}: key 'checkpoint' = {ckpt_id!r} is not a checkpoint id like 000003-1a2b3c4d")
    if not isinstance(digests, dict) or not all(isinstance(v, str) for v in digests.values()) or \
            not {CONFIG_FILE, WEIGHTS_FILE} <= set(digests) <= set(_SET_FILES):
        raise CheckpointError(f"{path}: key 'sha256' must map the checkpoint's files to their SHA-256")
    snapshot = directory / SNAPSHOT_DIR / ckpt_id
    if not snapshot.is_dir():
        now = _pointed_id(path)
        if now != ckpt_id:
            raise SetReplaced(f"{path} named checkpoint {ckpt_id}, replaced by {now} while it was being read")
        raise CheckpointError(f"{path} names checkpoint {ckpt_id}, but {snapshot} is missing")
    if snapshot.resolve().parent.parent != directory.resolve():  # a link: the set would come from elsewhere
        raise CheckpointError(f"{snapshot} leads to {snapshot.resolve()}, outside {directory}: a checkpoint's "
                              "folders must be inside its run directory")
    return CheckpointSet(directory, snapshot, doc)


def current(directory: str | Path) -> tuple[Path, dict[str, Any] | None]:
    """The directory that holds the current checkpoint's files, and the pointer (None for the plain layout)."""
    ckpt = resolve(directory)
    return ckpt.snapshot, ckpt.pointer


def model_digest(source: Source) -> str:
    """The SHA-256 of the current ``model.safetensors``: what a file fitted for one model (``anomaly.json``)
    records, so that it is not applied to weights that replaced them."""
    ckpt = resolve(source)
    if ckpt.pointer is not None:  # the digest every load checks the file against: no need to read it here
        return ckpt.pointer["sha256"][WEIGHTS_FILE]
    path, blob, _ = _read_verified(ckpt, WEIGHTS_FILE)
    if blob is None:
        raise CheckpointError(f"{path} is missing: {ckpt.directory} holds no model")
    return hashlib.sha256(blob).hexdigest()


_SET_FILES = (CONFIG_FILE, WEIGHTS_FILE, PREPROCESS_FILE, STATE_TENSORS_FILE, STATE_FILE)


def _read_verified(ckpt: CheckpointSet, name: str) -> tuple[Path, bytes | None, str | None]:
    """(path, bytes or None when absent, checkpoint id expected in the file) of one file of the set."""
    path, pointer = ckpt.snapshot / name, ckpt.pointer
    if pointer is not None and name not in pointer["sha256"]:
        if path.exists():
            raise CheckpointError(f"{path} is not listed in {ckpt.directory / LATEST_FILE}: it was added by hand")
        return path, None, ckpt.checkpoint_id
    try:
        blob = read_regular(path, JSON_LIMIT if name.endswith(".json") else None)
    except FileNotFoundError:
        if pointer is not None:  # listed, so it was written: gone since, most likely replaced by a newer set
            _check_not_replaced(ckpt, path)
        return path, None, ckpt.checkpoint_id
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e
    if pointer is not None and hashlib.sha256(blob).hexdigest() != pointer["sha256"][name]:
        raise CheckpointError(f"{path} does not match the SHA-256 recorded in {LATEST_FILE} when the checkpoint "
                              "was written: it was truncated, altered or replaced since")
    return path, blob, ckpt.checkpoint_id


class SetReplaced(CheckpointError):
    """A file of a checkpoint set vanished because a newer set replaced it while it was being read."""


REREADS = 3
T = TypeVar("T")


def _check_not_replaced(ckpt: CheckpointSet, path: Path) -> None:
    """A CheckpointError when ``path`` of the set is gone because a newer checkpoint replaced the set meanwhile."""
    try:
        now = resolve(ckpt.directory).checkpoint_id
    except CheckpointError:  # e.g. the pointer is mid-replacement or damaged: report the missing file itself
        return
    if now != ckpt.checkpoint_id:
        raise SetReplaced(f"{path} is gone: checkpoint {ckpt.checkpoint_id} was replaced by {now} while it "
                              f"was being read (a training run is writing to {ckpt.directory}); load it again")


def load_config(source: Source) -> Config:
    """The run's Config from ``config.json`` of a directory (or resolved set); unknown or ill-typed keys are
    refused by name."""
    ckpt = resolve(source)
    path, blob, ckpt_id = _read_verified(ckpt, CONFIG_FILE)
    if blob is None:
        raise CheckpointError(f"{path} is missing: {ckpt.directory} is not a vaekit checkpoint")
    try:
        doc: Any = parse_json(blob)
    except ValueError as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != FORMAT or "config" not in doc:
        raise CheckpointError(f"{path} is not a vaekit checkpoint config (missing format {FORMAT!r})")
    if doc.get("version") != VERSION:
        raise CheckpointError(f"{path} has format version {doc.get('version')!r}; this vaekit reads {VERSION}")
    _check_stamp(path, doc.get("checkpoint"), ckpt_id)
    try:
        return Config.from_dict(doc["config"])
    except ConfigError as e:
        raise CheckpointError(f"{path}: {e}") from e


def load_run(source: Source, device: str | torch.device = "cpu") -> tuple[VAE, Config]:
    """The model (in eval mode, on ``device``) and the Config saved in a directory (or resolved set), both
    from one checkpoint. A directory whose checkpoint a training run replaces during the read is read again,
    from the newer checkpoint (a few times: a writer publishes a set at most once per epoch)."""
    return _reread(lambda ckpt: _load_set(ckpt, device), source)


def _reread(read: Callable[[CheckpointSet], T], source: Source) -> T:
    """``read`` of the set ``source`` resolves to, resolved and read again when a newer set replaces it midway;
    a set given as such is read once."""
    for attempt in range(REREADS):
        try:
            return read(resolve(source))
        except SetReplaced:
            if isinstance(source, CheckpointSet) or attempt == REREADS - 1:
                raise
    raise AssertionError("unreachable")


def _load_set(ckpt: CheckpointSet, device: str | torch.device) -> tuple[VAE, Config]:
    config = load_config(ckpt)
    weights = load_weights(ckpt, size.on_meta(config.model))  # the config's sizes checked before they allocate
    model = VAE(config.model)
    model.load_state_dict(weights)
    return model.to(device).eval(), config


def load(directory: str | Path, device: str | torch.device = "cpu") -> VAE:
    """The trained model saved in ``directory``, ready for ``sample`` and ``reconstruct``."""
    return load_run(directory, device)[0]


def load_preprocess(source: Source) -> Standardizer | None:
    """The standardization saved with a model trained on a table, or None for other data."""
    ckpt = resolve(source)
    path, blob, ckpt_id = _read_verified(ckpt, PREPROCESS_FILE)
    if blob is None:
        if ckpt.pointer is not None and PREPROCESS_FILE in ckpt.pointer["sha256"]:  # else the inputs go unscaled
            raise CheckpointError(f"{path} is missing, but {ckpt.directory / LATEST_FILE} lists it")
        return None
    t = _parse_tensors(path, blob, ckpt_id)
    if set(t) != {"mean", "std"} or t["mean"].shape != t["std"].shape or t["mean"].dim() != 1:
        raise CheckpointError(f"{path} must hold 1-d tensors mean and std of one size; it holds {sorted(t)}")
    return Standardizer(t["mean"], t["std"])


def load_weights(source: Source, model: VAE) -> dict[str, torch.Tensor]:
    """The saved weights, checked against ``model``'s tensor names and shapes (a meta model's will do)."""
    path, blob, ckpt_id = _read_verified(resolve(source), WEIGHTS_FILE)
    if blob is None:
        pickles = sorted(p.name for p in path.parent.iterdir() if p.suffix in PICKLE_SUFFIXES)
        hint = f" ({', '.join(pickles)} present, but vaekit never loads pickle files)" if pickles else ""
        raise CheckpointError(f"{path} is missing{hint}")
    return check_tensors(path, _parse_tensors(path, blob, ckpt_id), model.state_dict(), "config.json")


def check_tensors(path: Path, tensors: dict[str, torch.Tensor], expected: dict[str, torch.Tensor],
                  against: str) -> dict[str, torch.Tensor]:
    """``tensors`` when their names and shapes are those of ``expected``; else a CheckpointError naming them."""
    if set(tensors) != set(expected):
        missing, extra = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
        raise CheckpointError(f"{path} does not match {against}: missing {missing}, unexpected {extra}")
    for k, t in expected.items():
        if tensors[k].shape != t.shape:
            raise CheckpointError(f"{path}: tensor {k} has shape {tuple(tensors[k].shape)}, but {against} asks for "
                                  f"{tuple(t.shape)}")
    return tensors


def load_state(source: Source) -> TrainingState:
    """The training state of the run's current checkpoint; a CheckpointError when there is none or it is bad.

    Its ``source`` is the set it was read from, so the weights restored with it can be read from that one.
    """
    return _reread(_load_state, source)


def _load_state(ckpt: CheckpointSet) -> TrainingState:
    if ckpt.pointer is None:
        raise CheckpointError(f"{ckpt.directory} holds no training state to resume from (no {LATEST_FILE}): it was "
                              "not written by `vaekit train`, or by a vaekit from before resume existed")
    path, blob, ckpt_id = _read_verified(ckpt, STATE_FILE)
    if blob is None:
        raise CheckpointError(f"{path} is missing")
    state = _parse_state(path, blob, ckpt_id)
    t_path, t_blob, _ = _read_verified(ckpt, STATE_TENSORS_FILE)
    if t_blob is None:
        raise CheckpointError(f"{t_path} is missing")
    state.tensors = _parse_tensors(t_path, t_blob, ckpt_id)
    state.source = ckpt
    return state


_STATE_TYPES: dict[str, tuple[type, ...]] = {
    "epoch": (int,), "step": (int,), "history": (list,), "finished": (bool,), "stopped": (str, type(None)),
    "world_size": (int,), "best_epoch": (int, type(None)), "best_val": (float, int, type(None)),
    "bad_epochs": (int,), "skipped_steps": (int,),
}


def _parse_state(path: Path, blob: bytes, ckpt_id: str | None) -> TrainingState:
    """A TrainingState from training_state.json; unknown, missing or ill-typed keys are refused by name."""
    try:
        doc: Any = parse_json(blob)
    except ValueError as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from e
    if not isinstance(doc, dict) or doc.get("format") != STATE_FORMAT or doc.get("version") != VERSION:
        raise CheckpointError(f"{path} is not a vaekit training state of version {VERSION}")
    _check_stamp(path, doc.pop("checkpoint", None), ckpt_id)
    doc = {k: v for k, v in doc.items() if k not in ("format", "version")}
    names = [f.name for f in fields(TrainingState) if f.name not in _NOT_JSON]
    unknown = sorted(doc.keys() - set(names))
    if unknown:
        raise CheckpointError(f"{path}: unknown key {unknown[0]!r}; valid keys: {names}")
    for key in names:
        ok = _STATE_TYPES[key]
        if key not in doc or (isinstance(doc[key], bool) and bool not in ok) or not isinstance(doc[key], ok):
            raise CheckpointError(f"{path}: key {key!r} must be {' or '.join(t.__name__ for t in ok)}, "
                                  f"got {doc.get(key, '<missing>')!r}")
    history = doc["history"]
    if min(doc["epoch"], doc["step"], doc["world_size"] - 1, doc["bad_epochs"], doc["skipped_steps"]) < 0 or \
            [r.get("epoch") if isinstance(r, dict) else None for r in history] != list(range(1, doc["epoch"] + 1)):
        raise CheckpointError(f"{path}: epoch {doc['epoch']}, step {doc['step']} and the history of "
                              f"{len(history)} epoch record(s) do not fit together")
    return TrainingState(**doc)


def _parse_tensors(path: Path, blob: bytes, ckpt_id: str | None) -> dict[str, torch.Tensor]:
    try:
        tensors = load_bytes(blob)
    except (SafetensorError, OSError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{path} is corrupt or truncated: {e}") from e
    _check_stamp(path, _metadata(blob).get("checkpoint"), ckpt_id)
    return tensors


def _metadata(blob: bytes) -> dict[str, Any]:
    """The ``__metadata__`` of a safetensors file that already parsed: an 8-byte length, then a JSON header."""
    n = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8 : 8 + n]).get("__metadata__")
    return meta if isinstance(meta, dict) else {}


def _check_stamp(path: Path, found: Any, expected: str | None) -> None:
    if expected is not None and found != expected:
        raise CheckpointError(f"{path} belongs to checkpoint {found!r}, not to {expected!r} that {LATEST_FILE} "
                              "names: files of different checkpoints were mixed")


def _read_json(path: Path) -> Any:
    try:
        return parse_json(read_regular(path, JSON_LIMIT))
    except OSError as e:
        raise CheckpointError(f"cannot read {path}: {e.strerror or e}") from e
    except ValueError as e:
        raise CheckpointError(f"{path} is not readable JSON: {e}") from e


def _pointed_id(path: Path) -> str | None:
    """The checkpoint id the pointer at ``path`` names now; None where it cannot be read."""
    try:
        doc = _read_json(path)
    except CheckpointError:
        return None
    return doc.get("checkpoint") if isinstance(doc, dict) else None


def _config_doc(config: Config, ckpt_id: str | None) -> bytes:
    doc: dict[str, Any] = {"format": FORMAT, "version": VERSION, "config": config.to_dict()}
    if ckpt_id is not None:
        doc["checkpoint"] = ckpt_id
    return _json_bytes(doc)


def _json_bytes(doc: dict[str, Any]) -> bytes:
    return (json.dumps(doc, indent=2) + "\n").encode()


def _cpu(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
