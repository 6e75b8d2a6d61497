"""Evaluation reports its protocol and is deterministic."""

from __future__ import annotations

import pytest
import torch

import vaekit
from vaekit.evaluation import active_units, evaluate_model, importance_sampled_nll

from conftest import digits_config, tiny_model


def test_evaluate_model_reports_protocol_and_is_deterministic():
    model = tiny_model()
    x = (torch.rand(50, 1, 4, 4) > 0.5).float()
    a = evaluate_model(model, x, iw_samples=20, protocol={"binarization": "threshold 0.5"})
    b = evaluate_model(model, x, iw_samples=20, protocol={"binarization": "threshold 0.5"})
    a.pop("seconds"), b.pop("seconds")
    assert a == b
    assert {"neg_elbo", "recon", "kl", "nll", "iw_samples", "n", "binarization", "active_units"} <= set(a)
    assert a["n"] == 50 and a["iw_samples"] == 20 and a["binarization"] == "threshold 0.5"
    assert a["neg_elbo"] == pytest.approx(a["recon"] + a["kl"])
    assert a["nll"] < a["neg_elbo"] + 0.5  # the K-sample bound is at least as tight, up to noise


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
    vaekit.train(digits_config(**{"data.binarize": "dynamic"}), tmp_path)
    r = vaekit.evaluate(tmp_path, iw_samples=10, device="cpu")
    assert r["split"] == "test" and r["n"] == 359
    assert r["binarization"] == "fixed Bernoulli sample (seed 0)"
    r_val = vaekit.evaluate(tmp_path, split="val", iw_samples=0, device="cpu")
    assert r_val["n"] == 144 and "nll" not in r_val
