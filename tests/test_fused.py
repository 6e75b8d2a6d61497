"""The hand-differentiated CPU step gives autograd's loss and gradients, and trains the same weights."""

from __future__ import annotations

import pytest
import torch

import vaekit
from vaekit import objectives
from vaekit.config import Config
from vaekit.model import VAE, nets
from vaekit.training import fused

from conftest import digits_config


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


def blocker(config: Config, device: torch.device, world_size: int) -> str | None:
    model = VAE(config.override({"model.data_shape": [1, 8, 8]}).model)
    return fused.blocker(model, config.train, device, world_size)


def test_blocker_names_the_reason():
    cpu = torch.device("cpu")
    base = digits_config()
    assert blocker(base, cpu, 1) is None
    cases = {
        "train.fused_step": (False, "train.fused_step"), "model.arch": ("conv", "conv"),
        "model.likelihood": ("logistic", "logistic"), "model.activation": ("gelu", "GELU"),
        "train.objective": ("iwae", "iwae"), "train.precision": ("bf16", "bf16"),
    }
    for key, (value, named) in cases.items():
        assert named in blocker(base.override({key: value}), cpu, 1)
    assert "DistributedDataParallel" in blocker(base, cpu, 2)
    assert "cuda" in blocker(base, torch.device("cuda"), 1)


@pytest.mark.parametrize("overrides", [{}, {"data.binarize": "dynamic", "train.nonfinite": "skip",
                                            "train.kl_warmup_epochs": 1.0}])
def test_training_runs_agree(overrides):
    """A few epochs on digits: the fused and the autograd step end at the same weights and losses."""
    runs = [vaekit.train(digits_config(**{**overrides, "train.fused_step": on})) for on in (True, False)]
    for (k, a), b in zip(runs[0].model.state_dict().items(), runs[1].model.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b, rtol=2e-4, atol=2e-5, msg=k)
    for a, b in zip(runs[0].history, runs[1].history, strict=True):
        assert a["train_neg_elbo"] == pytest.approx(b["train_neg_elbo"], rel=1e-5)
