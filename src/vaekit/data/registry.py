"""Dataset registry, train/validation/test splits and binarization.

Every split is one tensor (N, *shape): 8-bit images as their bytes (uint8), everything else float32. Training
moves it to the device once and slices batches from it, so no per-sample Python runs while training; a batch
of bytes becomes values (``batches.floats``) on the device.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaekit.batches import floats
from vaekit.config import DataConfig
from vaekit.data import images, mnist, tabular
from vaekit.data.mapped import MappedRows, budget
from vaekit.errors import DataError

log = logging.getLogger(__name__)

RawSplits = tuple[np.ndarray, np.ndarray | None, np.ndarray, np.ndarray | None]


@dataclass(frozen=True)
class Split:
    """One split: examples ``stored`` (N, *shape) and optional integer labels ``y`` (N,).

    ``stored`` holds 8-bit images as bytes (uint8: value = byte / 255) and other data as float32 values; ``x``
    gives the values as float32, made anew on each use (a caller that needs them often keeps them).
    """

    stored: Tensor | MappedRows  # MappedRows: an array too large for memory, read in pieces from disk
    y: Tensor | None
    name: str
    binarization: str  # how x was binarized, e.g. "none" or "static (seed 0)"

    def __len__(self) -> int:
        return len(self.stored)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self.stored.shape[1:])

    @property
    def x(self) -> Tensor:
        """The examples' values, float32 (N, *shape)."""
        if isinstance(self.stored, MappedRows):
            raise DataError(f"the {self.name} split of {self.stored.source} ({self.stored.nbytes / 2**30:.1f} GB) is "
                            "read from disk in pieces, as it exceeds the memory budget (data.max_memory_gb), and this "
                            "use needs all of it at once")
        return floats(self.stored)


@dataclass(frozen=True)
class Splits:
    train: Split
    val: Split | None
    test: Split
    preprocess: tabular.Standardizer | None = None  # applied to every split; saved with the model
    classes: tuple[str, ...] | None = None  # names of the labels 0..C-1 that ``y`` holds, when known


def _idx(source: mnist.IdxSource, cfg: DataConfig) -> RawSplits:
    """MNIST-style IDX data as (N, 1, 28, 28) bytes: grey levels byte / 255 in [0, 1]."""
    x_train, y_train = mnist.load_split("train", cfg.data_dir, cfg.download, source)
    x_test, y_test = mnist.load_split("test", cfg.data_dir, cfg.download, source)
    return x_train[:, None], y_train, x_test[:, None], y_test


def _mnist(cfg: DataConfig) -> RawSplits:
    return _idx(mnist.MNIST, cfg)


def _fashion_mnist(cfg: DataConfig) -> RawSplits:
    return _idx(mnist.FASHION_MNIST, cfg)


def _digits(cfg: DataConfig) -> RawSplits:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: no network

    d = load_digits()
    x = (d.images[:, None] / 16.0).astype(np.float32)  # grey levels 0..16 -> [0, 1]
    # A fixed test split (always seed 0) so test numbers stay comparable across runs.
    perm = np.random.default_rng(0).permutation(len(x))
    n_test = len(x) // 5
    test, train = perm[:n_test], perm[n_test:]
    return x[train], d.target[train], x[test], d.target[test]


DATASETS: dict[str, Callable[[DataConfig], RawSplits]] = {
    "mnist": _mnist,
    "fashion-mnist": _fashion_mnist,
    "digits": _digits,
}
DIGITS = tuple(str(d) for d in range(10))
# Xiao, Rasul & Vollgraf 2017, labels 0..9.
FASHION = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
CLASSES: dict[str, tuple[str, ...]] = {
    "mnist": DIGITS,  # y holds the digit itself
    "fashion-mnist": FASHION,
    "digits": DIGITS,
}


