"""The command line end to end on the bundled digits data, and its error messages."""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

import vaekit
from vaekit import anomaly, data, embedding, generate, plots
from vaekit.cli import main
from vaekit.evaluation import evaluate_model

from conftest import split_sizes

SMALL = ["--dataset", "digits", "--epochs", "2", "--hidden", "32", "--latent-dim", "4", "--quiet"]


def test_train_evaluate_sample_reconstruct(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--out", str(run), "--seed", "3"]) == 0
    assert (run / "config.json").exists() and (run / "samples.png").exists()
    cfg = vaekit.load_config(run)
    assert (cfg.train.seed, cfg.model.latent_dim, cfg.model.hidden) == (3, 4, (32,))
    capsys.readouterr()
    assert main(["evaluate", str(run), "--iw-samples", "8", "--json", "--device", "cpu"]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["n"] == split_sizes(cfg)["test"] and result["iw_samples"] == 8 and result["binarization"] == "none"
    assert main(["evaluate", str(run), "--iw-samples", "8"]) == 0
    table = capsys.readouterr().out
    assert "negative ELBO" in table and "NLL (K=8)" in table and "active units" in table
    assert main(["sample", str(run), "-n", "16", "-o", str(tmp_path / "s.png")]) == 0
    assert main(["reconstruct", str(run), "-n", "8", "-o", str(tmp_path / "r.png")]) == 0
    assert (tmp_path / "s.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert (tmp_path / "r.png").stat().st_size > 0


def test_flags_override_config_file_which_overrides_preset(tmp_path):
    (tmp_path / "c.json").write_text(json.dumps({"model": {"latent_dim": 7, "hidden": [16]}}))
    run = tmp_path / "run"
    argv = ["train", "--preset", "seed", "--config", str(tmp_path / "c.json"), "--dataset", "digits",
            "--epochs", "1", "--latent-dim", "5", "--set", "train.eval_batch_size=50", "--quiet", "--out", str(run)]
    assert main(argv) == 0
    cfg = vaekit.load_config(run)
    assert cfg.model.latent_dim == 5  # flag beats file
    assert cfg.model.hidden == (16,)  # file beats preset
    assert cfg.data.val_size == 0  # preset beats default
    assert cfg.train.eval_batch_size == 50


def test_existing_checkpoint_is_not_overwritten_without_asking(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--out", str(run)]) == 0
    before = (run / "model.safetensors").read_bytes()
    assert main(["train", *SMALL, "--out", str(run), "--seed", "9"]) == 2
    assert "already holds a checkpoint" in capsys.readouterr().err
    assert (run / "model.safetensors").read_bytes() == before
    assert main(["train", *SMALL, "--out", str(run), "--seed", "9", "--overwrite"]) == 0
    assert (run / "model.safetensors").read_bytes() != before


@pytest.mark.parametrize(("argv", "message"), [
    (["train", "--dataset", "cifar"], "unknown dataset 'cifar'; valid datasets: digits, fashion-mnist, mnist"),
    (["train", "--preset", "vq"],
     "unknown preset 'vq'; valid presets: conv, hvae, hvae-conv, hvae-spatial, iaf, iwae, outliers, seed, vamp"),
    (["train", "--dataset", "digits", "--activation", "swishy"], "unknown activation 'swishy'"),
    (["train", "--dataset", "digits", "--likelihood", "poisson"], "unknown likelihood 'poisson'"),
    (["train", "--set", "model.depth=3"], "unknown config key 'model.depth'"),
    (["evaluate", "/nonexistent/run"], "checkpoint directory /nonexistent/run does not exist"),
])
def test_errors_are_one_line_without_traceback(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(argv + (["--quiet"] if argv[0] == "train" else [])) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_missing_mnist_explains_both_ways_to_get_it(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert main(["train", "--dataset", "mnist", "--data-dir", str(tmp_path / "nowhere"), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert str(tmp_path / "nowhere" / "mnist") in err
    assert "train-images-idx3-ubyte" in err and "--download" in err and "VAEKIT_DATA" in err


def test_console_script_and_module_entry_point(tmp_path):
    out = subprocess.run([sys.executable, "-m", "vaekit", "--help"], capture_output=True, text=True, check=True)
    assert "train" in out.stdout and "evaluate" in out.stdout


def test_conditional_conv_model_from_the_command_line(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *SMALL, "--arch", "conv", "--conv-channels", "4,8", "--conditional",
                 "--kl-warmup-epochs", "1", "--free-bits", "0.1", "--out", str(run)]) == 0
    cfg = vaekit.load_config(run)
    assert (cfg.model.arch, cfg.model.channels, cfg.model.conditional) == ("conv", (4, 8), True)
    assert (cfg.train.kl_warmup_epochs, cfg.train.free_bits) == (1.0, 0.1)
    capsys.readouterr()
    assert main(["sample", str(run), "-o", str(tmp_path / "all.png"), "--nrow", "5"]) == 0
    assert "one row per label: 0, 1, 2" in capsys.readouterr().out
    assert main(["sample", str(run), "--label", "7", "-n", "4", "-o", str(tmp_path / "sevens.png")]) == 0
    assert main(["sample", str(run), "--label", "x", "-o", str(tmp_path / "x.png")]) == 2
    assert "unknown label 'x'" in capsys.readouterr().err
    assert main(["evaluate", str(run), "--iw-samples", "4", "--device", "cpu"]) == 0
    assert main(["reconstruct", str(run), "-n", "8", "-o", str(tmp_path / "r.png")]) == 0


@pytest.fixture(scope="module")
def conditional_run(tmp_path_factory):
    run = tmp_path_factory.mktemp("cond") / "run"
    assert main(["train", *SMALL, "--conditional", "--out", str(run)]) == 0
    return run


def test_every_analysis_command_takes_a_conditional_model(conditional_run, tmp_path, capsys):
    """Dataset inputs are encoded with their own labels; commands that decode need --label (or --base)."""
    run = tmp_path / "run"
    shutil.copytree(conditional_run, run)  # anomaly --contamination stores a threshold in the run
    out = lambda name: str(tmp_path / name)  # noqa: E731
    commands = [
        ["embed", str(run), "-o", out("z.npz"), "--probe", "--plot", out("map.png")],
        ["anomaly", str(run), "-o", out("s.csv"), "--contamination", "0.05", "--normal-label", "3",
         "--heatmap", out("heat.png")],
        ["interpolate", str(run), "--from", "0", "--to", "5", "--label", "4", "-o", out("i.png")],
        ["traverse", str(run), "--base", "3", "-o", out("t.png")],
        ["traverse", str(run), "--label", "7", "-o", out("t7.png")],
        ["sample", str(run), "--sampler", "gmm", "--components", "3", "-o", out("gmm.png")],
    ]
    for argv in commands:
        assert main(argv) == 0, argv
    for name in ("z.npz", "map.png", "s.csv", "heat.png", "i.png", "t.png", "t7.png", "gmm.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    assert "ROC AUC" in capsys.readouterr().out
    assert main(["interpolate", str(run), "--from", "0", "--to", "5", "-o", out("x.png")]) == 2
    assert "interpolate needs --label (labels: 0, 1, 2" in capsys.readouterr().err
    assert main(["traverse", str(run), "-o", out("x.png")]) == 2
    assert "traverse needs --label or --base" in capsys.readouterr().err


def wrong(y: torch.Tensor) -> torch.Tensor:
    """Every input given another class's label."""
    return (y + 1) % 10


def assert_same_not_wrong(got, own, other, rtol: float, what: str) -> None:
    """``got`` (the command's output) is ``own`` (the library with each input's label) to ``rtol``, and ``other``
    (the library with wrong labels) is far outside that tolerance."""
    got, own, other = (torch.as_tensor(np.asarray(v, dtype=np.float64)) for v in (got, own, other))
    torch.testing.assert_close(got, own, rtol=rtol, atol=rtol, msg=what)
    assert (own - other).abs().max() > 100 * rtol * max(1.0, float(own.abs().max())), what


class Captured:
    """Wraps a plots function: remembers the images each call drew, then draws them."""

    def __init__(self, real) -> None:
        self.real, self.images = real, []

    def __call__(self, images, *args, **kwargs):
        self.images.append(images.detach().clone())
        return self.real(images, *args, **kwargs)


def test_conditional_analysis_outputs_are_the_library_with_each_inputs_own_label(conditional_run, tmp_path, capsys,
                                                                                  monkeypatch):
    """evaluate, anomaly, embed, reconstruct and sample --sampler gmm give what the library gives when every
    dataset input is encoded with its own label, and not what it gives with wrong labels."""
    run, out = str(conditional_run), lambda name: str(tmp_path / name)
    model, config = vaekit.load_run(conditional_run)
    splits = data.load(config.data)
    test, train = (data.evaluation_split(splits, s, config.data) for s in ("test", "train"))
    x, y = test.x, test.y

    capsys.readouterr()
    assert main(["evaluate", run, "--iw-samples", "8", "--json", "--device", "cpu"]) == 0
    got = json.loads(capsys.readouterr().out)
    own, other = (evaluate_model(model, x, 8, config.data.eval_seed, labels, config.train.eval_batch_size)
                  for labels in (y, wrong(y)))
    keys = ["neg_elbo", "recon", "kl", "nll"]
    assert_same_not_wrong([got[k] for k in keys], [own[k] for k in keys], [other[k] for k in keys], 1e-6, "evaluate")

    assert main(["anomaly", run, "-o", out("s.csv"), "--samples", "4"]) == 0
    table = np.genfromtxt(out("s.csv"), delimiter=",", names=True)
    np.testing.assert_array_equal(table["index"], np.arange(len(x)))
    assert_same_not_wrong(table["score"], anomaly.score(model, x, "elbo", 4, y=y),
                          anomaly.score(model, x, "elbo", 4, y=wrong(y)), 1e-5, "anomaly")  # CSV: 6 digits

    assert main(["embed", run, "-o", out("z.npz")]) == 0
    z = np.load(out("z.npz"))
    np.testing.assert_array_equal(z["labels"], y.numpy())
    assert_same_not_wrong(z["z"], embedding.posterior_means(model, x, y=y),
                          embedding.posterior_means(model, x, y=wrong(y)), 1e-6, "embed")

    monkeypatch.setattr(plots, "save_grid", grid := Captured(plots.save_grid))
    assert main(["reconstruct", run, "-n", "8", "-o", out("r.png")]) == 0
    (drawn,) = grid.images  # the 8 inputs, then their 8 reconstructions
    torch.testing.assert_close(drawn[:8], x[:8])
    assert_same_not_wrong(drawn[8:], model.reconstruct(x[:8], y[:8]), model.reconstruct(x[:8], wrong(y[:8])), 1e-6,
                          "reconstruct")

    monkeypatch.setattr(plots, "labelled_grid", grid := Captured(plots.labelled_grid))
    assert main(["sample", run, "--sampler", "gmm", "--components", "3", "--nrow", "2", "--seed", "5",
                 "-o", out("gmm.png")]) == 0
    (drawn,) = grid.images  # 2 samples of each class from the mixture fitted to mu(x_train, y_train)
    own, other = (generate.sample_per_label(model, 2, 1.0, 5, generate.fit_latent_gmm(model, train.x, 3, 5, labels))
                  for labels in (train.y, wrong(train.y)))
    assert_same_not_wrong(drawn, own, other, 1e-6, "sample --sampler gmm")


def test_iwae_objective_from_the_command_line_trains_on_minus_the_iwae_bound(tmp_path, monkeypatch):
    """--objective iwae --k 3, one batch of every training example and one epoch: the loss the loop records is
    -L_3 of that batch, computed here by hand from the weights and random state the step began with, and Adam's
    first step, -lr * g / (|g| + eps), moves the weights against the gradient g of that -L_3."""
    from vaekit.training import loop

    began = {}
    real_step = loop.train_step

    def spy(model, opt, x, *args):
        began.setdefault("state", {k: v.clone() for k, v in model.state_dict().items()})
        began.setdefault("x", x.clone())
        began.setdefault("rng", torch.get_rng_state())
        return real_step(model, opt, x, *args)

    monkeypatch.setattr(loop, "train_step", spy)
    run, k = tmp_path / "run", 3
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--hidden", "32", "--latent-dim", "4", "--quiet",
                 "--objective", "iwae", "--k", str(k), "--batch-size", "4096", "--out", str(run)]) == 0
    config = vaekit.load_config(run)
    assert (config.train.objective, config.train.iw_k) == ("iwae", k)
    (record,) = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    x = began["x"]
    assert len(x) == split_sizes(config)["train"]  # the one step saw every training example

    model = vaekit.VAE(config.model)
    model.load_state_dict(began["state"])
    torch.set_rng_state(began["rng"])
    qz_x = model.encode(x)
    z = qz_x.rsample((k,))  # (k, B, L)
    log_w = model.decode(z).log_prob(x) + model.prior().log_prob(z) - qz_x.log_prob(z)  # (k, B)
    neg_bound = -(torch.logsumexp(log_w, 0) - math.log(k)).mean()
    assert record["train_loss"] == pytest.approx(neg_bound.item(), rel=1e-5)
    neg_bound.backward()
    after = vaekit.load(run).state_dict()
    for name, p in model.named_parameters():
        adam_first_step = -config.train.lr * p.grad / (p.grad.abs() + 1e-8)
        torch.testing.assert_close(after[name] - began["state"][name], adam_first_step, rtol=0, atol=2e-5, msg=name)


def test_version_is_printed_without_a_command(capsys):
    import vaekit

    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0
    assert capsys.readouterr().out.startswith(f"vaekit {vaekit.__version__} (torch ")


def test_threads_sets_pytorchs_cpu_threads(tmp_path, capsys):
    import torch

    before = torch.get_num_threads()
    try:
        assert main(["--threads", "1", "train", "--dataset", "digits", "--epochs", "1", "--hidden", "8",
                     "--latent-dim", "2", "--quiet", "--out", str(tmp_path / "run"), "--device", "cpu"]) == 0
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(SystemExit):
        main(["--threads", "0", "train"])
    assert "expected a whole number >= 1" in capsys.readouterr().err


def test_presets_lists_each_presets_settings_against_the_defaults(capsys):
    assert main(["presets", "hvae-conv"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hvae-conv:")
    assert "model.arch                   conv  (default mlp)" in out
    assert "model.lower_latent_dims      32,64  (default none)" in out
    assert main(["presets"]) == 0 and "outliers:" in capsys.readouterr().out
    assert main(["presets", "nope"]) == 2
    assert "valid presets" in capsys.readouterr().err


def test_train_help_shows_defaults_and_examples(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    out = capsys.readouterr().out
    assert "(default 20)" in out and "examples:" in out and "vaekit presets" in out


def test_the_epoch_line_fits_an_80_column_terminal():
    from vaekit.cli.train import format_epoch

    record = {"epoch": 12, "train_neg_elbo": 98.1234, "val_neg_elbo": 99.031, "train_kl": 18.0123, "beta": 1.0,
              "active_units": 16, "latent_units": 50, "kl_per_dim": None, "time_s": 5.678}
    line = format_epoch(record, 100)
    assert line == "epoch  12/100  -ELBO 98.12 val 99.03  KL 18.01  beta 1  active 16/50  5.7s"
    wide = {**record, "epoch": 120, "train_neg_elbo": 1234.5678, "val_neg_elbo": 1240.25, "latent_units": 112}
    assert len(format_epoch(wide, 1000)) < 85  # four-digit bounds at a thousand epochs


def test_evaluate_takes_a_limit(tmp_path, capsys):
    run = str(tmp_path / "run")
    assert main(["train", "--dataset", "digits", "--epochs", "1", "--hidden", "8", "--latent-dim", "2",
                 "--quiet", "--out", run, "--device", "cpu"]) == 0
    capsys.readouterr()
    assert main(["evaluate", run, "--iw-samples", "2", "--limit", "7", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["n"] == 7
    assert main(["evaluate", run, "--limit", "0"]) == 2
    assert "limit must be a count >= 1" in capsys.readouterr().err


def test_plot_draws_a_runs_training_curves_and_names_a_bad_record(tmp_path, capsys):
    from PIL import Image

    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--epochs", "3", "--hidden", "8", "--latent-dim", "2",
                 "--kl-warmup-epochs", "2", "--quiet", "--out", str(run), "--device", "cpu"]) == 0
    assert main(["plot", str(run)]) == 0
    with Image.open(run / "curves.png") as im:
        assert im.size == (1100, 700)
    assert main(["plot", str(run), "-o", str(tmp_path / "c.png")]) == 0 and (tmp_path / "c.png").stat().st_size
    with (run / "metrics.jsonl").open("a") as f:
        f.write("{broken\n")
    capsys.readouterr()
    assert main(["plot", str(run)]) == 2
    assert "metrics.jsonl, line 4: not a JSON record" in capsys.readouterr().err
    assert main(["plot", str(tmp_path / "nowhere")]) == 2
    assert "cannot read" in capsys.readouterr().err
