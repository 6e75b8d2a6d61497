"""The objective against oracles: closed-form KL, Monte Carlo, and an exactly solvable linear-Gaussian VAE."""

from __future__ import annotations

import math

import pytest
import torch
from torch.distributions import Normal, kl_divergence

from vaekit.objectives import Objective, elbo, elbo_per_example, iwae, iwae_bound, kl_weight, log_weights

from conftest import linear_gaussian_vae, tiny_model


def closed_form_kl(mu, logvar):
    """KL(N(mu, diag exp(logvar)) || N(0, I)), Kingma & Welling 2014, appendix B."""
    return -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=-1)


def test_kl_matches_closed_form_and_monte_carlo():
    model = tiny_model()
    x = torch.rand(5, 1, 4, 4)
    qz_x = model.encode(x)
    kl = kl_divergence(qz_x, model.prior())
    mu, std = qz_x.base_dist.loc, qz_x.base_dist.scale
    torch.testing.assert_close(kl, closed_form_kl(mu, 2 * std.log()), rtol=1e-5, atol=1e-5)
    z = qz_x.sample((200_000,))
    mc = (qz_x.log_prob(z) - model.prior().log_prob(z)).mean(0)
    torch.testing.assert_close(mc, kl, rtol=0.02, atol=0.02)


def test_bernoulli_recon_is_stable_bce_with_logits():
    tiny_model()
    x = (torch.rand(4, 1, 4, 4) > 0.5).float()
    logits = torch.full((4, 1, 1, 4, 4), 100.0)
    from vaekit.model.likelihoods import px_z

    nll = -px_z("bernoulli", logits, event_ndim=3).log_prob(x)
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        logits[:, 0], x, reduction="none").sum((1, 2, 3))
    assert torch.isfinite(nll).all()
    torch.testing.assert_close(nll, expected)
    assert float(nll.max()) == pytest.approx(100.0 * float((x == 0).sum((1, 2, 3)).max()), rel=1e-4)


def test_reparameterised_samples_carry_gradients():
    model = tiny_model()
    x = torch.rand(3, 1, 4, 4)
    qz_x = model.encode(x)
    mu, std = qz_x.base_dist.loc, qz_x.base_dist.scale
    mu.retain_grad()
    std.retain_grad()
    qz_x.rsample().sum().backward()
    assert mu.grad is not None and torch.all(mu.grad == 1)
    assert std.grad is not None and torch.all(std.grad != 0)


def test_beta_weights_only_the_kl():
    model = tiny_model()
    x = torch.rand(8, 1, 4, 4)
    torch.manual_seed(3)
    t1 = elbo(model, x, beta=1.0)
    torch.manual_seed(3)
    t4 = elbo(model, x, beta=4.0)
    torch.testing.assert_close(t4.recon, t1.recon)
    torch.testing.assert_close(t4.loss, t1.recon + 4 * t1.kl)


def test_iwae_with_one_sample_is_the_elbo_estimate():
    model = tiny_model()
    x = torch.rand(6, 1, 4, 4)
    torch.manual_seed(7)
    l1 = iwae_bound(model, x, k=1)
    torch.manual_seed(7)
    out = model(x)
    qz_x, z = out.latents[0].qz_x, out.z
    single_sample_elbo = out.px_z.log_prob(x) + model.prior().log_prob(z) - qz_x.log_prob(z)
    torch.testing.assert_close(l1, single_sample_elbo)
    # and its mean over many draws is the analytic-KL ELBO
    reps = x.repeat(4000, 1, 1, 1)  # (4000*6, ...): many independent draws in one batch
    draws = iwae_bound(model, reps, k=1).view(4000, 6).mean(0)
    recon, kl = elbo_per_example(model, reps)
    analytic = -(recon.view(4000, 6).mean(0) + kl[:6])
    torch.testing.assert_close(draws, analytic, rtol=0, atol=0.1)


def test_iwae_bound_grows_with_k_on_average():
    model = tiny_model()
    x = torch.rand(16, 1, 4, 4)
    means = {k: torch.stack([iwae_bound(model, x, k) for _ in range(50)]).mean().item() for k in (1, 10, 100)}
    assert means[1] < means[10] < means[100]


