"""Anomaly scores are deterministic and rank outliers high; thresholds are stored with the model."""

from __future__ import annotations

import json
import logging

import numpy as np
import pytest
import torch

import vaekit
from vaekit import anomaly, checkpoint
from vaekit.cli import main

from conftest import digits_config, tiny_model


@pytest.mark.parametrize("method", ["elbo", "nll", "recon", "kl"])
def test_scores_are_deterministic_and_leave_the_random_state(method):
    model = tiny_model("gaussian", shape=(6,))
    x = torch.randn(30, 6)
    torch.manual_seed(3)
    before = torch.rand(2)
    torch.manual_seed(3)
    a = anomaly.score(model, x, method, 20 if method == "nll" else 4)
    assert torch.equal(torch.rand(2), before)
    b = anomaly.score(model, x, method, 20 if method == "nll" else 4)
    assert a.shape == (30,) and torch.isfinite(a).all()
    torch.testing.assert_close(a, b)


def test_recon_score_is_the_squared_reconstruction_error():
    model = tiny_model("gaussian", shape=(6,))
    x = torch.randn(5, 6)
    expected = ((x - model.reconstruct(x)) ** 2).sum(1)
    torch.testing.assert_close(anomaly.score(model, x, "recon"), expected)


def test_kl_score_is_the_posteriors_divergence_from_the_prior_and_the_elbos_other_term():
    model = tiny_model("gaussian", shape=(6,))
    x = torch.randn(5, 6) * 3
    q = model(x, mean=True).latents[0].qz_x
    mu, var = q.mean, q.variance  # a diagonal Gaussian against N(0, I): the closed form
    expected = 0.5 * (mu**2 + var - 1 - var.log()).sum(-1)
    torch.testing.assert_close(anomaly.score(model, x, "kl"), expected)
    noise = torch.randn(4, model.noise_dim, generator=torch.Generator().manual_seed(0))  # score()'s draws
    recon = -torch.stack([model(x, eps=e[None]).px_z.log_prob(x)[0] for e in noise]).mean(0)
    torch.testing.assert_close(anomaly.score(model, x, "elbo", 4) - anomaly.score(model, x, "kl", 4), recon)


def test_threshold_rules():
    s = torch.randperm(1000).float()  # distinct scores in no order
    for c in (0.01, 0.1, 0.25):  # the contamination fraction lies above the threshold
        assert (s > anomaly.threshold_from(s, contamination=c)).float().mean() == pytest.approx(c)
    for q in (0.5, 0.9):  # and the quantile's fraction at or below it
        assert (s <= anomaly.threshold_from(s, quantile=q)).float().mean() == pytest.approx(q, abs=1e-3)
    with pytest.raises(vaekit.ConfigError):
        anomaly.threshold_from(s, 0.1, 0.5)
    with pytest.raises(vaekit.ConfigError):
        anomaly.threshold_from(s, contamination=1.5)


def test_a_threshold_round_trips_stamped_with_its_model(tmp_path):
    run = tmp_path / "run"
    vaekit.train(digits_config(**{"train.epochs": 1}), run)
    t = anomaly.Threshold(12.5, "elbo", 10, "contamination 0.1 of the val split")  # positional, as before
    anomaly.save_threshold(run, t)
    loaded = anomaly.load_threshold(run)
    assert loaded == anomaly.Threshold(12.5, "elbo", 10, "contamination 0.1 of the val split",
                                       checkpoint.model_digest(run))
    assert anomaly.load_threshold(checkpoint.resolve(run)) == loaded
    assert json.loads((run / "anomaly.json").read_text())["model_sha256"] == loaded.model_sha256


def test_a_threshold_is_not_applied_to_the_model_that_replaced_its_own(tmp_path, caplog):
    """Retraining over the directory leaves anomaly.json behind; its stamp no longer matches: None, warned."""
    run = tmp_path / "run"
    vaekit.train(digits_config(**{"train.epochs": 1}), run)
    anomaly.save_threshold(run, anomaly.Threshold(12.5, "elbo", 10, "contamination 0.1 of the val split"))
    vaekit.train(digits_config(**{"train.epochs": 1, "train.seed": 1}), run)
    assert (run / "anomaly.json").exists()
    with caplog.at_level(logging.WARNING, logger="vaekit.anomaly"):
        assert anomaly.load_threshold(run) is None
    assert "anomaly.json" in caplog.text and "fitted for another model" in caplog.text
    model = vaekit.load(run)  # a plain save of other weights over it is refused likewise
    checkpoint.save(model, checkpoint.load_config(run), run)
    assert anomaly.load_threshold(run) is None


