"""Tabular data: CSV (numeric columns, header row; ``csvtable``), Parquet (with pyarrow; ``parquet``), .npy, .npz
and MATLAB .mat files, and standardization.

Every problem is reported with the file and, where there is one, the row and column: a non-numeric cell, a
missing value, NaN or infinity, an empty file, a shape that is not a table.
"""

from __future__ import annotations

import lzma
import math
import os
import struct
import tokenize
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor

from vaekit.errors import DataError

if TYPE_CHECKING:
    pass

SUFFIXES = (".csv", ".parquet", ".npy", ".npz", ".mat")
# What numpy and zipfile raise on a damaged .npy/.npz: bad headers (numpy parses them as Python literals, hence
# SyntaxError and TokenError), truncated or undecodable zip members, compression or encryption zipfile lacks.
ARRAY_ERRORS = (OSError, ValueError, EOFError, RuntimeError, NotImplementedError, SyntaxError, tokenize.TokenError,
                struct.error, zipfile.BadZipFile, zlib.error, lzma.LZMAError)


@dataclass(frozen=True)
class Table:
    """Features ``x`` (N, D) float32, optional integer labels ``y`` (N,), and the column names."""

    x: np.ndarray
    y: np.ndarray | None
    columns: tuple[str, ...]


def is_table_path(name: str) -> bool:
    """True when ``name`` names a file vaekit reads as a table."""
    return Path(name).suffix.lower() in SUFFIXES


