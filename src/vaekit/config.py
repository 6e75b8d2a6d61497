"""Frozen configuration for model, data and training; JSON/TOML in and out; dotted overrides.

A config is plain data. It is saved next to the weights (``config.json``) so a checkpoint can be rebuilt
without running any code from it. Parsing is strict: an unknown key or a value of the wrong type is an error
that names the key.
"""

from __future__ import annotations

import dataclasses
import json
import math
import reprlib
import sys
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vaekit.errors import ConfigError
from vaekit.fileio import JSON_LIMIT, parse_json, read_regular

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

BINARIZATIONS = ("none", "dynamic", "static", "threshold")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16")
ARCHS = ("mlp", "conv")
UPSAMPLES = ("transposed", "resize")
OBJECTIVES = ("elbo", "iwae")
NONFINITE = ("stop", "skip")
# A size (a width, a latent dimension, a channel count) must fit a signed 32-bit index, which many kernels use;
# what a model of such sizes would need in memory is judged where it is built (``vaekit.model.size``).
MAX_SIZE = 2**31 - 1
MAX_LAYERS = 1024  # entries of a list of layer sizes, and flow steps: far beyond any VAE's depth
MAX_INT = 2**63 - 1  # any integer setting: what a 64-bit integer holds


@dataclass(frozen=True)
class ModelConfig:
    """Architecture of the VAE: q(z|x) and p(x|z) networks, latent size and likelihood."""

    arch: str = "mlp"  # mlp, or conv: stride-2 convolutions for (C, H, W) images of any size
    hidden: tuple[int, ...] = (400,)  # MLP widths; for conv, the fully connected layers after the convolutions
    channels: tuple[int, ...] = (32, 64)  # conv: output channels of each stride-2 layer of the encoder
    activation: str = "relu"
    latent_dim: int = 20  # the top stochastic layer's size
    lower_latent_dims: tuple[int, ...] = ()  # a hierarchy: layers below the top, top-down
    latent_channels: int = 0  # conv: a spatial bottom layer of this many channels at half the image size
    upsample: str = "transposed"  # conv decoders: stride-2 transposed convolutions, or resize (nearest) then conv
    likelihood: str = "bernoulli"  # p(x|z): a name registered in vaekit.model.likelihoods
    posterior: str = "diagonal-gaussian"  # q(z|x): a name registered in vaekit.model.posteriors
    prior: str = "standard-normal"  # p(z): a name registered in vaekit.model.priors
    prior_components: int = 10  # K: mixture components of the mog prior, pseudo-inputs of the vamp prior
    flow_steps: int = 2  # T: autoregressive steps of the iaf posterior
    flow_hidden: int = 256  # hidden units of each MADE of the iaf posterior
    obs_std: float = 0.1  # standard deviation of the fixed-variance Gaussian likelihood, scale of the Laplace
    data_shape: tuple[int, ...] | None = None  # set from the data at training time
    conditional: bool = False  # q(z|x, y) and p(x|z, y) for a class label y
    labels: tuple[str, ...] | None = None  # the class names of a conditional model, set from the data

    def __post_init__(self) -> None:
        _require(self.arch in ARCHS, "model.arch", self.arch, f"one of {ARCHS}")
        _require(self.upsample in UPSAMPLES, "model.upsample", self.upsample, f"one of {UPSAMPLES}")
        _require(_sizes(self.channels), "model.channels", self.channels, f"channel counts in 1..{MAX_SIZE}")
        _require(_sizes([self.latent_dim]), "model.latent_dim", self.latent_dim, f"an integer in 1..{MAX_SIZE}")
        _require(_sizes(self.lower_latent_dims), "model.lower_latent_dims", self.lower_latent_dims,
                 f"layer sizes in 1..{MAX_SIZE}")
        _require(_sizes(self.hidden), "model.hidden", self.hidden, f"layer widths in 1..{MAX_SIZE}")
        _require(0 <= self.latent_channels <= MAX_SIZE, "model.latent_channels", self.latent_channels,
                 f"an integer in 0..{MAX_SIZE} (0: no spatial layer)")
        _require(self.latent_channels == 0 or self.arch == "conv", "model.latent_channels", self.latent_channels,
                 "0 unless model.arch = conv (a spatial layer is a convolutional map)")
        _require(self.obs_std > 0, "model.obs_std", self.obs_std, "a positive number")
        _require(_sizes([self.prior_components]), "model.prior_components", self.prior_components,
                 f"an integer in 1..{MAX_SIZE}")
        _require(1 <= self.flow_steps <= MAX_LAYERS, "model.flow_steps", self.flow_steps,
                 f"an integer in 1..{MAX_LAYERS}")
        _require(_sizes([self.flow_hidden]), "model.flow_hidden", self.flow_hidden, f"an integer in 1..{MAX_SIZE}")
        if self.data_shape is not None:
            _require(_sizes(self.data_shape) and math.prod(self.data_shape) <= MAX_SIZE, "model.data_shape",
                     self.data_shape, f"positive sizes of at most {MAX_SIZE} values in all")

    @property
    def n_layers(self) -> int:
        """Stochastic layers: the top one, the lower vector layers and the spatial one if any."""
        return 1 + len(self.lower_latent_dims) + (self.latent_channels > 0)


