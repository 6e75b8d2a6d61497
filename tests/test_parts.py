"""A new prior and a new posterior family, defined and registered here and nowhere else, work through every
public use: training, evaluation (ELBO, IWAE, importance-sampled NLL), sampling, reconstruction, embedding and
anomaly scores. That is the promise of the model's seams: adding a part touches one module and the config."""

from __future__ import annotations

import logging

import pytest
import torch
from torch import Tensor
from torch.distributions import Distribution, Independent, Laplace, StudentT

import vaekit
from vaekit import anomaly, embedding, generate, objectives
from vaekit.model import NotAvailable, posteriors, priors

from conftest import digits_config


class StudentTPrior(priors.Prior):
    """p(z) = prod_j t_5(z_j): heavier tails than N(0, I); torch.distributions has no closed-form KL for it."""

    def forward(self) -> Distribution:
        zero = self.zeros()
        return Independent(StudentT(5.0, zero, torch.ones_like(zero)), 1)


class LaplacePosterior(posteriors.Posterior):
    """q(z|x) = prod_j Laplace(loc_j, b_j), (loc, log b) the two halves of the encoder's output."""

    @property
    def n_inputs(self) -> int:
        return 2 * self.latent_dim

    def forward(self, h: Tensor) -> Distribution:
        loc, log_b = h.chunk(2, dim=-1)
        return Independent(Laplace(loc, log_b.clamp(-10, 5).exp()), 1)

    def from_noise(self, qz_x: Distribution, eps: Tensor) -> Tensor:
        u = torch.special.ndtr(eps) - 0.5  # uniform on (-1/2, 1/2), then the Laplace quantile function
        return qz_x.base_dist.loc - qz_x.base_dist.scale * u.sign() * torch.log1p(-2 * u.abs())


@pytest.fixture
def parts(monkeypatch):
    monkeypatch.setitem(priors.PRIORS, "student-t", StudentTPrior)
    monkeypatch.setitem(posteriors.POSTERIORS, "laplace", LaplacePosterior)


@pytest.mark.parametrize("prior", ["student-t", "standard-normal"])  # a Monte-Carlo KL, and an analytic one
def test_a_new_prior_and_posterior_work_through_every_use(parts, tmp_path, caplog, prior):
    cfg = digits_config(**{"model.prior": prior, "model.posterior": "laplace", "train.epochs": 3})
    with caplog.at_level(logging.INFO, logger="vaekit"):
        result = vaekit.train(cfg, tmp_path)
    assert "not the fused CPU step" in caplog.text and "laplace" in caplog.text  # autograd, and why
    hist = result.history
    assert hist[-1]["val_neg_elbo"] < hist[0]["val_neg_elbo"]
    assert len(hist[-1]["kl_per_dim"]) == 4 and sum(hist[-1]["kl_per_dim"]) > 0

    model = vaekit.load(tmp_path)
    assert isinstance(model.prior, priors.PRIORS[prior]) and isinstance(model.layers[0].posterior, LaplacePosterior)
    metrics = vaekit.evaluate(tmp_path, iw_samples=50, device="cpu")
    assert metrics["nll"] <= metrics["neg_elbo"] + 0.5  # L_50 is a tighter bound than the ELBO
    x = torch.rand(5, 1, 8, 8)
    assert torch.isfinite(objectives.iwae_bound(model, x, k=8)).all()
    assert model.sample(6, generator=torch.Generator().manual_seed(0)).shape == (6, 1, 8, 8)
    assert model.reconstruct(x).shape == x.shape
    z = embedding.posterior_means(model, x)
    torch.testing.assert_close(z, model.encode(x).base_dist.loc.detach())  # a Laplace's mean is its location
    for method in ("elbo", "nll", "recon"):  # llr needs a hierarchy (tests/test_hierarchy.py)
        a, b = anomaly.score(model, x, method, 8), anomaly.score(model, x.flip(0), method, 8).flip(0)
        torch.testing.assert_close(a, b)  # common random numbers through the new family's from_noise
    assert generate.kl_per_dimension(model, x).shape == (4,)
    assert generate.traverse(model, x, n_dims=2, steps=3)[0].shape == (6, 1, 8, 8)


