"""The hand-differentiated CPU step gives autograd's loss and gradients, and trains the same weights."""

from __future__ import annotations

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import vaekit
from vaekit import devices, objectives
from vaekit.config import Config
from vaekit.model import VAE, nets, size
from vaekit.training import fused

from conftest import digits_config

CPU = torch.device("cpu")


def model_for(**overrides) -> VAE:
    base = {"model.data_shape": [1, 5, 6], "model.latent_dim": 3, "model.hidden": [16, 12]}
    return VAE(Config().override({**base, **overrides}).model).double()  # float64: rounding stays out of it


def both(model: VAE, x: torch.Tensor, beta: float, y=None, free_bits: float = 0.0):
    """(terms, grads) from autograd and from the fused step, on the same posterior noise."""
    torch.manual_seed(3)
    terms = objectives.elbo(model, x, beta, y=y, free_bits=free_bits)
    model.zero_grad()
    terms.loss.backward()
    auto = ([float(t.detach()) for t in terms], {n: p.grad.clone() for n, p in model.named_parameters()})
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    terms = fused.FusedELBO(model, free_bits)(x, beta, y)
    return auto, ([float(t) for t in terms], {n: p.grad for n, p in model.named_parameters()})


def assert_same(auto, by_hand) -> None:
    assert by_hand[0] == pytest.approx(auto[0], rel=1e-10, abs=1e-10)
    assert auto[1].keys() == by_hand[1].keys()
    for name, g in auto[1].items():
        torch.testing.assert_close(by_hand[1][name], g, rtol=1e-9, atol=1e-11, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("activation", sorted(n for n, cls in nets.ACTIVATIONS.items() if cls in fused.ACTIVATIONS))
@pytest.mark.parametrize("likelihood", fused.LIKELIHOODS)
def test_gradients_match_autograd(activation, likelihood):
    model = model_for(**{"model.activation": activation, "model.likelihood": likelihood, "model.obs_std": 0.3})
    x = torch.rand(7, 1, 5, 6, dtype=torch.float64)
    auto, by_hand = both(model, x, beta=0.7)
    assert any(g.abs().sum() > 0 for g in auto[1].values())
    assert_same(auto, by_hand)


def test_conditional_model_and_free_bits():
    model = model_for(**{"model.conditional": True, "model.labels": ["a", "b", "c"]})
    x, y = torch.rand(9, 1, 5, 6, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2])
    assert_same(*both(model, x, beta=1.0, y=y))
    # free bits between the dimensions' KLs: some are clamped (no KL gradient), some are not
    torch.manual_seed(3)
    with torch.no_grad():
        kl_j = model.infer(x, y)[0].kl_per_dimension().mean(0)
    lam = float(kl_j.sort().values[:2].mean())  # between two dimensions' KLs, so rounding cannot flip one
    assert (kl_j < lam).any() and (kl_j >= lam).any()
    assert_same(*both(model, x, beta=1.0, y=y, free_bits=lam))


def test_clamped_log_variance_passes_no_gradient():
    model = model_for()
    last = model.encoder[-1]
    with torch.no_grad():
        last.bias[3:] = torch.tensor([-40.0, 0.0, 25.0])  # log sigma^2 below, inside and above the clamp
        last.weight[3:] *= 1e-3
    auto, by_hand = both(model, torch.rand(4, 1, 5, 6, dtype=torch.float64), beta=1.0)
    assert_same(auto, by_hand)
    g = by_hand[1]["encoder.4.bias"]
    assert g[3] == 0 and g[5] == 0 and g[4] != 0


def test_clamped_learned_log_std_passes_no_gradient():
    """gaussian-learned's decoder gives means then log standard deviations (30 each here): a log-sd outside the
    likelihood's bounds is clamped, and its output gets no gradient, as under autograd."""
    model = model_for(**{"model.likelihood": "gaussian-learned"})
    last = model.decoder[-1]
    with torch.no_grad():
        last.bias[30:33] = torch.tensor([-40.0, 0.0, 25.0])  # below, inside and above the bounds
        last.weight[30:33] *= 1e-3
    auto, by_hand = both(model, torch.rand(4, 1, 5, 6, dtype=torch.float64), beta=1.0)
    assert_same(auto, by_hand)
    g = by_hand[1][f"decoder.{len(model.decoder) - 1}.bias"]
    assert g[30] == 0 and g[32] == 0 and g[31] != 0


