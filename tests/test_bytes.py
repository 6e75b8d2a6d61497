"""8-bit images stay bytes until the batch: a quarter of float32's memory, and exactly the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit import data
from vaekit.batches import batched, floats
from vaekit.config import DataConfig
from vaekit.data import folders
from vaekit.training import graphs

from conftest import digits_config


def image_array(n: int = 300, seed: int = 0) -> np.ndarray:
    """(n, 1, 8, 8) grey images with every byte value present somewhere."""
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, size=(n, 1, 8, 8), dtype=np.uint8)
    x.reshape(-1)[:256] = np.arange(256, dtype=np.uint8)
    return x


def test_floats_are_exactly_the_division_numpy_does():
    b = np.arange(256, dtype=np.uint8)
    np.testing.assert_array_equal(floats(torch.from_numpy(b)).numpy(), b / np.float32(255))
    x = torch.rand(3, 4)
    assert floats(x) is x  # values pass through untouched


def test_batched_hands_each_batch_over_as_values():
    x = torch.from_numpy(image_array(25))
    seen = batched(lambda xb, yb: xb, x, batch_size=7)
    assert seen.dtype == torch.float32 and torch.equal(seen, floats(x))


@pytest.mark.parametrize("binarize", ["none", "dynamic", "static", "threshold"])
def test_byte_arrays_load_as_bytes_with_the_values_of_floats(tmp_path, binarize):
    x = image_array()
    np.save(tmp_path / "bytes.npy", x)
    np.save(tmp_path / "floats.npy", x / np.float32(255))
    as_bytes = data.load(DataConfig(dataset=str(tmp_path / "bytes.npy"), binarize=binarize))
    as_floats = data.load(DataConfig(dataset=str(tmp_path / "floats.npy"), binarize=binarize))
    for name in ("train", "val", "test"):
        b, f = getattr(as_bytes, name), getattr(as_floats, name)
        assert b.stored.dtype == torch.uint8 and f.stored.dtype == torch.float32
        assert b.stored.element_size() * 4 == f.stored.element_size()
        assert torch.equal(b.x, f.x) and b.binarization == f.binarization


def test_training_on_bytes_gives_the_weights_of_training_on_floats(tmp_path):
    x = image_array(400)
    np.save(tmp_path / "bytes.npy", x)
    np.save(tmp_path / "floats.npy", x / np.float32(255))
    runs = []
    for name in ("bytes", "floats"):  # dynamic binarization and the VampPrior's pseudo-inputs drawn from data
        config = digits_config(**{"data.dataset": str(tmp_path / f"{name}.npy"), "data.binarize": "dynamic",
                                  "model.prior": "vamp", "model.prior_components": 5, "data.val_size": 0.1})
        result = vaekit.train(config)
        runs.append((result.model.state_dict(), result.history))
    (wb, hb), (wf, hf) = runs
    assert all(torch.equal(wb[k], wf[k]) for k in wf)
    assert hb[-1]["val_neg_elbo"] == hf[-1]["val_neg_elbo"] and hb[-1]["kl_per_dim"] == hf[-1]["kl_per_dim"]


def test_the_static_step_takes_bytes_as_the_loop_does():
    """The CUDA-graph step's body, run eagerly on the CPU, makes values of its gathered bytes."""
    x = torch.from_numpy(image_array(64))
    seen = []
    step = graphs.StaticStep(x, 16, 1, lambda xb, yb, beta: seen.append(xb) or torch.zeros(3), dynamic=False,
                             capture=False)
    step.start_epoch()
    step(torch.arange(16))
    assert seen[0].dtype == torch.float32 and torch.equal(seen[0], floats(x[:16]))


def test_folders_of_8_bit_images_decode_to_bytes_and_16_bit_ones_to_floats(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(3):
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(tmp_path / f"a{i}.png")
    eight = folders.read_folder(tmp_path)
    assert eight.x.dtype == np.uint8 and eight.x.shape == (3, 3, 6, 5)
    for i, f in enumerate(sorted(tmp_path.glob("*.png"))):
        with Image.open(f) as im:
            np.testing.assert_array_equal(data.images.values(eight.x[i]), data.images.pixels(im, (6, 5), 3))
    grey = tmp_path / "grey"
    grey.mkdir()
    Image.fromarray(rng.integers(0, 256, (6, 5), dtype=np.uint8)).save(grey / "a.png")
    Image.fromarray(rng.integers(0, 65536, (6, 5), dtype=np.uint16)).save(grey / "b.png")  # a 16-bit image
    mixed = folders.read_folder(grey)
    assert mixed.x.dtype == np.float32 and mixed.x.min() >= 0 and mixed.x.max() <= 1
    with Image.open(grey / "a.png") as im:
        np.testing.assert_array_equal(mixed.x[0], data.images.pixels(im, (6, 5), 1))


def test_mnist_is_held_as_bytes(shared_data):
    splits = data.load(DataConfig(dataset="mnist", data_dir=str(shared_data), val_size=0))
    assert splits.train.stored.dtype == torch.uint8
    assert splits.train.stored.nbytes == 60_000 * 784  # 47 MB; as float32 it was 188 MB
    raw, _ = data.mnist.load_split("train", str(shared_data), False, data.mnist.MNIST)
    np.testing.assert_array_equal(splits.train.x.numpy()[:100], raw[:100, None] / np.float32(255))
