"""What one training run holds while it goes (``Run``), how it starts from a config and the data, and the
hooks (``Callback``) and result (``TrainResult``) it reports through."""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from vaekit import data, objectives
from vaekit.batches import floats
from vaekit.config import Config
from vaekit.data import images
from vaekit.data.mapped import MappedRows, available_memory
from vaekit.errors import ConfigError, TrainingError
from vaekit.model import VAE, NotAvailable, likelihoods, size
from vaekit.training import distributed, graphs, streaming
from vaekit.training.steps import StepOptions, batch_bounds, make_optimizer

log = logging.getLogger(__name__)


class Callback:
    """Hooks for progress reporting; the library itself never prints.

    Setting ``stop_training = True`` (e.g. in ``on_epoch_end``) ends training after the current epoch,
    which is then checkpointed as the final one. Callbacks run in the main process only.
    """

    stop_training: bool = False

    def on_train_start(self, config: Config, steps_per_epoch: int) -> None: ...
    def on_step_path(self, description: str) -> None:
        """Which training step runs (CUDA graph, fused CPU step or autograd), in which precision, and why."""
    def on_model(self, model: VAE, test: data.Split) -> None:
        """The model in training and the test split, for callbacks that draw pictures while it trains."""
    def on_step(self, epoch: int, step: int) -> None: ...
    def on_epoch_end(self, record: dict[str, Any]) -> None: ...
    def on_train_end(self, model: VAE, test: data.Split) -> None: ...


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
    step_path: str = ""  # which training step ran, in which precision, and why (training.paths.choose)
    precision: str = "fp32"  # the precision that step took: train.precision resolved (auto -> fp32 or bf16)


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
    opt: torch.optim.Optimizer
    x: Tensor | MappedRows  # the training examples as stored: on the device, or on disk (read in pieces)
    y: Tensor | None  # their labels, for a conditional model
    x_val: Tensor | MappedRows | None
    y_val: Tensor | None
    bounds: list[tuple[int, int]]  # batch slices of one epoch
    gen: torch.Generator  # permutations and dynamic binarization
    ctx: distributed.Context
    callbacks: Sequence[Callback]
    options: StepOptions = field(default_factory=StepOptions)  # how each step is taken (training.paths)
    static: graphs.StaticStep | None = None  # the CUDA-graph step, when it is used
    precision: str = "fp32"  # train.precision resolved for this run's step: fp32 or bf16 (training.paths)
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
    def device(self) -> torch.device:
        """Where the model trains (the data may be elsewhere: on disk, when it is read in pieces)."""
        return self.gen.device

    @property
    def streamed(self) -> bool:
        """True when the training examples are read from disk in pieces, chunk by chunk."""
        return isinstance(self.x, MappedRows)

    def beta(self) -> float:
        """The KL weight in force for the next step."""
        return objectives.kl_weight(self.config.train.beta, self.step + 1, self.warmup_steps)


# below this many optimizer steps an image model ends undertrained, and the run says so (tables are exempt: the
# outliers preset is brief on purpose)
FEW_STEPS = 500
CHECK_CHUNK_BYTES = 256 * 2**20  # data on disk is checked this much at a time


