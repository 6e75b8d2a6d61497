"""The user's own images: a folder of PNG/JPEG files, or an .npy/.npz array of images.

Either way the result is one array (N, C, H, W), every image at the same size and channel count: those asked
for, or else those of the first image in sorted order. 8-bit images stay bytes (uint8, value byte / 255, a
quarter of float32's memory); 16-bit images, and arrays that were resized or changed channels, are float32 in
[0, 1]. Other images are converted to it (Lanczos resize to exactly H x W, so the aspect ratio is not kept;
PIL's mode conversion for channels). Folders are listed, decoded and cached by ``folders``; this module
decodes one image.

Arrays may be (N, H, W) grey, (N, H, W, C) or (N, C, H, W) with C in 1, 3, 4; when both the last and the
second axis could hold channels, as in (N, 3, 32, 3), the array is read as channel-last. Values are uint8
(0..255) or floats already in [0, 1]; anything else is refused rather than guessed at.
"""

from __future__ import annotations

import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps

from vaekit.data import tabular
from vaekit.errors import DataError

SUFFIXES = (".png", ".jpg", ".jpeg")
ARRAY_SUFFIXES = (".npy", ".npz")
ARRAY_KEYS = ("x", "X", "images")  # where an .npz file holds its images; labels go under "y"
CHANNELS = (1, 3, 4)
MODES = {1: "L", 3: "RGB", 4: "RGBA"}
LUMA = np.array([0.299, 0.587, 0.114], np.float32)  # ITU-R 601-2, as PIL converts RGB to L
RESAMPLE = Image.Resampling.LANCZOS
# What a broken file raises while decoding: OSError covers UnidentifiedImageError and truncated data; some
# plugins raise SyntaxError or ValueError on malformed headers.
UNREADABLE = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
# Deflate compresses at most about 1032:1 and 1-bit PNGs pack 8 pixels a byte (JPEG needs far more): a header
# claiming more pixels per stored byte than this is corrupt, and is refused before the pixels are allocated.
MAX_PIXELS_PER_BYTE = 16384



@dataclass(frozen=True)
class ImageSet:
    """Images ``x`` (N, C, H, W), uint8 bytes or float32 in [0, 1], optional labels ``y`` (N,) and the class
    names."""

    x: np.ndarray
    y: np.ndarray | None
    classes: tuple[str, ...] | None


def is_image_path(name: str | Path) -> bool:
    """True for a folder, or an .npy/.npz file whose image array has 3 or more axes (2-d arrays are tables)."""
    path = Path(name)
    if path.is_dir():
        return True
    if path.suffix.lower() not in ARRAY_SUFFIXES or not path.is_file():
        return False
    shape = _stored_shape(path)
    return shape is not None and len(shape) >= 3


def read(path: str | Path, image_size: Sequence[int] | None = None, channels: int | None = None,
         strict: bool = False) -> ImageSet:
    """Read a folder of images or an .npy/.npz image array; ``image_size`` is (H, W)."""
    path = Path(path)
    if path.is_dir():
        from vaekit.data import folders  # which decodes with this module's functions

        return folders.read_folder(path, image_size, channels, strict)
    if path.suffix.lower() in ARRAY_SUFFIXES and path.is_file():
        return read_array(path, image_size, channels)
    raise DataError(f"cannot read images from {path}: expected a folder of {'/'.join(SUFFIXES)} files "
                    f"or a {'/'.join(ARRAY_SUFFIXES)} file")


# --- decoding one image ---------------------------------------------------------------------------------


def open_image(path: Path) -> Image.Image:
    """The decoded image, turned upright as its EXIF orientation says (cameras store photos sideways)."""
    stored = path.stat().st_size
    if stored == 0:
        raise ValueError("the file is empty (0 bytes)")
    with Image.open(path) as im:
        if im.width * im.height > MAX_PIXELS_PER_BYTE * max(stored, 1):  # checked before PIL allocates them
            raise ValueError(f"its header claims {im.width}x{im.height} pixels, more than a {stored}-byte file "
                             "can encode: the header is corrupt")
        im.load()  # decode now, so that a truncated file fails here and not later
        return ImageOps.exif_transpose(im)


def channels_of(im: Image.Image) -> int:
    """1, 3 or 4: grey stays grey, anything with transparency keeps an alpha channel, the rest is RGB."""
    if "A" in im.getbands() or "transparency" in im.info:
        return 4
    return 1 if im.mode in ("1", "L", "F") or im.mode.startswith("I") else 3


def pixels(im: Image.Image, size: Sequence[int], channels: int) -> np.ndarray:
    """One image as (channels, H, W) float32 in [0, 1] at ``size`` (H, W)."""
    return values(stored_pixels(im, size, channels))


def stored_pixels(im: Image.Image, size: Sequence[int], channels: int) -> np.ndarray:
    """One image at ``size`` (H, W) as (channels, H, W): bytes (uint8) for 8-bit modes, whose conversion and
    resizing PIL does in bytes; float32 in [0, 1] for 16-bit grey."""
    h, w = size
    if im.mode.startswith("I"):  # 16-bit grey: PIL's convert("L") would clip at 255, so scale it here
        grey = Image.fromarray(np.asarray(im, np.float32) / 65535)  # mode F keeps the full depth
        a = np.asarray(grey.resize((w, h), RESAMPLE) if grey.size != (w, h) else grey, np.float32)
        return np.clip(convert_channels(a[None, None], channels)[0], 0, 1)  # Lanczos overshoots a little
    im = im.convert(MODES[channels])
    if im.size != (w, h):
        im = im.resize((w, h), RESAMPLE)
    return np.asarray(im, np.uint8).reshape(h, w, channels).transpose(2, 0, 1)


