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


def _capabilities() -> dict:
    """``torch.cpu.get_capabilities()``: the CPU's name and instruction-set flags; {} where this PyTorch cannot
    say."""
    get = getattr(torch.cpu, "get_capabilities", None)
    try:
        return get() if get else {}
    except RuntimeError:
        return {}


def cpu_features() -> dict[str, bool]:
    """The CPU's instruction-set flags as PyTorch detects them; {} where this PyTorch cannot say."""
    return {k: v for k, v in _capabilities().items() if isinstance(v, bool)}


def cpu_name() -> str:
    """The CPU's model name as PyTorch reads it (e.g. 'AMD EPYC'), or the machine's architecture."""
    name = _capabilities().get("cpu_name")
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
# The same for autograd's step under bfloat16 autocast, whose casts cost more (bf16_crossover.py --autograd, the
# same machine: 0.69x at 7e4, 0.84x at 6e6, 1.06x at 2e7, 1.60x at 8e7, 1.81x at 1.1e8); twice the crossover.
AUTO_BF16_MIN_MACS_AUTOGRAD = 2**25
# The likelihoods whose models keep their test likelihood in bf16 (benchmarks/bf16_quality.py: every preset's
# family, bf16 no worse than float32 by more than a change of seed): a continuous or 8-bit likelihood reads
# outputs that bf16's 8-bit mantissa rounds by up to a grey level, and is left in float32 until measured.
AUTO_BF16_LIKELIHOODS = ("bernoulli",)


def resolve_precision(precision: str, device: torch.device, macs: int | None, likelihood: str,
                      fused_step: bool = True) -> tuple[str, str]:
    """The precision a run's step takes (``fp32`` or ``bf16``) for ``train.precision``, and why.

    ``macs``: the multiply-adds of one step's forward products (None or 0: unknown); ``fused_step``: whether the
    hand-written CPU step runs (bf16 products) or autograd's (bf16 autocast). ``auto`` is bf16 only where it was
    measured to keep the likelihood and to pay: a likelihood of ``AUTO_BF16_LIKELIHOODS``, a step large enough
    for its kind, on a CPU with native bfloat16 products.
    """
    if precision != "auto":
        return precision, f"train.precision = {precision}"
    if device.type != "cpu":
        return "fp32", f"train.precision = auto: float32 on {device.type} (bf16 on request)"
    isa = cpu_bf16_isa()
    if isa is None:
        return "fp32", "train.precision = auto: float32, as this CPU has no native bfloat16 products"
    if likelihood not in AUTO_BF16_LIKELIHOODS:
        return "fp32", (f"train.precision = auto: float32, as bfloat16 was measured to keep the likelihood of "
                        f"{', '.join(AUTO_BF16_LIKELIHOODS)} models only, not {likelihood}")
    least = AUTO_BF16_MIN_MACS if fused_step else AUTO_BF16_MIN_MACS_AUTOGRAD
    if not macs or macs < least:
        counted = f"{macs:,} multiply-adds are" if macs else "multiply-adds could not be counted and are"
        return "fp32", (f"train.precision = auto: float32, as a step's {counted} too few for bfloat16 to pay: "
                        f"it needs {least:,}")
    how = "products" if fused_step else "autocast"
    return "bf16", f"train.precision = auto: bfloat16 {how} on this CPU's {isa}"
