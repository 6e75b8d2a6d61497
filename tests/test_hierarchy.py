"""Hierarchical VAEs (Ladder-style: top-down inference sharing the generative path) and the likelihood-ratio
anomaly score that needs them (Havtorn et al. 2021)."""

from __future__ import annotations

import math

import pytest
import torch

import vaekit
from vaekit import anomaly, evaluation, objectives
from vaekit.cli import main

from conftest import digits_config, split_sizes

LADDER = {"model.lower_latent_dims": [5, 6], "model.latent_dim": 3}
# a spatial bottom layer: 2 channels at half the 8 x 8 digits' size, 32 dimensions, below two vector layers
SPATIAL = {"model.arch": "conv", "model.channels": [4, 8], "model.latent_dim": 3, "model.lower_latent_dims": [5],
           "model.latent_channels": 2}


def ladder(**extra) -> vaekit.VAE:
    torch.manual_seed(0)
    return vaekit.VAE(digits_config(**{**LADDER, "model.data_shape": [1, 8, 8], **extra}).model)


def spatial(shape=(1, 8, 8), **extra) -> vaekit.VAE:
    torch.manual_seed(0)
    return vaekit.VAE(digits_config(**{**SPATIAL, "model.data_shape": list(shape), **extra}).model)


def test_a_pass_has_a_latent_per_layer_and_the_kl_adds_up():
    model, x = ladder(), torch.rand(4, 1, 8, 8)
    out = model(x)
    assert [latent.z.shape for latent in out.latents] == [(4, 3), (4, 5), (4, 6)]
    torch.testing.assert_close(sum(out.kl_per_layer), out.kl)
    torch.testing.assert_close(out.kl_per_dimension().sum(-1), out.kl)  # Gaussians at every layer: analytic
    assert model.noise_dim == 14 and model.latent_dim == 3
    k = model(x, k=7)
    assert k.latents[-1].z.shape == (7, 4, 6) and k.log_weights(x).shape == (7, 4)


@pytest.mark.parametrize("build", [ladder, spatial], ids=["vector", "spatial"])
def test_the_iwae_bound_with_one_sample_averages_to_the_elbo(build):
    model, x = build(), torch.rand(3, 1, 8, 8)
    reps = x.repeat(3000, 1, 1, 1)
    torch.manual_seed(1)
    l1 = objectives.iwae_bound(model, reps, k=1).view(3000, 3)
    recon, kl = objectives.elbo_per_example(model, reps)
    elbo = -(recon + kl).detach().view(3000, 3)  # each lower KL is analytic given the draw above it
    error = 4 * l1.std(0) / math.sqrt(3000)
    assert ((l1.mean(0) - elbo.mean(0)).abs() < error).all()


def test_the_bound_with_its_lowest_layers_from_the_prior_counts_only_the_layers_above():
    model, x = ladder(), torch.rand(4, 1, 8, 8)
    out = model(x, k=5, prior_below=2)
    top = out.latents[0]
    assert [latent.from_prior for latent in out.latents] == [False, True, True]
    expected = out.px_z.log_prob(x) + top.log_p - top.log_q
    torch.testing.assert_close(out.log_weights(x), expected)