@dataclass(frozen=True)
class DataConfig:
    """Where the data comes from and how it is prepared."""

    dataset: str = "digits"  # a registered name, or a path to a .csv/.parquet/.npy/.npz/.mat table, or images
    data_dir: str | None = None  # falls back to $VAEKIT_DATA
    download: bool = False
    binarize: str = "none"
    val_size: float = 0.1  # a fraction of the training set (< 1) or a number of examples (>= 1)
    split_seed: int = 0  # seeds the validation split, independent of the training seed
    eval_seed: int = 0  # seeds the fixed binarization of evaluation sets
    test_size: float = 0.2  # tables and images: the held-out test fraction (< 1) or count (>= 1), seeded
    test_dataset: str | None = None  # tables and images: a separate test file or folder; all of dataset trains
    label_column: str | None = None  # tables from CSV or Parquet: the column holding labels, if any
    standardize: bool = True  # tables: (x - mean) / std with statistics of the training split
    train_classes: tuple[int, ...] | None = None  # train and validate on these labels only; test keeps all
    image_size: tuple[int, int] | None = None  # image folders/arrays: (H, W); None = that of the first image
    channels: int | None = None  # image folders: 1 (grey), 3 (RGB) or 4 (RGBA); None = that of the first image
    strict: bool = False  # image folders: stop at the first unreadable file instead of skipping it
    max_memory_gb: float = 0.0  # an .npy image array above this is read in pieces from disk; 0 = half the free memory

    def __post_init__(self) -> None:
        _require(self.binarize in BINARIZATIONS, "data.binarize", self.binarize, f"one of {BINARIZATIONS}")
        _require(self.val_size >= 0, "data.val_size", self.val_size, "a fraction in [0, 1) or a count")
        _require(self.test_size > 0 and (self.test_size < 1 or float(self.test_size).is_integer()),
                 "data.test_size", self.test_size, "a fraction in (0, 1) or a whole count")
        if self.image_size is not None:
            _require(len(self.image_size) == 2 and min(self.image_size) >= 1, "data.image_size", self.image_size,
                     "[height, width]")
        _require(self.channels in (None, 1, 3, 4), "data.channels", self.channels, "1, 3 or 4")
        _require(self.max_memory_gb >= 0, "data.max_memory_gb", self.max_memory_gb, "GB >= 0 (0: automatic)")


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation: epochs, batch, Adam learning rate, beta weight on the KL, seed and device."""

    epochs: int = 50
    steps: int = 0  # run length in optimizer steps instead, rounded up to whole epochs; 0 = train.epochs decides
    batch_size: int = 128
    lr: float = 1e-3
    beta: float = 1.0
    seed: int = 1
    device: str = "auto"
    checkpoint_every: int = 1  # checkpoint every N epochs (and at the end); 0 = only at the end
    drop_last: bool = False
    eval_batch_size: int = 1000
    # bf16: matrix products in bfloat16 (autocast, or the fused step's own casts), the loss in fp32; auto: bf16
    # on a CPU with native bfloat16 products for a Bernoulli model with a large enough step, else fp32
    # (devices.resolve_precision)
    precision: str = "auto"
    cuda_graph: bool = True  # on CUDA, capture the whole step as one graph (drops the last partial batch)
    fused_step: bool = True  # on the CPU, a fully connected model's gradients come from a hand-written backward
    objective: str = "elbo"  # elbo, or iwae: the importance-weighted bound with iw_k samples (Burda et al. 2015)
    iw_k: int = 50  # importance samples of the iwae objective
    kl_warmup_epochs: float = 0.0  # beta rises linearly from 0 to train.beta over this many epochs ...
    kl_warmup_steps: int = 0  # ... or over this many optimizer steps (set at most one of the two)
    free_bits: float = 0.0  # nats: each latent dimension's batch-mean KL counts at least this much (Kingma 2016)
    free_bits_per_layer: tuple[float, ...] = ()  # ... or this much in each stochastic layer, top first
    grad_clip: float = 0.0  # rescale a gradient whose global L2 norm exceeds this to this norm; 0 = off
    grad_skip: float = 0.0  # skip an update whose gradient norm exceeds this (Child 2021); 0 = off
    nonfinite: str = "stop"  # a non-finite loss or gradient: stop at the epoch's end, or skip that step's update
    max_skipped_steps: int = 10  # with nonfinite = "skip": fail once more steps than this were skipped in all
    early_stopping_patience: int = 0  # stop after this many epochs without a better validation -ELBO; 0 = off

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, "train.epochs", self.epochs, "an integer >= 1")
        _require(self.steps >= 0, "train.steps", self.steps, "an integer >= 0 (0: train.epochs decides)")
        _require(self.batch_size >= 1, "train.batch_size", self.batch_size, "an integer >= 1")
        _require(self.eval_batch_size >= 1, "train.eval_batch_size", self.eval_batch_size, "an integer >= 1")
        _require(self.lr > 0, "train.lr", self.lr, "a positive number")
        _require(self.beta >= 0, "train.beta", self.beta, "a number >= 0")
        _require(self.checkpoint_every >= 0, "train.checkpoint_every", self.checkpoint_every, "an integer >= 0")
        _require(self.device in DEVICES, "train.device", self.device, f"one of {DEVICES}")
        _require(self.precision in PRECISIONS, "train.precision", self.precision, f"one of {PRECISIONS}")
        _require(self.objective in OBJECTIVES, "train.objective", self.objective, f"one of {OBJECTIVES}")
        _require(self.iw_k >= 1, "train.iw_k", self.iw_k, "an integer >= 1")
        _require(self.kl_warmup_epochs >= 0, "train.kl_warmup_epochs", self.kl_warmup_epochs, "a number >= 0")
        _require(self.kl_warmup_steps >= 0, "train.kl_warmup_steps", self.kl_warmup_steps, "an integer >= 0")
        _require(not (self.kl_warmup_epochs and self.kl_warmup_steps), "train.kl_warmup_steps",
                 self.kl_warmup_steps, "0 when train.kl_warmup_epochs is set (one warm-up schedule)")
        _require(self.free_bits >= 0, "train.free_bits", self.free_bits, "a number >= 0")
        _require(all(b >= 0 for b in self.free_bits_per_layer), "train.free_bits_per_layer",
                 self.free_bits_per_layer, "numbers >= 0, one per stochastic layer")
        _require(not (self.free_bits and self.free_bits_per_layer), "train.free_bits_per_layer",
                 self.free_bits_per_layer, "empty when train.free_bits is set (one free-bits floor)")
        _require(self.grad_clip >= 0, "train.grad_clip", self.grad_clip, "a number >= 0 (0 = off)")
        _require(self.grad_skip >= 0, "train.grad_skip", self.grad_skip, "a number >= 0 (0 = off)")
        _require(self.nonfinite in NONFINITE, "train.nonfinite", self.nonfinite, f"one of {NONFINITE}")
        _require(self.max_skipped_steps >= 0, "train.max_skipped_steps", self.max_skipped_steps, "an integer >= 0")
        _require(self.early_stopping_patience >= 0, "train.early_stopping_patience", self.early_stopping_patience,
                 "an integer >= 0 (0 = off)")

    @property
    def free_bits_floor(self) -> float | tuple[float, ...]:
        """The free-bits floor in nats per latent dimension: one for all, or one per layer (top first)."""
        return self.free_bits_per_layer or self.free_bits

    @property
    def skips_steps(self) -> bool:
        """Whether some updates may be cancelled on the device (a non-finite or an outlier gradient)."""
        return self.nonfinite == "skip" or self.grad_skip > 0


@dataclass(frozen=True)
class Config:
    """The whole run: ``model``, ``data`` and ``train`` sections."""

    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def __post_init__(self) -> None:
        layers = self.model.n_layers
        _require(len(self.train.free_bits_per_layer) in (0, layers), "train.free_bits_per_layer",
                 self.train.free_bits_per_layer, f"one number per stochastic layer ({layers}: model.latent_dim, "
                 "each of model.lower_latent_dims and a spatial layer of model.latent_channels)")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-ready dictionary (tuples become lists)."""
        return json.loads(json.dumps(dataclasses.asdict(self)))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Config:
        """Build from a nested dictionary; unknown keys and ill-typed values raise ConfigError."""
        return _build(cls, d, prefix="")

    def override(self, assignments: dict[str, Any]) -> Config:
        """Return a copy with dotted keys replaced, e.g. ``{"model.latent_dim": 10}``."""
        d = self.to_dict()
        for key, value in assignments.items():
            section, _, name = key.partition(".")
            if section not in d or not name or "." in name:
                raise ConfigError(f"unknown config key {key!r}: expected one of {_all_keys()}")
            if name not in d[section]:
                raise ConfigError(f"unknown config key {key!r}: expected one of {_all_keys()}")
            d[section][name] = _as_list(value) if isinstance(d[section][name], list) else value
        return Config.from_dict(d)