def start(config: Config, splits: data.Splits, device: torch.device, ctx: distributed.Context,
          callbacks: Sequence[Callback]) -> Run:
    """A run at epoch 0: the config resolved against the data, the model, optimiser and data on the device."""
    _check_support(config, splits.train.stored)
    config = resolve(config, splits)
    check_memory(config, device)
    torch.manual_seed(config.train.seed)  # the same initial weights in every process
    model = VAE(config.model).to(device)
    if ctx.world_size > 1:  # but independent posterior noise in each
        torch.manual_seed(config.train.seed + ctx.rank)
    x, y = _on_device(splits.train, model, device)
    _log_placement(x, device, config.train.batch_size)
    model.init_from_data(x, torch.Generator(device).manual_seed(config.train.seed))  # the same in every process
    if any(objectives.per_layer(config.train.free_bits_floor, len(model.layers))):
        _check_free_bits(model, x, y, config.train.free_bits_floor)
    bounds = _batch_bounds(len(x), config, ctx)
    config = _steps_as_epochs(config, len(bounds))
    x_val, y_val = _on_device(splits.val, model, device) if splits.val is not None and ctx.is_main else (None, None)
    gen = torch.Generator(device).manual_seed(config.train.seed)  # one permutation shared by all processes
    callbacks = callbacks if ctx.is_main else ()
    graphed = graphs.fast_path_blocker(device, ctx.world_size, config.train.cuda_graph) is None and \
        not isinstance(x, MappedRows)
    opt = _optimizer(model, config, device, capturable=graphed)
    run = Run(config, model, opt, x, y, x_val, y_val, bounds, gen, ctx, callbacks)
    tc = config.train
    run.warmup_steps = tc.kl_warmup_steps or round(tc.kl_warmup_epochs * len(run.bounds))
    if ctx.is_main and len(model.data_shape) == 3 and tc.epochs * len(bounds) < FEW_STEPS:
        log.warning("this run takes only %d optimizer steps (%d epochs of %d); a VAE usually needs thousands, "
                    "so expect a blurry model: raise --epochs or set --steps", tc.epochs * len(bounds), tc.epochs,
                    len(bounds))
    if tc.early_stopping_patience and ctx.is_main:
        run.stopping = EarlyStopping(tc.early_stopping_patience)
    return run


def _steps_as_epochs(config: Config, steps_per_epoch: int) -> Config:
    """``train.steps`` turned into whole epochs: the run, its checkpoints and a resume count epochs."""
    steps = config.train.steps
    if not steps:
        return config
    epochs = math.ceil(steps / steps_per_epoch)
    log.info("train.steps = %d: %d epochs of %d steps", steps, epochs, steps_per_epoch)
    return config.override({"train.epochs": epochs, "train.steps": 0})


def resolve(config: Config, splits: data.Splits) -> Config:
    """The config with what the data decides: the data shape, and the class names of a conditional model."""
    resolved: dict[str, Any] = {"model.data_shape": list(splits.train.shape)}
    # later commands convert the folder the same way; a registered name wins over a folder of that name, as
    # in data.load
    if config.data.dataset not in data.DATASETS and images.is_image_path(config.data.dataset):
        resolved.update({"data.channels": splits.train.shape[0], "data.image_size": list(splits.train.shape[1:])})
    if config.model.conditional:
        if splits.train.y is None:
            raise TrainingError(f"a conditional model needs labelled data, and {config.data.dataset} has no "
                                "labels (image folders get them from one sub-folder per class, .npz arrays "
                                "from an array y, tables from data.label_column)")
        if splits.classes is None:
            raise TrainingError(f"a conditional model needs class indices 0..C-1 as labels; those of "
                                f"{config.data.dataset} span {int(splits.train.y.min())}..{int(splits.train.y.max())}")
        resolved["model.labels"] = list(splits.classes)
    if config.train.objective == "iwae" and (config.train.free_bits or config.train.free_bits_per_layer):
        raise TrainingError("train.free_bits applies to the ELBO objective; the iwae objective takes none")
    if config.train.early_stopping_patience and splits.val is None:
        raise TrainingError(f"train.early_stopping_patience = {config.train.early_stopping_patience} watches the "
                            f"validation -ELBO, and this run has no validation split (data.val_size = "
                            f"{config.data.val_size}): set data.val_size, e.g. 0.1, or patience 0 (off)")
    return config.override(resolved)


def _check_free_bits(model: VAE, x: Tensor | MappedRows, y: Tensor | None, free_bits: objectives.FreeBits) -> None:
    """Free bits floor each latent dimension's KL: refuse parts that define none, before the first step."""
    device = _device_of(model)
    with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            for latent in model.infer(floats(x[:2]).to(device), None if y is None else y[:2]):
                latent.kl_per_dimension()
        except NotAvailable as e:
            raise TrainingError(f"train.free_bits = {free_bits} needs a KL per latent dimension: {e}") from None


def _on_device(split: data.Split, model: VAE, device: torch.device) -> tuple[Tensor | MappedRows, Tensor | None]:
    """A split's data on the device as it is stored (images as bytes, made values per batch), or left on disk
    when it is read in pieces, with its labels when the model is conditional."""
    y = model.labels_of(split.y, f"the {split.name} split")
    x = split.stored if isinstance(split.stored, MappedRows) else split.stored.to(device)
    return x, None if y is None else y.to(device)


