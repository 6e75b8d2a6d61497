"""The continuous Bernoulli and the discretized logistic: normalised, stable, broadcastable, trainable."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch.distributions import ContinuousBernoulli

import vaekit
from vaekit import objectives
from vaekit.cli import main
from vaekit.config import ModelConfig
from vaekit.evaluation import evaluate_model
from vaekit.model import VAE, likelihoods
from vaekit.model.likelihoods import DiscretizedLogistic, StableContinuousBernoulli

from conftest import digits_config

GRID = torch.arange(256, dtype=torch.float64) / 255  # the 8-bit values k/255
HALF = 0.5 / 255


def logistic(loc, log_scale, dtype=torch.float64) -> DiscretizedLogistic:
    return DiscretizedLogistic(torch.as_tensor(loc, dtype=dtype), torch.as_tensor(log_scale, dtype=dtype))


def direct_log_prob(loc: torch.Tensor, log_scale: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """log(CDF(x + 1/510) - CDF(x - 1/510)) in float64, edge bins open, differencing on the small side."""
    s = log_scale.clamp(likelihoods.LOG_SCALE_MIN, likelihoods.LOG_SCALE_MAX).exp()
    a = torch.where(x < HALF, -math.inf, (x - HALF - loc) / s)
    b = torch.where(x > 1 - HALF, math.inf, (x + HALF - loc) / s)
    p = torch.where(a + b > 0, torch.sigmoid(-a) - torch.sigmoid(-b), torch.sigmoid(b) - torch.sigmoid(a))
    return p.log()


def eight_bit(n: int = 64, shape=(1, 8, 8), seed: int = 0) -> torch.Tensor:
    """Random 8-bit images with a per-pixel mean, so that a model has something to learn."""
    g = torch.Generator().manual_seed(seed)
    profile = torch.rand(1, *shape, generator=g)
    x = (profile + 0.15 * torch.randn(n, *shape, generator=g)).clamp(0, 1)
    return (x * 255).round() / 255


# --- discretized logistic ---------------------------------------------------------------------------------


@pytest.mark.parametrize("loc", [-3.0, 0.0, 0.3, 0.5 + HALF, 1.0, 4.0])
@pytest.mark.parametrize("log_scale", [-20.0, -8.0, -3.0, 0.0, 2.0, 6.0])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_logistic_probabilities_sum_to_one_over_the_grid(loc, log_scale, dtype):
    p = logistic(loc, log_scale, dtype).log_prob(GRID.to(dtype)).double().exp()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-12 if dtype == torch.float64 else 1e-5)


def test_logistic_log_prob_matches_a_float64_cdf_difference():
    g = torch.Generator().manual_seed(0)
    loc = torch.rand(500, 1, generator=g, dtype=torch.float64) * 2 - 0.5  # (500, 1)
    log_scale = torch.rand(500, 1, generator=g, dtype=torch.float64) * 12 - 9  # some below the clamp
    expected = direct_log_prob(loc, log_scale, GRID)  # (500, 256)
    ok = expected > -690  # where the direct difference has not underflowed
    torch.testing.assert_close(logistic(loc, log_scale).log_prob(GRID)[ok], expected[ok], rtol=1e-9, atol=1e-10)
    lp32 = logistic(loc, log_scale, torch.float32).log_prob(GRID.float()).double()
    torch.testing.assert_close(lp32[ok], expected[ok], rtol=1e-4, atol=2e-3)


@pytest.mark.parametrize("log_scale", [-30.0, -8.0, -7.9, 0.0, 2.0])
def test_logistic_log_prob_and_gradients_are_finite_at_the_edges_and_far_tails(log_scale):
    x = torch.tensor([0.0, HALF * 2, 0.5, 1 - HALF * 2, 1.0]).repeat(5)  # (25,)
    loc = torch.tensor([-5.0, 0.0, 0.5, 1.0, 6.0]).repeat_interleave(5).requires_grad_()
    ls = torch.full((25,), log_scale, requires_grad=True)
    lp = DiscretizedLogistic(loc, ls).log_prob(x)
    assert torch.isfinite(lp).all() and (lp <= 0).all()
    lp.sum().backward()
    assert torch.isfinite(loc.grad).all() and torch.isfinite(ls.grad).all()


def test_logistic_samples_lie_on_the_grid_and_match_the_exact_mean():
    loc = torch.tensor([-0.2, 0.0, 0.3, 0.5, 0.97, 1.3])
    log_scale = torch.tensor([-1.0, -3.0, -8.0, -2.0, -4.0, 0.5])
    d = DiscretizedLogistic(loc, log_scale)
    torch.manual_seed(1)
    x = d.sample((20000,))  # (20000, 6)
    assert x.shape == (20000, 6) and x.min() >= 0 and x.max() <= 1
    assert ((x * 255 - (x * 255).round()).abs() < 1e-4).all()
    exact = (logistic(loc, log_scale).log_prob(GRID[:, None]).exp() * GRID[:, None]).sum(0)  # sum_k k/255 P(k)
    torch.testing.assert_close(d.mean.double(), exact, rtol=0, atol=1e-6)
    torch.testing.assert_close(x.double().mean(0), exact, rtol=0, atol=0.01)


def test_logistic_mean_is_chunked_and_keeps_its_shape():
    d = DiscretizedLogistic(torch.rand(2, 50000), torch.full((2, 50000), -3.0))  # several chunks of thresholds
    m = d.mean
    assert m.shape == (2, 50000) and torch.isfinite(m).all() and (m >= 0).all() and (m <= 1).all()
    torch.testing.assert_close(m[:, :5], DiscretizedLogistic(d.loc[:, :5], d.log_scale[:, :5]).mean)


# --- continuous Bernoulli -----------------------------------------------------------------------------------

LOGITS = [-80.0, -30.0, -5.0, -0.3, -1e-3, -1e-6, 0.0, 1e-6, 2e-3, 0.3, 5.0, 15.0, 30.0, 80.0]


@pytest.mark.parametrize("eta", LOGITS)
def test_continuous_bernoulli_integrates_to_one_and_has_its_mean(eta):
    x = torch.linspace(0, 1, 200_001, dtype=torch.float64)
    d = StableContinuousBernoulli(logits=torch.tensor(eta, dtype=torch.float64), validate_args=False)
    p = d.log_prob(x).exp()
    assert torch.trapezoid(p, x).item() == pytest.approx(1.0, abs=1e-6)
    assert d.mean.item() == pytest.approx(torch.trapezoid(x * p, x).item(), abs=1e-6)


@pytest.mark.parametrize("eta", LOGITS)
def test_continuous_bernoulli_float32_is_finite_and_matches_float64(eta):
    x = torch.tensor([0.0, 1e-3, 0.3, 0.5, 0.999, 1.0])
    eta32 = torch.full((6,), eta, requires_grad=True)
    d32 = StableContinuousBernoulli(logits=eta32, validate_args=False)
    d64 = StableContinuousBernoulli(logits=eta32.detach().double(), validate_args=False)
    lp = d32.log_prob(x)
    torch.testing.assert_close(lp.double(), d64.log_prob(x.double()), rtol=1e-6, atol=1e-5)
    torch.testing.assert_close(d32.mean.double(), d64.mean, rtol=0, atol=1e-6)
    (lp.sum() + d32.mean.sum()).backward()
    assert torch.isfinite(eta32.grad).all()
    u = torch.tensor([0.0, 0.1, 0.5, 0.7, 0.9, 1.0], dtype=torch.float64)
    x = d64.icdf(u)
    e = float(eta32[0].detach())
    cdf = torch.expm1(e * x) / math.expm1(e) if e else x  # F(x) = expm1(eta x) / expm1(eta)
    torch.testing.assert_close(cdf, u, rtol=0, atol=1e-9)


def test_continuous_bernoulli_agrees_with_torch_where_torch_is_exact():
    eta = torch.tensor([-10.0, -2.0, -0.1, 0.1, 2.0, 10.0], dtype=torch.float64)
    x = torch.rand(4, 1, dtype=torch.float64)
    ours = StableContinuousBernoulli(logits=eta, validate_args=False)
    theirs = ContinuousBernoulli(logits=eta, validate_args=False)
    torch.testing.assert_close(ours.log_prob(x), theirs.log_prob(x))
    torch.testing.assert_close(ours.mean, theirs.mean)
    torch.testing.assert_close(ours.icdf(x), theirs.icdf(x))


def test_continuous_bernoulli_samples_match_the_mean():
    d = StableContinuousBernoulli(logits=torch.tensor([-30.0, -3.0, 0.0, 1e-3, 3.0, 30.0]), validate_args=False)
    torch.manual_seed(2)
    x = d.sample((20000,))
    assert x.min() >= 0 and x.max() <= 1
    torch.testing.assert_close(x.mean(0), d.mean, rtol=0, atol=0.01)


# --- through px_z, check_support, a model and evaluation ---------------------------------------------------


@pytest.mark.parametrize("name", ["continuous-bernoulli", "logistic"])
def test_px_z_broadcasts_over_leading_sample_dimension(name):
    n_params = likelihoods.get(name).n_params
    params = torch.randn(3, 5, n_params, 1, 4, 4)  # (K, B, P, *shape)
    x = (torch.randint(0, 256, (5, 1, 4, 4)) / 255).float()  # (B, *shape)
    px = likelihoods.px_z(name, params, event_ndim=3)
    assert px.batch_shape == (3, 5) and px.event_shape == (1, 4, 4)
    per_sample = torch.stack([likelihoods.px_z(name, params[k], 3).log_prob(x) for k in range(3)])
    torch.testing.assert_close(px.log_prob(x), per_sample)
    assert px.mean.shape == (3, 5, 1, 4, 4) and px.sample().shape == (3, 5, 1, 4, 4)


def test_check_support_for_the_new_likelihoods():
    on_grid = (torch.arange(256) / 255).float()
    likelihoods.check_support("logistic", on_grid)
    likelihoods.check_support("continuous-bernoulli", torch.rand(100))
    with pytest.raises(vaekit.DataError, match=r"8-bit data on the grid k/255.*0\.5.*continuous-bernoulli"):
        likelihoods.check_support("logistic", torch.tensor([0.0, 0.5, 1.0]))
    for name in ("logistic", "continuous-bernoulli"):
        with pytest.raises(vaekit.DataError, match="NaN or infinite"):
            likelihoods.check_support(name, torch.tensor([0.0, float("nan")]))
        with pytest.raises(vaekit.DataError, match=r"\[0, 255\]"):
            likelihoods.check_support(name, torch.tensor([0.0, 255.0]))


def test_unknown_likelihood_lists_the_new_ones():
    with pytest.raises(vaekit.ConfigError, match="continuous-bernoulli, logistic"):
        likelihoods.get("poisson")


@pytest.mark.parametrize("name", ["continuous-bernoulli", "logistic"])
def test_vae_trains_with_the_new_likelihood(name):
    model = VAE(ModelConfig(likelihood=name, data_shape=(1, 8, 8), hidden=(32,), latent_dim=2))
    x = eight_bit()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(25):
        loss = objectives.elbo(model, x).loss
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < losses[0] - 10  # nats per 64-pixel image
    assert model.sample(4).shape == (4, 1, 8, 8) and model.reconstruct(x[:4]).shape == (4, 1, 8, 8)


@pytest.mark.parametrize(("name", "binary", "density"), [
    ("logistic", False, "discrete"), ("bernoulli", True, "discrete"), ("bernoulli", False, "unnormalized"),
    ("gaussian", False, "continuous"), ("gaussian-learned", False, "continuous"),
    ("continuous-bernoulli", False, "continuous"),
])
def test_evaluation_states_the_density_kind_and_bits_per_dim(name, binary, density):
    model = VAE(ModelConfig(likelihood=name, data_shape=(1, 8, 8), hidden=(16,), latent_dim=2))
    x = eight_bit(20)
    x = (x > 0.5).float() if binary else x
    r = evaluate_model(model, x, iw_samples=4)
    assert r["density"] == density
    if density == "discrete":
        assert r["bits_per_dim"] == pytest.approx(r["nll"] / (64 * math.log(2)))
        assert r["neg_elbo_bits_per_dim"] == pytest.approx(r["neg_elbo"] / (64 * math.log(2)))
    else:
        assert "bits_per_dim" not in r and "neg_elbo_bits_per_dim" not in r
    assert "bits_per_dim" not in evaluate_model(model, x, iw_samples=0)


@pytest.mark.parametrize("name", ["bernoulli", "logistic"])
def test_nll_and_bits_per_dim_of_a_model_whose_likelihood_is_known_by_hand(name):
    """A decoder that ignores z (zero weights; its bias the parameters of one fixed p(x)) and an encoder that
    gives the prior itself make every importance weight p(x|z) p(z) / q(z|x) = p(x): the negative ELBO, the NLL
    and bits/dim must be -log p(x) and -log p(x) / (D ln 2), with p(x) computed here from its formula."""
    shape, dim = (1, 8, 8), 64
    model = VAE(ModelConfig(likelihood=name, data_shape=shape, hidden=(), latent_dim=2))
    g = torch.Generator().manual_seed(0)
    x = eight_bit(20)
    if name == "bernoulli":
        x = torch.bernoulli(x, generator=g)
        params = torch.randn(dim, generator=g) * 2  # logits
        log_px = (x.flatten(1) * F.logsigmoid(params) + (1 - x.flatten(1)) * F.logsigmoid(-params)).sum(1)
    else:  # loc in [0, 1], log-scale in [-5, -1]: both halves of the decoder's output, loc first
        loc, log_scale = torch.rand(dim, generator=g), torch.rand(dim, generator=g) * 4 - 5
        params = torch.cat([loc, log_scale])
        log_px = direct_log_prob(loc.double(), log_scale.double(), x.double().flatten(1)).sum(1)
    with torch.no_grad():
        model.encoder[0].weight.zero_()  # mu = 0, log sigma^2 = 0: q(z|x) = N(0, I) = p(z)
        model.encoder[0].bias.zero_()
        model.decoder[0].weight.zero_()
        model.decoder[0].bias.copy_(params)
    r = evaluate_model(model, x, iw_samples=7)
    nll = -log_px.mean().item()
    assert r["density"] == "discrete" and r["kl"] == pytest.approx(0, abs=1e-6)
    for key in ("nll", "neg_elbo", "recon"):
        assert r[key] == pytest.approx(nll, rel=1e-5), key
    assert r["bits_per_dim"] == pytest.approx(nll / (dim * math.log(2)), rel=1e-5)
    assert r["neg_elbo_bits_per_dim"] == pytest.approx(nll / (dim * math.log(2)), rel=1e-5)


def test_cli_evaluate_prints_density_and_bits_per_dim(tmp_path, capsys):
    vaekit.train(digits_config(**{"data.binarize": "dynamic", "train.epochs": 1}), tmp_path)
    capsys.readouterr()
    assert main(["evaluate", str(tmp_path), "--iw-samples", "4", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "density discrete" in out and "bits/dim" in out and "NLL (K=4)" in out


@pytest.mark.parametrize("name", [n for n, lik in likelihoods.LIKELIHOODS.items() if lik.nll_and_grad])
def test_written_out_nll_and_gradient_match_the_distribution(name):
    """The fused CPU step's -log p(x|z) and its gradient agree with torch.distributions and autograd."""
    lik = likelihoods.get(name)  # decoder outputs (B, P, *shape), as vae.py lays them out; the step sees (B, P * D)
    params = (torch.randn(6, lik.n_params, 1, 3, 4, dtype=torch.float64) * 4).requires_grad_()
    if lik.n_params == 2:  # a learned log standard deviation: inside, below and above its bounds
        with torch.no_grad():
            params[:, 1] = torch.linspace(-9.0, 3.0, 12, dtype=torch.float64).reshape(1, 3, 4)
    x = torch.rand(6, 1, 3, 4, dtype=torch.float64)
    nll = -likelihoods.px_z(name, params, 3, 0.3).log_prob(x).sum()
    (grad,) = torch.autograd.grad(nll, params)
    by_hand, g = lik.nll_and_grad(params.detach().flatten(1), x.flatten(1), 0.3)
    assert float(by_hand) == pytest.approx(float(nll.detach()), rel=1e-12)
    torch.testing.assert_close(g, grad.flatten(1), rtol=1e-10, atol=1e-12)