PRESETS: dict[str, dict[str, Any]] = {
    # pytorch/examples vae/main.py: 784-400-20, ReLU, Bernoulli on grey levels, Adam 1e-3, batch 128,
    # the whole training set (no validation split).
    "seed": {
        "model.hidden": [400], "model.activation": "relu", "model.latent_dim": 20,
        "model.likelihood": "bernoulli", "data.binarize": "none", "data.val_size": 0,
        "train.lr": 1e-3, "train.batch_size": 128,
    },
    # Burda, Grosse & Salakhutdinov 2015, one stochastic layer: 2x200 tanh, z = 50, Bernoulli, dynamically
    # binarized MNIST. They used batch 20 and a 3,280-epoch schedule; batch 128 here keeps epochs cheap.
    "iwae": {
        "model.hidden": [200, 200], "model.activation": "tanh", "model.latent_dim": 50,
        "model.likelihood": "bernoulli", "data.binarize": "dynamic",
        "train.lr": 1e-3, "train.batch_size": 128,
    },
    # A convolutional VAE for MNIST-sized images: two stride-2 convolutions (16 and 32 channels, 28 -> 14 -> 7)
    # and a 256-unit layer on each side, z = 50, Bernoulli, dynamically binarized data.
    "conv": {
        "model.arch": "conv", "model.channels": [16, 32], "model.hidden": [256], "model.activation": "relu",
        "model.latent_dim": 50, "model.likelihood": "bernoulli", "data.binarize": "dynamic",
        "train.lr": 1e-3, "train.batch_size": 128,
    },
    # The VampPrior (Tomczak & Welling 2018): p(z) the mixture of the posteriors of K = 500 learned pseudo-inputs,
    # z = 40, two 300-unit layers (theirs are gated), Adam 5e-4, batch 100, dynamically binarized MNIST. Their
    # KL warm-up lasts 100 epochs; 5 here, so that a CPU budget of minutes still ends on the full ELBO.
    "vamp": {
        "model.hidden": [300, 300], "model.activation": "relu", "model.latent_dim": 40, "model.prior": "vamp",
        "model.prior_components": 500, "model.likelihood": "bernoulli", "data.binarize": "dynamic",
        "train.lr": 5e-4, "train.batch_size": 100, "train.kl_warmup_epochs": 5.0,
    },
    # The iwae preset's networks with an inverse autoregressive flow posterior (Kingma et al. 2016): two MADE
    # steps of 200 units reading a context from the encoder.
    "iaf": {
        "model.hidden": [200, 200], "model.activation": "tanh", "model.latent_dim": 50, "model.posterior": "iaf",
        "model.flow_steps": 2, "model.flow_hidden": 200, "model.likelihood": "bernoulli", "data.binarize": "dynamic",
        "train.lr": 1e-3, "train.batch_size": 128,
    },
    # A Ladder-style hierarchy (Sonderby et al. 2016): three stochastic layers of 16 (top), 32 and 64 units with
    # top-down inference sharing the generative path, 512-256 MLPs, dynamically binarized data, a 10-epoch KL
    # warm-up as the Ladder VAE used. The likelihood-ratio anomaly score (--score llr) needs such a hierarchy.
    "hvae": {
        "model.hidden": [512, 256], "model.activation": "relu", "model.latent_dim": 16,
        "model.lower_latent_dims": [32, 64], "model.likelihood": "bernoulli", "data.binarize": "dynamic",
        "train.lr": 1e-3, "train.batch_size": 128, "train.kl_warmup_epochs": 10.0,
    },
    # The same hierarchy on the conv preset's networks: stride-2 convolutions of 16 and 32 channels and a
    # 256-unit layer, in the encoder, the bottom-up path and (transposed) the decoder.
    "hvae-conv": {
        "model.arch": "conv", "model.channels": [16, 32], "model.hidden": [256], "model.activation": "relu",
        "model.latent_dim": 16, "model.lower_latent_dims": [32, 64], "model.likelihood": "bernoulli",
        "data.binarize": "dynamic", "train.lr": 1e-3, "train.batch_size": 128, "train.kl_warmup_epochs": 10.0,
    },
    # The layer sizes of Havtorn et al. 2021 for out-of-distribution detection: 8 and 16 units above a spatial
    # bottom layer, a map of 8 channels at half the image size, which holds the low-level features that the
    # likelihood-ratio score (--score llr --k 1) leaves out; convolutions of 32 and 64 channels (theirs have 64).
    "hvae-spatial": {
        "model.arch": "conv", "model.channels": [32, 64], "model.hidden": [256], "model.activation": "relu",
        "model.latent_dim": 8, "model.lower_latent_dims": [16], "model.latent_channels": 8,
        "model.likelihood": "bernoulli", "data.binarize": "dynamic", "train.lr": 1e-3, "train.batch_size": 128,
        "train.kl_warmup_epochs": 10.0,
    },
    # Anomaly detection on standardized tables, trained on unlabelled and possibly contaminated data: a small
    # Gaussian VAE, briefly trained, with beta = 4. The heavier KL weight keeps the model smooth, so it does not
    # learn a cluster of outliers in its training data (benchmarks/anomaly_odds.py: ODDS ROC AUC 0.915 at
    # beta = 1, 0.941 at beta = 4, on seeds kept apart from the five it was chosen on). It misses outliers that
    # only break the features' dependencies (benchmarks/anomaly_suite.py: 0.575); VAEAnomalyDetector and
    # `vaekit detect` adapt to the table instead (vaekit/detector.py).
    "outliers": {
        "model.hidden": [64], "model.activation": "relu", "model.latent_dim": 4,
        "model.likelihood": "gaussian", "model.obs_std": 1.0, "data.val_size": 0,
        "train.epochs": 5, "train.batch_size": 64, "train.lr": 1e-3, "train.beta": 4.0,
    },
}