def test_importance_sampler_is_exact_with_the_true_posterior():
    torch.set_default_dtype(torch.float64)
    try:
        model, marginal = linear_gaussian_vae(exact_posterior=True)
        x = marginal.sample((10,))
        exact = marginal.log_prob(x)
        for k, chunk in ((1, None), (64, None), (64, 5)):
            torch.testing.assert_close(iwae_bound(model, x, k, chunk), exact, rtol=0, atol=1e-8)
        torch.testing.assert_close(log_weights(model, x, 4), exact.expand(4, -1), rtol=0, atol=1e-8)
    finally:
        torch.set_default_dtype(torch.float32)


def test_importance_sampler_converges_to_log_likelihood():
    torch.set_default_dtype(torch.float64)
    try:
        model, marginal = linear_gaussian_vae(exact_posterior=False)
        x = marginal.sample((20,))
        exact = marginal.log_prob(x)
        gap = {k: (exact - iwae_bound(model, x, k, chunk=500)).mean().item() for k in (1, 5000)}
        assert gap[1] > 0.2  # the ELBO is a loose bound with this posterior
        assert -0.02 < gap[5000] < 0.1 * gap[1]
    finally:
        torch.set_default_dtype(torch.float32)


def test_elbo_is_in_nats_per_example():
    model = tiny_model(shape=(1, 4, 4))
    x = torch.rand(10, 1, 4, 4)
    torch.manual_seed(0)
    terms = elbo(model, x)
    torch.manual_seed(0)
    recon, _kl = elbo_per_example(model, x)
    torch.testing.assert_close(terms.recon, recon.mean())
    # 16 pixels, Bernoulli: near initialisation each costs about log 2 nats
    assert 16 * math.log(2) * 0.5 < terms.recon.item() < 16 * math.log(2) * 2


def test_gaussian_likelihoods_match_normal_log_prob():
    model = tiny_model(likelihood="gaussian-learned")
    x = torch.randn(4, 1, 4, 4)
    z = torch.randn(4, 3)
    px_z = model.decode(z)
    params = model.decoder(z).view(4, 2, 1, 4, 4)
    std = params[:, 1].clamp(-7, 2).exp()
    expected = Normal(params[:, 0], std).log_prob(x).sum((1, 2, 3))
    torch.testing.assert_close(px_z.log_prob(x), expected)


def test_free_bits_floor_each_dimensions_kl_in_the_loss_only():
    model = tiny_model(latent=3)
    x = torch.rand(6, 1, 4, 4)
    torch.manual_seed(1)
    plain = elbo(model, x)
    torch.manual_seed(1)
    floored = elbo(model, x, free_bits=5.0)  # far above any dimension's KL at initialisation
    assert floored.kl == plain.kl and floored.recon == plain.recon  # reported terms stay the true ones
    torch.testing.assert_close(floored.loss, plain.recon + 3 * 5.0)
    floored.loss.backward()  # below the floor, the KL sends no gradient: only the reconstruction does
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    torch.manual_seed(1)
    elbo(model, x).recon.backward()
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad)


def test_kl_warmup_is_linear_then_flat():
    assert [kl_weight(2.0, s, 4) for s in (1, 2, 4, 5, 100)] == [0.5, 1.0, 2.0, 2.0, 2.0]
    assert kl_weight(0.7, 1, 0) == 0.7


def test_iwae_objective_with_k_samples_is_minus_the_bound():
    model = tiny_model()
    x = torch.bernoulli(torch.rand(8, 1, 4, 4))
    torch.manual_seed(3)
    terms = iwae(model, x, k=5)
    torch.manual_seed(3)
    qz_x = model.encode(x)
    z = qz_x.rsample((5,))
    log_w = model.decode(z).log_prob(x) + model.prior().log_prob(z) - qz_x.log_prob(z)
    torch.testing.assert_close(terms.loss, -(torch.logsumexp(log_w, 0) - math.log(5)).mean())
    assert Objective("iwae", k=5)(model, x).loss.requires_grad


def test_iwae_objective_with_beta_one_and_k_one_is_unbiased_for_the_elbo():
    model = tiny_model()
    x = torch.bernoulli(torch.rand(4, 1, 4, 4))
    with torch.no_grad():
        single = torch.stack([iwae(model, x, k=1).loss for _ in range(4000)]).mean()
        analytic = torch.stack([elbo(model, x).loss for _ in range(4000)]).mean()
    torch.testing.assert_close(single, analytic, rtol=0.01, atol=0.05)
