"""Image arrays larger than memory: rows of an .npy file read on demand from a memory map.

A split of such an array is a ``MappedRows``: the file's rows it holds (sorted), read in any order with
``take`` (the rows are read in file order, then put in the order asked for) or in batches through slicing, as
``batches.batched`` does. Pages read are released after every read (``madvise(MADV_DONTNEED)``), so the
process's resident memory stays the size of what was asked for, not of the file; the kernel's page cache
still keeps the file when there is room.
"""

from __future__ import annotations

import mmap
import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from vaekit.errors import DataError

RELEASE = getattr(mmap, "MADV_DONTNEED", None)  # where the system has it (not on Windows)


def available_memory() -> int:
    """Bytes of memory available for new data now (Linux's MemAvailable: free memory and reclaimable caches),
    else the physical memory."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 2**34  # 16 GB: a guess where the system does not say


def budget(max_memory_gb: float) -> int:
    """The bytes a data set may take in memory: ``max_memory_gb`` when set (> 0), else half of what is
    available now (the model, the optimizer and the batches need the rest)."""
    return int(max_memory_gb * 2**30) if max_memory_gb > 0 else available_memory() // 2


class MappedRows:
    """The rows ``rows`` (sorted file row numbers) of the image array in an .npy file, as (C, H, W) examples;
    a channel-last file (N, H, W, C) is transposed as rows are read."""

    def __init__(self, array: np.ndarray, rows: np.ndarray, channels_last: bool, source: Path,
                 mapping: mmap.mmap) -> None:
        self._array, self.rows, self.channels_last, self.source, self._map = array, rows, channels_last, source, mapping
        example = array.shape[1:]
        self.example_shape = (example[2], example[0], example[1]) if channels_last else tuple(example)

    @classmethod
    def open(cls, path: str | Path) -> MappedRows:
        """All rows of the .npy array in ``path``, mapped; a DataError when the file is not a plain,
        complete .npy array of uint8 or float32 images."""
        path = Path(path)
        try:
            with path.open("rb") as f:
                version = np.lib.format.read_magic(f)
                read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                    np.lib.format.read_array_header_2_0
                shape, fortran, dtype = read_header(f)
                offset = f.tell()
                mapping = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, SyntaxError) as e:
            raise DataError(f"cannot map {path}: {e}") from e
        need = offset + int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if fortran or dtype not in (np.uint8, np.float32) or len(shape) not in (3, 4) or len(mapping) < need:
            mapping.close()
            raise DataError(f"{path} cannot be read in pieces: it must be a complete C-order .npy array of uint8 "
                            f"or float32 images; it holds {dtype}{' (Fortran order)' if fortran else ''} of shape "
                            f"{shape}, {os.path.getsize(path)} bytes of the {need} that shape needs")
        array = np.ndarray(shape, dtype, buffer=mapping, offset=offset)
        if array.ndim == 3:  # (N, H, W) grey
            array = array[:, :, :, None]
            return cls(array, np.arange(len(array)), True, path, mapping)
        channels_last = shape[3] in (1, 3, 4)  # as images.read decides: channel-last wins a tie
        return cls(array, np.arange(len(array)), channels_last, path, mapping)

    def __len__(self) -> int:
        return len(self.rows)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.rows), *self.example_shape)

    @property
    def dtype(self) -> torch.dtype:
        return torch.uint8 if self._array.dtype == np.uint8 else torch.float32

    @property
    def example_nbytes(self) -> int:
        """Bytes of one example as stored."""
        return int(np.prod(self.example_shape)) * self._array.dtype.itemsize

    @property
    def nbytes(self) -> int:
        return len(self.rows) * self.example_nbytes

    device = torch.device("cpu")

    def subset(self, positions: np.ndarray) -> MappedRows:
        """The examples at ``positions`` (of this split, in that order) as a split of their own."""
        return MappedRows(self._array, self.rows[positions], self.channels_last, self.source, self._map)

    def take(self, positions: np.ndarray | Tensor) -> Tensor:
        """The examples at ``positions`` of this split, in that order, as a (k, C, H, W) tensor."""
        rows, where = self.read_forwards(positions)
        return rows[torch.from_numpy(where)]

    def read_forwards(self, positions: np.ndarray | Tensor) -> tuple[Tensor, np.ndarray]:
        """The examples at ``positions`` in file order, read forwards through the file in one copy, and where
        each asked-for position is among them: ``rows[where[i]]`` is example ``positions[i]``."""
        positions = np.asarray(positions.cpu() if isinstance(positions, Tensor) else positions, np.int64)
        file_rows = self.rows[positions]
        order = np.argsort(file_rows, kind="stable")
        out = np.empty((len(positions), *self._array.shape[1:]), self._array.dtype)
        np.take(self._array, file_rows[order], axis=0, out=out, mode="clip")  # "raise" would copy out again
        if RELEASE is not None:
            self._map.madvise(RELEASE)  # the pages read are not kept in this process's memory
        if self.channels_last:
            out = np.ascontiguousarray(out.transpose(0, 3, 1, 2))
        where = np.empty_like(order)
        where[order] = np.arange(len(order))
        return torch.from_numpy(out), where

    def __getitem__(self, key: slice | int | np.ndarray | Tensor) -> Tensor:
        if isinstance(key, slice):
            return self.take(np.arange(len(self))[key])
        if isinstance(key, int):
            return self.take(np.array([key]))[0]
        return self.take(key)
