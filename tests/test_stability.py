"""What keeps deep hierarchies training: free bits per layer, gradient-norm clipping and the skipping of outlier
updates (Kingma et al. 2016; Vahdat & Kautz 2020; Child 2021)."""

from __future__ import annotations

import pytest
import torch

import vaekit
from vaekit import objectives
from vaekit.cli import main
from vaekit.errors import ConfigError, TrainingError
from vaekit.training.steps import StepOptions, _clip, make_optimizer, train_step

from conftest import digits_config

LADDER = {"model.latent_dim": 3, "model.lower_latent_dims": [5, 6]}


def ladder() -> vaekit.VAE:
    torch.manual_seed(0)
    return vaekit.VAE(digits_config(**{**LADDER, "model.data_shape": [1, 8, 8]}).model)


def test_free_bits_per_layer_floor_each_layers_dimensions_at_their_own_value():
    model, x = ladder(), torch.rand(16, 1, 8, 8)
    floors = (0.5, 0.0, 0.2)
    torch.manual_seed(3)
    terms = objectives.elbo(model, x, free_bits=floors)
    torch.manual_seed(3)
    out = model(x)
    kl_j = out.kl_per_dimension().mean(0)  # (14,)
    top, middle, bottom = kl_j.split([3, 5, 6])
    expected = top.clamp(min=0.5).sum() + middle.sum() + bottom.clamp(min=0.2).sum()
    recon = -out.px_z.log_prob(x).mean()
    torch.testing.assert_close(terms.loss, recon + expected)
    torch.testing.assert_close(terms.kl, kl_j.sum())  # the reported KL is the true one
    assert terms.loss > recon + kl_j.sum()  # a random model's top KL is below 0.5 nats per dimension somewhere
    torch.manual_seed(3)
    same = objectives.elbo(model, x, free_bits=0.5)  # one value for all layers = that value for each
    torch.manual_seed(3)
    torch.testing.assert_close(same.loss, objectives.elbo(model, x, free_bits=(0.5, 0.5, 0.5)).loss)


def test_free_bits_per_layer_need_one_value_per_layer():
    with pytest.raises(ConfigError, match=r"train.free_bits_per_layer = \(0.1, 0.0\) .* one number per "
                                          r"stochastic layer \(3"):
        digits_config(**LADDER, **{"train.free_bits_per_layer": [0.1, 0]})
    with pytest.raises(ConfigError, match=r"empty when train\.free_bits is set"):
        digits_config(**LADDER, **{"train.free_bits_per_layer": [0.1, 0, 0], "train.free_bits": 0.1})
    with pytest.raises(ValueError, match="free bits for 2 layers given to a model with 3"):
        objectives.elbo(ladder(), torch.rand(2, 1, 8, 8), free_bits=(0.1, 0.1))


def test_clipping_rescales_the_gradient_to_the_bound_and_reports_the_norm_before():
    model, x = ladder(), torch.rand(16, 1, 8, 8)
    opt = make_optimizer(model, 1e-3)
    objectives.elbo(model, x).loss.backward()
    grads = [p.grad.clone() for p in model.parameters() if p.grad is not None]
    before = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in grads]))
    assert before > 1.0
    norm = _clip(opt, 1.0)
    torch.testing.assert_close(norm, before)
    after = [p.grad for p in model.parameters() if p.grad is not None]
    total = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(g) for g in after]))
    torch.testing.assert_close(total, torch.tensor(1.0), rtol=1e-4, atol=0)
    for g, a in zip(grads, after, strict=True):  # the direction is kept
        torch.testing.assert_close(a, g / before, rtol=1e-4, atol=1e-7)
    torch.testing.assert_close(_clip(opt, 0.0), total)  # 0: measure only


def test_an_update_with_an_outlier_gradient_norm_is_skipped_and_a_normal_one_taken():
    model, x = ladder(), torch.rand(16, 1, 8, 8)
    opt = make_optimizer(model, 1e-2)
    before = [p.detach().clone() for p in model.parameters()]
    terms = train_step(model, opt, x, 1.0, options=StepOptions(skip_nonfinite=True, grad_skip=1e-6))
    assert torch.isnan(terms).all()
    assert all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))
    terms = train_step(model, opt, x, 1.0, options=StepOptions(skip_nonfinite=True, grad_skip=1e9))
    assert torch.isfinite(terms).all()
    assert not all(torch.equal(p, b) for p, b in zip(model.parameters(), before, strict=True))


def test_a_run_that_skips_too_many_outlier_updates_stops_and_names_the_setting():
    cfg = digits_config(**{"train.grad_skip": 1e-6, "train.max_skipped_steps": 3})
    with pytest.raises(TrainingError, match=r"gradient norm above train.grad_skip\) and was skipped"):
        vaekit.train(cfg)


@pytest.mark.parametrize("fused", [True, False])
def test_a_clipped_run_records_the_same_terms_and_trains(fused):
    cfg = digits_config(**{"train.grad_clip": 5.0, "train.epochs": 3, "train.fused_step": fused})
    result = vaekit.train(cfg)
    first, last = result.history[0]["train_neg_elbo"], result.history[-1]["train_neg_elbo"]
    assert last < first


def test_the_cli_trains_a_hierarchy_with_free_bits_per_layer_and_clipping(tmp_path, capsys):
    out = tmp_path / "run"
    main(["train", "--dataset", "digits", "--epochs", "1", "--hidden", "16", "--latent-dim", "2",
          "--lower-latent-dims", "3", "--free-bits-per-layer", "0.25,0", "--grad-clip", "50", "--grad-skip",
          "1e6", "--out", str(out), "--device", "cpu"])
    config = vaekit.load_config(out)
    assert config.model.lower_latent_dims == (3,)
    assert config.train.free_bits_per_layer == (0.25, 0.0)
    assert (config.train.grad_clip, config.train.grad_skip) == (50.0, 1e6)
    with pytest.raises(SystemExit):
        main(["train", "--dataset", "digits", "--free-bits-per-layer", "a,b"])
    assert "expected comma-separated numbers" in capsys.readouterr().err