def test_a_threshold_without_a_stamp_is_ignored_with_a_warning(tmp_path, caplog):
    """A file written before thresholds were stamped cannot be checked against the model, so it is not used."""
    model = tiny_model()
    checkpoint.save(model, vaekit.Config(model=model.config), tmp_path)
    doc = {"value": 1.0, "score": "elbo", "n_samples": 10, "rule": "quantile 0.9"}
    (tmp_path / "anomaly.json").write_text(json.dumps(doc))
    with caplog.at_level(logging.WARNING, logger="vaekit.anomaly"):
        assert anomaly.load_threshold(tmp_path) is None
    assert "records no model" in caplog.text
    (tmp_path / "anomaly.json").write_text(json.dumps({**doc, "model_sha256": checkpoint.model_digest(tmp_path)}))
    assert anomaly.load_threshold(tmp_path).value == 1.0  # the old format plus the stamp is read


def test_anomaly_command_on_a_table_with_planted_outliers(tmp_path, capsys):
    rng = np.random.default_rng(0)
    z = rng.normal(size=(600, 2))
    inliers = z @ rng.normal(size=(2, 8)) + 0.1 * rng.normal(size=(600, 8))  # near a 2-d plane
    outliers = rng.normal(scale=3, size=(30, 8))
    x = np.vstack([inliers, outliers])
    y = np.r_[np.zeros(600), np.ones(30)].astype(int)
    np.savez(tmp_path / "t.npz", X=x, y=y)
    run = tmp_path / "run"
    assert main(["train", "--dataset", str(tmp_path / "t.npz"), "--likelihood", "gaussian", "--obs-std", "1",
                 "--hidden", "32", "--latent-dim", "2", "--epochs", "20", "--batch-size", "64", "--quiet",
                 "--out", str(run)]) == 0
    capsys.readouterr()
    scores_csv, roc = tmp_path / "scores.csv", tmp_path / "roc.png"
    assert main(["anomaly", str(run), "--contamination", "0.05", "-o", str(scores_csv), "--roc", str(roc)]) == 0
    out = capsys.readouterr().out
    assert "threshold" in out and (run / "anomaly.json").exists()
    auc = float(out.split("ROC AUC ")[1].split(",")[0])
    assert auc > 0.9  # planted outliers off the plane are found
    table = np.loadtxt(scores_csv, delimiter=",", skiprows=1)
    assert table.shape[1] == 3 and set(np.unique(table[:, 2])) <= {0, 1}
    assert roc.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    # scoring a new file uses the stored standardization and threshold
    np.save(tmp_path / "new.npy", np.vstack([inliers[:5], outliers[:5]]))
    assert main(["anomaly", str(run), "--input", str(tmp_path / "new.npy"), "-o", str(tmp_path / "new.csv")]) == 0
    new = np.loadtxt(tmp_path / "new.csv", delimiter=",", skiprows=1)
    assert new[5:, 1].mean() > new[:5, 1].mean()
    assert main(["anomaly", str(run), "--score", "recon", "-o", str(tmp_path / "r.csv")]) == 2
    assert "stored threshold is for --score elbo" in capsys.readouterr().err


def test_scores_do_not_depend_on_the_batch_or_order():
    model = tiny_model("gaussian", shape=(6,))
    x = torch.randn(40, 6)
    for method in ("elbo", "nll"):
        full = anomaly.score(model, x, method, 16 if method == "nll" else 5)
        part = anomaly.score(model, x[7:19].flip(0), method, 16 if method == "nll" else 5, batch_size=4)
        torch.testing.assert_close(part, full[7:19].flip(0), rtol=1e-5, atol=1e-5)


def test_pixel_maps_sum_to_their_scores():
    model = tiny_model("bernoulli", shape=(1, 4, 4))
    x = torch.rand(6, 1, 4, 4)
    heat = anomaly.pixel_map(model, x, "recon")
    assert heat.shape == (6, 4, 4) and (heat >= 0).all()
    torch.testing.assert_close(heat.sum((1, 2)), anomaly.score(model, x, "recon"))
    nll = anomaly.pixel_map(model, x, "elbo")
    torch.testing.assert_close(nll.sum((1, 2)), -model.decode(model.encode(x).mean).log_prob(x).detach())


def test_heatmap_of_the_worst_images(tmp_path, capsys):
    from conftest import digits_config

    run = tmp_path / "run"
    vaekit.train(digits_config(**{"train.epochs": 2}), run)
    png = tmp_path / "heat.png"
    assert main(["anomaly", str(run), "-o", str(tmp_path / "s.csv"), "--heatmap", str(png), "--worst", "5",
                 "--normal-label", "0"]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "ROC AUC" in capsys.readouterr().out
