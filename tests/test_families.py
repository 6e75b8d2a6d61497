"""The model families: a mixture-of-Gaussians prior, the VampPrior and an inverse autoregressive flow posterior.

Invariants of each (the IWAE bound with k = 1 is the ELBO; the flow's log-determinant is autograd's; the VampPrior
is the mixture of its pseudo-inputs' posteriors; a Monte-Carlo KL agrees with the closed form), and each family
through save/load, resume and every command.
"""

from __future__ import annotations

import math
import shutil

import pytest
import torch
from torch.distributions import Independent, Normal, kl_divergence

import vaekit
from vaekit import anomaly, objectives
from vaekit.cli import main
from vaekit.model import flows

from conftest import digits_config

FAMILIES = {  # name -> config overrides
    "mog": {"model.prior": "mog", "model.prior_components": 5},
    "vamp": {"model.prior": "vamp", "model.prior_components": 8},
    "iaf": {"model.posterior": "iaf", "model.flow_steps": 2, "model.flow_hidden": 16},
    "mog-iaf": {"model.prior": "mog", "model.prior_components": 3, "model.posterior": "iaf",
                "model.flow_hidden": 16},
}


def family_model(name: str, **extra) -> vaekit.VAE:
    cfg = digits_config(**{**FAMILIES[name], "model.data_shape": [1, 8, 8], **extra})
    model = vaekit.VAE(cfg.model)
    model.init_from_data(torch.rand(20, 1, 8, 8), torch.Generator().manual_seed(0))
    return model


@pytest.mark.parametrize("name", FAMILIES)
def test_the_iwae_bound_with_one_sample_is_the_elbo(name):
    model, x = family_model(name), torch.rand(6, 1, 8, 8)
    torch.manual_seed(3)
    l1 = objectives.iwae_bound(model, x, k=1)
    torch.manual_seed(3)
    recon, kl = objectives.elbo_per_example(model, x)  # the same posterior draw; the KL is log q - log p there
    torch.testing.assert_close(l1, -(recon + kl), rtol=1e-5, atol=1e-4)


def test_the_flow_log_determinant_is_autograds():
    torch.manual_seed(0)
    made = flows.MADE(4, 12, 3, reverse=True)
    for p in made.parameters():
        torch.nn.init.normal_(p, std=0.5)  # far from the identity it starts at
    c, x = torch.randn(3, 3), torch.randn(3, 4)
    step = flows.IAFStep(made, c)
    y = step(x)
    for i in range(3):
        jac = torch.autograd.functional.jacobian(lambda v, i=i: flows.IAFStep(made, c[i : i + 1])._call(v[None])[0],
                                                 x[i])
        assert torch.allclose(jac.triu(), jac)  # autoregressive: triangular (reversed order: upper)
        torch.testing.assert_close(step.log_abs_det_jacobian(x, y)[i], torch.linalg.slogdet(jac)[1])
    torch.testing.assert_close(step._inverse(y), x, rtol=1e-5, atol=1e-5)


def test_a_flow_posteriors_density_needs_no_cache():
    model = family_model("iaf")
    for p in model.layers[0].posterior.parameters():
        torch.nn.init.normal_(p, std=0.3)
    q = model.encode(torch.rand(5, 1, 8, 8))
    z = q.rsample((4,))  # (4, 5, L)
    torch.testing.assert_close(q.log_prob(z.clone()), q.log_prob(z), rtol=1e-4, atol=1e-4)  # inverse vs cache


def test_monte_carlo_kl_of_the_standard_normal_prior_matches_the_closed_form():
    q = Independent(Normal(torch.tensor([[0.5, -1.0, 0.2]]), torch.tensor([[0.7, 1.3, 0.4]])), 1)
    p = Independent(Normal(torch.zeros(3), torch.ones(3)), 1)
    z = q.sample((200000,))
    mc = q.log_prob(z) - p.log_prob(z)  # (S, 1)
    error = 4 * mc.std() / math.sqrt(len(mc))  # four standard errors
    assert abs(float(mc.mean() - kl_divergence(q, p))) < error


def test_the_vamp_prior_is_the_mixture_of_its_pseudo_inputs_posteriors():
    model = family_model("vamp")
    data = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        model.prior.u.copy_(data)  # pseudo-inputs fixed to data
        z = torch.randn(10, 4)
        q = model.encode(data)  # (8,) Gaussians
        by_hand = torch.logsumexp(q.log_prob(z[:, None, :]), dim=1) - math.log(8)  # (10,)
        torch.testing.assert_close(model.prior().log_prob(z), by_hand)


def test_the_vamp_prior_starts_from_training_inputs():
    model = family_model("vamp")
    x = torch.rand(30, 1, 8, 8)
    model.init_from_data(x, torch.Generator().manual_seed(1))
    assert all(any(torch.equal(u, row) for row in x) for u in model.prior.u)
    assert len({tuple(u.flatten().tolist()) for u in model.prior.u}) == 8  # without replacement


