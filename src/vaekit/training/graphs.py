"""The training step on static buffers, captured as one CUDA graph on the GPU.

A VAE of the seed tutorials' size is bound by kernel launches and Python, not arithmetic, on a GPU. Here the
whole step (batch gather, dynamic binarization, forward, backward, fused capturable Adam, recording of the
step's loss terms) reads and writes fixed buffers, so it can be captured once and replayed with a single
launch per step. Each step the host only copies the batch's indices into the index buffer; nothing is read
back until the epoch ends.

Off the GPU (and for tests) the same step runs eagerly on the same buffers.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import torch
from torch import Tensor

from vaekit.batches import floats

log = logging.getLogger(__name__)

WARMUP_STEPS = 3  # eager steps on a side stream before capture, as CUDA graph capture requires


class StaticStep:
    """Runs ``step_fn(x[idx], y[idx], beta) -> terms (3,)`` on fixed buffers, as a CUDA graph when ``capture``.

    ``step_terms`` (n_steps, 3) receives each step's terms at the row given by a device-side step counter,
    which ``start_epoch`` resets. ``y`` are optional labels; ``beta`` is a device scalar the caller may
    refill between steps (a KL warm-up) without recapturing.
    """

    def __init__(self, x: Tensor, batch_size: int, n_steps: int,
                 step_fn: Callable[[Tensor, Tensor | None, Tensor], Tensor], dynamic: bool, capture: bool,
                 y: Tensor | None = None) -> None:
        self.x, self.y, self.step_fn, self.dynamic = x, y, step_fn, dynamic
        self.beta = torch.ones((), device=x.device)
        self.idx = torch.zeros(batch_size, dtype=torch.long, device=x.device)
        self.step_terms = torch.zeros(n_steps, 3, device=x.device)
        self.step_no = torch.zeros(1, dtype=torch.long, device=x.device)
        self.capture = capture and x.device.type == "cuda"
        self.graph: torch.cuda.CUDAGraph | None = None
        self.warmup_left = WARMUP_STEPS if self.capture else 0

    def start_epoch(self) -> None:
        self.step_no.zero_()
        self.step_terms.zero_()

    def __call__(self, idx: Tensor) -> None:
        """One training step on the examples ``idx`` (a device tensor of the fixed batch size)."""
        self.idx.copy_(idx)
        if self.graph is not None:
            self.graph.replay()
        elif self.warmup_left > 0:
            self._warmup_step()
        elif self.capture:
            self._capture()
        else:
            self._body()

    def _body(self) -> None:
        xb = floats(self.x.index_select(0, self.idx))  # (B, *shape): bytes become values inside the graph too
        yb = None if self.y is None else self.y.index_select(0, self.idx)  # (B,)
        if self.dynamic:  # the default generator: its state advances inside a graph, a custom one's would not
            xb = torch.bernoulli(xb)
        terms = self.step_fn(xb, yb, self.beta)  # (3,)
        self.step_terms.index_copy_(0, self.step_no, terms.unsqueeze(0))
        self.step_no += 1

    def _warmup_step(self) -> None:
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            self._body()
        torch.cuda.current_stream().wait_stream(side)
        self.warmup_left -= 1

    def _capture(self) -> None:
        graph = torch.cuda.CUDAGraph()
        try:
            with torch.cuda.graph(graph):
                self._body()
        except RuntimeError as e:
            log.warning("CUDA graph capture failed (%s); this run goes on with the eager step", e)
            self.capture = False
            self._body()
            return
        self.graph = graph
        log.info("captured the training step as a CUDA graph")
        graph.replay()  # capture records the step without running it


def fast_path_blocker(device: torch.device, world_size: int, enabled: bool) -> str | None:
    """Why the CUDA-graph step cannot be used here, or None when it can."""
    if not enabled:
        return "disabled by train.cuda_graph = false"
    if device.type != "cuda":
        return f"device is {device.type}, not cuda"
    if world_size > 1:
        return "DistributedDataParallel training steps are not captured"
    return None
