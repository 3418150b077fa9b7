"""Decoding untrusted image bytes into the BGR uint8 array the pipeline works on.

Pillow reads the header first, so the pixel count is checked before any pixel is decoded (a
decompression bomb is refused while it is still a few bytes). Multi-frame files (GIF, TIFF) give
their first frame, EXIF orientation is applied, and every mode is brought to 3-channel BGR:
alpha is composited onto a background that contrasts with the opaque pixels, so both dark and
light text on a transparent background stay readable.
"""

from __future__ import annotations

import io
import struct
import warnings

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .errors import ImageTooLargeError, InvalidImageError

DEFAULT_MAX_PIXELS = 40_000_000  # a 6000x6000 scan fits; a 50000x50000 bomb does not

# Pillow's own bomb guard is a process-wide global; ours is per call. Errors Pillow may raise
# from a corrupt stream, all of which mean "not a usable image".
_DECODE_ERRORS = (UnidentifiedImageError, OSError, ValueError, SyntaxError, EOFError,
                  IndexError, TypeError, KeyError, struct.error, MemoryError)


def decode_image(data: bytes, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """Returns an (H, W, 3) BGR uint8 array, or raises InvalidImageError / ImageTooLargeError."""
    if not data:
        raise InvalidImageError("the image is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            image = Image.open(io.BytesIO(data))
            width, height = image.size
            if width < 1 or height < 1:
                raise InvalidImageError(f"the image has no pixels ({width}x{height})")
            if width * height > max_pixels:
                raise ImageTooLargeError(
                    f"the image is {width}x{height} = {width * height} pixels, "
                    f"more than the limit of {max_pixels}")
            image.seek(0)
            image.load()
            image = ImageOps.exif_transpose(image)
            return _to_bgr(image)
    except (InvalidImageError, ImageTooLargeError):
        raise
    except Image.DecompressionBombError as exc:
        # Above twice its global limit (~179 Mpx) Pillow refuses in Image.open, before our
        # per-call check sees the size: still a too-large image, not an undecodable one.
        raise ImageTooLargeError(f"the image is too large: {_short(exc)}") from None
    except _DECODE_ERRORS as exc:
        raise InvalidImageError(f"cannot decode the image: {_short(exc)}") from None


def _to_bgr(image: Image.Image) -> np.ndarray:
    mode = image.mode
    if mode == "P":
        mode = "RGBA" if "transparency" in image.info else "RGB"
        image = image.convert(mode)
    elif mode == "PA":
        image = image.convert("RGBA")
        mode = "RGBA"
    if mode in ("RGBA", "LA", "La", "RGBa"):
        rgba = np.asarray(image.convert("RGBA"))
        rgb = _composite_alpha(rgba)
    elif mode in ("I;16", "I;16B", "I;16L", "I;16N", "I", "F"):
        rgb = np.repeat(_to_8bit(np.asarray(image))[..., None], 3, axis=2)
    elif mode in ("1", "L"):
        rgb = np.repeat(np.asarray(image.convert("L"))[..., None], 3, axis=2)
    else:  # RGB, CMYK, YCbCr, LAB, HSV, RGBX ...
        rgb = np.asarray(image.convert("RGB"))
    return np.ascontiguousarray(rgb[..., ::-1])


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """Maps 16-bit or 32-bit grey to 0..255 by the full range of the type actually used."""
    values = values.astype(np.float64)
    peak = values.max(initial=0.0)
    if peak <= 255:
        return np.clip(values, 0, 255).astype(np.uint8)
    scale = 255.0 / (65535.0 if peak <= 65535 else peak)
    return np.clip(values * scale + 0.5, 0, 255).astype(np.uint8)


def _composite_alpha(rgba: np.ndarray) -> np.ndarray:
    """Flattens RGBA onto black when the visible pixels are light, onto white otherwise."""
    alpha = rgba[..., 3:4].astype(np.float32) / 255.0
    rgb = rgba[..., :3].astype(np.float32)
    weight = float(alpha.sum())
    if weight == 0.0:
        background = 255.0
    else:
        luminance = rgb @ np.array([0.299, 0.587, 0.114], dtype=np.float32)
        mean_luminance = float((luminance * alpha[..., 0]).sum()) / weight
        background = 0.0 if mean_luminance >= 128 else 255.0
    out = rgb * alpha + background * (1.0 - alpha)
    return np.clip(out + 0.5, 0, 255).astype(np.uint8)


def _short(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if len(text) <= 120 else text[:117] + "..."
