"""The user's own images: folders of PNG/JPEG files and .npy/.npz arrays, read, split, trained on end to end."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from PIL import Image

import vaekit
from vaekit import DataError, data, plots
from vaekit.cli import main
from vaekit.config import DataConfig
from vaekit.data import images

RNG = np.random.default_rng(0)


def pixels(h: int, w: int, c: int) -> np.ndarray:
    """Random uint8 pixels (H, W) for grey, (H, W, C) otherwise, as PIL wants them."""
    a = RNG.integers(0, 256, size=(h, w, c), dtype=np.uint8)
    return a[..., 0] if c == 1 else a


def write_images(folder, n: int, h: int, w: int, c: int, prefix: str = "img") -> list[np.ndarray]:
    """``n`` lossless PNGs named in sorted order; returns their pixels as (C, H, W) floats in [0, 1]."""
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        a = pixels(h, w, c)
        Image.fromarray(a).save(folder / f"{prefix}{i:03d}.png")
        out.append((a.reshape(h, w, c).transpose(2, 0, 1) / np.float32(255)).astype(np.float32))
    return out


# --- folders --------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("h", "w", "c"), [(8, 10, 1), (12, 12, 3), (30, 45, 3), (9, 7, 4)],
                         ids=["grey", "rgb", "odd-30x45x3", "rgba"])
def test_folder_reads_every_image_exactly_in_sorted_order(tmp_path, h, w, c):
    expected = write_images(tmp_path, 5, h, w, c)
    (tmp_path / "notes.txt").write_text("not an image")
    s = images.read(tmp_path)
    assert s.x.shape == (5, c, h, w) and s.x.dtype == np.uint8  # 8-bit images stay bytes
    np.testing.assert_array_equal(images.values(s.x), np.stack(expected))
    assert s.y is None and s.classes is None


def test_suffixes_are_case_insensitive_and_jpeg_is_read(tmp_path):
    Image.fromarray(pixels(6, 6, 3)).save(tmp_path / "a.PNG")
    Image.fromarray(pixels(6, 6, 3)).save(tmp_path / "b.JPG", format="JPEG")
    Image.fromarray(pixels(6, 6, 3)).save(tmp_path / "c.jpeg", format="JPEG")
    assert images.read(tmp_path).x.shape == (3, 3, 6, 6)


def test_class_subfolders_give_labels_and_sorted_class_names(tmp_path):
    for name, n in (("dog", 2), ("ant", 3), ("cat", 1)):  # created out of order on purpose
        write_images(tmp_path / name, n, 6, 5, 3)
    (tmp_path / "empty").mkdir()  # a sub-folder without images is not a class
    s = images.read(tmp_path)
    assert s.classes == ("ant", "cat", "dog")
    np.testing.assert_array_equal(s.y, [0, 0, 0, 1, 2, 2])
    splits = data.load(DataConfig(dataset=str(tmp_path), val_size=0, test_size=0.5))
    assert splits.classes == ("ant", "cat", "dog")
    assert sorted(splits.train.y.tolist() + splits.test.y.tolist()) == [0, 0, 0, 1, 2, 2]


def test_images_of_other_sizes_and_modes_are_converted_to_the_first(tmp_path):
    Image.fromarray(pixels(8, 10, 3)).save(tmp_path / "a.png")
    Image.fromarray(pixels(20, 16, 3)).save(tmp_path / "b.png")  # larger, other aspect
    Image.fromarray(pixels(8, 10, 1)).save(tmp_path / "c.png")  # grey
    Image.fromarray(pixels(4, 5, 4)).save(tmp_path / "d.png")  # RGBA, smaller
    s = images.read(tmp_path)
    assert s.x.shape == (4, 3, 8, 10) and s.x.dtype == np.uint8  # PIL converts and resizes bytes
    np.testing.assert_array_equal(s.x[2, 0], s.x[2, 1])  # grey became R = G = B


def test_image_size_and_channels_are_honoured(tmp_path):
    write_images(tmp_path, 3, 12, 16, 1)
    s = images.read(tmp_path, image_size=(5, 7), channels=3)
    assert s.x.shape == (3, 3, 5, 7)
    splits = data.load(DataConfig(dataset=str(tmp_path), image_size=(6, 4), channels=4, val_size=0))
    assert splits.train.shape == (4, 6, 4)
    assert torch.all(splits.train.x[:, 3] == 1)  # no alpha in the files: opaque


def test_sixteen_bit_grey_keeps_its_depth(tmp_path):
    a = np.linspace(0, 65535, 6 * 8).reshape(6, 8).astype(np.uint16)
    Image.fromarray(a).save(tmp_path / "deep.png")
    Image.fromarray(a).save(tmp_path / "deep2.png")
    x = images.read(tmp_path).x
    np.testing.assert_allclose(x[0, 0], a / 65535, atol=1e-6)  # not clipped at 255/65535


def test_corrupt_file_is_skipped_with_one_warning_naming_it(tmp_path, caplog):
    write_images(tmp_path, 3, 6, 6, 3)
    (tmp_path / "x.png").write_bytes(RNG.integers(0, 256, 200, dtype=np.uint8).tobytes())
    with caplog.at_level(logging.WARNING, logger="vaekit.data.folders"):
        s = images.read(tmp_path)
    assert s.x.shape == (3, 3, 6, 6)
    records = [r for r in caplog.records if r.name == "vaekit.data.folders"]
    assert len(records) == 1 and records[0].levelno == logging.WARNING
    assert "skipped 1 unreadable image file " in records[0].getMessage() and "x.png" in records[0].getMessage()
    with pytest.raises(DataError, match=r"cannot read image .*x\.png"):
        images.read(tmp_path, strict=True)
    with pytest.raises(DataError, match=r"x\.png"):
        data.load(DataConfig(dataset=str(tmp_path), strict=True))
    assert "(--strict, or data.strict, stops at the first instead)" in records[0].getMessage()
    (tmp_path / "x.png").write_bytes(b"")
    with pytest.raises(DataError, match=r"x\.png.*the file is empty \(0 bytes\)"):
        images.read(tmp_path, strict=True)


def test_many_corrupt_files_are_counted_and_the_first_few_named(tmp_path, caplog):
    write_images(tmp_path / "ok", 2, 6, 6, 1)
    for i in range(8):
        (tmp_path / "ok" / f"bad{i}.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with caplog.at_level(logging.WARNING, logger="vaekit.data.folders"):
        s = images.read(tmp_path)
    assert s.x.shape == (2, 1, 6, 6) and s.classes == ("ok",)
    (message,) = [r.getMessage() for r in caplog.records if r.name == "vaekit.data.folders"]
    assert "skipped 8 unreadable image files" in message and "and 3 more" in message
    assert "bad0.jpg" in message and "bad7.jpg" not in message


@pytest.mark.parametrize("content", ["empty", "text", "corrupt"])
def test_folder_without_readable_images_is_an_error_naming_it(tmp_path, content):
    folder = tmp_path / "pics"
    folder.mkdir()
    if content == "text":
        (folder / "a.txt").write_text("hello")
        (folder / "sub").mkdir()
        (folder / "sub" / "b.txt").write_text("hello")
    if content == "corrupt":
        (folder / "a.png").write_bytes(b"nope")
    with pytest.raises(DataError, match="pics"):
        data.load(DataConfig(dataset=str(folder)))


def test_images_both_directly_and_in_class_folders_is_an_error(tmp_path):
    write_images(tmp_path, 2, 5, 5, 1)
    write_images(tmp_path / "cats", 2, 5, 5, 1)
    with pytest.raises(DataError, match=r"both directly \(img000\.png, \.\.\.\) and in sub-folders \(cats/"):
        images.read(tmp_path)


def test_folder_split_is_seeded_unstandardized_and_binarizable(tmp_path):
    write_images(tmp_path, 20, 6, 5, 3)
    cfg = DataConfig(dataset=str(tmp_path), test_size=0.25, val_size=3)
    a, b = data.load(cfg), data.load(cfg)
    assert (len(a.train), len(a.val), len(a.test)) == (12, 3, 5)
    assert torch.equal(a.test.x, b.test.x) and a.preprocess is None and a.classes is None
    every = torch.cat([a.train.x, a.val.x, a.test.x])
    assert torch.equal(every.sort(0).values, torch.from_numpy(images.values(images.read(tmp_path).x)).sort(0).values)
    other = data.load(DataConfig(dataset=str(tmp_path), test_size=0.25, val_size=3, split_seed=1))
    assert not torch.equal(a.test.x, other.test.x)
    binary = data.load(DataConfig(dataset=str(tmp_path), binarize="static"))
    assert set(binary.test.x.unique().tolist()) <= {0.0, 1.0}


DIGIT_NAMES = tuple(str(d) for d in range(10))


def test_digits_names_its_classes():
    assert data.load(DataConfig(dataset="digits")).classes == DIGIT_NAMES


def test_mnist_names_its_classes(shared_data):
    assert data.load(DataConfig(dataset="mnist", data_dir=str(shared_data), val_size=0)).classes == DIGIT_NAMES


def test_unknown_dataset_mentions_folders(tmp_path):
    with pytest.raises(DataError, match=r"a folder of \.png/\.jpg/\.jpeg images"):
        data.load(DataConfig(dataset=str(tmp_path / "missing")))


# --- arrays ---------------------------------------------------------------------------------------------


def test_arrays_in_every_layout(tmp_path):
    nhwc = RNG.integers(0, 256, size=(6, 5, 7, 3), dtype=np.uint8)
    expected = nhwc.transpose(0, 3, 1, 2) / np.float32(255)
    np.save(tmp_path / "nhwc.npy", nhwc)
    np.save(tmp_path / "nchw.npy", expected.astype(np.float64))
    np.save(tmp_path / "grey.npy", nhwc[..., 0])
    for name in ("nhwc.npy", "nchw.npy"):
        np.testing.assert_allclose(images.values(images.read(tmp_path / name).x), expected, rtol=1e-6)
    assert images.read(tmp_path / "nhwc.npy").x.dtype == np.uint8  # bytes stay bytes
    np.testing.assert_array_equal(images.values(images.read(tmp_path / "grey.npy").x), expected[:, :1])
    np.save(tmp_path / "tie.npy", np.zeros((2, 3, 8, 3), np.uint8))  # both axes 1 and 3 could be channels
    assert images.read(tmp_path / "tie.npy").x.shape == (2, 3, 3, 8)  # channel-last wins


def test_npz_images_with_labels_and_resizing(tmp_path):
    x = RNG.random((10, 1, 8, 8)).astype(np.float32)
    np.savez_compressed(tmp_path / "a.npz", images=x, y=np.arange(10) % 3)
    s = images.read(tmp_path / "a.npz", image_size=(4, 6), channels=3)
    assert s.x.shape == (10, 3, 4, 6) and s.x.min() >= 0 and s.x.max() <= 1
    np.testing.assert_array_equal(s.y, np.arange(10) % 3)
    splits = data.load(DataConfig(dataset=str(tmp_path / "a.npz"), val_size=0))
    assert splits.train.shape == (1, 8, 8) and splits.preprocess is None


def test_two_dimensional_arrays_stay_tables(tmp_path):
    np.save(tmp_path / "t.npy", RNG.normal(size=(20, 3)))
    assert not images.is_image_path(tmp_path / "t.npy")
    splits = data.load(DataConfig(dataset=str(tmp_path / "t.npy"), val_size=0))
    assert splits.train.shape == (3,) and splits.preprocess is not None


@pytest.mark.parametrize(("array", "message"), [
    (np.full((3, 4, 4), 2.0), r"values span \[2, 2\]; expected floats in \[0, 1\]"),
    (np.linspace(-0.5, 1, 48).reshape(3, 4, 4), r"span \[-0.5, 1\]"),
    (np.full((3, 4, 4), np.nan), r"span \[nan, nan\]"),
    (np.zeros((3, 4, 4), np.int32), "dtype int32; expected uint8"),
    (np.zeros((3, 5, 5, 5), np.uint8), r"shape \(3, 5, 5, 5\); expected \(N, H, W\)"),
    (np.zeros((2, 1, 4, 4, 1), np.uint8), r"shape \(2, 1, 4, 4, 1\)"),
])
def test_bad_arrays_are_refused_with_what_was_seen(tmp_path, array, message):
    np.save(tmp_path / "bad.npy", array)
    with pytest.raises(DataError, match=message):
        data.load(DataConfig(dataset=str(tmp_path / "bad.npy")))


def test_npz_without_an_image_key_names_the_keys(tmp_path):
    np.savez(tmp_path / "a.npz", pics=np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(DataError, match=r"holds arrays \['pics'\]; expected images under x, X, images"):
        images.read(tmp_path / "a.npz")


# --- pictures of colour images ----------------------------------------------------------------------------


@pytest.mark.parametrize("c", [1, 3, 4])
def test_read_image_and_grids_handle_colour_and_odd_sizes(tmp_path, c):
    (expected,) = write_images(tmp_path, 1, 30, 45, c)
    x = plots.read_image(tmp_path / "img000.png", (c, 30, 45))
    np.testing.assert_array_equal(x.numpy(), expected)
    assert plots.is_image_shape((c, 30, 45))
    out = plots.save_grid(torch.rand(5, c, 30, 45), tmp_path / "grid.png", nrow=3)
    with Image.open(out) as im:
        assert im.size == (2 * (3 * 46 + 1), 2 * (2 * 31 + 1))  # scale 2, one-pixel gaps
    with pytest.raises(DataError, match="is 45x30 pixels; the model takes 30x45"):
        plots.read_image(tmp_path / "img000.png", (c, 45, 30))


# --- end to end -----------------------------------------------------------------------------------------


@pytest.fixture
def colour_folder(tmp_path):
    """40 random 30x45 RGB images, the shape of the odd-sized colour case."""
    folder = tmp_path / "photos"
    write_images(folder, 40, 30, 45, 3)
    return folder


@pytest.mark.parametrize("arch", ["mlp", "conv"])
def test_train_on_a_colour_folder_and_reload(colour_folder, tmp_path, arch):
    config = vaekit.Config().override({
        "data.dataset": str(colour_folder), "model.arch": arch, "model.hidden": [32], "model.latent_dim": 4,
        "model.channels": [8, 8], "model.likelihood": "bernoulli", "train.epochs": 2, "train.batch_size": 16,
        "train.device": "cpu"})
    out = tmp_path / "run"
    from vaekit.previews import PreviewWriter

    result = vaekit.train(config, out, callbacks=[PreviewWriter(out)])
    assert result.config.model.data_shape == (3, 30, 45)
    assert (out / "reconstructions.png").exists() and (out / "samples.png").exists()
    model = vaekit.load(out)
    x = data.load(config.data).test.x
    assert model.reconstruct(x).shape == x.shape == (8, 3, 30, 45)
    assert model.sample(2).shape == (2, 3, 30, 45)


def test_cli_trains_on_a_folder(colour_folder, tmp_path, capsys):
    out = tmp_path / "cli-run"
    assert main(["train", "--dataset", str(colour_folder), "--epochs", "1", "--hidden", "32", "--device", "cpu",
                 "--out", str(out), "--quiet"]) == 0
    assert vaekit.load(out).data_shape == (3, 30, 45)
    small = tmp_path / "cli-small"
    assert main(["train", "--dataset", str(colour_folder), "--epochs", "1", "--hidden", "32", "--device", "cpu",
                 "--image-size", "10x15", "--channels", "1", "--strict", "--out", str(small), "--quiet"]) == 0
    assert vaekit.load(small).data_shape == (1, 10, 15)
    (colour_folder / "broken.png").write_bytes(b"\x89PNG broken")
    assert main(["train", "--dataset", str(colour_folder), "--epochs", "1", "--strict",
                 "--out", str(tmp_path / "strict"), "--quiet"]) == 2
    assert "broken.png" in capsys.readouterr().err


def test_a_labelled_npz_trains_a_conditional_model_with_its_class_names(tmp_path):
    x, y = np.random.default_rng(0).random((60, 8, 8)).astype(np.float32), np.repeat([0, 1, 2], 20)

    def conditional(name: str, **arrays):
        np.savez(tmp_path / name, x=x, **arrays)
        cfg = vaekit.Config().override({"data.dataset": str(tmp_path / name), "model.conditional": True,
                                        "model.hidden": [16], "model.latent_dim": 2, "train.epochs": 1,
                                        "train.device": "cpu"})
        return vaekit.train(cfg).config.model.labels

    assert conditional("named.npz", y=y, classes=np.array(["cat", "dog", "eel"])) == ("cat", "dog", "eel")
    assert conditional("numbered.npz", y=y) == ("0", "1", "2")  # the label values, as text
    with pytest.raises(vaekit.TrainingError, match=r"class indices 0\.\.C-1 as labels; those of .* span -1\.\.1"):
        conditional("negative.npz", y=y - 1)
    with pytest.raises(DataError, match=r"array classes names 2 classes, so labels y must lie in 0\.\.1; they "
                                        r"span 0\.\.2"):
        conditional("short.npz", y=y, classes=np.array(["a", "b"]))


def test_a_separate_test_folder_is_the_test_set_at_the_training_images_size(tmp_path):
    write_images(tmp_path / "train" / "cat", 4, 6, 5, 3)
    write_images(tmp_path / "train" / "dog", 4, 6, 5, 3, prefix="d")
    expected = write_images(tmp_path / "test" / "cat", 2, 6, 5, 3, prefix="t")
    write_images(tmp_path / "test" / "dog", 1, 12, 10, 1, prefix="u")  # another size and grey: converted
    s = data.load(DataConfig(dataset=str(tmp_path / "train"), test_dataset=str(tmp_path / "test"), val_size=2))
    assert (len(s.train), len(s.val), len(s.test)) == (6, 2, 3)  # all 8 training images train or validate
    assert s.test.x.shape == (3, 3, 6, 5) and s.test.y.tolist() == [0, 0, 1]
    torch.testing.assert_close(s.test.x[:2], torch.from_numpy(np.stack(expected)))
    write_images(tmp_path / "test" / "bird", 1, 6, 5, 3, prefix="b")
    with pytest.raises(DataError, match=r"has classes \['bird', 'cat', 'dog'\] but the training set .* has "
                                        r"\['cat', 'dog'\]"):
        data.load(DataConfig(dataset=str(tmp_path / "train"), test_dataset=str(tmp_path / "test")))
    with pytest.raises(DataError, match="digits comes with its own test set"):
        data.load(DataConfig(dataset="digits", test_dataset=str(tmp_path / "test")))


def test_a_test_size_may_be_a_count(tmp_path):
    write_images(tmp_path, 20, 6, 5, 1)
    s = data.load(DataConfig(dataset=str(tmp_path), test_size=7, val_size=0))
    assert (len(s.train), len(s.test)) == (13, 7)
    with pytest.raises(DataError, match=r"data.test_size = 20 leaves no training data out of the 20 examples"):
        data.load(DataConfig(dataset=str(tmp_path), test_size=20))
    with pytest.raises(vaekit.ConfigError, match=r"data.test_size = 2.5 .* a fraction in \(0, 1\) or a whole count"):
        DataConfig(test_size=2.5)
