"""Evaluation reports its protocol and is deterministic."""

from __future__ import annotations

import math

import pytest
import torch

import vaekit
from vaekit.evaluation import active_units, evaluate_model, importance_sampled_nll

from conftest import digits_config, linear_gaussian_vae, split_sizes, tiny_model


def test_evaluate_model_reports_protocol_and_is_deterministic():
    model = tiny_model()
    x = (torch.rand(50, 1, 4, 4) > 0.5).float()
    a = evaluate_model(model, x, iw_samples=20, protocol={"binarization": "threshold 0.5"})
    b = evaluate_model(model, x, iw_samples=20, protocol={"binarization": "threshold 0.5"})
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    assert {"neg_elbo", "recon", "kl", "nll", "iw_samples", "n", "binarization", "active_units"} <= set(a)
    assert a["n"] == 50 and a["iw_samples"] == 20 and a["binarization"] == "threshold 0.5"
    assert a["neg_elbo"] == pytest.approx(a["recon"] + a["kl"])  # and each term against a solved model below


def test_every_number_matches_a_linear_gaussian_vae_solved_by_hand():
    """x = W z + b + noise with a deliberately wrong (diagonal Gaussian) posterior: the reconstruction term, the
    KL and log p(x) have closed forms, so each reported number is checked against its own formula; the NLL
    lands within 1.5% of the ELBO's gap of the exact -log p(x), not merely below the ELBO."""
    torch.set_default_dtype(torch.float64)
    try:
        model, marginal = linear_gaussian_vae(exact_posterior=False)
        x = marginal.sample((8000,))
        enc, dec, latent, sigma = model.encoder[0], model.decoder[0], model.latent_dim, model.config.obs_std
        mu = x @ enc.weight[:latent].T + enc.bias[:latent]  # (N, L): q(z|x) = N(mu, diag(var)), as built
        var = enc.bias[latent:].exp().expand_as(mu)
        # -E_q[log N(x; W z + b, sigma^2 I)] = D/2 log(2 pi sigma^2) + (|x - W mu - b|^2 + tr(W V W^T)) / 2 sigma^2
        resid = x - mu @ dec.weight.T - dec.bias
        recon = (x.shape[1] / 2 * math.log(2 * math.pi * sigma**2)
                 + ((resid**2).sum(1) + (var * (dec.weight**2).sum(0)).sum(1)) / (2 * sigma**2))
        kl = 0.5 * (var + mu**2 - 1 - var.log()).sum(1)  # KL(N(mu, var) || N(0, I))
        r = evaluate_model(model, x, iw_samples=0)
        assert r["kl"] == pytest.approx(kl.mean().item(), rel=1e-9)
        assert r["recon"] == pytest.approx(recon.mean().item(), abs=0.3)  # one draw per input: about 4 standard errors
        assert r["neg_elbo"] == pytest.approx((recon + kl).mean().item(), abs=0.3)
        x = x[:200]
        exact = -marginal.log_prob(x).mean().item()
        r = evaluate_model(model, x, iw_samples=800)
        gap = r["neg_elbo"] - exact
        assert gap > 3  # the posterior is far off, so the NLL has work to do
        assert abs(r["nll"] - exact) < 0.015 * gap
    finally:
        torch.set_default_dtype(torch.float32)


def test_evaluation_leaves_the_callers_random_state_alone():
    model = tiny_model()
    torch.manual_seed(5)
    expected = torch.rand(3)
    torch.manual_seed(5)
    evaluate_model(model, torch.rand(10, 1, 4, 4), iw_samples=5)
    torch.manual_seed(5)
    assert torch.equal(torch.rand(3), expected)


def test_nll_chunking_bounds_memory_but_keeps_every_example():
    model = tiny_model()
    x = torch.rand(37, 1, 4, 4)
    nll = importance_sampled_nll(model, x, k=30, batch_size=10, max_elements=100)
    assert nll.shape == (37,) and torch.isfinite(nll).all()


def test_active_units_counts_varying_posterior_means():
    model = tiny_model(latent=3)
    with torch.no_grad():
        model.encoder[-1].weight[1:3] = 0  # latent 1 and 2: mean constant in x
    x = torch.rand(200, 1, 4, 4)
    with torch.no_grad():
        model.encoder[-1].weight[0] *= 50
    assert active_units(model, x) == 1


def test_evaluate_a_checkpoint_on_its_test_split(tmp_path):
    cfg = digits_config(**{"data.binarize": "dynamic"})
    vaekit.train(cfg, tmp_path)
    sizes = split_sizes(cfg)
    r = vaekit.evaluate(tmp_path, iw_samples=10, device="cpu")
    assert r["split"] == "test" and r["n"] == sizes["test"]
    assert r["binarization"] == "fixed Bernoulli sample (seed 0)"
    r_val = vaekit.evaluate(tmp_path, split="val", iw_samples=0, device="cpu")
    assert r_val["n"] == sizes["val"] > 0 and "nll" not in r_val