def values(x: np.ndarray) -> np.ndarray:
    """Bytes -> float32 byte / 255 (as ``batches.floats`` does for tensors); float32 as it is."""
    return x.astype(np.float32) / np.float32(255) if x.dtype == np.uint8 else x


def convert_channels(x: np.ndarray, channels: int) -> np.ndarray:
    """(N, C, H, W) -> (N, channels, H, W) as PIL converts modes: grey is the luma, alpha dropped or opaque."""
    if x.shape[1] == channels:
        return x
    rgb = np.repeat(x, 3, axis=1) if x.shape[1] == 1 else x[:, :3]
    if channels == 1:
        return np.einsum("c,nchw->nhw", LUMA, rgb)[:, None]
    if channels == 3:
        return np.ascontiguousarray(rgb)
    alpha = x[:, 3:] if x.shape[1] == 4 else np.ones_like(x[:, :1])
    return np.concatenate([rgb, alpha], axis=1)


# --- arrays ----------------------------------------------------------------------------------------------


def read_array(path: str | Path, image_size: Sequence[int] | None = None,
               channels: int | None = None) -> ImageSet:
    """Images from an .npy file, or from an .npz file under x/X/images with optional labels y."""
    path = Path(path)
    a, y, classes = _load_array(path)
    x = _unit_range(_channels_first(a, path), path)
    if channels is not None and channels != x.shape[1]:
        x = convert_channels(values(x), channels)
    if image_size is not None and tuple(image_size) != x.shape[2:]:
        x = _resize(values(x), tuple(image_size))
    if y is not None and len(y) != len(x):
        raise DataError(f"{path}: {len(x)} images but {len(y)} labels")
    if classes is not None and (y is None or y.min() < 0 or y.max() >= len(classes)):
        raise DataError(f"{path}: array classes names {len(classes)} classes, so labels y must lie in "
                        f"0..{len(classes) - 1}" + ("" if y is None else f"; they span {y.min()}..{y.max()}"))
    return ImageSet(x, y, classes)


def _load_array(path: Path) -> tuple[np.ndarray, np.ndarray | None, tuple[str, ...] | None]:
    """The image array, its labels (array y) and the names of the label values (array classes), if held."""
    try:
        loaded = tabular.load_array_file(path)  # no pickle, and no allocation a corrupt header asks for
        if isinstance(loaded, np.ndarray):
            return loaded, None, None
        with loaded:
            key = next((k for k in ARRAY_KEYS if k in loaded.files), None)
            if key is None:
                raise DataError(f"{path} holds arrays {sorted(loaded.files)}; expected images under "
                                f"{', '.join(ARRAY_KEYS)} (and optionally labels y)")
            y = tabular._labels(loaded["y"], f"{path}, array y") if "y" in loaded.files else None
            classes = tuple(str(c) for c in loaded["classes"].ravel()) if "classes" in loaded.files else None
            return loaded[key], y, classes
    except DataError:
        raise
    except tabular.ARRAY_ERRORS as e:
        raise DataError(f"cannot read {path}: {e}") from e


def _stored_shape(path: Path) -> tuple[int, ...] | None:
    """The shape of the image array in ``path`` from its .npy header alone: no pixel is loaded."""
    try:
        if path.suffix.lower() == ".npy":
            with path.open("rb") as f:
                return _header_shape(f)
        with zipfile.ZipFile(path) as z:
            members = {name.removesuffix(".npy"): name for name in z.namelist()}
            key = next((k for k in ARRAY_KEYS if k in members), None)
            if key is None:
                return None
            with z.open(members[key]) as f:
                return _header_shape(f)
    except tabular.ARRAY_ERRORS:
        return None  # not an image array we can recognise: the table reader reports what is wrong


def _header_shape(f) -> tuple[int, ...]:
    version = np.lib.format.read_magic(f)
    read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0
    return tuple(read_header(f)[0])


def _channels_first(a: np.ndarray, path: Path) -> np.ndarray:
    """(N, H, W), (N, H, W, C) or (N, C, H, W) -> (N, C, H, W); channel-last wins when both could be."""
    if a.ndim == 3:
        return a[:, None]
    if a.ndim == 4 and a.shape[3] in CHANNELS:
        return a.transpose(0, 3, 1, 2)
    if a.ndim == 4 and a.shape[1] in CHANNELS:
        return a
    raise DataError(f"{path}: images have shape {a.shape}; expected (N, H, W), (N, H, W, C) or (N, C, H, W) "
                    f"with C = 1, 3 or 4")


def _unit_range(x: np.ndarray, path: Path) -> np.ndarray:
    """uint8 stays bytes; floats must already lie in [0, 1]: other scales are refused, not guessed."""
    if x.size == 0:
        raise DataError(f"{path} holds no images (shape {x.shape})")
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if not np.issubdtype(x.dtype, np.floating):
        raise DataError(f"{path}: images have dtype {x.dtype}; expected uint8 (0..255) or floats in [0, 1]")
    x = np.ascontiguousarray(x, np.float32)
    lo, hi = float(x.min()), float(x.max())
    if not (lo >= 0 and hi <= 1):  # also catches NaN, which compares false
        raise DataError(f"{path}: image values span [{lo:g}, {hi:g}]; expected floats in [0, 1] "
                        "(or uint8 0..255); rescale the array")
    return x


def _resize(x: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Antialiased bicubic resize of (N, C, H, W) to ``size`` (H, W), clipped back into [0, 1]."""
    t = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bicubic", antialias=True,
                                        align_corners=False)
    return t.clamp_(0, 1).numpy()