@pytest.mark.parametrize("name", ["mog", "vamp"])
def test_mixture_priors_sample_with_a_temperature(name):
    model = family_model(name)
    cold = model.prior.sample(4000, 0.0, torch.Generator().manual_seed(0))
    pz = model.prior()
    means = pz.component_distribution.base_dist.loc
    assert all(any(torch.allclose(z, m) for m in means) for z in cold[:50])  # T = 0: the components' centres
    warm = model.prior.sample(20000, 1.0, torch.Generator().manual_seed(0))
    torch.testing.assert_close(warm.mean(0), pz.mean, rtol=0.1, atol=0.1)


@pytest.mark.parametrize("name", FAMILIES)
def test_each_family_trains_saves_loads_and_resumes_exactly(name, tmp_path):
    cfg = digits_config(**{**FAMILIES[name], "train.epochs": 2})
    full = vaekit.train(cfg, tmp_path / "full")
    assert full.history[-1]["val_neg_elbo"] < full.history[0]["val_neg_elbo"]
    assert full.history[-1]["kl_per_dim"] is None and "factorise" in full.history[-1]["kl_per_dim_unavailable"]
    loaded = vaekit.load(tmp_path / "full")
    x = torch.rand(4, 1, 8, 8)
    torch.manual_seed(0)
    a = loaded(x).log_weights(x)
    torch.manual_seed(0)
    b = full.model.eval()(x).log_weights(x)
    assert torch.equal(a, b)  # bitwise-equal outputs after a round trip
    vaekit.train(cfg.override({"train.epochs": 1}), tmp_path / "half")
    resumed = vaekit.resume(tmp_path / "half", {"train.epochs": 2})
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k


@pytest.mark.parametrize("name", ["vamp", "mog-iaf"])
def test_every_command_runs_on_each_family(name, tmp_path, capsys):
    run, out = tmp_path / "run", lambda f: str(tmp_path / f)
    sets = [a for k, v in FAMILIES[name].items() for a in ("--set", f"{k}={v}")]
    assert main(["train", "--dataset", "digits", "--epochs", "2", "--hidden", "32", "--latent-dim", "4",
                 "--device", "cpu", "--quiet", *sets, "--out", str(run)]) == 0
    commands = [
        ["evaluate", str(run), "--iw-samples", "8", "--device", "cpu"],
        ["sample", str(run), "-n", "8", "--temperature", "0.7", "-o", out("s.png")],
        ["sample", str(run), "--sampler", "gmm", "--components", "3", "-o", out("g.png")],
        ["reconstruct", str(run), "-n", "8", "-o", out("r.png")],
        ["interpolate", str(run), "--from", "0", "--to", "5", "-o", out("i.png")],
        ["traverse", str(run), "--dims", "2", "-o", out("t.png")],
        ["embed", str(run), "-o", out("z.npz"), "--probe"],
        ["anomaly", str(run), "-o", out("n.csv"), "--score", "nll", "--iw-samples", "8", "--normal-label", "3"],
        ["anomaly", str(run), "-o", out("a.csv"), "--contamination", "0.05", "--normal-label", "3"],
    ]
    for argv in commands:
        assert main(argv) == 0, argv
    printed = capsys.readouterr().out
    assert "variance of the posterior means" in printed  # traverse says how it ranked the dimensions
    assert "ROC AUC" in printed


def test_vamp_refuses_what_it_cannot_be():
    with pytest.raises(vaekit.ConfigError, match="conditional"):
        vaekit.VAE(digits_config(**{"model.prior": "vamp", "model.data_shape": [1, 8, 8], "model.conditional": True,
                                    "model.labels": ["a", "b"]}).model)
    with pytest.raises(vaekit.ConfigError, match="mixes diagonal-Gaussian posteriors"):
        vaekit.VAE(digits_config(**{"model.prior": "vamp", "model.posterior": "iaf",
                                    "model.data_shape": [1, 8, 8]}).model)


def test_a_copy_of_a_vamp_model_encodes_with_its_own_encoder():
    import copy

    model = family_model("vamp")
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for p in twin.encoder.parameters():
            p.add_(1.0)
    z = torch.randn(3, 4)
    assert not torch.allclose(twin.prior().log_prob(z), model.prior().log_prob(z))


