"""Training batches read from disk in pieces, for data larger than the memory budget.

An epoch's permutation (drawn as for data in memory, from the same generator) is cut into chunks of whole
batches of about CHUNK_BYTES; each chunk's examples are read from the memory-mapped file in one pass (in file
order, then put in the permutation's order), and the next chunk is read by a background thread while this one
trains. Each batch is the same examples in the same order as from memory, so the weights are the same too.
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
            chunk_bytes: int = CHUNK_BYTES) -> Iterator[Tensor]:
    """The stored examples of each batch of ``bounds`` in the order of ``perm``, on ``device``, one after
    the other; the chunk after the current one is read meanwhile."""
    order = perm.cpu().numpy()
    per_example = max(1, source.nbytes // max(1, len(source)))
    spans = chunk_spans(bounds, max(1, chunk_bytes // per_example))

    def read(span: tuple[int, int]) -> Tensor:
        rows = source.take(order[bounds[span[0]][0] : bounds[span[1] - 1][1]])
        return rows.pin_memory() if device.type == "cuda" else rows  # pinned: the copy to the GPU overlaps

    with concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="vaekit-read") as pool:
        pending = pool.submit(read, spans[0])
        for i, span in enumerate(spans):
            chunk = pending.result()
            if i + 1 < len(spans):
                pending = pool.submit(read, spans[i + 1])
            chunk = chunk.to(device, non_blocking=True)
            base = bounds[span[0]][0]
            for begin, end in bounds[span[0] : span[1]]:
                yield chunk[begin - base : end - base]


def in_memory(x: Tensor, perm: Tensor, bounds: list[tuple[int, int]]) -> Iterator[Tensor]:
    """The same for data held on the device: each batch gathered from it."""
    for begin, end in bounds:
        yield x.index_select(0, perm[begin:end])  # faster than x[idx] on CPU


def describe(source: MappedRows, batch_size: int, chunk_bytes: int = CHUNK_BYTES) -> str:
    per_example = max(1, source.nbytes // max(1, len(source)))
    rows = max(batch_size, chunk_bytes // per_example)
    return f"chunks of about {rows} examples ({rows * per_example / 2**20:.0f} MB, {np.ceil(rows / batch_size):.0f} " \
           "batches)"