def preset(name: str) -> Config:
    """The named preset applied to the defaults."""
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; valid presets: {', '.join(sorted(PRESETS))}")
    return Config().override(PRESETS[name])


def load_config_file(path: str | Path) -> dict[str, Any]:
    """Read a JSON or TOML config file into a nested dictionary (not yet validated)."""
    path = Path(path)
    try:
        text = read_regular(path, JSON_LIMIT)
    except (OSError, ValueError) as e:  # ValueError: a path with a NUL byte
        raise ConfigError(f"cannot read config file {path}: {getattr(e, 'strerror', None) or e}") from e
    try:
        d = tomllib.loads(text.decode("utf-8")) if path.suffix.lower() == ".toml" else parse_json(text)
    except RecursionError:
        raise ConfigError(f"config file {path} is not valid TOML: it is nested too deeply") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise ConfigError(f"config file {path} is not valid {path.suffix.lstrip('.') or 'JSON'}: {e}") from e
    if not isinstance(d, dict):
        raise ConfigError(f"config file {path} must hold an object with model/data/train sections")
    return d


def flatten(d: dict[str, Any]) -> dict[str, Any]:
    """Nested ``{"model": {"latent_dim": 2}}`` -> dotted ``{"model.latent_dim": 2}``."""
    out: dict[str, Any] = {}
    for section, values in d.items():
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be an object, got {type(values).__name__}")
        out.update({f"{section}.{k}": v for k, v in values.items()})
    return out


