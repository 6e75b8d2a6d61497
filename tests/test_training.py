"""The training loop learns, is reproducible, and stops cleanly on a non-finite loss."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vaekit
from vaekit import TrainingError, VaekitError, data, devices
from vaekit.objectives import elbo
from vaekit.training import loop
from vaekit.training.steps import batch_bounds, make_optimizer, train_step

from conftest import digits_config, split_sizes, tiny_model


def test_a_few_steps_on_one_batch_lower_its_loss():
    model = tiny_model(shape=(1, 8, 8), latent=4, hidden=(64,))
    x = (torch.rand(32, 1, 8, 8) > 0.5).float()
    opt = make_optimizer(model, 1e-2)
    torch.manual_seed(0)
    before = elbo(model, x).loss.item()
    for _ in range(100):
        train_step(model, opt, x, beta=1.0)
    torch.manual_seed(0)
    after = elbo(model, x).loss.item()
    assert after < before - 5


def test_batch_bounds_cover_every_example_once():
    assert batch_bounds(10, 4, drop_last=False) == [(0, 4), (4, 8), (8, 10)]
    assert batch_bounds(10, 4, drop_last=True) == [(0, 4), (4, 8)]
    assert batch_bounds(8, 4, drop_last=False) == [(0, 4), (4, 8)]


def test_training_on_digits_improves_and_writes_metrics(tmp_path):
    from vaekit.previews import PreviewWriter

    cfg = digits_config(**{"train.epochs": 4})
    result = vaekit.train(cfg, tmp_path, callbacks=[PreviewWriter(tmp_path)])  # the CLI installs it
    hist = result.history
    assert [r["epoch"] for r in hist] == [1, 2, 3, 4]
    assert hist[-1]["train_neg_elbo"] < hist[0]["train_neg_elbo"]
    assert hist[-1]["val_neg_elbo"] < hist[0]["val_neg_elbo"]
    for r in hist:
        assert r["train_neg_elbo"] == pytest.approx(r["train_recon"] + r["train_kl"])
        assert r["val_neg_elbo"] == pytest.approx(r["val_recon"] + r["val_kl"])
    lines = [json.loads(s) for s in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert lines == json.loads(json.dumps(hist))
    assert {p.name for p in tmp_path.iterdir()} == {
        "config.json", "model.safetensors", "metrics.jsonl", "reconstructions.png", "samples.png",
        "latest.json", "checkpoints",  # the pointer to the current checkpoint set, and the set (see test_resume)
        ".vaekit-lock"}  # the one writer's lock (test_hostile_files)
    assert result.config.model.data_shape == (1, 8, 8)


def test_the_recorded_validation_elbo_is_the_models_elbo_computed_independently():
    """The last epoch's validation KL is the closed-form KL of the final model's posteriors (Kingma & Welling
    2014, appendix B) and its reconstruction term a Monte-Carlo estimate over 256 draws per input, so a wrong or
    missing term in what the loop records shows (the record uses one draw: 4 standard errors of slack)."""
    cfg = digits_config(**{"train.epochs": 3})
    result = vaekit.train(cfg)
    x = data.load(cfg.data).val.x
    model = result.model.eval()
    with torch.no_grad():
        q = model.encode(x)
        mu, var = q.base_dist.loc, q.base_dist.scale**2
        kl = 0.5 * (var + mu**2 - 1 - var.log()).sum(1)  # (N,)
        z = q.sample((256,))  # (256, N, L)
        logits = model.decode(z).base_dist.logits  # Bernoulli: -log p(x|z) is the summed BCE with logits
        bce = F.binary_cross_entropy_with_logits(logits, x.expand_as(logits), reduction="none").flatten(2).sum(2)
    recon, one_draw_se = bce.mean().item(), bce[0].std().item() / math.sqrt(len(x))
    last = result.history[-1]
    assert last["val_kl"] == pytest.approx(kl.mean().item(), rel=1e-5)
    assert last["val_kl"] > 0.5  # a term whose absence would show
    assert last["val_recon"] == pytest.approx(recon, abs=4 * one_draw_se)
    assert last["val_neg_elbo"] == pytest.approx(recon + kl.mean().item(), abs=4 * one_draw_se)


def test_same_seed_same_result_and_another_seed_differs():
    a = vaekit.train(digits_config()).model.state_dict()
    b = vaekit.train(digits_config()).model.state_dict()
    c = vaekit.train(digits_config(**{"train.seed": 2})).model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not all(torch.equal(a[k], c[k]) for k in a)


@pytest.mark.parametrize("mode", ["dynamic", "static", "threshold"])
def test_binarized_training_sees_the_binarization_it_asked_for(mode, monkeypatch):
    """What the optimizer steps on: 0/1 pixels; for threshold, exactly x > 0.5; for static, one Bernoulli draw
    of each image, the same every epoch; for dynamic, a fresh draw every epoch. Both draws average to the grey
    levels (E[Bernoulli(x)] = x). And training on them lowers the validation loss."""
    cfg = digits_config(**{"data.binarize": mode, "train.epochs": 2})
    steps = len(batch_bounds(split_sizes(cfg)["train"], cfg.train.batch_size, False))
    seen: list[torch.Tensor] = []
    real_step = loop.train_step

    def spy(model, opt, xb, *args):
        seen.append(xb.clone())
        return real_step(model, opt, xb, *args)

    monkeypatch.setattr(loop, "train_step", spy)
    history = vaekit.train(cfg).history
    grey = data.load(cfg.override({"data.binarize": "none"}).data).train.x  # the same images, not binarized
    epochs = [torch.cat(seen[:steps]), torch.cat(seen[steps:])]
    assert all(len(e) == len(grey) for e in epochs)  # every training image once per epoch

    def rows(x):
        return sorted(map(bytes, x.flatten(1).to(torch.uint8).numpy()))

    for e in epochs:
        assert set(e.unique().tolist()) <= {0.0, 1.0}
    if mode == "threshold":
        assert rows(epochs[0]) == rows(epochs[1]) == rows(grey > 0.5)
    else:
        assert (rows(epochs[0]) == rows(epochs[1])) == (mode == "static")
        assert rows(epochs[0]) != rows(grey > 0.5)
        for e in epochs:
            assert e.mean().item() == pytest.approx(grey.mean().item(), abs=0.01)
    assert history[1]["val_neg_elbo"] < history[0]["val_neg_elbo"]


def test_gaussian_likelihood_learns_its_variance():
    """With every sigma fixed at 1, -log p(x|z) >= D/2 log(2 pi) = 58.8 nats on 64 pixels; a learned-variance
    Gaussian that learns its scales ends well below that bound, and keeps improving."""
    result = vaekit.train(digits_config(**{"model.likelihood": "gaussian-learned", "train.epochs": 3}))
    val = [r["val_neg_elbo"] for r in result.history]
    assert all(math.isfinite(v) for v in val) and val[0] > val[1] > val[2]
    assert val[-1] < 64 / 2 * math.log(2 * math.pi) - 10


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_last_checkpoint(tmp_path, monkeypatch):
    cfg = digits_config(**{"train.epochs": 3, "train.checkpoint_every": 1})
    real_step = loop.train_step
    calls = {"n": 0}
    steps_per_epoch = len(batch_bounds(split_sizes(cfg)["train"], cfg.train.batch_size, False))

    def poisoned(*args):
        calls["n"] += 1
        terms = real_step(*args)
        if calls["n"] == steps_per_epoch + 3:  # epoch 2, step 3
            terms = terms.clone()
            terms[2] = float("nan")
            terms[0] = float("nan")
        return terms

    monkeypatch.setattr(loop, "train_step", poisoned)
    with pytest.raises(TrainingError, match=r"non-finite kl at epoch 2, step 3"):
        vaekit.train(cfg, tmp_path)
    saved = vaekit.load(tmp_path)  # the epoch-1 checkpoint is intact and loadable
    assert saved.data_shape == (1, 8, 8)
    lines = (tmp_path / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(s)["epoch"] for s in lines] == [1]


def test_bernoulli_on_data_outside_unit_interval_is_refused(monkeypatch):
    splits = data.load(digits_config().data)
    bad = data.Splits(data.Split(splits.train.x * 16, None, "train", "none"), None, splits.test)
    with pytest.raises(vaekit.DataError, match=r"needs .* in \[0, 1\], but it spans \[0, 16\]"):
        vaekit.train(digits_config(), splits=bad)


def test_cuda_without_gpu_is_a_clear_error():
    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    with pytest.raises(VaekitError, match="no CUDA GPU"):
        devices.resolve_device("cuda")


def test_bf16_autocast_trains_with_fp32_loss_close_to_fp32():
    """bf16 is really in force (the networks' linear layers compute in bfloat16 during training, never in the
    fp32 run) and changes the numbers only by rounding: every epoch within 0.1% of fp32 (measured: 2e-5)."""
    dtypes: dict[str, set] = {"fp32": set(), "bf16": set()}
    runs = {}
    for precision in dtypes:
        hook = torch.nn.modules.module.register_module_forward_hook(
            lambda module, args, out, p=precision: dtypes[p].add(out.dtype) if isinstance(module, nn.Linear) else None)
        try:
            runs[precision] = vaekit.train(digits_config(**{"train.epochs": 3, "train.precision": precision,
                                                            "train.fused_step": False}))  # autograd's path
        finally:
            hook.remove()
    assert torch.bfloat16 in dtypes["bf16"] and torch.bfloat16 not in dtypes["fp32"]
    fp32, bf16 = runs["fp32"], runs["bf16"]
    assert all(p.dtype == torch.float32 for p in bf16.model.parameters())
    for a, b in zip(fp32.history, bf16.history, strict=True):
        assert b["val_neg_elbo"] == pytest.approx(a["val_neg_elbo"], rel=1e-3)  # bf16 rounding, not another model
    x = torch.rand(4, 1, 8, 8)
    with torch.autocast("cpu", torch.bfloat16):
        out = bf16.model(x)
        assert out.latents[0].qz_x.mean.dtype == torch.float32 and out.px_z.log_prob(x).dtype == torch.float32


def test_epoch_records_report_beta_kl_per_dimension_and_active_units():
    cfg = digits_config(**{"train.epochs": 3, "train.kl_warmup_epochs": 2, "train.beta": 2.0})
    history = vaekit.train(cfg).history
    assert [r["beta"] for r in history] == [1.0, 2.0, 2.0]  # linear over the first two epochs, then flat
    for r in history:
        assert len(r["kl_per_dim"]) == 4 and all(v >= 0 for v in r["kl_per_dim"])
        assert 0 <= r["active_units"] <= 4


def test_warmup_by_steps_starts_near_zero():
    cfg = digits_config(**{"train.epochs": 1, "train.kl_warmup_steps": 1000})
    steps = len(batch_bounds(split_sizes(cfg)["train"], cfg.train.batch_size, False))
    assert vaekit.train(cfg).history[0]["beta"] == pytest.approx(steps / 1000)


def test_iwae_objective_and_free_bits_train():
    for extra in ({"train.objective": "iwae", "train.iw_k": 5}, {"train.free_bits": 0.5}):
        history = vaekit.train(digits_config(**{"train.epochs": 3, **extra})).history
        assert history[-1]["train_neg_elbo"] < history[0]["train_neg_elbo"], extra


def test_iwae_objective_refuses_free_bits():
    with pytest.raises(TrainingError, match="free_bits"):
        vaekit.train(digits_config(**{"train.objective": "iwae", "train.free_bits": 0.5}))


def test_conditional_needs_labels():
    cfg = digits_config(**{"model.conditional": True})
    splits = data.load(cfg.data)
    unlabelled = dataclasses.replace(splits, train=dataclasses.replace(splits.train, y=None))
    with pytest.raises(TrainingError, match="labelled data"):
        vaekit.train(cfg, splits=unlabelled)


def test_conditional_conv_model_trains_saves_and_evaluates(tmp_path):
    cfg = digits_config(**{"model.conditional": True, "model.arch": "conv", "model.channels": [4, 8],
                           "train.epochs": 2})
    from vaekit.previews import PreviewWriter

    result = vaekit.train(cfg, tmp_path, callbacks=[PreviewWriter(tmp_path)])
    assert result.config.model.labels == tuple(str(d) for d in range(10))
    loaded = vaekit.load(tmp_path)
    x, y = torch.rand(3, 1, 8, 8), torch.tensor([0, 5, 9])
    torch.testing.assert_close(loaded.reconstruct(x, y), result.model.eval().reconstruct(x, y))
    metrics = vaekit.evaluate(tmp_path, iw_samples=5, device="cpu")
    assert metrics["conditional"] and metrics["nll"] <= metrics["neg_elbo"] + 1e-3
    assert (tmp_path / "samples.png").exists()


def test_an_image_run_of_few_optimizer_steps_says_it_will_end_undertrained(caplog):
    import logging

    cfg = digits_config(**{"train.epochs": 1})
    steps = math.ceil(split_sizes(cfg)["train"] / cfg.train.batch_size)
    with caplog.at_level(logging.WARNING, logger="vaekit"):
        vaekit.train(cfg)
    assert f"this run takes only {steps} optimizer steps (1 epochs of {steps})" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="vaekit"):
        vaekit.train(digits_config(**{"train.epochs": 1, "train.batch_size": 2}))  # hundreds of steps
    assert "optimizer steps" not in caplog.text


def test_a_run_length_in_steps_becomes_whole_epochs_and_resumes_by_epochs(tmp_path):
    cfg = digits_config(**{"train.steps": 50, "train.epochs": 7})
    epochs = math.ceil(50 / math.ceil(split_sizes(cfg)["train"] / cfg.train.batch_size))  # 3 epochs of 21 steps
    assert epochs < 7
    result = vaekit.train(cfg, tmp_path / "run")
    assert len(result.history) == epochs  # the step count decides, not epochs
    assert (result.config.train.epochs, result.config.train.steps) == (epochs, 0)
    assert vaekit.load_run(tmp_path / "run")[1].train.epochs == epochs
    assert len(vaekit.resume(tmp_path / "run", {"train.epochs": epochs + 1}).history) == epochs + 1
    with pytest.raises(vaekit.ConfigError, match=r"train\.steps = -1 .* an integer >= 0"):
        digits_config(**{"train.steps": -1})


def test_binarizing_a_part_is_bernoulli_on_the_whole_batch_draw_for_draw():
    """Each process thresholds its rows of one uniform draw for the whole batch: together the parts are
    torch.bernoulli of the batch, and every process's generator ends where the single process's does."""
    from vaekit.training.loop import binarize_part

    p = torch.rand(10, 1, 6, 6)
    whole = torch.bernoulli(p, generator=(g := torch.Generator().manual_seed(7)))
    after = torch.rand(3, generator=g)
    parts = []
    for a, b in ((0, 3), (3, 7), (7, 10)):  # three processes' parts
        gen = torch.Generator().manual_seed(7)
        parts.append(binarize_part(p[a:b], gen, 10, a))
        assert torch.equal(torch.rand(3, generator=gen), after)
    assert torch.equal(torch.cat(parts), whole)
