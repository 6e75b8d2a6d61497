"""Folders of images, decoded once: in parallel worker processes with progress, into a cache that the next run
reads instead of the files.

A folder holds its images directly (unlabelled) or one level down, in one sub-folder per class (labelled;
classes sorted by name). Hidden files and folders (names starting with ".") and other suffixes are ignored.

The cache is ``<cache>/folders/<key>/`` (``<cache>`` is $VAEKIT_CACHE, else ~/.cache/vaekit): the images as
one .npy array (uint8 bytes for 8-bit images) with the labels, class names and skipped files. The key is a
SHA-256 of every file's path in the folder, size and modification time, and of the size, channel and
strictness settings, so a file added, removed or changed, or other settings, decode again. A damaged cache
entry is ignored (and decoded again); deleting ``<cache>/folders`` is always safe.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import json
import logging
import multiprocessing
import os
import secrets
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vaekit import progress
from vaekit.data import mnist
from vaekit.data.images import SUFFIXES, UNREADABLE, ImageSet, channels_of, open_image, stored_pixels, values
from vaekit.errors import DataError

CACHE_VERSION = 1
# Worker processes take seconds to start (each imports vaekit and PyTorch), so they are used only when the rest
# of the folder, at the pace of its first PROBE files, would take this long to decode here.
PARALLEL_AFTER_S = 8.0
PROBE = 32
CHUNK = 64  # files per task handed to a worker
NAMED_IN_WARNING = 5

log = logging.getLogger(__name__)


@dataclass
class Decoded:
    """What decoding gave: the images of the readable files, their indices in the file list, the skipped ones
    (index, why)."""

    x: np.ndarray
    kept: np.ndarray
    skipped: list[tuple[int, str]]


def read_folder(folder: str | Path, image_size: Sequence[int] | None = None, channels: int | None = None,
                strict: bool = False) -> ImageSet:
    """Every image in ``folder``, converted to ``image_size`` (H, W) and ``channels``: from the cache when the
    folder is unchanged since it was decoded, else decoded (in parallel for large folders) and cached.

    Unreadable files are skipped with one warning naming them, or with ``strict`` raise a DataError.
    """
    folder = Path(folder)
    files, y, classes = list_folder(folder)
    key = cache_key(folder, files, image_size, channels, strict)
    got = _load_cached(key, len(files))
    if got is None:
        t0 = time.perf_counter()
        got = decode(files, image_size, channels, strict)
        _store(key, got)
        log.info("decoded %d images of %s in %.1f s (cached in %s)", len(got.kept), folder,
                 time.perf_counter() - t0, cache_dir() / key)
    else:
        log.info("read %d images of %s from the cache %s", len(got.kept), folder, cache_dir() / key)
    if not len(got.kept):
        raise DataError(f"no readable image in {folder}: all {len(files)} {'/'.join(SUFFIXES)} files failed "
                        f"to decode (first: {files[got.skipped[0][0]].name})")
    if got.skipped:
        _warn_skipped(folder, [files[i] for i, _ in got.skipped])
    return ImageSet(got.x, None if y is None else y[got.kept], classes)


def list_folder(folder: Path) -> tuple[list[Path], np.ndarray | None, tuple[str, ...] | None]:
    """The image files in sorted order, and for class sub-folders their labels and the class names."""
    if not folder.is_dir():
        raise DataError(f"cannot read images from {folder}: no such folder")
    top = sorted(p for p in folder.iterdir() if _is_image_file(p))
    subfolders = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    per_class = [(d.name, sorted(p for p in d.iterdir() if _is_image_file(p))) for d in subfolders]
    per_class = [(name, files) for name, files in per_class if files]  # a folder of no images is no class
    if top and per_class:
        raise DataError(f"{folder} holds images both directly ({top[0].name}, ...) and in sub-folders "
                        f"({per_class[0][0]}/, ...); put every image in a class sub-folder, or none")
    if top:
        return top, None, None
    if not per_class:
        raise DataError(f"{folder} holds no {'/'.join(SUFFIXES)} images, neither directly nor in class "
                        "sub-folders")
    files = [f for _, fs in per_class for f in fs]
    y = np.repeat(np.arange(len(per_class), dtype=np.int64), [len(fs) for _, fs in per_class])
    return files, y, tuple(name for name, _ in per_class)


def _is_image_file(p: Path) -> bool:
    return p.suffix.lower() in SUFFIXES and not p.name.startswith(".") and p.is_file()


# --- decoding --------------------------------------------------------------------------------------------


def decode(files: list[Path], image_size: Sequence[int] | None, channels: int | None, strict: bool) -> Decoded:
    """Decode ``files`` into one array at one size and channel count, those of the first readable file unless
    given; the rest go to worker processes when there are many. With ``strict`` the first unreadable file
    (in file order) raises a DataError."""
    skipped: list[tuple[int, str]] = []
    first = None
    for i, f in enumerate(files):  # the first readable image settles what the caller left open
        try:
            first = (i, open_image(f))
            break
        except UNREADABLE as e:
            _refuse_if_strict(strict, f, e)
            skipped.append((i, str(e)))
    if first is None:
        return Decoded(np.empty((0, 1, 1, 1), np.uint8), np.empty(0, np.int64), skipped)
    i0, im = first
    size = tuple(image_size) if image_size else (im.height, im.width)
    shape = (channels or channels_of(im), *size)
    whole = _Assembly(len(files) - i0, shape)
    whole.add(np.asarray([stored_pixels(im, size, shape[0])]), [i0], [])
    with progress.loop(len(files) - i0, unit="image", what=f"decoding {len(files)} images") as bar:
        for images, kept, errors in _decode_rest(files, i0 + 1, shape):
            whole.add(images, kept, errors)
            if bar is not None:
                bar.update(len(kept) + len(errors))
    skipped += whole.errors
    if strict and skipped:
        i, why = min(skipped)
        raise DataError(f"cannot read image {files[i]}: {why}")
    return whole.decoded(skipped)


def _decode_rest(files: list[Path], start: int, shape: tuple[int, ...]) -> Iterator[tuple[np.ndarray, list, list]]:
    """The files from ``start`` on, a chunk at a time in file order: the first PROBE here, timed; the rest here
    too, or in worker processes when at that pace they would take more than PARALLEL_AFTER_S seconds."""
    indices = list(range(start, len(files)))
    t0 = time.perf_counter()
    yield _decode_chunk(([files[i] for i in indices[:PROBE]], indices[:PROBE], shape))
    pace = (time.perf_counter() - t0) / max(1, len(indices[:PROBE]))
    rest = indices[PROBE:]
    jobs = [([files[i] for i in rest[s : s + CHUNK]], rest[s : s + CHUNK], shape) for s in range(0, len(rest), CHUNK)]
    workers = min(os.cpu_count() or 1, 8)
    if workers < 2 or pace * len(rest) < PARALLEL_AFTER_S:
        yield from map(_decode_chunk, jobs)
        return
    log.info("decoding %d more images in %d worker processes (about %.0f s in one)", len(rest), workers,
             pace * len(rest))
    # spawn: the workers never inherit the parent's threads (PyTorch's among them)
    pool = concurrent.futures.ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
    try:
        yield from pool.map(_decode_chunk, jobs)
    finally:  # also on Ctrl-C or a strict refusal: the chunks not started are dropped, not waited for
        pool.shutdown(cancel_futures=True)


def _decode_chunk(job: tuple[list[Path], list[int], tuple[int, ...]]) -> tuple[np.ndarray, list[int], list]:
    """A worker's task: the images of some files (bytes, or float32 if one is 16-bit), their indices, the
    unreadable ones (index, why)."""
    paths, indices, (c, h, w) = job
    images, kept, errors = [], [], []
    for i, path in zip(indices, paths, strict=True):
        try:
            images.append(stored_pixels(open_image(path), (h, w), c))
            kept.append(i)
        except UNREADABLE as e:
            errors.append((i, str(e)))
    if any(a.dtype != np.uint8 for a in images):
        images = [values(a) for a in images]
    return (np.stack(images) if images else np.empty((0, c, h, w), np.uint8)), kept, errors


class _Assembly:
    """Decoded chunks copied, in file order, into one array allocated for every file at the start: the folder's
    pixels are held once plus a chunk, not once in chunks and again in the whole. Bytes, until a chunk holds
    float32 values (a 16-bit image): from then on float32 values throughout."""

    def __init__(self, n: int, shape: tuple[int, ...]) -> None:
        self.x = np.empty((n, *shape), np.uint8)
        self.at = 0  # rows filled
        self.kept: list[int] = []  # the file index of each row
        self.errors: list[tuple[int, str]] = []

    def add(self, images: np.ndarray, kept: list[int], errors: list[tuple[int, str]]) -> None:
        if images.dtype != self.x.dtype:
            self._to_values()
        self.x[self.at : self.at + len(kept)] = values(images) if self.x.dtype != np.uint8 else images
        self.at += len(kept)
        self.kept += kept
        self.errors += errors

    def _to_values(self) -> None:
        x = np.empty(self.x.shape, np.float32)
        for s in range(0, self.at, CHUNK):  # a chunk at a time: no float32 copy of all the bytes at once
            x[s : min(s + CHUNK, self.at)] = values(self.x[s : min(s + CHUNK, self.at)])
        self.x = x

    def decoded(self, skipped: list[tuple[int, str]]) -> Decoded:
        if self.at < len(self.x):  # rows of unreadable files: given back in place
            self.x.resize((self.at, *self.x.shape[1:]), refcheck=False)
        return Decoded(self.x, np.array(self.kept, np.int64), sorted(skipped))


def _refuse_if_strict(strict: bool, f: Path, e: Exception) -> None:
    if strict:
        raise DataError(f"cannot read image {f}: {e}") from e


def _warn_skipped(folder: Path, skipped: list[Path]) -> None:
    names = ", ".join(str(p.relative_to(folder)) for p in skipped[:NAMED_IN_WARNING])
    more = f" and {len(skipped) - NAMED_IN_WARNING} more" if len(skipped) > NAMED_IN_WARNING else ""
    log.warning("skipped %d unreadable image file%s in %s: %s%s (--strict, or data.strict, stops at the first instead)",
                len(skipped), "" if len(skipped) == 1 else "s", folder, names, more)


# --- the cache -------------------------------------------------------------------------------------------


def cache_dir() -> Path:
    return mnist.default_cache_dir() / "folders"


def cache_key(folder: Path, files: list[Path], image_size: Sequence[int] | None, channels: int | None,
              strict: bool) -> str:
    """What the decoded array depends on: each file's path in the folder, size and modification time, and the
    settings."""
    listing = []
    for f in files:
        st = f.stat()
        listing.append([f.relative_to(folder).as_posix(), st.st_size, st.st_mtime_ns])
    doc = {"version": CACHE_VERSION, "files": listing, "image_size": list(image_size) if image_size else None,
           "channels": channels, "strict": strict}
    return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]


def _load_cached(key: str, n_files: int) -> Decoded | None:
    """The cached decoding, or None when there is none or it is damaged (then it is decoded again)."""
    entry = cache_dir() / key
    if not (entry / "meta.json").is_file():
        return None
    try:
        meta = json.loads((entry / "meta.json").read_text())
        x = np.load(entry / "x.npy", allow_pickle=False)
        kept = np.asarray(meta["kept"], np.int64)
        skipped = [(int(i), str(why)) for i, why in meta["skipped"]]
        if meta["version"] != CACHE_VERSION or len(x) != len(kept) or len(kept) + len(skipped) != n_files or \
                x.dtype not in (np.uint8, np.float32) or x.ndim != 4:
            raise ValueError("inconsistent entry")
    except (OSError, ValueError, KeyError, TypeError) as e:
        log.warning("ignoring the damaged cache entry %s (%s); decoding the folder again", entry, e)
        return None
    return Decoded(x, kept, skipped)


def _store(key: str, got: Decoded) -> None:
    """Write the entry into a fresh folder and rename it into place: a reader sees all of it or none. A cache
    that cannot be written costs the next run a decode, nothing else."""
    root = cache_dir()
    tmp = root / f".tmp-{key}-{secrets.token_hex(4)}"
    try:
        tmp.mkdir(parents=True)
        np.save(tmp / "x.npy", got.x, allow_pickle=False)
        meta = {"version": CACHE_VERSION, "kept": got.kept.tolist(), "skipped": got.skipped}
        (tmp / "meta.json").write_text(json.dumps(meta))
        os.replace(tmp, root / key)
    except OSError as e:
        if not (root / key / "meta.json").is_file():  # unless another process cached the same folder meanwhile
            log.warning("cannot cache the decoded folder in %s: %s", root, e.strerror or e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
