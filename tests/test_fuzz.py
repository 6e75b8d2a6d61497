"""Bad input everywhere: property-based tests of every loader, the config parser, the checkpoint reader and the CLI.

Random bytes, truncations, bit flips, wrong dtypes and shapes, empty inputs, NaN/inf and headers that promise
huge dimensions. The only outcomes allowed are a result or a VaekitError with a message: never a raw exception
from inside numpy, PIL, scipy, zipfile or torch, and never a changed or deleted input file (every input is
hashed before and after). Each target runs a fixed number of examples, derandomized, so CI time stays bounded
and the counts (printed at the end of the module, and checked by the last test) are the same on every run.
"""

from __future__ import annotations

import argparse
import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import struct
import tempfile
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.io
import scipy.sparse
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from PIL import Image

import vaekit
from vaekit import VaekitError, checkpoint, training
from vaekit.cli import main, parser
from vaekit.config import Config, flatten, load_config_file, parse_assignment
from vaekit.data import folders, images, mnist, tabular
from vaekit.data import load as load_data
from vaekit.errors import TrainingError
from vaekit.training import runstate

from conftest import digits_config

# examples per target: fixed, so the whole file stays well under a minute on a 2-core CI machine
EXAMPLES = {"mnist-idx": 200, "image-folder": 60, "image-array": 200, "table-csv": 200, "table-array": 150,
            "table-mat": 100, "config-dict": 300, "config-file": 200, "config-assignment": 300, "cli": 150,
            "checkpoint": 100}
COUNTS: Counter[str] = Counter()  # examples run to the end, per target
OUTCOMES: Counter[tuple[str, str]] = Counter()  # calls that returned a result or raised a VaekitError


def fuzz(target: str) -> settings:
    return settings(max_examples=EXAMPLES[target], derandomize=True, deadline=None, database=None,
                    suppress_health_check=list(HealthCheck))


@pytest.fixture(scope="module", autouse=True)
def _report_counts(request):
    """One line at the end of this module: how many examples each target was given (quoted in the README)."""
    yield
    reporter = request.config.pluginmanager.get_plugin("terminalreporter")
    capture = request.config.pluginmanager.get_plugin("capturemanager")
    if reporter is None or not COUNTS:
        return
    with capture.global_and_fixture_disabled() if capture is not None else contextlib.nullcontext():
        reporter.write_line("fuzz examples per target (calls accepted / refused with a VaekitError): " + ", ".join(
            f"{k} {v} ({OUTCOMES[k, 'accepted']}/{OUTCOMES[k, 'refused']})" for k, v in sorted(COUNTS.items())))


def outcome(target: str, fn: Callable[..., Any], *args: Any, check: Callable[[Any], None] | None = None,
            **kwargs: Any) -> Any:
    """``fn(...)``, or the VaekitError it raised (which must say something); anything else fails the test. An
    accepted result must pass ``check``: a loader that returns NaN rows or a wrong shape is not accepting."""
    try:
        result = fn(*args, **kwargs)
    except VaekitError as e:
        assert str(e).strip(), f"{type(e).__name__} without a message"
        OUTCOMES[target, "refused"] += 1
        return e
    if check is not None:
        check(result)
    OUTCOMES[target, "accepted"] += 1
    return result


# --- what an accepted result must be ----------------------------------------------------------------------


def valid_idx(ndim: int) -> Callable[[np.ndarray], None]:
    def check(a: np.ndarray) -> None:
        assert isinstance(a, np.ndarray) and a.dtype == np.uint8 and a.ndim == ndim, (type(a), a.dtype, a.ndim)
    return check


def valid_mnist_split(result: tuple[np.ndarray, np.ndarray]) -> None:
    images, labels = result
    valid_idx(3)(images)
    valid_idx(1)(labels)
    assert images.shape[1:] == (28, 28) and len(images) == len(labels)


def valid_values(x: np.ndarray) -> None:
    """Image values as vaekit keeps them: bytes, or float32 in [0, 1] (so no NaN or infinity)."""
    assert x.dtype in (np.uint8, np.float32), x.dtype
    if x.dtype == np.float32 and x.size:
        assert np.isfinite(x).all() and x.min() >= 0 and x.max() <= 1


