"""Data loading: IDX parsing, MNIST and Fashion-MNIST lookup and download, dataset splits, binarization,
likelihood support."""

from __future__ import annotations

import gzip
import hashlib
import os
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import vaekit
from vaekit import data
from vaekit.config import DataConfig
from vaekit.data import mnist, registry
from vaekit.model import likelihoods

DIGITS_N = 1797
DIGITS_TEST = DIGITS_N // 5  # 359
DIGITS_TRAIN = DIGITS_N - DIGITS_TEST  # 1438
MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
FASHION_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                   "Ankle boot")


def idx_bytes(array: np.ndarray) -> bytes:
    """An IDX file of unsigned bytes holding ``array``."""
    header = b"\x00\x00\x08" + bytes([array.ndim])
    header += b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + array.astype(np.uint8).tobytes()


IMAGES = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4) * 10
LABELS = np.array([7, 0, 3, 9, 1], dtype=np.uint8)


# --- read_idx -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_idx_parses_images_and_labels(tmp_path, compress):
    """Raw and gzip IDX files of 3-d images and 1-d labels parse to the exact arrays written."""
    pack = gzip.compress if compress else (lambda b: b)
    images, labels = tmp_path / "images", tmp_path / "labels"
    images.write_bytes(pack(idx_bytes(IMAGES)))
    labels.write_bytes(pack(idx_bytes(LABELS)))
    got_images, got_labels = mnist.read_idx(images, 3), mnist.read_idx(str(labels), 1)
    assert got_images.dtype == np.uint8 and got_images.shape == (2, 3, 4)
    np.testing.assert_array_equal(got_images, IMAGES)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (5,)
    np.testing.assert_array_equal(got_labels, LABELS)


@pytest.mark.parametrize("compress", [False, True], ids=["raw", "gzip"])
def test_read_idx_truncated_names_file_and_byte_counts(tmp_path, compress):
    """A body shorter than the header's shape promises is refused with expected and actual sizes."""
    blob = idx_bytes(IMAGES)[:-1]  # 16-byte header + 24 bytes, less one
    path = tmp_path / "short-images"
    path.write_bytes(gzip.compress(blob) if compress else blob)
    with pytest.raises(vaekit.DataError) as err:
        mnist.read_idx(path, 3)
    msg = str(err.value)
    assert str(path) in msg
    assert "truncated" in msg and "40 bytes expected" in msg and "found 39" in msg


def test_read_idx_too_long_is_refused(tmp_path):
    """Trailing bytes after the data are an error too, not silently ignored."""
    path = tmp_path / "long-labels"
    path.write_bytes(idx_bytes(LABELS) + b"\x00")
    with pytest.raises(vaekit.DataError, match="too long") as err:
        mnist.read_idx(path, 1)
    assert str(path) in str(err.value) and "found 14" in str(err.value)


def test_read_idx_shorter_than_header(tmp_path):
    """A file cut inside the header is refused with its size, not an IndexError."""
    path = tmp_path / "stub"
    path.write_bytes(idx_bytes(IMAGES)[:10])
    with pytest.raises(vaekit.DataError) as err:
        mnist.read_idx(path, 3)
    assert str(path) in str(err.value) and "10 bytes" in str(err.value) and "16-byte" in str(err.value)


def test_read_idx_wrong_magic_names_the_magic(tmp_path):
    """A non-uint8 type code, or a file with another number of dimensions, is refused naming its magic."""
    floats = tmp_path / "floats"
    floats.write_bytes(b"\x00\x00\x0d\x03" + idx_bytes(IMAGES)[4:])
    with pytest.raises(vaekit.DataError) as err:
        mnist.read_idx(floats, 3)
    assert str(floats) in str(err.value) and "00000d03" in str(err.value) and "00000803" in str(err.value)

    labels = tmp_path / "labels"
    labels.write_bytes(idx_bytes(np.arange(20, dtype=np.uint8)))  # 1-d, longer than a 3-d header
    with pytest.raises(vaekit.DataError, match="00000801"):
        mnist.read_idx(labels, 3)