def read(path: str | Path, label_column: str | None = None) -> Table:
    """Read a table; ``label_column`` names the CSV or Parquet column holding labels (arrays use ``y``)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"cannot read {path}: no such file")
    suffix = path.suffix.lower()
    if suffix in (".csv", ".parquet"):
        from vaekit.data import csvtable, parquet  # they build this module's Table

        table = (csvtable.read_csv if suffix == ".csv" else parquet.read_parquet)(path, label_column)
    elif suffix == ".mat":
        table = _read_mat(path)
    elif suffix in (".npy", ".npz"):
        table = _read_numpy(path)
    else:
        raise DataError(f"cannot read {path}: expected one of {', '.join(SUFFIXES)}")
    _check(table, path)
    return table


def _read_numpy(path: Path) -> Table:
    try:
        loaded = load_array_file(path)
        if isinstance(loaded, np.ndarray):
            return Table(_features(loaded, path), None, ())
        with loaded:
            if "X" not in loaded:
                raise DataError(f"{path} holds arrays {sorted(loaded.files)}; expected X (and optionally y)")
            y = _labels(loaded["y"], f"{path}, array y") if "y" in loaded else None
            return Table(_features(loaded["X"], path), y, ())
    except DataError:
        raise
    except ARRAY_ERRORS as e:
        raise DataError(f"cannot read {path}: {e}") from e


def load_array_file(path: Path) -> np.ndarray | np.lib.npyio.NpzFile:
    """``np.load`` without pickle, after checking that each header's shape fits the bytes actually stored.

    numpy allocates the whole array a header promises before reading it, so a corrupt or hostile header of
    shape (10**12,) would otherwise ask for terabytes; here it is refused from the header alone.
    """
    with path.open("rb") as f:
        magic = f.read(6)
    if magic[:4] in (b"PK\x03\x04", b"PK\x05\x06"):  # np.load's own test for an .npz archive
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                with z.open(info) as member:
                    _check_stored_size(member, info.file_size, f"{path}, array {info.filename}")
    elif magic == b"\x93NUMPY":
        with path.open("rb") as f:
            _check_stored_size(f, path.stat().st_size, str(path))
    return np.load(path, allow_pickle=False)  # a pickled object array could run code


def _check_stored_size(f, stored: int, what: str) -> None:
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    shape, _, dtype = read_header(f)
    if dtype.hasobject:
        return  # refused by np.load without reading it: pickles are never loaded
    promised, available = math.prod(shape) * dtype.itemsize, stored - f.tell()
    if promised > available:
        raise DataError(f"{what}: the header promises shape {shape} of {dtype} ({promised} bytes), but only "
                        f"{max(available, 0)} bytes follow: the file is truncated or its header is corrupt")


def _read_mat(path: Path) -> Table:
    from scipy.io import loadmat

    refused = _parse_apart(path, loadmat)
    if refused is not None:
        raise DataError(f"cannot read {path} as a MATLAB file: {refused}")
    try:
        mat = loadmat(path)
    except Exception as e:  # scipy's parser raises many kinds (IndexError, ValueError, ...) on bad bytes
        raise DataError(f"cannot read {path} as a MATLAB file: {e}") from e
    if "X" not in mat:
        raise DataError(f"{path} has no variable X; it holds {sorted(k for k in mat if not k.startswith('__'))}")
    y = _labels(mat["y"], f"{path}, variable y") if "y" in mat else None
    return Table(_features(mat["X"], path), y, ())


def _parse_apart(path: Path, loadmat: Any) -> str | None:
    """What scipy's MATLAB reader says of ``path``, parsed first in a forked child (None: it reads).

    Some damaged files (scipy 1.17: a zero-sized element) raise an error and leave the reader's memory
    corrupted, so that a later read in the same process crashes it; a file is read here only once a throwaway
    process has read it whole. Where fork does not exist, the file is read directly.
    """
    if not hasattr(os, "fork"):  # pragma: no cover - Windows
        return None
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: parse, report, and leave without running any of the parent's exit handlers
        os.close(r)
        try:
            loadmat(path)
            said = b""
        except BaseException as e:  # whatever it is, it is reported, not raised, here
            said = (str(e) or type(e).__name__).encode(errors="replace")[:2000]
        os.write(w, said)
        os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as pipe:
        said = pipe.read()
    status = os.waitpid(pid, 0)[1]
    if status != 0:
        return f"the MATLAB reader crashed on it (wait status {status})"
    return said.decode(errors="replace") or None


def _features(a: np.ndarray, path: Path) -> np.ndarray:
    if not isinstance(a, np.ndarray):  # e.g. a sparse matrix from a .mat file
        raise DataError(f"{path}: features are a {type(a).__name__}; expected a dense numeric array")
    if a.ndim != 2:
        raise DataError(f"{path}: features have shape {a.shape}; expected a 2-d table (examples, features)")
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating):
        raise DataError(f"{path}: features have dtype {a.dtype}; expected real numbers")
    with np.errstate(over="ignore"):  # values beyond float32 become inf, which _check reports by position
        return a.astype(np.float32)


def _labels(a: np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(a).ravel()
    if not np.issubdtype(a.dtype, np.number) or np.issubdtype(a.dtype, np.complexfloating) \
            or not np.all(np.isfinite(a)) or np.any(a != np.round(a)):
        raise DataError(f"{what}: labels must be integers")
    with np.errstate(invalid="ignore", over="ignore"):
        ints = a.astype(np.int64)
    if not np.array_equal(ints, a):  # beyond the int64 range, a cast would wrap around silently
        raise DataError(f"{what}: labels must be integers within the 64-bit range")
    return ints


def _check(t: Table, path: Path) -> None:
    if t.x.shape[0] < 2 or t.x.shape[1] < 1:
        raise DataError(f"{path}: {t.x.shape[0]} examples of {t.x.shape[1]} features; need at least 2 x 1")
    bad = ~np.isfinite(t.x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise DataError(f"{path}: example {row}, feature {col} is {t.x[row, col]}; values must be finite "
                        "(and within float32 range)")
    if t.y is not None and len(t.y) != len(t.x):
        raise DataError(f"{path}: {len(t.x)} examples but {len(t.y)} labels")


@dataclass(frozen=True)
class Standardizer:
    """x -> (x - mean) / std per feature, fitted on training data; constant features keep std 1."""

    mean: Tensor  # (D,)
    std: Tensor  # (D,)

    @classmethod
    def fit(cls, x: Tensor) -> Standardizer:
        std = x.std(dim=0, unbiased=False)
        return cls(x.mean(dim=0), torch.where(std > 1e-8, std, torch.ones_like(std)))

    def __call__(self, x: Tensor) -> Tensor:
        if x.shape[1:] != self.mean.shape:
            raise DataError(f"input has {tuple(x.shape[1:])} features per example; the model was trained on "
                            f"{tuple(self.mean.shape)}")
        return (x - self.mean) / self.std

    def inverse(self, x: Tensor) -> Tensor:
        """Standardized values back in data units, x * std + mean; x is (N, D) or (N, *shape) with D values each."""
        n = math.prod(x.shape[1:])
        if n != self.mean.numel():
            raise DataError(f"cannot undo the standardization of {self.mean.numel()} features on {n} values per "
                            f"example (shape {tuple(x.shape[1:])})")
        return (x.flatten(1) * self.std + self.mean).reshape(x.shape)

    def tensors(self) -> dict[str, Tensor]:
        return {"mean": self.mean.contiguous(), "std": self.std.contiguous()}