def _test_split(n: int, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train, test) indices for data that comes without a test set: tables and the user's images.

    A permutation seeded by ``data.split_seed``; its first ``data.test_size`` examples (a fraction, rounded, at
    least one; or a count) are the test set, the rest train. Both index lists come back sorted.
    """
    if n < 2:
        raise DataError(f"{cfg.dataset} holds {n} example(s); need at least 2, one to train on and one to test")
    n_test = max(1, round(cfg.test_size * n)) if cfg.test_size < 1 else int(cfg.test_size)
    if n_test >= n:
        raise DataError(f"data.test_size = {cfg.test_size:g} leaves no training data out of the {n} examples of "
                        f"{cfg.dataset}")
    perm = np.random.default_rng(cfg.split_seed).permutation(n)
    return np.sort(perm[n_test:]), np.sort(perm[:n_test])


def _images(cfg: DataConfig) -> tuple[RawSplits, tuple[str, ...] | None]:
    """A folder or array of images: a seeded test split or a separate test set, and no standardization
    (pixels are in [0, 1]). An .npy array larger than the memory budget stays on disk (``MappedRows``)."""
    if (mapped := _mapped(cfg.dataset, cfg)) is not None:
        t = _mapped(cfg.test_dataset, cfg) if cfg.test_dataset is not None else None
        if cfg.test_dataset is not None and t is None:
            t = images.read(cfg.test_dataset, mapped.example_shape[1:], mapped.example_shape[0], cfg.strict).x
        if isinstance(t, MappedRows) and t.example_shape != mapped.example_shape:
            raise DataError(f"the test array {cfg.test_dataset} holds {t.example_shape} images, the training array "
                            f"{cfg.dataset} {mapped.example_shape}: both are read as stored, so they must match")
        if t is not None:
            return (mapped, None, t, None), None
        train, test = _test_split(len(mapped), cfg)
        return (mapped.subset(train), None, mapped.subset(test), None), None
    s = images.read(cfg.dataset, cfg.image_size, cfg.channels, cfg.strict)
    if cfg.test_dataset is not None:  # the test images are made the training images' size and channels
        t = images.read(cfg.test_dataset, s.x.shape[2:], s.x.shape[1], cfg.strict)
        _same_classes(s.classes, t.classes, cfg)
        return (s.x, s.y, t.x, t.y), s.classes
    train, test = _test_split(len(s.x), cfg)
    y_train, y_test = (None, None) if s.y is None else (s.y[train], s.y[test])
    return (s.x[train], y_train, s.x[test], y_test), s.classes


def _mapped(path: str, cfg: DataConfig) -> MappedRows | None:
    """The .npy image array at ``path`` mapped from disk when it exceeds the memory budget, else None (it is
    read into memory). A mapped array is read as it is stored: no resizing or change of channels."""
    if not path.lower().endswith(".npy"):
        return None
    limit = budget(cfg.max_memory_gb)
    try:
        size = Path(path).stat().st_size
    except OSError:
        return None  # the reader says what is wrong with it
    if size <= limit:
        return None
    rows = MappedRows.open(path)
    c, h, w = rows.example_shape
    if (cfg.image_size is not None and tuple(cfg.image_size) != (h, w)) or cfg.channels not in (None, c):
        raise DataError(f"{path} ({size / 2**30:.1f} GB) exceeds the memory budget of {limit / 2**30:.1f} GB, so it "
                        f"is read from disk as stored, at {h}x{w} with {c} channels: resize it beforehand, or drop "
                        "data.image_size and data.channels")
    log.info("%s (%.1f GB) exceeds the memory budget of %.1f GB (%s): it stays on disk and is read in pieces",
             path, size / 2**30, limit / 2**30, "data.max_memory_gb" if cfg.max_memory_gb else "half the free memory")
    return rows


def _same_classes(train: tuple[str, ...] | None, test: tuple[str, ...] | None, cfg: DataConfig) -> None:
    if train != test:
        raise DataError(f"the test set {cfg.test_dataset} has classes {list(test or [])} but the training set "
                        f"{cfg.dataset} has {list(train or [])}: they must name the same classes")


def _table(cfg: DataConfig) -> tuple[RawSplits, tabular.Standardizer | None]:
    """A table: a seeded test split or a separate test table, standardized with the training part's
    statistics."""
    t = tabular.read(cfg.dataset, cfg.label_column)
    if cfg.test_dataset is not None:
        u = tabular.read(cfg.test_dataset, cfg.label_column)
        if u.x.shape[1] != t.x.shape[1] or (u.y is None) != (t.y is None):
            raise DataError(f"the test table {cfg.test_dataset} has {u.x.shape[1]} features"
                            f"{' and labels' if u.y is not None else ''}, the training table {cfg.dataset} "
                            f"{t.x.shape[1]}{' and labels' if t.y is not None else ''}: they must match")
        x_train, y_train, x_test, y_test = t.x, t.y, u.x, u.y
    else:
        train, test = _test_split(len(t.x), cfg)
        x_train, x_test = t.x[train], t.x[test]
        y_train, y_test = (None, None) if t.y is None else (t.y[train], t.y[test])
    if not cfg.standardize:
        return (x_train, y_train, x_test, y_test), None
    std = tabular.Standardizer.fit(torch.from_numpy(x_train))
    x_train, x_test = (std(torch.from_numpy(x)).numpy() for x in (x_train, x_test))
    return (x_train, y_train, x_test, y_test), std


MAX_NUMBERED_CLASSES = 100_000  # labels beyond this are identifiers, not classes to condition on


def numbered_classes(*ys: np.ndarray | None) -> tuple[str, ...] | None:
    """Names for labels that come without any (an array's y, a table's label column): the values 0..C-1 as
    text. None without labels, or when some label is negative or too large to be a class index."""
    present = [y for y in ys if y is not None and len(y)]
    if not present:
        return None
    lo, hi = min(int(y.min()) for y in present), max(int(y.max()) for y in present)
    return tuple(str(i) for i in range(hi + 1)) if lo >= 0 and hi < MAX_NUMBERED_CLASSES else None


def load(cfg: DataConfig) -> Splits:
    """Load ``cfg.dataset``, carve the validation split and binarize.

    ``cfg.dataset`` is a registered name, a folder or .npy/.npz array of images, or a table file. A registered
    name wins over a folder of the same name: write ``./mnist`` for the folder.
    """
    preprocess, classes = None, CLASSES.get(cfg.dataset)
    if cfg.dataset in DATASETS and cfg.test_dataset is not None:
        raise DataError(f"data.test_dataset is for tables and image folders or arrays; {cfg.dataset} comes with "
                        "its own test set")
    if cfg.dataset in DATASETS:
        x_train, y_train, x_test, y_test = DATASETS[cfg.dataset](cfg)
    elif images.is_image_path(cfg.dataset):  # before tables: .npy/.npz arrays of 3+ axes are images
        (x_train, y_train, x_test, y_test), classes = _images(cfg)
    elif tabular.is_table_path(cfg.dataset):
        (x_train, y_train, x_test, y_test), preprocess = _table(cfg)
    else:
        raise DataError(f"unknown dataset {cfg.dataset!r}; valid datasets: {', '.join(sorted(DATASETS))}, "
                        f"a folder of {'/'.join(images.SUFFIXES)} images, or a path to a "
                        f"{'/'.join(tabular.SUFFIXES)} file")
    if classes is None:
        classes = numbered_classes(y_train, y_test)
    if cfg.train_classes is not None:
        x_train, y_train = _only_classes(x_train, y_train, cfg)
    train_idx, val_idx = _validation_split(len(x_train), cfg.val_size, cfg.split_seed)

    def split(x: np.ndarray | MappedRows, y: np.ndarray | None, idx: np.ndarray | None, name: str, role: str) -> Split:
        y = None if y is None else torch.as_tensor((y if idx is None else y[idx]).astype(np.int64))
        if isinstance(x, MappedRows):
            return _mapped_split(x if idx is None else x.subset(idx), y, name, role, cfg)
        x = x if idx is None else x[idx]
        x = np.ascontiguousarray(x, dtype=np.uint8 if x.dtype == np.uint8 else np.float32)  # bytes stay bytes
        if not x.flags.writeable:  # a read-only buffer (e.g. a whole IDX file): the split gets its own memory
            x = x.copy()
        xt, how = binarize_split(torch.from_numpy(x), cfg.binarize, role, cfg.eval_seed)
        return Split(xt, y, name, how)

    train = split(x_train, y_train, train_idx, "train", "train")
    val = split(x_train, y_train, val_idx, "val", "eval") if len(val_idx) else None
    return Splits(train, val, split(x_test, y_test, None, "test", "eval"), preprocess, classes)


def _mapped_split(x: MappedRows, y: Tensor | None, name: str, role: str, cfg: DataConfig) -> Split:
    """A split read from disk in pieces; one that needs a fixed binarization is read and binarized once."""
    if cfg.binarize == "none" or (cfg.binarize == "dynamic" and role == "train"):
        return Split(x, y, name, "none" if cfg.binarize == "none" else "dynamic")
    log.info("binarizing the %s split (%d examples, %.1f GB) in memory", name, len(x), x.nbytes / 2**30)
    stored, how = binarize_split(x[:], cfg.binarize, role, cfg.eval_seed)
    return Split(stored, y, name, how)


def _only_classes(x: np.ndarray, y: np.ndarray | None, cfg: DataConfig) -> tuple[np.ndarray, np.ndarray]:
    """The training examples whose label is in ``cfg.train_classes`` (e.g. one digit for one-class tasks)."""
    if y is None:
        raise DataError(f"data.train_classes needs labels, and {cfg.dataset} has none")
    keep = np.isin(y, cfg.train_classes)
    if not keep.any():
        raise DataError(f"no training example of {cfg.dataset} has a label in {list(cfg.train_classes)}; "
                        f"its labels are {sorted(np.unique(y).tolist())}")
    return x[keep], y[keep]


def _validation_split(n: int, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    n_val = round(val_size * n) if val_size < 1 else int(val_size)
    if n_val >= n:
        raise DataError(f"data.val_size = {val_size} leaves no training data out of {n} examples")
    if n_val == 0:
        return np.arange(n), np.arange(0)
    perm = np.random.default_rng(seed).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def binarize_split(x: Tensor, mode: str, role: str, seed: int) -> tuple[Tensor, str]:
    """Binarize a whole split once; returns the data (stored as ``x`` is: bytes 0/255 for bytes) and a
    description of what was done.

    ``dynamic`` leaves training data grey (it is resampled every epoch by the training loop) and gives
    evaluation data one fixed, seeded Bernoulli sample, as does ``static`` for every split.
    """
    if mode == "none" or (mode == "dynamic" and role == "train"):
        return x, "none" if mode == "none" else "dynamic"
    if mode == "threshold":
        return _like(floats(x) > 0.5, x), "threshold 0.5"
    if mode in ("static", "dynamic"):
        seed = seed + (1 if role == "train" else 0)  # a training sample independent of the test sample
        g = torch.Generator().manual_seed(seed)
        return _like(torch.bernoulli(floats(x), generator=g), x), f"fixed Bernoulli sample (seed {seed})"
    raise DataError(f"unknown binarization {mode!r}")


def _like(binary: Tensor, stored: Tensor) -> Tensor:
    """0/1 values stored as ``stored`` is: bytes 0/255 (exactly 0 and 1 again as values), else float32."""
    return binary.to(torch.uint8).mul_(255) if stored.dtype == torch.uint8 else binary.float()


def evaluation_split(splits: Splits, name: str, cfg: DataConfig) -> Split:
    """The split ``train``, ``val`` or ``test`` as evaluation sees it: binarized once, with a fixed seed."""
    if name not in ("train", "val", "test"):
        raise DataError(f"unknown split {name!r}; valid splits: train, val, test")
    split = getattr(splits, name)
    if split is None:
        raise DataError(f"this run has no validation split (data.val_size = {cfg.val_size})")
    if name == "train" and cfg.binarize == "dynamic":
        stored = split.stored
        if isinstance(stored, MappedRows):
            if stored.nbytes > budget(cfg.max_memory_gb):
                raise DataError(f"the training split of {stored.source} is read from disk in pieces, and a fixed "
                                f"binarization of it needs all {stored.nbytes / 2**30:.1f} GB in memory, over the "
                                "memory budget (data.max_memory_gb): use the val or test split")
            stored = stored[:]
        x, how = binarize_split(stored, "dynamic", "eval", cfg.eval_seed)
        return Split(x, split.y, name, how)
    return split