def valid_images(size: tuple[int, int] | None, channels: int | None) -> Callable[[images.ImageSet], None]:
    """(N, C, H, W) with N >= 1, C in 1/3/4, the size and channels asked for, and labels that fit."""
    def check(s: images.ImageSet) -> None:
        x = s.x
        assert isinstance(x, np.ndarray) and x.ndim == 4 and len(x) >= 1 and x.shape[1] in (1, 3, 4), x.shape
        assert size is None or x.shape[2:] == tuple(size)
        assert channels is None or x.shape[1] == channels
        valid_values(x)
        if s.y is not None:
            assert s.y.shape == (len(x),) and np.issubdtype(s.y.dtype, np.integer)
            if s.classes is not None:
                assert s.y.min() >= 0 and s.y.max() < len(s.classes)
    return check


def valid_table(t: tabular.Table) -> None:
    """(N, D) float32 with N >= 2 and D >= 1, every value finite; integer labels, one per row."""
    assert isinstance(t.x, np.ndarray) and t.x.dtype == np.float32 and t.x.ndim == 2, (t.x.dtype, t.x.shape)
    assert t.x.shape[0] >= 2 and t.x.shape[1] >= 1 and np.isfinite(t.x).all()
    if t.y is not None:
        assert t.y.shape == (len(t.x),) and np.issubdtype(t.y.dtype, np.integer)
    assert t.columns == () or len(t.columns) == t.x.shape[1]


def valid_splits(s: Any) -> None:
    """Every split's values finite (and in [0, 1] for images, (N, C, H, W); tables, (N, D), are standardized), of
    one example shape, with one label per example."""
    shapes = set()
    for split in (s.train, s.val, s.test):
        if split is None:
            continue
        x = split.x.numpy()
        assert len(x) >= 1 and x.dtype == np.float32 and x.ndim in (2, 4) and np.isfinite(x).all(), x.shape
        if x.ndim == 4:
            valid_values(x)
        shapes.add(x.shape[1:])
        assert split.y is None or tuple(split.y.shape) == (len(x),)
    assert len(shapes) == 1, shapes


def valid_run(result: tuple[vaekit.VAE, vaekit.Config]) -> None:
    """A model built from the loaded config whose weights have the config's shapes."""
    model, config = result
    assert isinstance(model, vaekit.VAE) and model.config == config.model
    reference = vaekit.VAE(config.model).state_dict()
    assert {k: tuple(v.shape) for k, v in model.state_dict().items()} == \
        {k: tuple(v.shape) for k, v in reference.items()}


def valid_state(state: checkpoint.TrainingState) -> None:
    assert isinstance(state.epoch, int) and isinstance(state.step, int) and state.epoch >= 0 and state.step >= 0
    assert isinstance(state.history, list) and all(isinstance(r, dict) for r in state.history)


def digests(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


@contextlib.contextmanager
def untouched(root: Path) -> Iterator[None]:
    """Every file under ``root`` is still there, byte for byte, afterwards."""
    before = digests(root)
    yield
    after = digests(root)
    assert {k: after.get(k) for k in before} == before, "an input file was changed or deleted"


@contextlib.contextmanager
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="vaekit-fuzz-") as d:
        yield Path(d)


# --- byte-level damage ----------------------------------------------------------------------------------------


@st.composite
def damaged(draw: st.DrawFn, blob: bytes) -> bytes:
    """``blob`` as is, truncated, with bytes flipped, with junk appended, or replaced by random bytes."""
    kind = draw(st.sampled_from(["same", "same", "same", "truncate", "flip", "append", "random", "empty"]))
    if kind == "truncate" and blob:
        return blob[: draw(st.integers(0, len(blob) - 1))]
    if kind == "flip" and blob:
        data = bytearray(blob)
        for i in draw(st.lists(st.integers(0, len(blob) - 1), min_size=1, max_size=8)):
            data[i] = draw(st.integers(0, 255))
        return bytes(data)
    if kind == "append":
        return blob + draw(st.binary(min_size=1, max_size=64))
    if kind == "random":
        return draw(st.binary(max_size=512))
    return b"" if kind == "empty" else blob


HUGE = st.integers(2**31, 2**62)


