"""Progress of long work: a bar on a terminal, a plain line every ``interval`` seconds otherwise (a log file or
a CI job gets no carriage returns and no silence).

The library is quiet by default. A command turns reporting on for a block of work with ``report(what)``;
inside it every loop of ``vaekit.batches.batched`` over a data set (scoring, encoding, importance sampling)
reports how many inputs it has done. Only the outermost loop reports, and work that ends within ``delay``
seconds shows nothing.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import TextIO

from tqdm import tqdm

INTERVAL_S = 30.0  # seconds between lines when the output is not a terminal
DELAY_S = 2.0  # work shorter than this shows no bar


class Progress:
    """Counts ``total`` units of ``what``: a tqdm bar on a terminal, else a line every ``interval`` seconds with
    the count, the elapsed time and an estimate of the time left."""

    def __init__(self, what: str, total: int, unit: str = "input", stream: TextIO | None = None,
                 interval: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.what, self.total, self.unit, self.done = what, total, unit, 0
        self.stream = stream if stream is not None else sys.stderr
        self.interval, self.clock = INTERVAL_S if interval is None else interval, clock
        self.start = self.last = clock()
        terminal = getattr(self.stream, "isatty", lambda: False)()
        self.bar = tqdm(total=total, desc=what, unit=unit, leave=False, file=self.stream,
                        delay=DELAY_S) if terminal else None

    def update(self, n: int = 1) -> None:
        self.done += n
        if self.bar is not None:
            self.bar.update(n)
            return
        now = self.clock()
        if now - self.last >= self.interval and self.done < self.total:
            self.last = now
            self.stream.write(self.line(now) + "\n")
            self.stream.flush()

    def line(self, now: float) -> str:
        """e.g. "evaluate: 3000/10000 inputs (30%), 45 s, about 105 s left"."""
        elapsed = now - self.start
        left = elapsed * (self.total - self.done) / self.done if self.done else float("nan")
        return (f"{self.what}: {self.done}/{self.total} {self.unit}s ({100 * self.done / self.total:.0f}%), "
                f"{elapsed:.0f} s, about {left:.0f} s left")

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


@dataclass
class _Reporting:
    what: str
    stream: TextIO | None
    interval: float | None
    depth: int = 0  # loops running inside the block: only the outermost reports


_active: ContextVar[_Reporting | None] = ContextVar("vaekit_progress", default=None)


@contextmanager
def report(what: str, stream: TextIO | None = None, interval: float | None = None) -> Iterator[None]:
    """Within this block, loops over data sets report their progress as ``what``."""
    token = _active.set(_Reporting(what, stream, interval))
    try:
        yield
    finally:
        _active.reset(token)


@contextmanager
def loop(total: int, unit: str = "input", what: str | None = None) -> Iterator[Progress | None]:
    """A loop over ``total`` units: its Progress inside a ``report`` block (the outermost loop only), else None.
    ``what`` names the work where the block's name would not (e.g. decoding images within ``train``)."""
    reporting = _active.get()
    if reporting is None or reporting.depth > 0:
        yield None
        return
    reporting.depth += 1
    bar = Progress(what or reporting.what, total, unit, stream=reporting.stream, interval=reporting.interval)
    try:
        yield bar
    finally:
        bar.close()
        reporting.depth -= 1