def _as_list(value: Any) -> Any:
    """An override of a list key as the list flags take it: "512,512" -> [512, 512], 300 -> [300]. Files are
    read strictly (``from_dict``); this leniency is for values typed by hand."""
    if isinstance(value, str):
        return [parse_assignment(f"_={v.strip()}")[1] for v in value.split(",") if v.strip()]
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [value]
    return value


def parse_assignment(text: str) -> tuple[str, Any]:
    """``"model.hidden=[256,256]"`` -> ``("model.hidden", [256, 256])``; bare words stay strings."""
    key, sep, raw = text.partition("=")
    if not sep:
        raise ConfigError(f"override {text!r} must look like section.key=value")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key.strip(), value


def _all_keys() -> list[str]:
    sections = typing.get_type_hints(Config)
    return [f"{s}.{f.name}" for s, cls in sections.items() for f in dataclasses.fields(cls)]


def _sizes(values: Any) -> bool:
    """Whether ``values`` is a list of at most MAX_LAYERS sizes, each in 1..MAX_SIZE."""
    return len(values) <= MAX_LAYERS and all(1 <= v <= MAX_SIZE for v in values)


def _require(ok: bool, key: str, value: Any, expected: str) -> None:
    if not ok:  # reprlib: a list of thousands of values is shown by its first few
        raise ConfigError(f"{key} = {reprlib.repr(value)} is invalid: expected {expected}")