# --- MNIST IDX ------------------------------------------------------------------------------------------------


@st.composite
def idx_files(draw: st.DrawFn, ndim: int) -> bytes:
    huge = draw(st.booleans())
    dims = draw(st.lists(HUGE if huge else st.integers(0, 6), min_size=ndim, max_size=ndim))
    dims = [min(d, 2**32 - 1) for d in dims]
    payload = b"" if huge else draw(st.binary(min_size=int(np.prod(dims)), max_size=int(np.prod(dims))))
    blob = draw(damaged(mnist.IDX_MAGIC[ndim] + b"".join(d.to_bytes(4, "big") for d in dims) + payload))
    return gzip.compress(blob)[: draw(st.integers(0, 1 << 16))] if draw(st.booleans()) else blob


@fuzz("mnist-idx")
@given(images_idx=idx_files(3), labels_idx=idx_files(1), gz=st.booleans())
def test_mnist_idx_files(images_idx, labels_idx, gz):
    with scratch() as root:
        folder = root / "mnist"
        folder.mkdir()
        suffix = ".gz" if gz else ""
        (folder / f"train-images-idx3-ubyte{suffix}").write_bytes(images_idx)
        (folder / f"train-labels-idx1-ubyte{suffix}").write_bytes(labels_idx)
        with untouched(root):
            outcome("mnist-idx", mnist.read_idx, folder / f"train-images-idx3-ubyte{suffix}", 3, check=valid_idx(3))
            outcome("mnist-idx", mnist.read_idx, folder / f"train-labels-idx1-ubyte{suffix}", 1, check=valid_idx(1))
            for name in ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"):
                (folder / name).write_bytes(b"")
            outcome("mnist-idx", mnist.load_split, "train", str(root), check=valid_mnist_split)
    COUNTS["mnist-idx"] += 1


# --- images: folders and arrays -------------------------------------------------------------------------------


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height, with no pixel data: must be refused without allocating it."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    chunk = b"IHDR" + ihdr
    return (b"\x89PNG\r\n\x1a\n" + struct.pack(">I", len(ihdr)) + chunk + struct.pack(">I", zlib.crc32(chunk))
            + b"\x00\x00\x00\x00IEND\xaeB`\x82")


@st.composite
def image_files(draw: st.DrawFn) -> tuple[str, bytes]:
    if draw(st.integers(0, 5)) == 0:
        return "huge.png", png_claiming(draw(st.integers(1, 2**31 - 1)), draw(st.integers(1, 2**31 - 1)))
    mode = draw(st.sampled_from(["L", "RGB", "RGBA", "P", "1", "I;16", "LA", "F", "CMYK"]))
    fmt = draw(st.sampled_from(["PNG", "JPEG"] if mode in ("L", "RGB", "CMYK") else ["PNG"]))
    if mode in ("F", "CMYK") and fmt == "PNG":
        mode = "RGB"  # PNG cannot store these
    h, w = draw(st.integers(1, 12)), draw(st.integers(1, 12))
    pixels = np.frombuffer(draw(st.binary(min_size=h * w * 4, max_size=h * w * 4)), np.uint8)[: h * w]
    im = Image.fromarray(pixels.reshape(h, w)).convert(mode)
    buf = io.BytesIO()
    im.save(buf, format=fmt)
    return f"img.{fmt.lower()}", draw(damaged(buf.getvalue()))


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # said at open; then refused
@fuzz("image-folder")
@given(files=st.lists(image_files(), min_size=0, max_size=3), classes=st.booleans(), strict=st.booleans(),
       size=st.none() | st.tuples(st.integers(1, 9), st.integers(1, 9)), channels=st.sampled_from([None, 1, 3, 4]))
def test_image_folders(files, classes, strict, size, channels):
    with scratch() as root:
        folder = root / "photos"
        folder.mkdir()
        for i, (name, blob) in enumerate(files):
            where = folder / f"class{i % 2}" if classes else folder
            where.mkdir(exist_ok=True)
            (where / f"{i}-{name}").write_bytes(blob)
        with untouched(root):
            outcome("image-folder", folders.read_folder, folder, size, channels, strict,
                    check=valid_images(size, channels))
    COUNTS["image-folder"] += 1