def blocker(config: Config, device: torch.device, world_size: int) -> str | None:
    model = VAE(config.override({"model.data_shape": [1, 8, 8]}).model)
    return fused.blocker(model, config.train, device, world_size)


def test_blocker_names_the_reason():
    cpu = torch.device("cpu")
    base = digits_config()
    assert blocker(base, cpu, 1) is None and blocker(base.override({"train.precision": "bf16"}), cpu, 1) is None
    cases = {
        "train.fused_step": (False, "train.fused_step"), "model.arch": ("conv", "conv"),
        "model.likelihood": ("logistic", "logistic"), "model.activation": ("gelu", "GELU"),
        "train.objective": ("iwae", "iwae"),
    }
    for key, (value, named) in cases.items():
        assert named in blocker(base.override({key: value}), cpu, 1)
    assert "DistributedDataParallel" in blocker(base, cpu, 2)
    assert "cuda" in blocker(base, torch.device("cuda"), 1)


@pytest.mark.parametrize("overrides", [{}, {"data.binarize": "dynamic", "train.nonfinite": "skip",
                                            "train.kl_warmup_epochs": 1.0}, {"model.likelihood": "gaussian-learned"}])
def test_training_runs_agree(overrides):
    """A few epochs on digits: the fused and the autograd step end at the same weights and losses."""
    runs = [vaekit.train(digits_config(**{**overrides, "train.fused_step": on})) for on in (True, False)]
    for (k, a), b in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5, msg=k)
    for a, b in zip(runs[0].history, runs[1].history, strict=True):
        assert a["train_neg_elbo"] == pytest.approx(b["train_neg_elbo"], rel=1e-5)


class ProductDtypes(TorchDispatchMode):
    """The operand dtypes of every matrix product computed under it."""

    def __init__(self) -> None:
        super().__init__()
        self.dtypes: set[torch.dtype] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm.default):
            self.dtypes.update(a.dtype for a in args if isinstance(a, torch.Tensor))
        return func(*args, **(kwargs or {}))