def test_the_new_parts_also_train_on_the_iwae_bound_and_with_free_bits(parts):
    iw = vaekit.train(digits_config(**{"model.prior": "student-t", "model.posterior": "laplace",
                                        "train.objective": "iwae", "train.iw_k": 4}))
    assert iw.history[-1]["train_loss"] < iw.history[0]["train_loss"]
    fb = vaekit.train(digits_config(**{"model.prior": "student-t", "model.posterior": "laplace",
                                        "train.free_bits": 0.5}))
    assert fb.history[-1]["train_loss"] >= fb.history[-1]["train_neg_elbo"] - 1e-4  # free bits only add


def test_monte_carlo_kl_where_torch_has_no_closed_form(parts):
    model = vaekit.VAE(digits_config(**{"model.prior": "student-t", "model.posterior": "laplace",
                                        "model.data_shape": [1, 8, 8]}).model)
    x = torch.rand(3, 1, 8, 8)
    latent = model.infer(x, k=20000)[0]
    assert latent.analytic_kl is None
    mc = latent.kl  # the average over the 20000 draws of log q - log p
    one = model.infer(x)[0].kl  # a one-sample estimate: same expectation
    assert mc.shape == one.shape == (3,)
    torch.testing.assert_close(latent.kl_per_dimension().sum(-1), mc, rtol=1e-4, atol=1e-4)
    assert (mc > 0).all()


def test_closed_form_kl_matches_monte_carlo(parts):
    model = vaekit.VAE(digits_config(**{"model.posterior": "laplace", "model.data_shape": [1, 8, 8]}).model)
    x = torch.rand(3, 1, 8, 8)
    latent = model.infer(x, k=200000)[0]
    assert latent.analytic_kl is not None  # Laplace || Normal is registered in torch
    mc = (latent.log_q - latent.log_p).mean(0)
    torch.testing.assert_close(latent.kl, mc, rtol=0.02, atol=0.02)


def test_a_posterior_that_does_not_factorise_reports_no_per_dimension_kl():
    from torch.distributions import MultivariateNormal

    class FullCovariance(posteriors.Posterior):
        n_inputs = property(lambda self: 2 * self.latent_dim)

        def forward(self, h: Tensor) -> Distribution:
            loc, log_d = h.chunk(2, dim=-1)
            return MultivariateNormal(loc, scale_tril=torch.diag_embed(log_d.clamp(-5, 5).exp()))

    layer = vaekit.model.LatentLayer(FullCovariance(3))
    pz = priors.StandardNormal(3)()
    latent = layer.infer(torch.randn(4, 6), pz, None, None)
    with pytest.raises(NotAvailable, match="factorise"):
        latent.kl_per_dimension()
    assert latent.kl.shape == (4,)  # the KL itself is still there


def test_free_bits_on_parts_without_a_per_dimension_kl_are_refused_before_training(monkeypatch):
    from torch.distributions import MultivariateNormal

    class FullCovariance(posteriors.DiagonalGaussian):
        def forward(self, h: Tensor) -> Distribution:
            q = super().forward(h)
            return MultivariateNormal(q.mean, scale_tril=torch.diag_embed(q.stddev))

    monkeypatch.setitem(posteriors.POSTERIORS, "full", FullCovariance)
    cfg = digits_config(**{"model.posterior": "full", "train.epochs": 1})
    assert vaekit.train(cfg).history[0]["kl_per_dim"] is None  # reported as not available, with why
    with pytest.raises(vaekit.TrainingError, match=r"free_bits = 0\.5 needs a KL per latent dimension.*factorise"):
        vaekit.train(cfg.override({"train.free_bits": 0.5}))


def test_an_unknown_part_is_refused_before_any_data_is_read(monkeypatch):
    from vaekit import data

    monkeypatch.setattr(data, "load", lambda cfg: pytest.fail("data was loaded"))
    for key, name in (("model.prior", "priors"), ("model.posterior", "posteriors")):
        with pytest.raises(vaekit.ConfigError, match=f"unknown {name[:-1]} 'nope'; valid {name}: "):
            vaekit.train(digits_config(**{key: "nope"}))
