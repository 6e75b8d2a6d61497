"""The matrix-product floor of a training step: its matrix products and convolutions alone, timed at its shapes.

``capture(fn)`` runs ``fn`` once (e.g. one training step) and records every matrix product and convolution that
reaches PyTorch's kernels (forward and backward: mm, addmm, bmm, baddbmm, convolution and its backward) with
its operands' shapes, strides and dtypes. ``floor_seconds(products, dtype)`` replays them on fresh random
operands of that dtype (float32, or bfloat16 where the CPU multiplies it natively), once with the captured
memory layouts and once with contiguous operands (a transposed operand can be faster or slower), and returns
the best time of one pass over all of them: no step can be faster than its products, so a step's time over
its floor says how much of it is not the math.

    python benchmarks/floor.py --preset seed
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

aten = torch.ops.aten
PRODUCTS = {aten.mm, aten.addmm, aten.bmm, aten.baddbmm, aten.convolution, aten.convolution_backward}  # any overload


@dataclass(frozen=True)
class Operand:
    """A tensor argument as captured: enough to make another like it."""

    shape: tuple[int, ...]
    stride: tuple[int, ...]
    dtype: torch.dtype

    def make(self, dtype: torch.dtype | None, contiguous: bool = False) -> torch.Tensor:
        """A random tensor of this shape and stride (or contiguous), in ``dtype`` if it is a floating tensor and
        dtype is set."""
        dt = dtype if dtype is not None and self.dtype.is_floating_point else self.dtype
        stride = torch.empty(self.shape, device="meta").stride() if contiguous else self.stride
        t = torch.empty_strided(self.shape, stride, dtype=dt)
        return t.normal_() if dt.is_floating_point else t.zero_()


@dataclass(frozen=True)
class Product:
    """One captured call: the op and its arguments, tensors replaced by ``Operand``."""

    op: Any
    args: tuple[Any, ...]
    kwargs: tuple[tuple[str, Any], ...] = ()

    def flops(self) -> int:
        """Multiply-adds times two of an mm/addmm/bmm/baddbmm call; 0 for the others (convolutions)."""
        t = [a for a in self.args if isinstance(a, Operand)]
        if self.op in (aten.mm.default, aten.addmm.default):
            (m, k), n = t[-2].shape, t[-1].shape[1]
            return 2 * m * k * n
        if self.op in (aten.bmm.default, aten.baddbmm.default):
            (b, m, k), n = t[-2].shape, t[-1].shape[2]
            return 2 * b * m * k * n
        return 0


def _describe(a: Any) -> Any:
    if isinstance(a, torch.Tensor):
        return Operand(tuple(a.shape), tuple(a.stride()), a.dtype)
    if isinstance(a, (list, tuple)):
        return type(a)(_describe(x) for x in a)
    return a


class _Recorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.products: list[Product] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in PRODUCTS:  # an out= variant is timed as the plain op: the same product
            kept = tuple((k, _describe(v)) for k, v in (kwargs or {}).items() if k != "out")
            self.products.append(Product(func.overloadpacket.default, tuple(_describe(a) for a in args), kept))
        return func(*args, **(kwargs or {}))


def capture(fn: Callable[[], Any]) -> list[Product]:
    """The matrix products and convolutions ``fn()`` computes, in order."""
    with _Recorder() as recorder:
        fn()
    return recorder.products


def _materialize(a: Any, dtype: torch.dtype | None, contiguous: bool) -> Any:
    if isinstance(a, Operand):
        return a.make(dtype, contiguous)
    if isinstance(a, (list, tuple)):
        return type(a)(_materialize(x, dtype, contiguous) for x in a)
    return a


def floor_seconds(products: list[Product], dtype: torch.dtype | None = None, repeats: int = 7,
                  passes: int = 20) -> float:
    """Best time of one pass over ``products``, each on fresh operands (all floating ones in ``dtype``, or as
    captured when None) in the captured layouts or all contiguous, whichever is faster, as the minimum over
    ``repeats`` timings of ``passes`` passes each."""
    return min(_pass_seconds(products, dtype, contiguous, repeats, passes) for contiguous in (False, True))


def _pass_seconds(products: list[Product], dtype: torch.dtype | None, contiguous: bool, repeats: int,
                  passes: int) -> float:
    calls = [(p.op, _materialize(p.args, dtype, contiguous), dict(p.kwargs)) for p in products]
    best = float("inf")
    with torch.no_grad():
        for repeat in range(repeats + 1):  # the first warms the kernels and caches up
            start = time.perf_counter()
            for _ in range(passes):
                for op, args, kwargs in calls:
                    op(*args, **kwargs)
            if repeat:
                best = min(best, (time.perf_counter() - start) / passes)
    return best


def training_step(preset: str = "seed", batch_size: int = 128, precision: str = "fp32") -> Callable[[], Any]:
    """One training step of ``preset`` on an MNIST-shaped random batch, on the path a CPU run would take."""
    import vaekit
    from vaekit.training import fused, steps

    config = vaekit.preset(preset).override({"model.data_shape": [1, 28, 28], "train.precision": precision})
    model = vaekit.VAE(config.model)
    opt = steps.make_optimizer(model, config.train.lr)
    bf16 = precision == "bf16"
    by_hand = None if fused.blocker(model, config.train, torch.device("cpu"), 1) else fused.FusedELBO(model, bf16=bf16)
    options = steps.StepOptions(bf16=bf16 and by_hand is None, fused=by_hand)
    x = torch.rand(batch_size, 1, 28, 28)
    return lambda: steps.train_step(model, opt, x, 1.0, options=options)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="seed")
    p.add_argument("--batch-size", type=int, default=128)
    p.add_argument("--precision", default="fp32", choices=["fp32", "bf16"], help="the step captured")
    args = p.parse_args()
    products = capture(training_step(args.preset, args.batch_size, args.precision))
    print(f"{args.preset}: {len(products)} products and convolutions per step, "
          f"{sum(p.flops() for p in products) / 1e9:.3f} GFLOP in the matrix products")
    for dtype in (torch.float32, torch.bfloat16):
        print(f"floor in {dtype}: {floor_seconds(products, dtype) * 1e3:.3f} ms per step")


if __name__ == "__main__":
    main()