def gradients(model: VAE, step, x: torch.Tensor) -> tuple[list[float], dict[str, torch.Tensor]]:
    """The terms and gradients of one ``step(x)`` on the posterior noise of seed 3."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(3)
    terms = step(x)
    return [float(t.detach()) for t in terms], {n: p.grad.clone() for n, p in model.named_parameters()}


def autocast_elbo(model: VAE, x: torch.Tensor) -> objectives.ELBOTerms:
    with torch.autocast("cpu", torch.bfloat16):
        terms = objectives.elbo(model, x, 1.0)
    terms.loss.backward()
    return terms


@pytest.mark.parametrize("likelihood", fused.LIKELIHOODS)
def test_bf16_step_multiplies_in_bfloat16_and_rounds_as_autocast_does(likelihood):
    """Every product of the bf16 step takes bfloat16 operands, while the loss and every gradient stay float32
    and as close to the float32 step's as autograd's under bfloat16 autocast are (a few % on this small model,
    where the terms' gradients cancel; a wrong term would be off by ~100%)."""
    model = model_for(**{"model.likelihood": likelihood, "model.hidden": [64, 48], "model.latent_dim": 8}).float()
    x = torch.rand(32, 1, 5, 6)
    with ProductDtypes() as seen:
        terms, bf16 = gradients(model, lambda x: fused.FusedELBO(model, bf16=True)(x, 1.0), x)
    assert seen.dtypes == {torch.bfloat16}
    fp32 = gradients(model, lambda x: fused.FusedELBO(model)(x, 1.0), x)
    autocast = gradients(model, lambda x: autocast_elbo(model, x), x)
    assert terms == pytest.approx(fp32[0], rel=1e-3, abs=1e-3)
    assert all(g.dtype == torch.float32 for g in bf16.values())

    def error(grads: dict[str, torch.Tensor]) -> float:
        return max(float((g - fp32[1][n]).norm() / fp32[1][n].norm()) for n, g in grads.items())

    # Laplace's gradient is sign(m - x): a rounding that moves m across x flips a term, so both bf16 paths land
    # anywhere in 2-7% of the fp32 gradient (seeds 0-3), whichever is closer by luck
    slack = 0.1 if likelihood == "laplace" else 0.01
    assert error(bf16) <= 2 * error(autocast[1]) + slack and error(bf16) < 0.25


def test_bf16_training_stays_within_rounding_of_fp32():
    """A few epochs on digits through the bf16 fused step: the recorded path says so, the weights stay float32,
    and every epoch's validation -ELBO is within 1% of the fp32 run's (rounding, not another model)."""
    runs = {p: vaekit.train(digits_config(**{"train.epochs": 3, "train.precision": p})) for p in ("fp32", "bf16")}
    assert "fused CPU step" in runs["bf16"].step_path and "; bf16 (train.precision = bf16)" in runs["bf16"].step_path
    assert all(p.dtype == torch.float32 for p in runs["bf16"].model.parameters())
    for a, b in zip(runs["fp32"].history, runs["bf16"].history, strict=True):
        assert b["val_neg_elbo"] == pytest.approx(a["val_neg_elbo"], rel=1e-2)
    weights = [r.model.state_dict()["decoder.0.weight"] for r in runs.values()]
    assert weights[0].ne(weights[1]).any()


@pytest.mark.parametrize(("isa", "fused_step", "hidden", "likelihood", "expected"), [
    ("AVX512-BF16", True, 1024, "bernoulli", "bf16"), ("AMX-BF16", True, 1024, "bernoulli", "bf16"),
    (None, True, 1024, "bernoulli", "fp32"), ("AVX512-BF16", False, 2048, "bernoulli", "bf16"),
    ("AVX512-BF16", True, 32, "bernoulli", "fp32"), ("AVX512-BF16", False, 1024, "bernoulli", "fp32"),
    ("AVX512-BF16", True, 1024, "gaussian", "fp32"), ("AVX512-BF16", False, 1024, "continuous-bernoulli", "fp32")])
def test_auto_precision_takes_bf16_only_for_a_large_enough_bernoulli_model_on_a_cpu_with_native_bf16(
        monkeypatch, isa, fused_step, hidden, likelihood, expected):
    monkeypatch.setattr(devices, "cpu_bf16_isa", lambda: isa)
    config = digits_config(**{"train.epochs": 1, "train.precision": "auto", "train.fused_step": fused_step,
                              "model.hidden": [hidden], "train.batch_size": 128, "model.likelihood": likelihood})
    result = vaekit.train(config)
    macs = (fused.multiply_adds if fused_step else lambda m, b: size.forward_multiply_adds(m.config, b))(
        result.model, 128)
    why = devices.resolve_precision("auto", CPU, macs, likelihood, fused_step)[1]
    assert result.step_path.endswith(f"; {expected} ({why})")
    assert result.step_path.startswith("step: the fused CPU step" if fused_step else "step: autograd")
    assert result.precision == expected
    assert macs == fused.multiply_adds(result.model, 128)  # a fully connected model: the same count either way
    least = devices.AUTO_BF16_MIN_MACS if fused_step else devices.AUTO_BF16_MIN_MACS_AUTOGRAD
    assert (expected == "bf16") == bool(isa and likelihood == "bernoulli" and macs >= least)
    if expected == "bf16":
        assert isa in why and ("products" if fused_step else "autocast") in why
    elif isa and likelihood != "bernoulli":
        assert f"not {likelihood}" in why
    elif isa:
        assert f"{macs:,} multiply-adds are too few" in why


def test_an_explicit_precision_stands_and_auto_is_fp32_off_the_cpu():
    big = 10 * devices.AUTO_BF16_MIN_MACS
    assert devices.resolve_precision("auto", torch.device("cuda"), big, "bernoulli")[0] == "fp32"
    assert devices.resolve_precision("fp32", CPU, big, "bernoulli")[0] == "fp32"
    assert devices.resolve_precision("bf16", CPU, None, "gaussian")[0] == "bf16"
    assert fused.multiply_adds(model_for(), 10) == 10 * (30 * 16 + 16 * 12 + 12 * 6 + 3 * 12 + 12 * 16 + 16 * 30)


def test_cpu_bf16_isa_reads_torchs_cpu_features(monkeypatch):
    for features, isa in [({"amx_bf16": True, "avx512_bf16": True}, "AMX-BF16"), ({"avx512_bf16": True}, "AVX512-BF16"),
                          ({"avx2": True}, None), ({}, None)]:
        monkeypatch.setattr(devices, "cpu_features", lambda f=features: f)
        assert devices.cpu_bf16_isa() == isa
    monkeypatch.undo()
    assert isinstance(devices.cpu_features(), dict) and isinstance(devices.cpu_name(), str)
