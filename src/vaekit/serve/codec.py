"""Conversions between what travels over HTTP (nested JSON arrays, base64 PNG) and model tensors.

Nothing here touches the network or the disk, and every refusal is a ``DataError`` naming what was wrong, so
the server can answer it with a 422.
"""

from __future__ import annotations

import base64
import binascii
import io
import itertools
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from vaekit.data import images
from vaekit.errors import DataError
from vaekit.plots import is_image_shape

FORMATS = ("array", "png")
PNG_MODES = {1: "L", 3: "RGB", 4: "RGBA"}
DATA_URL_PREFIX = "data:image/png;base64,"


class Bounds(NamedTuple):
    """The closed range each value of an input must lie in: ``low`` and ``high`` (float64, broadcastable to
    the data shape: one pair, or one per feature), and why, for the message."""

    low: np.ndarray
    high: np.ndarray
    why: str


def example_from_json(item: Any, shape: tuple[int, ...], index: int = 0, bounds: Bounds | None = None) -> np.ndarray:
    """One input as float32 of ``shape``: a nested array of numbers (within ``bounds``), or a PNG (base64 text,
    or the bytes of an uploaded file) of an image model."""
    if isinstance(item, bytes):
        return png_to_array(item, shape, f"file {index}")
    if isinstance(item, str):
        return png_to_array(b64decode(item, f"x[{index}]"), shape, f"x[{index}]")
    return array_from_json(item, shape, f"x[{index}]", bounds)


def array_from_json(value: Any, shape: tuple[int, ...], what: str, bounds: Bounds | None = None) -> np.ndarray:
    """A nested JSON array of finite numbers with exactly ``shape``, each within ``bounds``, as float32.

    The bounds are checked on the numbers as sent (float64 or integers), before the cast to float32, so the
    server refuses exactly what the range published in its OpenAPI schema excludes."""
    try:
        a = np.asarray(value)
    except (ValueError, TypeError, OverflowError) as e:  # ragged nesting, or a number too large for any dtype
        raise DataError(f"{what} is not a rectangular array of numbers: {e}") from None
    if a.dtype.kind not in "iuf":  # strings, booleans, null, objects and ints beyond 64 bits all land here
        raise DataError(f"{what} must hold numbers only, got {_kind_name(a)}")
    if a.shape != shape:
        raise DataError(f"{what} has shape {a.shape}, expected {shape} (the model's data shape)")
    if _holds_booleans(value, len(shape)):  # numpy reads [true, 0.5] as [1.0, 0.5]; JSON Schema's number excludes true
        raise DataError(f"{what} must hold numbers only, got booleans")
    with np.errstate(over="ignore"):
        a32 = a.astype(np.float32)
    if not np.isfinite(a32).all():
        bad = "values beyond float32's range (about 3.4e38)" if np.isfinite(a).all() else "NaN or infinite values"
        raise DataError(f"{what} contains {bad}")
    if bounds is not None:
        _check_bounds(a, bounds, what)
    return a32


def _check_bounds(a: np.ndarray, bounds: Bounds, what: str) -> None:
    low, high = np.broadcast_to(bounds.low, a.shape), np.broadcast_to(bounds.high, a.shape)
    outside = (a < low) | (a > high)
    if outside.any():
        i = tuple(int(k) for k in np.argwhere(outside)[0])
        raise DataError(f"{what}{list(i)} = {a[i]:g}: this model needs x in [{low[i]:g}, {high[i]:g}] ({bounds.why})")


def _holds_booleans(value: Any, depth: int) -> bool:
    """Whether a rectangular nested list ``depth`` deep has a boolean among its leaves."""
    leaves = value
    for _ in range(depth - 1):
        leaves = itertools.chain.from_iterable(leaves)
    return bool in set(map(type, leaves))


def _kind_name(a: np.ndarray) -> str:
    names = {"U": "strings", "S": "strings", "b": "booleans", "O": "null, objects or out-of-range integers"}
    return names.get(a.dtype.kind, str(a.dtype))


def b64decode(text: str, what: str) -> bytes:
    """The bytes of standard base64 text (a ``data:image/png;base64,`` prefix is allowed)."""
    if text.startswith(DATA_URL_PREFIX):
        text = text[len(DATA_URL_PREFIX) :]
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise DataError(f"{what} is a string but not valid base64 PNG data: {e}") from None


def png_to_array(data: bytes, shape: tuple[int, ...], what: str) -> np.ndarray:
    """A PNG of the model's height and width as (C, H, W) float32 in [0, 1], channels converted to the model's.

    The size is checked from the header before any pixel is decoded, so a small file that claims a huge
    image cannot make the server allocate it.
    """
    if not is_image_shape(shape):
        raise DataError(f"{what} is a PNG, but this model's data has shape {shape}, not (channels, height, width)")
    c, h, w = shape
    try:
        with Image.open(io.BytesIO(data), formats=["PNG"]) as im:
            if im.size != (w, h):
                raise DataError(f"{what} is a {im.width}x{im.height} PNG; the model takes {w}x{h} images")
            im.load()
            return images.pixels(im, (h, w), c)
    except DataError:
        raise
    except images.UNREADABLE as e:
        raise DataError(f"{what} is not a readable PNG image: {e}") from None


def stack(examples: Sequence[np.ndarray]) -> Tensor:
    """Inputs (each of the model's data shape) as one (N, *shape) float32 tensor."""
    return torch.from_numpy(np.stack(examples))


def png_bytes(image: np.ndarray) -> bytes:
    """A (C, H, W) image with values in [0, 1] (clipped: PNG is for looking at) as 8-bit PNG."""
    c = image.shape[0]
    pixels = np.clip(np.rint(image * 255), 0, 255).astype(np.uint8).transpose(1, 2, 0)  # (H, W, C)
    out = io.BytesIO()
    Image.fromarray(pixels[:, :, 0] if c == 1 else pixels, PNG_MODES[c]).save(out, format="PNG")
    return out.getvalue()


def to_payload(x: Tensor, fmt: str) -> list[Any]:
    """Model outputs (N, *shape) as JSON: nested arrays, or base64 PNG strings for image models."""
    a = finite(x, "the model's output")
    if fmt == "array":
        return a.tolist()
    if fmt != "png":
        raise DataError(f"unknown format {fmt!r}; valid formats: {', '.join(FORMATS)}")
    if not is_image_shape(tuple(a.shape[1:])):
        raise DataError(f"format png needs image data, but this model's data has shape {tuple(a.shape[1:])}; "
                        "ask for format array")
    return [base64.b64encode(png_bytes(image)).decode("ascii") for image in a]


def finite(x: Tensor, what: str) -> np.ndarray:
    """``x`` as a float32 array, refused when any value is NaN or infinite (JSON cannot carry them)."""
    a = x.detach().cpu().float().numpy()
    if not np.isfinite(a).all():
        raise DataError(f"{what} is not finite for this input (values too large for float32?)")
    return a


def floats(x: Tensor, what: str) -> list[Any]:
    """A tensor as nested lists of finite floats."""
    return finite(x, what).tolist()