def check_memory(config: Config, device: torch.device) -> None:
    """A ConfigError, before anything is allocated, when the model and one batch cannot fit the memory the
    device has free: what sizes typed by hand (``--hidden 1000000000``) would otherwise end in."""
    free = _free_memory(device)
    if free is None:
        return
    weights, activations = size.training_bytes(config)
    if weights + activations <= free:
        return
    m, gb = config.model, lambda n: f"{n / 2**30:,.1f} GB"
    sizes = f"model.hidden = {list(m.hidden)}, model.latent_dim = {m.latent_dim}" + \
        (f", model.channels = {list(m.channels)}" if m.arch == "conv" else "")
    raise ConfigError(
        f"training this model needs about {gb(weights + activations)}, more than the {gb(free)} free on {device}: "
        f"{weights // (4 * size.ADAM_COPIES):,} parameters with their gradients and Adam's moments take "
        f"{gb(weights)} and one batch of {config.train.batch_size} takes {gb(activations)}. Reduce the sizes "
        f"({sizes}) or train.batch_size")


def _free_memory(device: torch.device) -> int | None:
    """Bytes free for new tensors on ``device``; None where it cannot be told."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    return available_memory() if device.type == "cpu" else None


def _check_support(config: Config, x: Tensor | MappedRows) -> None:
    """The training data in the likelihood's support; data on disk is checked a chunk at a time (bytes always
    are: byte / 255 lies in [0, 1] on the 8-bit grid)."""
    what = f"the {config.data.dataset} training set"
    if not isinstance(x, MappedRows):
        likelihoods.check_support(config.model.likelihood, x, what)
    elif x.dtype != torch.uint8:  # float images on disk: in [0, 1], as images.read requires of arrays in memory
        rows = max(1, CHECK_CHUNK_BYTES // x.example_nbytes)
        for s in range(0, len(x), rows):
            chunk = x[s : s + rows]
            likelihoods.check_support(config.model.likelihood, chunk, what)
            if float(chunk.min()) < 0 or float(chunk.max()) > 1:
                raise TrainingError(f"{x.source}: the values of training examples {s}..{s + len(chunk) - 1} span "
                                    f"[{float(chunk.min()):g}, {float(chunk.max()):g}]; expected floats in [0, 1] "
                                    "(or uint8 0..255); rescale the array")


def _log_placement(x: Tensor | MappedRows, device: torch.device, batch_size: int) -> None:
    if isinstance(x, MappedRows):
        log.info("training reads %s from disk, %d examples (%.1f GB), in %s of the shuffled order, the next one "
                 "read ahead", x.source, len(x), x.nbytes / 2**30, streaming.describe(x, batch_size))
    else:
        log.info("training holds its %d examples on %s (%.0f MB as %s)", len(x), device, x.nbytes / 2**20,
                 str(x.dtype).removeprefix("torch."))


def _device_of(model: VAE) -> torch.device:
    return next(model.parameters()).device


def _batch_bounds(n: int, config: Config, ctx: distributed.Context) -> list[tuple[int, int]]:
    bounds = batch_bounds(n, config.train.batch_size, config.train.drop_last)
    if bounds and bounds[-1][1] - bounds[-1][0] < ctx.world_size:  # a last batch too small to split
        bounds.pop()
    if not bounds:
        raise TrainingError(f"batch size {config.train.batch_size} with drop_last leaves no batch of {n} "
                            f"examples for {ctx.world_size} process(es)")
    return bounds


def _optimizer(model: VAE, config: Config, device: torch.device, capturable: bool) -> torch.optim.Optimizer:
    opt = make_optimizer(model, config.train.lr, capturable=capturable)
    if config.train.skips_steps and not opt.defaults.get("fused"):
        raise TrainingError(f"train.nonfinite = 'skip' and train.grad_skip cancel updates inside PyTorch's fused "
                            f"Adam, which this PyTorch lacks on {device}; use train.nonfinite = 'stop' and "
                            "train.grad_skip = 0")
    return opt