def _build(cls: type, d: Any, prefix: str) -> Any:
    if not isinstance(d, dict):
        raise ConfigError(f"config section {prefix.rstrip('.') or '<root>'} must be an object")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - names)
    if unknown:
        raise ConfigError(f"unknown config key '{prefix}{unknown[0]}'; valid keys here: {sorted(names)}")
    kwargs = {k: _coerce(hints[k], v, prefix + k) for k, v in d.items()}
    return cls(**kwargs)


def _coerce(tp: Any, value: Any, key: str) -> Any:
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        (inner,) = [a for a in args if a is not type(None)]
        return _coerce(inner, value, key)
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key} must be a list, got {value!r}")
        return tuple(_coerce(args[0], v, f"{key}[{i}]") for i, v in enumerate(value))
    if tp is float and isinstance(value, (int, float)) and not isinstance(value, bool):
        try:
            number = float(value)
        except OverflowError:  # an int beyond float range
            number = math.inf
        if not math.isfinite(number):  # NaN or infinity would only surface later, deep inside training
            raise ConfigError(f"{key} must be a finite number, got {value!r}")
        return number
    if tp is int and isinstance(value, float) and value.is_integer():
        value = int(value)
    if tp is int and isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_INT:
        raise ConfigError(f"{key} = {value:.3g} is out of range: an integer setting holds at most {MAX_INT}")
    if isinstance(value, tp) and not (tp is int and isinstance(value, bool)):
        return value
    raise ConfigError(f"{key} must be of type {tp.__name__}, got {value!r}")
