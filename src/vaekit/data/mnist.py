"""MNIST from the four standard IDX files: parse, locate on disk, or download with checksum verification.

Nothing here touches the network unless ``download=True`` is asked for.
"""

from __future__ import annotations

import gzip
import hashlib
import logging
import math
import os
import urllib.request
import zlib
from pathlib import Path

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


def search_dirs(data_dir: str | None) -> list[Path]:
    """Directories searched for ``mnist/``: the explicit one or $VAEKIT_DATA, then the download cache."""
    roots = [Path(data_dir)] if data_dir else []
    if not data_dir and os.environ.get("VAEKIT_DATA"):
        roots.append(Path(os.environ["VAEKIT_DATA"]))
    roots.append(default_cache_dir())
    return [r / "mnist" for r in roots]


def _find(name: str, dirs: list[Path]) -> Path | None:
    for d in dirs:
        for candidate in (d / name, d / f"{name}.gz"):
            if candidate.is_file():
                return candidate
    return None


def locate(data_dir: str | None, download: bool = False) -> dict[str, Path]:
    """Paths of the four IDX files, downloading the missing ones into the cache when ``download``."""
    dirs = search_dirs(data_dir)
    found = {name: _find(name, dirs) for name in SHA256}
    missing = [n for n, p in found.items() if p is None]
    if missing and download:
        target = default_cache_dir() / "mnist"
        for name in missing:
            found[name] = download_file(name, target)
        missing = []
    if missing:
        raise DataError(
            "MNIST files not found. Searched: " + ", ".join(str(d) for d in dirs)
            + f". Expected (raw or .gz): {', '.join(SHA256)}. Either download them with --download "
            "(stored in the cache directory and verified by SHA-256), or point --data-dir or the "
            "VAEKIT_DATA environment variable at a directory that holds mnist/ with these files."
        )
    return found  # type: ignore[return-value]


def download_file(name: str, target: Path, mirrors: tuple[str, ...] = MIRRORS) -> Path:
    """Fetch ``name``.gz from the first mirror that serves it with the right checksum; store it atomically."""
    errors = []
    for base in mirrors:
        url = f"{base}{name}.gz"
        log.info("downloading %s", url)
        try:
            with urllib.request.urlopen(url, timeout=60) as r:
                blob = r.read()
            digest = hashlib.sha256(gzip.decompress(blob)).hexdigest()
        except (OSError, EOFError, ValueError, zlib.error) as e:
            errors.append(f"{url}: {e}")
            continue
        if digest != SHA256[name]:
            errors.append(f"{url}: SHA-256 {digest} does not match the expected {SHA256[name]}")
            continue
        path = target / f"{name}.gz"
        atomic_write_bytes(path, blob)
        return path
    raise DataError(f"could not download {name}: " + "; ".join(errors))


def load_split(split: str, data_dir: str | None, download: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28) uint8 and labels (N,) uint8 of the ``train`` or ``test`` split."""
    paths = locate(data_dir, download)
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