ARRAY_DTYPES = [np.uint8, np.float32, np.float64, np.float16, np.int32, np.int64, np.bool_, np.complex64]


@st.composite
def arrays(draw: st.DrawFn, max_dims: int = 5) -> np.ndarray:
    """Any dtype and shape, NaN and infinities included; or (half the time) well-formed images or tables, so that
    the paths that accept data are exercised too."""
    kind = draw(st.sampled_from(["any", "images", "table"]))
    if kind == "images":
        shape = (draw(st.integers(2, 5)), draw(st.integers(1, 6)), draw(st.integers(1, 6)))
        shape += draw(st.sampled_from([(), (1,), (3,), (4,)]))
        if draw(st.booleans()):
            return draw(hnp.arrays(np.uint8, shape))
        return draw(hnp.arrays(np.float32, shape, elements=st.floats(0, 1, width=32)))
    if kind == "table":
        shape = (draw(st.integers(2, 6)), draw(st.integers(1, 4)))
        return draw(hnp.arrays(np.float64, shape, elements=st.floats(-1e6, 1e6)))
    dtype = np.dtype(draw(st.sampled_from(ARRAY_DTYPES)))
    shape = draw(hnp.array_shapes(min_dims=0, max_dims=max_dims, min_side=0, max_side=5))
    return draw(hnp.arrays(dtype, shape))  # floats include NaN and infinities


