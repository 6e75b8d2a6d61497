"""Which device a command runs on."""

from __future__ import annotations

import platform

import torch

from vaekit.errors import VaekitError


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is an error; other names as given."""
    if isinstance(name, torch.device):
        return name
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise VaekitError(f"--device {name} was asked for, but PyTorch sees no CUDA GPU")
    try:
        return torch.device(name)
    except RuntimeError as e:
        raise VaekitError(f"unknown device {name!r}: expected auto, cpu, cuda or cuda:N") from e


def cpu_features() -> dict[str, bool]:
    """The CPU's instruction-set flags as PyTorch detects them (``torch.cpu.get_capabilities``); {} where this
    PyTorch cannot say."""
    get = getattr(torch.cpu, "get_capabilities", None)
    try:
        return {k: v for k, v in get().items() if isinstance(v, bool)} if get else {}
    except RuntimeError:
        return {}


def cpu_name() -> str:
    """The CPU's model name as PyTorch reads it (e.g. 'AMD EPYC'), or the machine's architecture."""
    get = getattr(torch.cpu, "get_capabilities", None)
    name = get().get("cpu_name") if get else None
    return str(name) if name else (platform.processor() or platform.machine())


def cpu_bf16_isa() -> str | None:
    """The instructions this CPU multiplies bfloat16 matrices with natively (AMX tiles or AVX512-BF16 dot
    products), or None: without them bfloat16 products are emulated and slower than float32."""
    features = cpu_features()
    if features.get("amx_bf16"):
        return "AMX-BF16"
    if features.get("avx512_bf16"):
        return "AVX512-BF16"
    return None


# Multiply-adds per training step (batch x weights of the products) below which bfloat16 does not pay on a CPU:
# casting weights and activations each step costs about what the faster products save near 1e7
# (benchmarks/bf16_crossover.py, 2-core AMD EPYC with AVX512-BF16: bf16 steps 0.64x as fast at 7e4 multiply-
# adds, 0.93x at 6e6, 1.21x at 2e7, 1.79x at 8e7, the seed model); auto asks for more than the crossover.
AUTO_BF16_MIN_MACS = 2**24


def resolve_precision(precision: str, device: torch.device, fused_macs: int | None) -> tuple[str, str]:
    """The precision a run's step takes (``fp32`` or ``bf16``) for ``train.precision``, and why.

    ``fused_macs``: the multiply-adds of one step's forward products when the hand-written CPU step runs, else
    None. ``auto`` is bf16 only where it was measured to keep the ELBO (benchmarks/speed.py: MNIST's test -ELBO
    after 10 epochs) and to pay: that step, large enough (``AUTO_BF16_MIN_MACS``), on a CPU with native
    bfloat16 products.
    """
    if precision != "auto":
        return precision, f"train.precision = {precision}"
    isa = cpu_bf16_isa() if device.type == "cpu" else None
    if device.type != "cpu":
        return "fp32", f"train.precision = auto: float32 on {device.type} (bf16 on request)"
    if isa is None:
        return "fp32", "train.precision = auto: float32, as this CPU has no native bfloat16 products"
    if fused_macs is None:
        return "fp32", "train.precision = auto: float32, as the step is autograd's"
    if fused_macs < AUTO_BF16_MIN_MACS:
        return "fp32", (f"train.precision = auto: float32, as a step's {fused_macs:,} multiply-adds are too few "
                        f"for bfloat16 to pay: it needs {AUTO_BF16_MIN_MACS:,}")
    return "bf16", f"train.precision = auto: bfloat16 products on this CPU's {isa}"