@pytest.mark.parametrize("damage", ["truncated", "bad-crc", "bad-header", "bad-deflate"])
def test_read_idx_corrupt_gzip_names_file(tmp_path, damage):
    """A damaged gzip stream is a DataError naming the file, not a raw EOFError/OSError."""
    blob = gzip.compress(idx_bytes(IMAGES))
    if damage == "truncated":
        blob = blob[: len(blob) // 2]
    elif damage == "bad-crc":
        blob = blob[:-8] + bytes(8)
    elif damage == "bad-deflate":  # a valid header over a damaged stream raises zlib.error inside gzip
        blob = blob[:10] + b"\xff" * 20 + blob[30:]
    else:
        blob = b"\x1f\x8b" + b"\x63" * 30  # gzip magic, unknown compression method
    path = tmp_path / "images.gz"
    path.write_bytes(blob)
    with pytest.raises(vaekit.DataError, match="gzip") as err:
        mnist.read_idx(path, 3)
    assert str(path) in str(err.value)


def test_read_idx_missing_file(tmp_path):
    """A file that does not exist is a DataError naming it."""
    path = tmp_path / "nope"
    with pytest.raises(vaekit.DataError, match="cannot read") as err:
        mnist.read_idx(path, 1)
    assert str(path) in str(err.value)


# --- locate and download ----------------------------------------------------------------------------------


def test_locate_without_files_explains_what_to_do(tmp_path):
    """With no MNIST anywhere, the error names where it looked, what it wanted and how to fix it."""
    data_dir = tmp_path / "empty"
    with pytest.raises(vaekit.DataError) as err:
        mnist.locate(str(data_dir))
    msg = str(err.value)
    assert str(data_dir / "mnist") in msg
    assert str(tmp_path / "cache" / "mnist") in msg  # the cache dir set by conftest's VAEKIT_CACHE
    for name in mnist.SHA256:
        assert name in msg
    assert "--download" in msg and "VAEKIT_DATA" in msg
    assert not (tmp_path / "cache").exists()  # nothing was downloaded


def test_locate_finds_raw_and_gz_files(tmp_path):
    """Files are found raw or gzipped under <data_dir>/mnist."""
    root = tmp_path / "data" / "mnist"
    root.mkdir(parents=True)
    names = list(mnist.SHA256)
    for i, name in enumerate(names):
        (root / (name + (".gz" if i % 2 else ""))).write_bytes(b"x")
    found = mnist.locate(str(tmp_path / "data"))
    assert found == {name: root / (name + (".gz" if i % 2 else "")) for i, name in enumerate(names)}


FAKE_NAME = "train-labels-idx1-ubyte"
FAKE_CONTENT = idx_bytes(LABELS)


def fake_mirror(directory: Path, content: bytes | None) -> str:
    """A directory served as a file:// mirror, holding FAKE_NAME.gz with ``content`` (or nothing)."""
    directory.mkdir()
    if content is not None:
        (directory / f"{FAKE_NAME}.gz").write_bytes(gzip.compress(content))
    return directory.as_uri() + "/"


@pytest.fixture
def fake_source() -> mnist.IdxSource:
    """A source whose checksum table expects FAKE_CONTENT, and which has no mirrors of its own."""
    return mnist.IdxSource("Fake", "fake", {FAKE_NAME: hashlib.sha256(FAKE_CONTENT).hexdigest()}, ())


def test_download_skips_a_mirror_without_the_file(tmp_path, fake_source):
    """A mirror that lacks the file is skipped; the next one's verified file lands in the target dir."""
    empty = fake_mirror(tmp_path / "mirror-empty", None)
    good = fake_mirror(tmp_path / "mirror-good", FAKE_CONTENT)
    target = tmp_path / "target"
    path = mnist.download_file(FAKE_NAME, target, mirrors=(empty, good), source=fake_source)
    assert path == target / f"{FAKE_NAME}.gz"
    assert path.read_bytes() == (tmp_path / "mirror-good" / f"{FAKE_NAME}.gz").read_bytes()
    assert os.listdir(target) == [f"{FAKE_NAME}.gz"]
    np.testing.assert_array_equal(mnist.read_idx(path, 1), LABELS)


def test_download_refuses_wrong_checksum_and_leaves_nothing(tmp_path, fake_source):
    """Content with the wrong SHA-256 is refused, and no file (not even a temp file) is left behind."""
    evil = fake_mirror(tmp_path / "mirror-evil", idx_bytes(LABELS[::-1]))
    target = tmp_path / "target"
    target.mkdir()
    with pytest.raises(vaekit.DataError) as err:
        mnist.download_file(FAKE_NAME, target, mirrors=(evil,), source=fake_source)
    msg = str(err.value)
    assert "SHA-256" in msg and FAKE_NAME in msg and fake_source.sha256[FAKE_NAME] in msg
    assert os.listdir(target) == []


def test_download_bad_mirror_then_good_mirror(tmp_path, fake_source):
    """A wrong-checksum mirror does not stop the download: the next mirror's correct file is stored."""
    evil = fake_mirror(tmp_path / "mirror-evil", idx_bytes(LABELS[::-1]))
    good = fake_mirror(tmp_path / "mirror-good", FAKE_CONTENT)
    target = tmp_path / "target"
    path = mnist.download_file(FAKE_NAME, target, mirrors=(evil, good), source=fake_source)
    assert gzip.decompress(path.read_bytes()) == FAKE_CONTENT
    assert os.listdir(target) == [f"{FAKE_NAME}.gz"]


def test_download_all_mirrors_failing_lists_each(tmp_path, fake_source):
    """When no mirror works, the error names every URL tried."""
    a = fake_mirror(tmp_path / "a", None)
    b = fake_mirror(tmp_path / "b", None)
    with pytest.raises(vaekit.DataError, match="could not download") as err:
        mnist.download_file(FAKE_NAME, tmp_path / "target", mirrors=(a, b), source=fake_source)
    assert f"{a}{FAKE_NAME}.gz" in str(err.value) and f"{b}{FAKE_NAME}.gz" in str(err.value)
    assert not (tmp_path / "target").exists() or os.listdir(tmp_path / "target") == []


def test_download_checks_the_sources_own_table(tmp_path, fake_source):
    """The same bytes are accepted by the source whose table they match and refused by another source's."""
    good = fake_mirror(tmp_path / "mirror", FAKE_CONTENT)
    with pytest.raises(vaekit.DataError) as err:
        mnist.download_file(FAKE_NAME, tmp_path / "fashion", mirrors=(good,), source=mnist.FASHION_MNIST)
    msg = str(err.value)
    assert "Fashion-MNIST" in msg and mnist.FASHION_MNIST.sha256[FAKE_NAME] in msg
    assert not (tmp_path / "fashion").exists() or os.listdir(tmp_path / "fashion") == []
    path = mnist.download_file(FAKE_NAME, tmp_path / "fake", mirrors=(good,), source=fake_source)
    assert gzip.decompress(path.read_bytes()) == FAKE_CONTENT


def test_sources_have_their_own_tables_folders_and_mirrors():
    """MNIST and Fashion-MNIST share file names but no checksum, folder or mirror; the old names are MNIST's."""
    a, b = mnist.MNIST, mnist.FASHION_MNIST
    assert set(a.sha256) == set(b.sha256) == {n for pair in mnist.FILES.values() for n in pair}
    assert not set(a.sha256.values()) & set(b.sha256.values())
    assert (a.folder, b.folder) == ("mnist", "fashion-mnist")
    assert not set(a.mirrors) & set(b.mirrors) and b.mirrors
    assert dict(a.sha256) == mnist.SHA256 and a.mirrors == mnist.MIRRORS


def test_locate_fashion_mnist_without_files_names_dataset_and_folder(tmp_path):
    """The not-found error names Fashion-MNIST and its fashion-mnist/ folder, in the data dir and the cache."""
    data_dir = tmp_path / "empty"
    with pytest.raises(vaekit.DataError) as err:
        mnist.locate(str(data_dir), source=mnist.FASHION_MNIST)
    msg = str(err.value)
    assert msg.startswith("Fashion-MNIST files not found")
    assert str(data_dir / "fashion-mnist") in msg and str(tmp_path / "cache" / "fashion-mnist") in msg
    assert "holds fashion-mnist/" in msg and "--download" in msg
    with pytest.raises(vaekit.DataError, match="fashion-mnist/"):
        data.load(DataConfig(dataset="fashion-mnist", data_dir=str(data_dir)))


def put_idx_files(folder: Path) -> None:
    """Placeholder files under all four IDX names (locate checks names, not content)."""
    folder.mkdir(parents=True)
    for name in mnist.SHA256:
        (folder / f"{name}.gz").write_bytes(b"x")


@pytest.mark.parametrize("where", ["data-dir", "cache"])
def test_datasets_never_read_each_others_folder(tmp_path, where):
    """Files under mnist/ are invisible to Fashion-MNIST and vice versa, in a data directory or the cache."""
    root = tmp_path / "data" if where == "data-dir" else tmp_path / "cache"
    put_idx_files(root / "mnist")
    with pytest.raises(vaekit.DataError, match="Fashion-MNIST files not found"):
        mnist.locate(str(tmp_path / "data"), source=mnist.FASHION_MNIST)
    assert set(mnist.locate(str(tmp_path / "data")).values()) <= set((root / "mnist").iterdir())
    put_idx_files(root / "fashion-mnist")
    found = mnist.locate(str(tmp_path / "data"), source=mnist.FASHION_MNIST)
    assert {p.parent for p in found.values()} == {root / "fashion-mnist"}


# --- digits: shapes and splits ----------------------------------------------------------------------------


def rows(split: data.Split) -> list[tuple]:
    """The examples of a split as sorted (label, pixels...) tuples: a multiset to compare splits by."""
    x = split.x.flatten(1).numpy()
    y = split.y.numpy()
    return sorted(zip(y.tolist(), map(tuple, x.tolist()), strict=True))


def test_digits_shapes_range_and_fixed_test_split():
    """digits gives float32 (N,1,8,8) in [0,1] and a fixed 359-example test split."""
    splits = data.load(DataConfig(dataset="digits", val_size=0))
    assert splits.val is None
    assert splits.train.x.shape == (DIGITS_TRAIN, 1, 8, 8) and splits.test.x.shape == (DIGITS_TEST, 1, 8, 8)
    for split in (splits.train, splits.test):
        assert split.x.dtype == torch.float32
        assert float(split.x.min()) == 0.0 and float(split.x.max()) == 1.0
        assert split.y.dtype == torch.int64 and split.y.shape == (len(split),)
        assert split.shape == (1, 8, 8)
    assert len(torch.unique(splits.train.x)) == 17  # grey levels 0/16 .. 16/16
    # The test split does not depend on the validation split or its seed.
    other = data.load(DataConfig(dataset="digits", val_size=0.3, split_seed=5))
    assert torch.equal(other.test.x, splits.test.x) and torch.equal(other.test.y, splits.test.y)
    # Train and test together are all of digits.
    from sklearn.datasets import load_digits

    d = load_digits()
    assert len(splits.train) + len(splits.test) == len(d.target) == DIGITS_N
    pixels = (d.images / 16.0).astype(np.float32).reshape(-1, 64).tolist()
    everything = sorted(zip(d.target.tolist(), map(tuple, pixels), strict=True))
    assert sorted(rows(splits.train) + rows(splits.test)) == everything


@pytest.mark.parametrize(("val_size", "n_val"), [(0.1, round(0.1 * DIGITS_TRAIN)), (100, 100)])
def test_digits_validation_split(val_size, n_val):
    """val_size as a fraction or a count carves that many examples; train + val is the original train set."""
    full = data.load(DataConfig(dataset="digits", val_size=0)).train
    splits = data.load(DataConfig(dataset="digits", val_size=val_size))
    assert len(splits.val) == n_val
    assert len(splits.train) == DIGITS_TRAIN - n_val
    assert sorted(rows(splits.train) + rows(splits.val)) == rows(full)


def test_validation_indices_disjoint_and_cover():
    """The validation indices and the training indices are disjoint and cover 0..n-1."""
    train_idx, val_idx = registry._validation_split(DIGITS_TRAIN, 0.1, 3)
    assert len(np.intersect1d(train_idx, val_idx)) == 0
    np.testing.assert_array_equal(np.sort(np.concatenate([train_idx, val_idx])), np.arange(DIGITS_TRAIN))


def test_validation_split_is_seeded():
    """The same split_seed gives the same split; another seed gives another."""
    a = data.load(DataConfig(dataset="digits", split_seed=7))
    b = data.load(DataConfig(dataset="digits", split_seed=7))
    c = data.load(DataConfig(dataset="digits", split_seed=8))
    assert torch.equal(a.val.x, b.val.x) and torch.equal(a.val.y, b.val.y) and torch.equal(a.train.x, b.train.x)
    assert rows(a.val) != rows(c.val)


def test_validation_split_leaving_no_training_data_is_refused():
    """A val_size that eats the whole training set is an error naming the setting."""
    with pytest.raises(vaekit.DataError, match="val_size"):
        data.load(DataConfig(dataset="digits", val_size=DIGITS_TRAIN))


def test_unknown_dataset_lists_valid_names():
    """An unknown dataset name is refused with the list of valid ones."""
    with pytest.raises(vaekit.DataError) as err:
        data.load(DataConfig(dataset="cifar"))
    assert "cifar" in str(err.value) and "digits" in str(err.value) and "mnist" in str(err.value)
    assert "fashion-mnist" in str(err.value)


# --- binarization -----------------------------------------------------------------------------------------


def is_binary(x: torch.Tensor) -> bool:
    return bool(((x == 0) | (x == 1)).all())


GREY = torch.linspace(0, 1, 200).reshape(2, 1, 10, 10)


def test_binarize_split_modes():
    """none is the identity, threshold is x > 0.5, static is a seeded 0/1 sample, unknown modes fail."""
    x, how = data.binarize_split(GREY, "none", "train", 0)
    assert torch.equal(x, GREY) and how == "none"
    x, _ = data.binarize_split(GREY, "threshold", "eval", 0)
    assert torch.equal(x, (GREY > 0.5).float())
    s0, how = data.binarize_split(GREY, "static", "eval", 0)
    assert is_binary(s0) and "seed 0" in how
    assert torch.equal(s0, data.binarize_split(GREY, "static", "eval", 0)[0])
    assert not torch.equal(s0, data.binarize_split(GREY, "static", "eval", 1)[0])
    assert torch.equal(s0[:, :, 0, 0], torch.zeros(2, 1))  # p = 0 never fires
    assert s0.flatten()[-1] == 1  # p = 1 always fires
    x, how = data.binarize_split(GREY, "dynamic", "train", 0)
    assert torch.equal(x, GREY) and how == "dynamic"
    x, _ = data.binarize_split(GREY, "dynamic", "eval", 0)
    assert is_binary(x)
    with pytest.raises(vaekit.DataError, match="unknown binarization 'fuzzy'"):
        data.binarize_split(GREY, "fuzzy", "train", 0)


def test_load_none_keeps_grey_levels():
    """binarize = none leaves the grey levels of every split."""
    splits = data.load(DataConfig(dataset="digits", binarize="none"))
    for split in (splits.train, splits.val, splits.test):
        assert not is_binary(split.x)
        assert split.binarization == "none"


def test_load_static_is_binary_and_seeded():
    """static binarizes every split to 0/1, the same for the same eval_seed and differently for another."""
    grey = data.load(DataConfig(dataset="digits"))
    a = data.load(DataConfig(dataset="digits", binarize="static", eval_seed=3))
    b = data.load(DataConfig(dataset="digits", binarize="static", eval_seed=3))
    c = data.load(DataConfig(dataset="digits", binarize="static", eval_seed=4))
    for name in ("train", "val", "test"):
        sa, sb, sc, sg = (getattr(s, name) for s in (a, b, c, grey))
        assert is_binary(sa.x), name
        assert torch.equal(sa.x, sb.x), name
        assert not torch.equal(sa.x, sc.x), name
        # Pixels with probability 0 or 1 stay put.
        assert torch.equal(sa.x[sg.x == 0], torch.zeros_like(sa.x[sg.x == 0]))
        assert torch.equal(sa.x[sg.x == 1], torch.ones_like(sa.x[sg.x == 1]))
        # On average the sample follows the grey levels.
        assert abs(float(sa.x.mean()) - float(sg.x.mean())) < 0.01


def test_load_threshold():
    """threshold binarization is exactly x > 0.5 of the grey data."""
    grey = data.load(DataConfig(dataset="digits"))
    thr = data.load(DataConfig(dataset="digits", binarize="threshold"))
    for name in ("train", "val", "test"):
        assert torch.equal(getattr(thr, name).x, (getattr(grey, name).x > 0.5).float()), name


def test_load_dynamic_grey_train_fixed_binary_eval():
    """dynamic keeps training data grey and gives val/test one fixed binary sample."""
    cfg = DataConfig(dataset="digits", binarize="dynamic", eval_seed=2)
    grey = data.load(DataConfig(dataset="digits"))
    a, b = data.load(cfg), data.load(cfg)
    assert torch.equal(a.train.x, grey.train.x) and a.train.binarization == "dynamic"
    for name in ("val", "test"):
        assert is_binary(getattr(a, name).x), name
        assert torch.equal(getattr(a, name).x, getattr(b, name).x), name
    # evaluation_split hands evaluation a binary, fixed version of the training set.
    ev1, ev2 = data.evaluation_split(a, "train", cfg), data.evaluation_split(b, "train", cfg)
    assert is_binary(ev1.x) and ev1.x.shape == a.train.x.shape and torch.equal(ev1.x, ev2.x)
    assert torch.equal(ev1.y, a.train.y)
    assert data.evaluation_split(a, "test", cfg) is a.test
    assert torch.equal(a.train.x, grey.train.x)  # the training split itself was not modified


def test_evaluation_split_errors():
    """Unknown split names and a missing validation split are refused by name."""
    cfg = DataConfig(dataset="digits", val_size=0)
    splits = data.load(cfg)
    with pytest.raises(vaekit.DataError, match="no validation split"):
        data.evaluation_split(splits, "val", cfg)
    with pytest.raises(vaekit.DataError, match="unknown split 'dev'"):
        data.evaluation_split(splits, "dev", cfg)
    assert data.evaluation_split(splits, "train", cfg) is splits.train  # not dynamic: unchanged


# --- likelihood support -----------------------------------------------------------------------------------


def test_bernoulli_support_refuses_out_of_range():
    """Data outside [0, 1] is refused for the Bernoulli likelihood, naming the observed range."""
    with pytest.raises(vaekit.DataError) as err:
        likelihoods.check_support("bernoulli", torch.tensor([-0.5, 0.3, 1.5]))
    assert "[-0.5, 1.5]" in str(err.value) and "[0, 1]" in str(err.value)
    with pytest.raises(vaekit.DataError, match=r"\[0, 255\]"):
        likelihoods.check_support("bernoulli", torch.tensor([0.0, 255.0]))
    likelihoods.check_support("bernoulli", torch.tensor([0.0, 0.5, 1.0]))  # the closed range is fine
    likelihoods.check_support("gaussian", torch.tensor([-3.0, 255.0]))  # real line: anything finite


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
@pytest.mark.parametrize("name", ["bernoulli", "gaussian"])
def test_support_refuses_non_finite(name, bad):
    """NaN and infinities are refused whatever the likelihood, even when the rest is in range."""
    with pytest.raises(vaekit.DataError, match="NaN or infinite"):
        likelihoods.check_support(name, torch.tensor([0.2, bad, 0.7]))


def test_support_refuses_empty():
    """An empty data set is refused rather than crashing on min()."""
    with pytest.raises(vaekit.DataError, match="empty"):
        likelihoods.check_support("bernoulli", torch.zeros(0, 1, 4, 4))


# --- real MNIST (skipped when $VAEKIT_DATA/mnist is absent) --------------------------------------------------


def test_mnist_checksum_table_matches_reference_files(shared_data):
    """vaekit.data.mnist.SHA256 holds the SHA-256 of the decompressed reference files."""
    found = mnist.locate(str(shared_data))
    assert set(found) == set(mnist.SHA256)
    for name, path in found.items():
        raw = path.read_bytes()
        content = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        assert hashlib.sha256(content).hexdigest() == mnist.SHA256[name], name


def test_mnist_train_split(shared_data):
    """The MNIST training split: 60000 uint8 28x28 images with the known label counts."""
    images, labels = mnist.load_split("train", str(shared_data))
    assert images.shape == (60000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (60000,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == MNIST_TRAIN_COUNTS
    assert images.max() == 255 and images.min() == 0


def test_mnist_test_split(shared_data):
    """The MNIST test split: 10000 images with the known label counts."""
    images, labels = mnist.load_split("test", str(shared_data))
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS


def test_mnist_through_data_load(shared_data):
    """data.load on MNIST gives float32 (N,1,28,28) in [0,1]: the IDX bytes divided by 255."""
    splits = data.load(DataConfig(dataset="mnist", data_dir=str(shared_data), val_size=0))
    assert splits.val is None
    assert splits.train.x.shape == (60000, 1, 28, 28) and splits.train.x.dtype == torch.float32
    assert splits.test.x.shape == (10000, 1, 28, 28) and splits.test.x.dtype == torch.float32
    assert float(splits.train.x.min()) == 0.0 and float(splits.train.x.max()) == 1.0
    assert np.bincount(splits.test.y.numpy(), minlength=10).tolist() == MNIST_TEST_COUNTS
    images, _ = mnist.load_split("test", str(shared_data))
    assert torch.equal(torch.round(splits.test.x[:, 0] * 255).to(torch.uint8), torch.from_numpy(images.copy()))


def test_mnist_found_through_vaekit_data(shared_data, monkeypatch):
    """With data_dir=None, MNIST is found through the VAEKIT_DATA environment variable."""
    with pytest.raises(vaekit.DataError, match="not found"):
        mnist.locate(None)  # conftest clears VAEKIT_DATA: nothing to find
    monkeypatch.setenv("VAEKIT_DATA", str(shared_data))
    found = mnist.locate(None)
    assert all(p.parent == shared_data / "mnist" for p in found.values())
    images, labels = mnist.load_split("test", None)
    assert images.shape == (10000, 28, 28)
    assert np.bincount(labels, minlength=10).tolist() == MNIST_TEST_COUNTS


# --- real Fashion-MNIST (skipped when $VAEKIT_DATA/fashion-mnist is absent) ----------------------------


@pytest.fixture
def fashion_data(shared_data) -> Path:
    if not (shared_data / "fashion-mnist").is_dir():
        pytest.skip(f"Fashion-MNIST reference data not present at {shared_data}")
    return shared_data


def test_fashion_mnist_checksum_table_matches_reference_files(fashion_data):
    """FASHION_MNIST.sha256 holds the SHA-256 of the decompressed reference files, found in fashion-mnist/."""
    found = mnist.locate(str(fashion_data), source=mnist.FASHION_MNIST)
    assert set(found) == set(mnist.FASHION_MNIST.sha256)
    for name, path in found.items():
        assert path.parent == fashion_data / "fashion-mnist"
        raw = path.read_bytes()
        content = gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw
        assert hashlib.sha256(content).hexdigest() == mnist.FASHION_MNIST.sha256[name], name


@pytest.mark.parametrize(("split", "n"), [("train", 60000), ("test", 10000)])
def test_fashion_mnist_splits(fashion_data, split, n):
    """Each Fashion-MNIST split: n uint8 28x28 images, balanced over the 10 classes."""
    images, labels = mnist.load_split(split, str(fashion_data), source=mnist.FASHION_MNIST)
    assert images.shape == (n, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (n,) and labels.dtype == np.uint8
    assert np.bincount(labels, minlength=10).tolist() == [n // 10] * 10
    assert images.max() == 255 and images.min() == 0
    mnist_images, _ = mnist.load_split(split, str(fashion_data))
    assert not np.array_equal(images[:100], mnist_images[:100])  # really the other dataset


def test_fashion_mnist_through_data_load(fashion_data, monkeypatch):
    """data.load("fashion-mnist") gives float32 (N,1,28,28) = bytes / 255, its class names, and uses VAEKIT_DATA."""
    monkeypatch.setenv("VAEKIT_DATA", str(fashion_data))
    splits = data.load(DataConfig(dataset="fashion-mnist", val_size=0))
    assert splits.classes == FASHION_CLASSES and data.CLASSES["fashion-mnist"] == FASHION_CLASSES
    assert splits.train.x.shape == (60000, 1, 28, 28) and splits.train.x.dtype == torch.float32
    assert splits.test.x.shape == (10000, 1, 28, 28) and splits.test.shape == (1, 28, 28)
    assert float(splits.train.x.min()) == 0.0 and float(splits.train.x.max()) == 1.0
    assert np.bincount(splits.test.y.numpy(), minlength=10).tolist() == [1000] * 10
    images, _ = mnist.load_split("test", str(fashion_data), source=mnist.FASHION_MNIST)
    assert torch.equal(torch.round(splits.test.x[:, 0] * 255).to(torch.uint8), torch.from_numpy(images.copy()))


def test_fashion_mnist_download_refuses_mnist_and_accepts_its_own(fashion_data, tmp_path, monkeypatch):
    """--download verifies with Fashion-MNIST's table: a mirror serving MNIST fails, one serving it succeeds."""
    mnist_mirror = (fashion_data / "mnist").as_uri() + "/"
    fashion_mirror = (fashion_data / "fashion-mnist").as_uri() + "/"
    cache = tmp_path / "cache" / "fashion-mnist"
    monkeypatch.setattr(mnist, "FASHION_MNIST", replace(mnist.FASHION_MNIST, mirrors=(mnist_mirror,)))
    cfg = DataConfig(dataset="fashion-mnist", data_dir=str(tmp_path / "empty"), download=True, val_size=0)
    with pytest.raises(vaekit.DataError) as err:
        data.load(cfg)
    assert "Fashion-MNIST" in str(err.value) and "does not match" in str(err.value)
    assert not cache.exists() or os.listdir(cache) == []
    monkeypatch.setattr(mnist, "FASHION_MNIST", replace(mnist.FASHION_MNIST, mirrors=(mnist_mirror, fashion_mirror)))
    splits = data.load(cfg)
    assert sorted(os.listdir(cache)) == sorted(f"{n}.gz" for n in mnist.SHA256)
    assert not (tmp_path / "cache" / "mnist").exists()
    assert splits.classes == FASHION_CLASSES and len(splits.train) == 60000
    assert np.bincount(splits.train.y.numpy(), minlength=10).tolist() == [6000] * 10