def npy_claiming(shape: tuple[int, ...]) -> bytes:
    """An .npy header that promises ``shape`` (terabytes), followed by a few bytes."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": shape})
    return buf.getvalue() + b"\x00" * 64


@st.composite
def array_files(draw: st.DrawFn, keys: list[str]) -> tuple[str, bytes]:
    if draw(st.integers(0, 6)) == 0:  # a header with huge dimensions, alone or inside an .npz
        blob = npy_claiming(tuple(draw(st.lists(HUGE | st.integers(0, 28), min_size=1, max_size=4))))
        if not draw(st.booleans()):
            return "huge.npy", blob
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w") as z:
            z.writestr(f"{draw(st.sampled_from(keys))}.npy", blob)
        return "huge.npz", buf.getvalue()
    buf = io.BytesIO()
    if draw(st.booleans()):
        np.save(buf, draw(arrays()))
        name = "a.npy"
    else:
        members = draw(st.dictionaries(st.sampled_from([*keys, "y", "other"]), arrays(), min_size=0, max_size=3))
        (np.savez_compressed if draw(st.booleans()) else np.savez)(buf, **members)
        name = "a.npz"
    return name, draw(damaged(buf.getvalue()))


@fuzz("image-array")
@given(file=array_files(["x", "X", "images"]), size=st.none() | st.tuples(st.integers(1, 7), st.integers(1, 7)),
       channels=st.sampled_from([None, 1, 3, 4]))
def test_image_arrays(file, size, channels):
    name, blob = file
    with scratch() as root:
        (root / name).write_bytes(blob)
        with untouched(root):
            outcome("image-array", images.read_array, root / name, size, channels, check=valid_images(size, channels))
            outcome("image-array", load_data, vaekit.DataConfig(dataset=str(root / name), val_size=0),
                    check=valid_splits)
    COUNTS["image-array"] += 1


# --- tables ---------------------------------------------------------------------------------------------------


CELLS = st.sampled_from(["1", "-2.5", "0", "nan", "NaN", "inf", "-inf", "", " ", "abc", "1e400", "1e300", "0x10",
                         " 3 ", "1_0", '"4"', "1,5", "\x00"]) | st.text(max_size=4)


NUMBERS = st.integers(-1000, 1000).map(str) | st.floats(-1e6, 1e6).map(repr)


@st.composite
def csv_files(draw: st.DrawFn) -> tuple[bytes, str | None]:
    if draw(st.integers(0, 4)) == 0:
        return draw(st.binary(max_size=256)), draw(st.none() | st.text(max_size=3))
    width, clean = draw(st.integers(0, 4)), draw(st.booleans())  # clean: numbers only, often a valid table
    names = st.sampled_from(["a", "b", "c", "label"]) if clean else st.text(max_size=4) | st.sampled_from(["a"])
    header = draw(st.lists(names, min_size=width, max_size=width, unique=clean))
    cells, lengths = (NUMBERS, (width, width)) if clean else (CELLS | NUMBERS, (max(0, width - 1), width + 1))
    rows = draw(st.lists(st.lists(cells, min_size=lengths[0], max_size=lengths[1]), max_size=5))
    text = "\n".join(",".join(r) for r in [header, *rows])
    label = draw(st.none() | st.sampled_from([*header, "missing"] if header else ["missing"]))
    return draw(damaged(text.encode())), label


@fuzz("table-csv")
@given(file=csv_files())
def test_csv_tables(file):
    blob, label = file
    with scratch() as root:
        (root / "t.csv").write_bytes(blob)
        with untouched(root):
            outcome("table-csv", tabular.read, root / "t.csv", label, check=valid_table)
    COUNTS["table-csv"] += 1


@fuzz("table-array")
@given(file=array_files(["X"]))
def test_array_tables(file):
    name, blob = file
    with scratch() as root:
        (root / name).write_bytes(blob)
        with untouched(root):
            outcome("table-array", tabular.read, root / name, check=valid_table)
    COUNTS["table-array"] += 1


@st.composite
def mat_files(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 5)) == 0:
        return draw(st.binary(max_size=512))
    if draw(st.integers(0, 3)) == 0:  # an intact, well-formed table, at times with labels: the accepting path
        x = draw(hnp.arrays(np.float64, (draw(st.integers(2, 6)), draw(st.integers(1, 4))),
                            elements=st.floats(-1e6, 1e6)))
        content: dict[str, Any] = {"X": x}
        if draw(st.booleans()):
            content["y"] = draw(hnp.arrays(np.int64, (len(x),), elements=st.integers(0, 3)))
        buf = io.BytesIO()
        scipy.io.savemat(buf, content)
        return buf.getvalue()
    else:
        x = draw(arrays(max_dims=3).filter(lambda a: a.dtype != np.float16))  # MATLAB has no half floats
        content = {draw(st.sampled_from(["X", "x", "data"])): x}
        if draw(st.booleans()):
            content["y"] = draw(arrays(max_dims=2).filter(lambda a: a.dtype != np.float16))
    if draw(st.integers(0, 5)) == 0:
        content["X"] = scipy.sparse.csr_matrix(np.eye(3))
    buf = io.BytesIO()
    scipy.io.savemat(buf, content)
    return draw(damaged(buf.getvalue()))


@fuzz("table-mat")
@given(blob=mat_files())
def test_mat_tables(blob):
    with scratch() as root:
        (root / "t.mat").write_bytes(blob)
        with untouched(root):
            outcome("table-mat", tabular.read, root / "t.mat", check=valid_table)
    COUNTS["table-mat"] += 1


# --- the config parser ----------------------------------------------------------------------------------------


KEYS = [f.split(".", 1)[1] for f in flatten(Config().to_dict())]
JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=6),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3),
    max_leaves=6)
SECTIONS = st.dictionaries(st.sampled_from([*KEYS, "bogus"]), JSON_VALUES, max_size=4)
CONFIG_DICTS = st.dictionaries(st.sampled_from(["model", "data", "train", "optim"]), SECTIONS | JSON_VALUES,
                               max_size=3)


@fuzz("config-dict")
@given(d=CONFIG_DICTS | JSON_VALUES)
def test_config_from_dict(d):
    cfg = outcome("config-dict", Config.from_dict, d)
    if isinstance(cfg, Config):  # whatever is accepted round-trips through JSON
        assert Config.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    COUNTS["config-dict"] += 1


@fuzz("config-file")
@given(content=st.binary(max_size=256) | CONFIG_DICTS.map(lambda d: json.dumps(d).encode())
       | st.text(max_size=200).map(str.encode), suffix=st.sampled_from([".json", ".toml", ".txt", ""]))
def test_config_files(content, suffix):
    with scratch() as root:
        path = root / f"c{suffix}"
        path.write_bytes(content)
        with untouched(root):
            d = outcome("config-file", load_config_file, path, check=lambda d: assert_type(d, dict))
            if isinstance(d, dict):
                outcome("config-file", lambda: Config().override(flatten(d)))
    COUNTS["config-file"] += 1


@fuzz("config-assignment")
@given(text=st.text(max_size=40) | st.builds(lambda k, v: f"{k}={v}", st.sampled_from(
    [*flatten(Config().to_dict()), "model", "x.y.z", ""]), st.text(max_size=12) | JSON_VALUES.map(json.dumps)))
def test_config_assignments(text):
    pair = outcome("config-assignment", parse_assignment, text, check=valid_pair)
    if isinstance(pair, tuple):
        outcome("config-assignment", lambda: Config().override(dict([pair])))
    COUNTS["config-assignment"] += 1


def assert_type(value: Any, kind: type) -> None:
    assert isinstance(value, kind), type(value)


def valid_pair(pair: Any) -> None:
    """KEY=VALUE parsed to (section.key, value) for a key of the config."""
    assert isinstance(pair, tuple) and len(pair) == 2 and isinstance(pair[0], str) and "=" not in pair[0], pair


# --- checkpoints ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    directory = tmp_path_factory.mktemp("run")
    vaekit.train(digits_config(**{"train.epochs": 1}), directory)
    return directory


CHECKPOINT_FILES = ["latest.json", "config.json", "model.safetensors", "training_state.json",
                    "training_state.safetensors"]


@fuzz("checkpoint")
@given(data=st.data(), name=st.sampled_from(CHECKPOINT_FILES), rehash=st.booleans())
def test_checkpoint_files(run_dir, data, name, rehash):
    """A damaged file of a run checkpoint; with ``rehash`` latest.json vouches for it, so the parsers see it."""
    with scratch() as root:
        directory = root / "run"
        shutil.copytree(run_dir, directory)
        current, pointer = checkpoint.current(directory)
        path = directory / name if name == "latest.json" else current / name
        blob = data.draw(damaged(path.read_bytes()))
        path.write_bytes(blob)
        if rehash and name != "latest.json":
            pointer["sha256"][name] = hashlib.sha256(blob).hexdigest()
            (directory / "latest.json").write_text(json.dumps(pointer))
        with untouched(root):
            outcome("checkpoint", checkpoint.load_run, directory, check=valid_run)
            outcome("checkpoint", checkpoint.load_state, directory, check=valid_state)
    COUNTS["checkpoint"] += 1


# --- the command line -----------------------------------------------------------------------------------------


def option_strings(p: argparse.ArgumentParser) -> list[str]:
    found = []
    for action in p._actions:
        found += action.option_strings
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                found += option_strings(sub)
    return sorted(set(found))


COMMANDS = ["train", "evaluate", "sample", "reconstruct", "interpolate", "traverse", "embed", "anomaly"]
TOKENS = (st.sampled_from(option_strings(parser())) | st.sampled_from(
    ["missing-dir", "empty-dir", "broken-dir", "plain-file", "1", "0", "-1", "1e9", "nan", "inf", "x", "digits",
     "mnist", "model.latent_dim=2", "train.epochs=0", "4x4", "0x0", "3,3", "=", ""]) | st.text(max_size=6))


def _no_training(*args: Any, **kwargs: Any) -> None:
    raise TrainingError("the fuzz test stops here instead of training")


def _resume_config_only(directory: Any, overrides: Any = None, *args: Any, **kwargs: Any) -> None:
    runstate.resume_config(directory, overrides)
    _no_training()


@fuzz("cli")
@given(command=st.sampled_from(COMMANDS) | st.text(max_size=5), rest=st.lists(TOKENS, max_size=8))
def test_cli_with_random_arguments(command, rest):
    with scratch() as root, pytest.MonkeyPatch.context() as mp:
        mp.setattr(training, "train", _no_training)  # parsing, configs and checkpoints are what is tested here
        mp.setattr(training, "resume", _resume_config_only)
        mp.chdir(root)
        (root / "empty-dir").mkdir()
        (root / "broken-dir").mkdir()
        (root / "broken-dir" / "config.json").write_text('{"format": "vaekit-checkpoint", "version": 1}')
        (root / "plain-file").write_text("1,2\n3,4\n")
        err, entries = io.StringIO(), sorted(os.listdir(root))
        with untouched(root), contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
            try:
                status = main([command, *rest])
            except SystemExit as e:  # argparse: --help (0) or a usage error (2)
                status = e.code
        assert status in (0, 2), (status, err.getvalue()[-500:])
        assert "Traceback" not in err.getvalue()
        assert sorted(os.listdir(root)) == entries  # nothing written either
    OUTCOMES["cli", "accepted" if status == 0 else "refused"] += 1
    COUNTS["cli"] += 1


# --- headers that promise more than the file holds: refused before anything is allocated ------------------------


PROMISED = 2**28  # 256 MiB: what each header below asks for, in files of a few hundred bytes
ALLOCATED_AT_MOST = 2**25  # what refusing one may cost (tracemalloc: every numpy and Python allocation)


def in_zip(member: str, blob: bytes) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr(member, blob)
    return buf.getvalue()


def idx_claiming(dims: tuple[int, ...]) -> bytes:
    return mnist.IDX_MAGIC[len(dims)] + b"".join(d.to_bytes(4, "big") for d in dims) + b"\x00" * 64


IMAGE_SHAPE, TABLE_SHAPE = (1024, 1, 256, 256), (2**22, 16)  # float32: 256 MiB each
OVER_PROMISING = {  # name -> (file name, bytes, the loader given the path)
    "npy image array": ("a.npy", npy_claiming(IMAGE_SHAPE), images.read_array),
    "npz image array": ("a.npz", in_zip("x.npy", npy_claiming(IMAGE_SHAPE)), images.read_array),
    "npy table": ("t.npy", npy_claiming(TABLE_SHAPE), tabular.read),
    "npz table": ("t.npz", in_zip("X.npy", npy_claiming(TABLE_SHAPE)), tabular.read),
    "IDX images": ("train-images-idx3-ubyte", idx_claiming((1024, 512, 512)), lambda p: mnist.read_idx(p, 3)),
    "IDX images, gzip": ("train-images-idx3-ubyte.gz", gzip.compress(idx_claiming((1024, 512, 512))),
                         lambda p: mnist.read_idx(p, 3)),
    "IDX labels": ("train-labels-idx1-ubyte", idx_claiming((PROMISED,)), lambda p: mnist.read_idx(p, 1)),
}


@pytest.mark.parametrize("case", OVER_PROMISING)
def test_over_promising_headers_are_refused_before_allocating(case, tmp_path):
    """Each header asks for 256 MiB in a file of a few hundred bytes: refused with a VaekitError while the peak of
    traced allocations stays under 32 MiB (numpy allocates the whole promised array before reading it)."""
    import tracemalloc

    name, blob, load = OVER_PROMISING[case]
    (tmp_path / name).write_bytes(blob)
    assert len(blob) < 2**12
    tracemalloc.start()
    try:
        with pytest.raises(VaekitError):
            load(tmp_path / name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < ALLOCATED_AT_MOST, f"{case}: {peak / 2**20:.0f} MiB allocated before refusing"


@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")  # said at open; then refused
def test_an_image_header_promising_more_than_its_file_is_refused_without_decoding(tmp_path, monkeypatch):
    """A 10000 x 10000 RGB PNG header (300 MB of pixels, under PIL's own bomb limit) in a 60-byte file: the
    folder reader refuses it without ever asking PIL to decode (and so allocate) the image."""
    from PIL import ImageFile

    decoded = []
    real_load = ImageFile.ImageFile.load
    monkeypatch.setattr(ImageFile.ImageFile, "load", lambda im: decoded.append(im.size) or real_load(im))
    folder = tmp_path / "photos"
    folder.mkdir()
    (folder / "huge.png").write_bytes(png_claiming(10_000, 10_000))
    with pytest.raises(VaekitError, match=r"huge\.png"):
        folders.read_folder(folder, strict=True)
    assert (10_000, 10_000) not in decoded


# --- the counts -----------------------------------------------------------------------------------------------


def test_every_target_ran_its_fixed_number_of_examples():
    ran = {k: v for k, v in COUNTS.items() if v}
    if not ran:
        pytest.skip("no fuzz target ran in this session (deselected)")
    assert ran == {k: EXAMPLES[k] for k in ran}
