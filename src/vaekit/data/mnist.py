"""MNIST and Fashion-MNIST from the four standard IDX files: parse, locate on disk, or download with checksum
verification.

Both datasets use the same file names, so each is described by an ``IdxSource`` that names its own folder,
checksums and mirrors; every function takes one and defaults to ``MNIST``. Nothing here touches the network
unless ``download=True`` is asked for.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import urllib.request
import zlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

import numpy as np

from vaekit.errors import DataError
from vaekit.fileio import atomic_write_bytes

log = logging.getLogger(__name__)

# SHA-256 of the decompressed files (the original LeCun et al. content). Checking the decompressed bytes
# accepts any mirror's re-compression of the same data.
SHA256 = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
MIRRORS = (
    "https://ossci-datasets.s3.amazonaws.com/mnist/",
    "https://storage.googleapis.com/cvdf-datasets/mnist/",
)


@dataclass(frozen=True)
class IdxSource:
    """A dataset shipped as the four MNIST-style IDX files.

    ``name`` is what messages call it, ``folder`` the directory it lives in under a data directory or the
    cache, ``sha256`` the SHA-256 of each decompressed file and ``mirrors`` the base URLs that serve
    ``<file>.gz``.
    """

    name: str
    folder: str
    sha256: Mapping[str, str] = field(hash=False)  # a mapping is unhashable; name and folder identify a source
    mirrors: tuple[str, ...]


MNIST = IdxSource("MNIST", "mnist", MappingProxyType(SHA256), MIRRORS)
FASHION_MNIST = IdxSource(
    "Fashion-MNIST",
    "fashion-mnist",
    # Xiao, Rasul & Vollgraf 2017, decompressed content as published by Zalando Research.
    MappingProxyType({
        "train-images-idx3-ubyte": "b09825222cc864729d4706ee7a4c9f8bbd2486f0eae80efc3c231da7d8a1f91d",
        "train-labels-idx1-ubyte": "7cd88f551e93510030f93325e39e5d8112c932e2d6d2b1fde7ead816545ae184",
        "t10k-images-idx3-ubyte": "a7ab3ca6a510e6a4388cfb501c39a16accc115994da7af3a582c75aaacbf9ad1",
        "t10k-labels-idx1-ubyte": "59df6c6ad638dc43879f10a8c5b516aabdcef4f924ba14410bf8aec5e518b1c4",
    }),
    (
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",  # plain HTTP is safe: content is verified
        "https://storage.googleapis.com/tensorflow/tf-keras-datasets/",  # Keras' copy, same file names
    ),
)

# IDX magic: two zero bytes, a type code (0x08 = unsigned byte), the number of dimensions.
IDX_MAGIC = {1: b"\x00\x00\x08\x01", 3: b"\x00\x00\x08\x03"}


def read_idx(path: str | Path, ndim: int) -> np.ndarray:
    """Parse an IDX file (raw or gzip) of unsigned bytes with ``ndim`` dimensions."""
    path = Path(path)
    data = _read_maybe_gzip(path)
    header = 4 + 4 * ndim
    if data[:4] != IDX_MAGIC[ndim]:
        raise DataError(
            f"{path} is not an IDX file of {ndim}-d unsigned bytes: magic number {data[:4].hex() or 'missing'}, "
            f"expected {IDX_MAGIC[ndim].hex()}"
        )
    if len(data) < header:
        raise DataError(f"{path} is truncated: {len(data)} bytes, shorter than the {header}-byte IDX header")
    dims = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    expected = header + math.prod(dims)  # Python ints: a corrupt header's product must not wrap around
    if len(data) != expected:
        raise DataError(
            f"{path} is {'truncated' if len(data) < expected else 'too long'}: header says shape {dims}, "
            f"so {expected} bytes expected, found {len(data)}"
        )
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_maybe_gzip(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise DataError(f"cannot read {path}: {e.strerror or e}") from e
    if raw[:2] != b"\x1f\x8b":
        return raw
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise DataError(f"{path} is a corrupt or truncated gzip file: {e}") from e


def default_cache_dir() -> Path:
    """Where downloads are stored: $VAEKIT_CACHE, else $XDG_CACHE_HOME/vaekit, else ~/.cache/vaekit."""
    if os.environ.get("VAEKIT_CACHE"):
        return Path(os.environ["VAEKIT_CACHE"])
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "vaekit"


def search_dirs(data_dir: str | None, source: IdxSource = MNIST) -> list[Path]:
    """Directories searched for ``source.folder``: the explicit one or $VAEKIT_DATA, then the download cache."""
    roots = [Path(data_dir)] if data_dir else []
    if not data_dir and os.environ.get("VAEKIT_DATA"):
        roots.append(Path(os.environ["VAEKIT_DATA"]))
    roots.append(default_cache_dir())
    return [r / source.folder for r in roots]


def _find(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def locate(data_dir: str | None, download: bool = False, source: IdxSource = MNIST) -> dict[str, Path]:
    """Paths of the four IDX files of ``source``, downloading the missing ones into the cache when ``download``.

    Local files are not checksummed (a user may hold a legitimately re-packed copy); downloads always are.
    """
    dirs = search_dirs(data_dir, source)
    found = {name: _find(name, dirs) for name in source.sha256}
    missing = [n for n, p in found.items() if p is None]
    if missing and download:
        target = default_cache_dir() / source.folder
        for name in missing:
            found[name] = download_file(name, target, source=source)
        missing = []
    if missing:
        raise DataError(
            f"{source.name} files not found. Searched: " + ", ".join(str(d) for d in dirs)
            + f". Expected (raw or .gz): {', '.join(source.sha256)}. Either download them with --download "
            "(stored in the cache directory and verified by SHA-256), or point --data-dir or the "
            f"VAEKIT_DATA environment variable at a directory that holds {source.folder}/ with these files."
        )
    return found  # type: ignore[return-value]


def download_file(
    name: str, target: Path, mirrors: tuple[str, ...] | None = None, source: IdxSource = MNIST
) -> Path:
    """Fetch ``name``.gz from the first mirror that serves it with ``source``'s checksum; store it atomically.

    ``mirrors`` defaults to ``source.mirrors``.
    """
    expected = source.sha256[name]
    errors = []
    for base in source.mirrors if mirrors is None else mirrors:
        url = f"{base}{name}.gz"
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                blob = r.read()
            digest = hashlib.sha256(gzip.decompress(blob)).hexdigest()
        except (OSError, EOFError, ValueError, zlib.error) as e:
            errors.append(f"{url}: {e}")
            continue
        if digest != expected:
            errors.append(f"{url}: SHA-256 {digest} does not match the expected {expected}")
            continue
        path = target / f"{name}.gz"
        atomic_write_bytes(path, blob)
        return path
    raise DataError(f"could not download {source.name} file {name}: " + "; ".join(errors))


def load_split(
    split: str, data_dir: str | None, download: bool = False, source: IdxSource = MNIST
) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of ``source``'s ``train`` or ``test`` split."""
    paths = locate(data_dir, download, source)
    image_name, label_name = FILES[split]
    images = read_idx(paths[image_name], 3)
    labels = read_idx(paths[label_name], 1)
    if len(images) != len(labels):
        raise DataError(
            f"{paths[image_name]} holds {len(images)} images but {paths[label_name]} holds {len(labels)} labels"
        )
    if images.shape[1:] != (28, 28):
        raise DataError(f"{paths[image_name]} holds images of shape {images.shape[1:]}, expected (28, 28)")
    return images, labels
