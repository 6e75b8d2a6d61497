"""Training batches read from disk in pieces, for data larger than the memory budget.

An epoch's permutation (drawn as for data in memory, from the same generator) is cut into chunks of whole
batches of about CHUNK_BYTES; each chunk's examples are read from the memory-mapped file in one pass, in file
order, and each batch gathers its rows from the chunk (as from data in memory); the next chunk is read by a
background thread while this one trains. Each batch is the same examples in the same order as from memory, so
the weights are the same too. In data-parallel training each process reads only its own part of every global
batch.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Iterator

import numpy as np
import torch
from torch import Tensor

from vaekit.data.mapped import MappedRows

CHUNK_BYTES = 256 * 2**20  # two chunks (one training, one being read) bound the memory streaming takes


def chunk_spans(bounds: list[tuple[int, int]], rows: int) -> list[tuple[int, int]]:
    """Consecutive runs of steps [first, last) whose batches hold at most ``rows`` examples together (at least
    one step each)."""
    spans, first = [], 0
    for step in range(1, len(bounds) + 1):
        if step == len(bounds) or bounds[step][1] - bounds[first][0] > rows:
            spans.append((first, step))
            first = step
    return spans


def batches(source: MappedRows, perm: Tensor, bounds: list[tuple[int, int]], device: torch.device,
            parts: list[tuple[int, int]] | None = None, chunk_bytes: int | None = None) -> Iterator[Tensor]:
    """The stored examples of each batch of ``bounds`` in the order of ``perm``, on ``device``, one after
    the other; only rows [a, b) of each batch where ``parts`` gives them (a process's part of a global batch).
    The chunk after the current one is read meanwhile."""
    order, chunk_bytes = perm.cpu().numpy(), chunk_bytes or CHUNK_BYTES
    parts = parts if parts is not None else [(0, end - begin) for begin, end in bounds]
    mine = [(begin + a, begin + b) for (begin, _), (a, b) in zip(bounds, parts, strict=True)]
    spans = chunk_spans(bounds, max(1, chunk_bytes // source.example_nbytes))

    def read(span: tuple[int, int]) -> tuple[Tensor, Tensor]:
        # in file order, in one copy; each batch then gathers its rows from the chunk, as from memory
        rows, where = source.read_forwards(np.concatenate([order[lo:hi] for lo, hi in mine[span[0] : span[1]]]))
        return (rows.pin_memory() if device.type == "cuda" else rows), torch.from_numpy(where)

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vaekit-read") as pool:
        pending = pool.submit(read, spans[0])
        for i, span in enumerate(spans):
            chunk, where = pending.result()
            if i + 1 < len(spans):
                pending = pool.submit(read, spans[i + 1])
            chunk, where, at = chunk.to(device, non_blocking=True), where.to(device), 0
            for lo, hi in mine[span[0] : span[1]]:
                yield chunk.index_select(0, where[at : at + hi - lo])
                at += hi - lo


def in_memory(x: Tensor, perm: Tensor, bounds: list[tuple[int, int]],
              parts: list[tuple[int, int]]) -> Iterator[Tensor]:
    """The same for data held on the device: each batch's part gathered from it."""
    for (begin, _), (a, b) in zip(bounds, parts, strict=True):
        yield x.index_select(0, perm[begin + a : begin + b])  # faster than x[idx] on CPU


def describe(source: MappedRows, batch_size: int) -> str:
    rows = max(batch_size, CHUNK_BYTES // source.example_nbytes)
    megabytes = rows * source.example_nbytes / 2**20
    return f"chunks of about {rows} examples ({megabytes:.0f} MB, {np.ceil(rows / batch_size):.0f} batches)"
