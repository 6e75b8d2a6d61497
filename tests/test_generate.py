"""Sampling, interpolation and traversal in the latent space."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit import generate
from vaekit.cli import main

from conftest import digits_config, split_sizes, tiny_model


def test_lerp_and_slerp_paths():
    za, zb = torch.tensor([1.0, 0.0]), torch.tensor([0.0, 1.0])
    lerp = generate.path(za, zb, 5, "lerp")
    torch.testing.assert_close(lerp[0], za)
    torch.testing.assert_close(lerp[-1], zb)
    torch.testing.assert_close(lerp[2], torch.tensor([0.5, 0.5]))
    slerp = generate.path(za, zb, 5, "slerp")
    torch.testing.assert_close(slerp[0], za)
    torch.testing.assert_close(slerp[-1], zb)
    torch.testing.assert_close(slerp.norm(dim=1), torch.ones(5))  # stays on the circle, unlike lerp
    assert lerp[2].norm() < 0.75
    torch.testing.assert_close(generate.path(za, 2 * za, 3, "slerp")[1], 1.5 * za)  # parallel: the line
    with pytest.raises(ValueError):
        generate.path(za, zb, 1)


def test_interpolation_ends_at_the_reconstructions():
    model = tiny_model()
    xa, xb = torch.rand(2, 1, 4, 4)
    frames = generate.interpolate(model, xa, xb, steps=4)
    assert frames.shape == (4, 1, 4, 4)
    torch.testing.assert_close(frames[0], model.reconstruct(xa[None])[0])
    torch.testing.assert_close(frames[-1], model.reconstruct(xb[None])[0])


def conditional_model() -> vaekit.VAE:
    cfg = vaekit.Config().override({"model.data_shape": [1, 4, 4], "model.latent_dim": 3, "model.hidden": [16],
                                    "model.conditional": True, "model.labels": ["a", "b", "c"]})
    return vaekit.VAE(cfg.model)


def test_conditional_interpolation_encodes_each_end_with_its_label_and_decodes_with_the_chosen_one():
    model = conditional_model()
    xa, xb = torch.rand(2, 1, 4, 4)
    ends = torch.tensor([0, 2])
    frames = generate.interpolate(model, xa, xb, steps=3, label="b", y_ends=ends)
    mu = model.encode(torch.stack([xa, xb]), ends).mean.detach()
    b = torch.ones(1, dtype=torch.long)
    torch.testing.assert_close(frames[0], model.decode(mu[:1], b).mean.detach()[0])
    torch.testing.assert_close(frames[-1], model.decode(mu[1:], b).mean.detach()[0])
    assert not torch.allclose(frames[0], model.reconstruct(xa[None], ends[:1])[0])  # the class does matter
    with pytest.raises(vaekit.DataError, match="conditional: give a label"):
        generate.interpolate(model, xa, xb, steps=3)


def test_conditional_traversal_decodes_with_the_base_examples_class():
    model = conditional_model()
    x, y = torch.rand(12, 1, 4, 4), torch.tensor([0, 1, 2] * 4)
    cond = generate.Conditioning(y, y[4:5])
    grid, dims = generate.traverse(model, x, x[4], n_dims=2, steps=3, span=1.0, cond=cond)[:2]
    z0 = model.encode(x[4:5], y[4:5]).mean.detach()[0]
    codes = z0.repeat(6, 1)
    codes[0:3, dims[0]] = torch.tensor([-1.0, 0.0, 1.0])
    codes[3:6, dims[1]] = torch.tensor([-1.0, 0.0, 1.0])
    torch.testing.assert_close(grid, model.decode(codes, y[4].repeat(6)).mean.detach())
    kl = generate.kl_per_dimension(model, x, y=y)
    assert dims == torch.argsort(kl, descending=True)[:2].tolist()


def test_traversal_ranks_dimensions_by_kl_and_sweeps_only_them():
    model = tiny_model(latent=3)
    with torch.no_grad():
        model.encoder[-1].weight[:3] = 0  # posterior means constant ...
        model.encoder[-1].bias[:3] = torch.tensor([0.0, 2.0, 0.5])  # ... at different distances from 0
        model.encoder[-1].weight[3:] = 0
        model.encoder[-1].bias[3:] = 0  # unit variance: KL_j = mu_j^2 / 2
    x = torch.rand(20, 1, 4, 4)
    expected_kl = torch.tensor([0.0, 2.0, 0.125], dtype=torch.float64)
    torch.testing.assert_close(generate.kl_per_dimension(model, x), expected_kl)
    grid, dims = generate.traverse(model, x, n_dims=2, steps=3, span=1.0)[:2]
    assert dims == [1, 2] and grid.shape == (6, 1, 4, 4)
    expected = torch.zeros(6, 3)
    expected[0:3, 1] = torch.tensor([-1.0, 0.0, 1.0])
    expected[3:6, 2] = torch.tensor([-1.0, 0.0, 1.0])
    torch.testing.assert_close(grid, model.decode(expected).mean.detach())


def test_gmm_sampler_is_seeded_and_follows_the_posterior_means():
    model = tiny_model(latent=2)
    x = torch.rand(300, 1, 4, 4)
    gmm = generate.fit_latent_gmm(model, x, n_components=3, seed=0)
    assert gmm.means.shape == (3, 2) and np.isclose(gmm.weights.sum(), 1)
    a = generate.sample(model, 16, seed=4, gmm=gmm)
    torch.testing.assert_close(a, generate.sample(model, 16, seed=4, gmm=gmm))
    assert not torch.equal(a, generate.sample(model, 16, seed=5, gmm=gmm))
    cold = generate.sample(model, 4, temperature=0.0, seed=1, gmm=gmm)  # component means only
    means = generate.decode_mean(model, torch.as_tensor(gmm.means, dtype=torch.float32))
    assert all(any(torch.allclose(c, m) for m in means) for c in cold)


def test_commands_write_their_images(tmp_path, capsys):
    run = tmp_path / "run"
    vaekit.train(digits_config(**{"train.epochs": 3}), run)
    out = tmp_path
    assert main(["sample", str(run), "--sampler", "gmm", "--components", "5", "-o", str(out / "g.png")]) == 0
    assert main(["interpolate", str(run), "--from", "0", "--to", "3", "--method", "slerp", "--steps", "6",
                 "-o", str(out / "i.png"), "--gif", str(out / "i.gif")]) == 0
    assert main(["traverse", str(run), "--dims", "3", "--steps", "5", "-o", str(out / "t.png")]) == 0
    for name in ("g.png", "i.png", "t.png"):
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    with Image.open(out / "i.gif") as gif:
        assert gif.n_frames == 10  # 6 forward, 4 back
    assert "rows: latent dimensions" in capsys.readouterr().out


def test_interpolate_from_image_files_checks_their_size(tmp_path, capsys):
    run, cfg = tmp_path / "run", digits_config(**{"train.epochs": 1})
    vaekit.train(cfg, run)
    Image.fromarray(np.full((8, 8), 200, np.uint8)).save(tmp_path / "a.png")
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "b.png")
    Image.fromarray(np.zeros((9, 8), np.uint8)).save(tmp_path / "big.png")
    assert main(["interpolate", str(run), "--from", str(tmp_path / "a.png"), "--to", str(tmp_path / "b.png"),
                 "-o", str(tmp_path / "ab.png")]) == 0
    assert main(["interpolate", str(run), "--from", str(tmp_path / "big.png"), "--to", "0"]) == 2
    assert "is 8x9 pixels; the model takes 8x8" in capsys.readouterr().err
    assert main(["interpolate", str(run), "--from", "5000", "--to", "0"]) == 2
    assert f"index 5000 is outside the test split of {split_sizes(cfg)['test']} examples" in capsys.readouterr().err


def test_a_traversal_says_what_each_row_and_column_is():
    torch.manual_seed(0)
    model = vaekit.VAE(digits_config(**{"model.data_shape": [1, 8, 8]}).model)
    x = torch.rand(30, 1, 8, 8)
    t = generate.traverse(model, x, n_dims=3, steps=3, span=1.0)
    assert t.values == [-1.0, 0.0, 1.0] and t.measure == "kl" and len(t.scores) == 3
    assert t.scores == sorted(t.scores, reverse=True)  # the most informative dimension first
    ranking = generate.rank_dimensions(model, x)
    assert t.scores == pytest.approx([float(ranking.scores[d]) for d in t.dims])


def test_a_labelled_grid_writes_its_labels_beside_the_images(tmp_path):
    from PIL import Image

    from vaekit import plots

    images = torch.ones(6, 1, 8, 8)  # white tiles: any dark pixel outside them is text
    plain = plots.labelled_grid(images, tmp_path / "plain.png", 3)
    labelled = plots.labelled_grid(images, tmp_path / "l.png", 3, ["z[4]  kl 2.31", "z[0]  kl 1.02"],
                                   ["-1", "+0", "+1"], "a title")
    with Image.open(plain) as a, Image.open(labelled) as b:
        assert b.width > a.width and b.height > a.height  # room for the row labels, column labels and title
        left = np.asarray(b.convert("L"))[:, : b.width - a.width]
        assert (left < 128).any()  # the row labels' text