def test_serve_shows_a_family_model(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vaekit.serve import create_app

    vaekit.train(digits_config(**{**FAMILIES["mog-iaf"], "train.epochs": 1}), tmp_path)
    client = TestClient(create_app(tmp_path, n_examples=50))
    info = client.get("/v1/info").json()
    assert info["latent_ranking"]["kl"] is None and "variance" in info["latent_ranking"]["ranked_by"]
    for path, body in [("/v1/sample", {"n": 2}), ("/v1/decode", {"z": [[0.0] * 4]})]:
        assert client.post(path, json=body).status_code == 200, path
    x = client.get("/v1/examples", params={"n": 2}).json()["x"]
    for path in ("/v1/encode", "/v1/reconstruct", "/v1/score"):
        assert client.post(path, json={"x": x}).status_code == 200, path
    shutil.rmtree(tmp_path)


ENGINE_RUNS = {  # every family, and a hierarchy with the guards its training may need
    **FAMILIES,
    "hvae": {"model.latent_dim": 3, "model.lower_latent_dims": [5, 6], "train.grad_clip": 5.0,
             "train.free_bits_per_layer": [0.1, 0.0, 0.0]},
    "spatial": {"model.arch": "conv", "model.channels": [4, 8], "model.latent_dim": 3, "model.latent_channels": 2,
                "train.grad_clip": 5.0},
}


@pytest.mark.parametrize("name", ENGINE_RUNS)
def test_each_family_trains_through_the_static_cuda_graph_step_like_the_plain_loop(name, monkeypatch):
    """The step a CUDA graph captures, run eagerly on the CPU, is the ordinary step for every family."""
    from vaekit.training import graphs

    cfg = digits_config(**{**ENGINE_RUNS[name], "train.drop_last": True, "train.fused_step": False})
    monkeypatch.setattr(graphs, "fast_path_blocker", lambda device, world, enabled: None)
    static = vaekit.train(cfg)
    monkeypatch.undo()
    plain = vaekit.train(cfg)
    for k, v in plain.model.state_dict().items():
        assert torch.equal(static.model.state_dict()[k], v), k


@pytest.mark.parametrize("name", ENGINE_RUNS)
def test_each_family_trains_under_bf16_autocast_close_to_fp32(name):
    cfg = digits_config(**{**ENGINE_RUNS[name], "train.epochs": 3})
    fp32, bf16 = vaekit.train(cfg), vaekit.train(cfg.override({"train.precision": "bf16"}))
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    a, b = fp32.history[-1]["val_neg_elbo"], bf16.history[-1]["val_neg_elbo"]
    assert math.isfinite(b) and abs(a - b) < 0.05 * a  # bf16 rounding, not a different model


@pytest.mark.parametrize("name", ["mog", "vamp"])
def test_the_mixture_priors_density_and_gradients_are_torchs_to_float_rounding(name):
    """The mixture priors score z by matrix products (GaussianMixture) instead of torch's dimension-by-dimension
    MixtureSameFamily.log_prob: the same values and gradients, to float32 rounding, also for k samples."""
    model = family_model(name)
    z0 = torch.randn(3, 7, 4) * 1.5  # (k, B, L)
    results = []
    for log_prob in (type(model.prior()).log_prob, torch.distributions.MixtureSameFamily.log_prob):
        model.zero_grad()
        z = z0.clone().requires_grad_()
        value = log_prob(model.prior(), z)  # (k, B)
        value.backward(torch.linspace(-1, 1, value.numel()).reshape(value.shape))
        results.append([value.detach(), z.grad, *(p.grad.clone() for p in model.prior.parameters())])
    for ours, torchs in zip(*results, strict=True):
        torch.testing.assert_close(ours, torchs, rtol=1e-4, atol=1e-4)


def test_the_mixture_priors_density_stays_exact_for_narrow_components():
    """Components as narrow as the clamp allows (s = exp(-7)) and z near their means: the expanded quadratic
    form, taken in float64, cancels nothing that float32 would keep."""
    model = family_model("mog")
    with torch.no_grad():
        model.prior.log_scales.fill_(-8.0)  # clamped to -7
    pz = model.prior()
    means = pz.component_distribution.base_dist.loc.detach()
    z = means[torch.arange(6) % len(means)] + 1e-3 * torch.randn(6, 4)  # within a few scales of a mean
    exact = torch.distributions.MixtureSameFamily.log_prob(
        torch.distributions.MixtureSameFamily(
            torch.distributions.Categorical(logits=pz.mixture_distribution.logits.double()),
            Independent(Normal(means.double(), pz.component_distribution.base_dist.scale.double()), 1)),
        z.double())
    torch.testing.assert_close(pz.log_prob(z).double(), exact, rtol=1e-6, atol=1e-4)


@pytest.mark.parametrize("name", ["iaf", "vamp", "hvae", "spatial"])
def test_the_kl_score_averages_the_passes_kl_over_the_same_draws_and_decodes_nothing(name, monkeypatch):
    """Monte-Carlo KLs (iaf, vamp) and a hierarchy's lower layers need the draws' path down, not p(x|z)."""
    cfg = digits_config(**{**ENGINE_RUNS[name], "model.data_shape": [1, 8, 8]})
    model = vaekit.VAE(cfg.model).eval()
    model.init_from_data(torch.rand(20, 1, 8, 8), torch.Generator().manual_seed(0))
    x = torch.rand(5, 1, 8, 8)
    noise = torch.randn(4, model.noise_dim, generator=torch.Generator().manual_seed(0))  # score()'s draws
    with torch.no_grad():
        expected = torch.stack([model(x, eps=e[None]).kl for e in noise]).mean(0)
    monkeypatch.setattr(vaekit.VAE, "_likelihood", lambda *args: pytest.fail("the kl score decoded"))
    torch.testing.assert_close(anomaly.score(model, x, "kl", 4), expected)
    assert not torch.allclose(expected, anomaly.score(model, x, "kl", 4, seed=1))  # the draws count in each family