def test_sampling_at_temperature_zero_follows_the_conditional_means():
    model = ladder()
    x = model.sample(2, temperature=0.0, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(x, model.decode(torch.zeros(2, 3)).mean)


def test_the_likelihood_ratio_score_is_seeded_batch_independent_and_needs_a_hierarchy():
    model, x = ladder(), torch.rand(9, 1, 8, 8)
    a = anomaly.score(model, x, "llr>1", 20)
    b = anomaly.score(model, x.flip(0), "llr>1", 20, batch_size=4).flip(0)
    torch.testing.assert_close(a, b)
    assert not torch.allclose(a, anomaly.score(model, x, "llr>2", 20))
    with pytest.raises(vaekit.ConfigError, match="more than 3 stochastic layers; this model has 3"):
        anomaly.score(model, x, "llr>3")
    with pytest.raises(vaekit.ConfigError, match="this model has 1"):
        anomaly.score(vaekit.VAE(digits_config(**{"model.data_shape": [1, 8, 8]}).model), x, "llr")
    with pytest.raises(vaekit.ConfigError, match="unknown anomaly score 'llr>x'"):
        anomaly.score(model, x, "llr>x")


def test_evaluation_reports_each_layer():
    model = ladder()
    r = evaluation.evaluate_model(model, torch.rand(20, 1, 8, 8), iw_samples=4)
    assert r["latent_dims"] == [3, 5, 6] and len(r["kl_per_layer"]) == 3
    assert sum(r["kl_per_layer"]) == pytest.approx(r["kl"], rel=0.3)  # two Monte-Carlo draws of the same KL
    assert r["active_units"] == sum(r["active_units_per_layer"])


def test_a_hierarchy_trains_saves_loads_resumes_and_runs_every_command(tmp_path, capsys):
    cfg = digits_config(**{**LADDER, "train.epochs": 2})
    full = vaekit.train(cfg, tmp_path / "full")
    assert len(full.history[-1]["kl_per_layer"]) == 3 and len(full.history[-1]["kl_per_dim"]) == 14
    vaekit.train(cfg.override({"train.epochs": 1}), tmp_path / "half")
    resumed = vaekit.resume(tmp_path / "half", {"train.epochs": 2})
    for k, v in full.model.state_dict().items():
        assert torch.equal(resumed.model.state_dict()[k], v), k
    run, out = str(tmp_path / "full"), lambda f: str(tmp_path / f)
    commands = [
        ["evaluate", run, "--iw-samples", "4", "--device", "cpu"],
        ["sample", run, "-n", "8", "--temperature", "0.5", "-o", out("s.png")],
        ["reconstruct", run, "-n", "8", "-o", out("r.png")],
        ["interpolate", run, "--from", "0", "--to", "5", "-o", out("i.png")],
        ["traverse", run, "--dims", "2", "-o", out("t.png")],
        ["embed", run, "-o", out("z.npz")],
        ["anomaly", run, "-o", out("l.csv"), "--score", "llr", "--k", "2", "--iw-samples", "8",
         "--normal-label", "3"],
    ]
    for argv in commands:
        assert main(argv) == 0, argv
    printed = capsys.readouterr().out
    assert "KL per layer, top first" in printed and "ROC AUC" in printed


@pytest.mark.parametrize("variant", [{"model.arch": "conv", "model.channels": [4, 8]},
                                     {"model.conditional": True},
                                     {**SPATIAL, "model.lower_latent_dims": [5, 6]},
                                     {**SPATIAL, "model.conditional": True}], ids=["conv", "conditional",
                                                                                  "spatial", "spatial-conditional"])
def test_convolutional_and_conditional_hierarchies_train_and_run_the_commands(tmp_path, variant):
    run = tmp_path / "run"
    vaekit.train(digits_config(**{**LADDER, **variant, "train.epochs": 1}), run)
    model = vaekit.load(run)
    settings = {**LADDER, **variant}
    assert len(model.layers) == 1 + len(settings["model.lower_latent_dims"]) + ("model.latent_channels" in variant)
    label = ["--label", "3"] if variant.get("model.conditional") else []
    commands = [
        ["evaluate", str(run), "--iw-samples", "4", "--device", "cpu"],
        ["sample", str(run), "-n", "4", "-o", str(tmp_path / "s.png"), *label],
        ["reconstruct", str(run), "-n", "4", "-o", str(tmp_path / "r.png")],
        ["interpolate", str(run), "--from", "0", "--to", "5", "-o", str(tmp_path / "i.png"), *label],
        ["traverse", str(run), "--dims", "2", "-o", str(tmp_path / "t.png"), *label],
        ["embed", str(run), "-o", str(tmp_path / "z.npz"), "--layers", "all"],
        ["anomaly", str(run), "-o", str(tmp_path / "l.csv"), "--score", "llr", "--k", "2", "--iw-samples", "4"],
    ]
    for argv in commands:
        assert main(argv) == 0, argv
    x = torch.rand(5, 1, 8, 8)
    y = torch.arange(5) if variant.get("model.conditional") else None
    out = model(x, y, k=3, prior_below=1)
    assert out.log_weights(x).shape == (3, 5) and torch.isfinite(out.log_weights(x)).all()


def test_every_score_of_a_hierarchy_is_one_number_per_input():
    model, x = ladder(), torch.rand(7, 1, 8, 8)
    out = model(x, k=5)
    assert out.kl.shape == (7,) and out.kl_per_dimension().shape == (7, 14)
    for method in ("elbo", "nll", "recon", "llr>1"):
        assert anomaly.score(model, x, method, 6).shape == (7,), method


def test_the_top_down_state_reaches_the_decoder_directly():
    """The layers above act on p(x|z) through the deterministic top-down path, not only through z_1."""
    model = ladder()
    assert model.decoder[0].in_features == 6 + 32  # z_1 and h_1
    z1 = torch.randn(4, 6)
    a, b = (model._likelihood(z1, h, None).mean for h in (torch.zeros(4, 32), torch.ones(4, 32)))
    assert not torch.allclose(a, b)


def test_embedding_all_layers_joins_each_layers_posterior_mean_top_first(tmp_path):
    from vaekit import embedding

    model, x = ladder(), torch.rand(9, 1, 8, 8)
    top = embedding.posterior_means(model, x)
    every = embedding.posterior_means(model, x, batch_size=4, layers="all")
    assert top.shape == (9, 3) and every.shape == (9, 14)
    torch.testing.assert_close(every[:, :3], top)
    chained = torch.cat([latent.mean for latent in model.infer(x, mean=True)], dim=-1)
    torch.testing.assert_close(every, chained)
    with pytest.raises(vaekit.DataError, match="unknown layers 'middle'"):
        embedding.posterior_means(model, x, layers="middle")


def test_serve_offers_a_hierarchys_layers_and_likelihood_ratio_scores(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vaekit.serve import create_app

    vaekit.train(digits_config(**{**LADDER, "train.epochs": 1}), tmp_path)
    client = TestClient(create_app(tmp_path, n_examples=20))
    info = client.get("/v1/info").json()
    assert info["layers"] == [3, 5, 6] and info["scores"] == ["elbo", "nll", "recon", "kl", "llr>1", "llr>2"]
    x = client.get("/v1/examples", params={"n": 3}).json()["x"]
    out = client.post("/v1/score", json={"x": x, "method": "llr>2", "details": True}).json()
    model = vaekit.load(tmp_path)
    expected = anomaly.score(model, torch.tensor(x, dtype=torch.float32), "llr>2")
    assert out["method"] == "llr>2" and out["scores"] == pytest.approx(expected.tolist(), rel=1e-5)
    for method, message in [("llr>3", "more than 3 stochastic layers"), ("llr>0", "got 'llr>0'"),
                            ("llr2", "got 'llr2'")]:
        r = client.post("/v1/score", json={"x": x, "method": method})
        assert r.status_code == 422 and message in r.text, (method, r.text)
    r = client.post("/v1/score", json={"x": x * 30, "method": "llr"})
    assert r.status_code == 422 and "at most 64 inputs" in r.text
    enc = client.post("/v1/encode", json={"x": x, "layers": "all"}).json()
    assert len(enc["mu"][0]) == 14 and len(enc["logvar"][0]) == 14
    top = client.post("/v1/encode", json={"x": x}).json()
    assert len(top["mu"][0]) == 3 and top["mu"][0] == pytest.approx(enc["mu"][0][:3], rel=1e-5)


def test_the_cli_embeds_every_layer(tmp_path, capsys):
    cfg = digits_config(**{**LADDER, "train.epochs": 1})
    vaekit.train(cfg, tmp_path / "run")
    assert main(["embed", str(tmp_path / "run"), "-o", str(tmp_path / "z.npz"), "--layers", "all", "--probe"]) == 0
    printed = capsys.readouterr().out
    assert f"({split_sizes(cfg)['test']} x 14 posterior means of all 3 layers, test)" in printed
    assert "VAE latent (14-d)" in printed


def test_a_spatial_bottom_layer_is_a_map_at_half_the_image_size():
    model, x = spatial(), torch.rand(4, 1, 8, 8)
    out = model(x)
    assert [latent.z.shape for latent in out.latents] == [(4, 3), (4, 5), (4, 2 * 4 * 4)]
    assert model.noise_dim == 3 + 5 + 32 and model.latent_dim == 3
    torch.testing.assert_close(out.kl_per_dimension().sum(-1), out.kl)
    assert model(x, k=6).log_weights(x).shape == (6, 4)
    odd = spatial(shape=(1, 7, 9))  # odd sizes: the map is 4 x 5 and the decoder restores 7 x 9
    assert odd.layers[-1].latent_dim == 2 * 4 * 5
    assert odd.reconstruct(torch.rand(3, 1, 7, 9)).shape == (3, 1, 7, 9)
    assert odd.sample(2).shape == (2, 1, 7, 9)


def test_flat_maps_are_channel_major_so_joining_them_joins_channels():
    """Spatial latents travel flat like vector ones: the networks' reading of them must be the image layout."""
    from vaekit.model import nets

    torch.manual_seed(0)
    net = nets.MapNet(3, (4,), 2, (5, 6), "relu")
    a, b = torch.randn(7, 1, 5, 6), torch.randn(7, 2, 5, 6)
    joined = torch.cat([a.flatten(1), b.flatten(1)], dim=-1)
    torch.testing.assert_close(net(joined), net.convs(torch.cat([a, b], dim=1)).flatten(1))
    torch.testing.assert_close(net(joined.expand(3, 7, -1)), net(joined).expand(3, 7, -1))  # sample dimensions


def test_the_spatial_layer_is_the_one_drawn_from_its_prior_in_the_likelihood_ratio():
    model, x = spatial(), torch.rand(4, 1, 8, 8)
    out = model(x, k=5, prior_below=1)
    assert [latent.from_prior for latent in out.latents] == [False, False, True]
    above = out.latents[:2]
    expected = out.px_z.log_prob(x) + sum(lat.log_p - lat.log_q for lat in above)
    torch.testing.assert_close(out.log_weights(x), expected)
    assert anomaly.score(model, x, "llr>1", 6).shape == (4,)


def test_a_spatial_layer_needs_convolutions_and_counts_as_a_layer():
    with pytest.raises(vaekit.ConfigError, match=r"model\.latent_channels = 4 .* unless model\.arch = conv"):
        digits_config(**{"model.latent_channels": 4})
    with pytest.raises(vaekit.ConfigError, match=r"one number per stochastic layer \(3"):
        digits_config(**SPATIAL, **{"train.free_bits_per_layer": [0.1, 0.1]})
    assert digits_config(**SPATIAL).model.n_layers == 3


def test_the_decoder_of_a_spatial_model_reads_the_top_down_map():
    model = spatial()
    z1 = torch.randn(4, 32)
    a, b = (model._likelihood(z1, m, None).mean for m in (torch.zeros(4, 4 * 16), torch.ones(4, 4 * 16)))
    assert not torch.allclose(a, b)


@pytest.mark.parametrize("method", ["elbo", "llr>1"])
def test_sampled_scores_pass_their_draws_through_the_decoder_in_bounded_chunks(method, monkeypatch):
    """Memory stays bounded for any number of draws, and chunking changes nothing but the summation order."""
    model, x = spatial(), torch.rand(6, 1, 8, 8)
    noise = torch.randn(50, model.noise_dim, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        if method == "elbo":
            out = model(x, eps=noise)
            expected = -out.px_z.log_prob(x).mean(0) + out.kl
        else:
            lse = [torch.logsumexp(model(x, eps=noise, prior_below=b).log_weights(x), 0) for b in (0, 1)]
            expected = lse[0] - lse[1]
    seen = []  # the draws of each decoder call: its code is (draws, B, width)
    model.decoder.register_forward_hook(lambda module, args, out: seen.append(len(args[0])))
    monkeypatch.setattr(evaluation, "sample_chunk", lambda *args: 7)
    torch.testing.assert_close(anomaly.score(model, x, method, 50), expected, rtol=1e-5, atol=1e-4)
    assert max(seen) == 7 and sum(seen) == 50 * (1 if method == "elbo" else 2)


def test_serve_answers_for_a_spatial_hierarchy(tmp_path):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from vaekit.serve import create_app

    vaekit.train(digits_config(**{**SPATIAL, "train.epochs": 1}), tmp_path)
    client = TestClient(create_app(tmp_path, n_examples=10))
    info = client.get("/v1/info").json()
    assert info["layers"] == [3, 5, 32] and "llr>1" in info["scores"]
    x = client.get("/v1/examples", params={"n": 2}).json()["x"]
    assert len(client.post("/v1/encode", json={"x": x, "layers": "all"}).json()["mu"][0]) == 40
    for path, body in [("/v1/score", {"x": x, "method": "llr>1"}), ("/v1/reconstruct", {"x": x}),
                       ("/v1/sample", {"n": 2}), ("/v1/decode", {"z": [[0.0] * 3]})]:
        assert client.post(path, json=body).status_code == 200, path


@pytest.mark.parametrize("make", [ladder, spatial])
def test_a_bound_drawn_in_chunks_encodes_its_inputs_once_and_equals_separate_passes(make):
    """``passes`` encodes x once for all the chunks of an importance-sampled bound; each chunk's pass draws
    and computes what a call of the model would."""
    model, x = make(), torch.rand(5, 1, 8, 8)
    calls = []
    model.encoder.register_forward_hook(lambda *_: calls.append(1))
    with torch.no_grad():
        torch.manual_seed(1)
        draw = model.passes(x, prior_below=1)
        chunked = [draw(k).log_weights(x) for k in (2, 3)]
        assert len(calls) == 1
        torch.manual_seed(1)
        separate = [model(x, k=k, prior_below=1).log_weights(x) for k in (2, 3)]
        assert len(calls) == 3
        for a, b in zip(chunked, separate, strict=True):
            assert torch.equal(a, b)
        objectives.iwae_bound(model, x, 12, chunk=3)
        assert len(calls) == 4  # four chunks, one encoding
