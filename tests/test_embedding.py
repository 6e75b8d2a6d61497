"""Embeddings are posterior means, written faithfully, mapped to 2-D and probed against PCA."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import vaekit
from vaekit import DataError, embedding
from vaekit.cli import main

from conftest import digits_config, tiny_model


def test_posterior_means_are_deterministic_and_batched():
    model = tiny_model()
    x = torch.rand(25, 1, 4, 4)
    a = embedding.posterior_means(model, x, batch_size=7)
    b = embedding.posterior_means(model, x, batch_size=100)
    torch.testing.assert_close(a, b)
    torch.testing.assert_close(a, model.encode(x).mean.detach())


def test_save_npz_and_csv_round_trip(tmp_path):
    z, y = torch.randn(6, 3), torch.tensor([0, 1, 2, 0, 1, 2])
    f = np.load(embedding.save(tmp_path / "e.npz", z, y))
    np.testing.assert_array_equal(f["labels"], y.numpy())
    np.testing.assert_allclose(f["z"], z.numpy())
    table = np.loadtxt(embedding.save(tmp_path / "e.csv", z, y), delimiter=",", skiprows=1)
    np.testing.assert_array_equal(table[:, 0], np.arange(6))
    np.testing.assert_array_equal(table[:, 1], y.numpy())
    np.testing.assert_allclose(table[:, 2:], z.numpy(), rtol=1e-5)
    assert (tmp_path / "e.csv").read_text().splitlines()[0] == "index,label,z0,z1,z2"
    with pytest.raises(DataError, match=r"use a \.npz or \.csv"):
        embedding.save(tmp_path / "e.txt", z, y)


def test_project_2d_keeps_a_2d_latent_and_projects_others():
    z2 = np.random.default_rng(0).normal(size=(50, 2))
    points, axes = embedding.project_2d(z2)
    assert points is z2 and axes == ("z[0]", "z[1]")
    points, axes = embedding.project_2d(np.random.default_rng(0).normal(size=(50, 5)))
    assert points.shape == (50, 2) and axes[0].startswith("PC 1")


@pytest.mark.parametrize("dim", [1, 2, 5])
def test_pca_map_points_are_the_codes_on_orthonormal_axes(dim):
    z = np.random.default_rng(0).normal(size=(60, dim)) * np.arange(1, dim + 1)
    m = embedding.pca_map(z)
    assert m.points.shape == (60, 2) and m.axes.shape == (2, dim) and m.mean.shape == (dim,)
    np.testing.assert_allclose(m.points, (z - m.mean) @ m.axes.T, atol=1e-12)
    rows = 1 if dim == 1 else 2  # L = 1: the second axis is zero, the map a line
    np.testing.assert_allclose(m.axes[:rows] @ m.axes[:rows].T, np.eye(rows), atol=1e-12)
    if dim == 5:  # the first axis is the direction of the largest variance, the last feature here
        assert abs(m.axes[0, 4]) > 0.9 and m.axis_labels[0].startswith("PC 1")
        points, labels = embedding.project_2d(z)
        np.testing.assert_array_equal(points, m.points)
        assert labels == m.axis_labels
    else:
        np.testing.assert_array_equal(m.mean, 0)


def test_knn_accuracy_on_separable_and_random_labels():
    rng = np.random.default_rng(0)
    f = np.concatenate([rng.normal(-5, 1, (100, 3)), rng.normal(5, 1, (100, 3))])
    y = np.repeat([0, 1], 100)
    assert embedding.knn_accuracy(f[::2], y[::2], f[1::2], y[1::2]) == 1.0
    shuffled = rng.permutation(y)
    assert embedding.knn_accuracy(f[::2], shuffled[::2], f[1::2], shuffled[1::2]) < 0.7


def nearest_neighbour_accuracy(f_train: np.ndarray, y_train: np.ndarray, f_test: np.ndarray,
                               y_test: np.ndarray) -> float:
    """1-NN by brute force: each test point takes the label of its closest training point (Euclidean)."""
    d = ((f_test[:, None, :] - f_train[None, :, :]) ** 2).sum(-1)  # (N_test, N_train)
    return float((y_train[d.argmin(1)] == y_test).mean())


def test_embed_command_writes_file_plot_and_probe(tmp_path, capsys):
    """The file holds the posterior means of the test split; the probe's two accuracies are 1-NN on those means
    and on PCA of the pixels (numpy's SVD, same dimension), computed here independently (to one example: ties)."""
    run = tmp_path / "run"
    cfg = digits_config(**{"train.epochs": 5})
    vaekit.train(cfg, run)
    capsys.readouterr()
    out, png = tmp_path / "z.npz", tmp_path / "map.png"
    assert main(["embed", str(run), "-o", str(out), "--plot", str(png), "--probe"]) == 0
    text = capsys.readouterr().out
    model = vaekit.load(run)
    splits = vaekit.load_data(cfg.data)
    train_x, train_y = splits.train.x, splits.train.y.numpy()
    test_x, test_y = splits.test.x, splits.test.y.numpy()
    f = np.load(out)
    np.testing.assert_allclose(f["z"], model.encode(test_x).mean.detach().numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_array_equal(f["labels"], test_y)
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert f"1-NN accuracy on test ({len(test_y)} examples, fitted on {len(train_y)})" in text
    vae_acc = float(text.split("VAE latent (4-d) ")[1].split(",")[0])
    pca_acc = float(text.split("PCA-4 ")[1].split()[0])
    z_train = model.encode(train_x).mean.detach().numpy()
    expected_vae = nearest_neighbour_accuracy(z_train, train_y, f["z"], test_y)
    raw_train, raw_test = train_x.flatten(1).double().numpy(), test_x.flatten(1).double().numpy()
    mean = raw_train.mean(0)
    axes = np.linalg.svd(raw_train - mean, full_matrices=False)[2][:4]  # the 4 principal axes
    expected_pca = nearest_neighbour_accuracy((raw_train - mean) @ axes.T, train_y, (raw_test - mean) @ axes.T, test_y)
    one = 1 / len(test_y) + 1e-4  # printed to 4 decimals; a tie may fall either way
    assert abs(vae_acc - expected_vae) <= one and abs(pca_acc - expected_pca) <= one
    assert vae_acc > 0.5 and pca_acc > 0.5  # far above the 0.1 of chance: both carry the digit


def test_the_probes_pca_is_fitted_on_a_bounded_subset_and_projects_in_batches(monkeypatch):
    from sklearn.decomposition import PCA

    splits = vaekit.load_data(digits_config().data)
    x_train, x_test = splits.train.x, splits.test.x
    whole = embedding._pca_features(x_train, x_test, 4)
    monkeypatch.setattr(embedding, "PCA_BATCH", 100)  # projected 100 rows at a time: the same features
    for got, want in zip(embedding._pca_features(x_train, x_test, 4), whole, strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    fitted = []
    monkeypatch.setattr(PCA, "fit", lambda self, x, y=None, _fit=PCA.fit: fitted.append(x.shape) or _fit(self, x))
    monkeypatch.setattr(embedding, "PCA_FIT_BYTES", 4 * 64 * 300)  # room for 300 rows of 64 float32 pixels
    sub_train, sub_test = embedding._pca_features(x_train, x_test, 4)
    assert fitted == [(300, 64)] and sub_train.shape == (len(x_train), 4) and sub_test.shape == (len(x_test), 4)
    y = splits.train.y.numpy()
    assert embedding.knn_accuracy(sub_train, y, sub_test, splits.test.y.numpy()) > 0.5  # still the digits' axes
