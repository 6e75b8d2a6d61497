"""One loop over the batches of a data set, for every use that scores, encodes or decodes data in pieces, and
the one conversion of stored examples to the model's inputs.

8-bit images are held as their bytes (uint8, a quarter of float32's memory) on the host and on the device, and
become float32 values byte / 255 one batch at a time (``floats``): the division float32 does, so the values are
exactly those of converting the whole set at once. Every other tensor already holds the values themselves."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import TypeVar

import torch
from torch import Tensor

from vaekit import progress

T = TypeVar("T")


def floats(x: Tensor) -> Tensor:
    """The values ``x`` stands for: uint8 bytes -> float32 byte / 255; anything else as it is."""
    return x.to(torch.float32).div_(255) if x.dtype == torch.uint8 else x


def batched(fn: Callable[[Tensor, Tensor | None], T], x: Tensor, y: Tensor | None = None, batch_size: int = 1000,
            device: torch.device | None = None, combine: Callable[[Sequence[T]], T] = torch.cat) -> T:
    """``combine`` of ``fn(x_b, y_b)`` over consecutive batches of x and its labels y (moved to ``device``).

    Each x_b reaches ``fn`` as values (``floats``: stored bytes become float32 one batch at a time). By default
    the results are concatenated along their first dimension; every example is counted once.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")

    def on(t: Tensor | None) -> Tensor | None:
        return t if t is None or device is None else t.to(device)

    parts = []
    with progress.loop(len(x)) as bar:  # reports only inside a command's progress.report block
        for s in range(0, len(x), batch_size):
            xb = floats(on(x[s : s + batch_size]))  # bytes travel to the device, values are made there
            parts.append(fn(xb, on(None if y is None else y[s : s + batch_size])))
            if bar is not None:
                bar.update(min(batch_size, len(x) - s))
    return combine(parts)


def sum_in_order(parts: Sequence[Tensor]) -> Tensor:
    """((p0 + p1) + p2) + ...: the batches' sums added in their order, so a total does not depend on a
    reduction kernel's order (``batched``'s ``combine`` for totals)."""
    return functools.reduce(torch.add, parts)
