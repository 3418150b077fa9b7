"""Decoding untrusted image bytes into the BGR uint8 array the pipeline works on.

Pillow reads the header first, so the pixel count is checked before any pixel is decoded (a
decompression bomb is refused while it is still a few bytes). Multi-frame files (GIF, TIFF) give
their first frame, EXIF orientation is applied, and every mode is brought to 3-channel BGR:
alpha is composited onto a background that contrasts with the opaque pixels, so both dark and
light text on a transparent background stay readable.
"""

from __future__ import annotations

import io
import re
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
        raise ImageTooLargeError(_bomb_message(exc, max_pixels)) from None
    except UnidentifiedImageError:
        raise InvalidImageError("cannot decode the image: not an image format we read "
                                "(JPEG, PNG, WebP, BMP, GIF, TIFF, ...)") from None
    except MemoryError:
        raise InvalidImageError("cannot decode the image: it needs more memory than this "
                                "worker has") from None
    except _DECODE_ERRORS:
        # Pillow's own texts name its internals (object reprs with heap addresses, decoder
        # states): never part of a message a client may see.
        raise InvalidImageError("cannot decode the image: the data is truncated or "
                                "corrupt") from None


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


# Conversions run over bands of rows of about this many pixels: float copies of a whole 40 Mpx
# image took 2.5 GB (RGBA compositing), more than detection at its limit.
_BAND_PIXELS = 1 << 20


def _row_bands(height: int, width: int):
    rows = max(1, _BAND_PIXELS // max(1, width))
    for top in range(0, height, rows):
        yield slice(top, min(top + rows, height))


def _to_8bit(values: np.ndarray) -> np.ndarray:
    """Maps 16-bit or 32-bit grey to 0..255 by the full range of the type actually used."""
    peak = float(values.max(initial=0))
    scale = 255.0 / (65535.0 if peak <= 65535 else peak)
    out = np.empty(values.shape, np.uint8)
    for band in _row_bands(*values.shape[:2]):
        chunk = values[band].astype(np.float64)
        if peak <= 255:
            out[band] = np.clip(chunk, 0, 255).astype(np.uint8)
        else:
            out[band] = np.clip(chunk * scale + 0.5, 0, 255).astype(np.uint8)
    return out


def _composite_alpha(rgba: np.ndarray) -> np.ndarray:
    """Flattens RGBA onto black when the visible pixels are light, onto white otherwise.

    The alpha-weighted mean luminance is summed band by band in float64; each pixel is then
    blended exactly as in one pass over the image.
    """
    height, width = rgba.shape[:2]
    weights = np.array([0.299, 0.587, 0.114], dtype=np.float32)
    weight = weighted = 0.0
    for band in _row_bands(height, width):
        alpha = rgba[band, :, 3].astype(np.float32) / 255.0
        luminance = rgba[band, :, :3].astype(np.float32) @ weights
        weight += float(alpha.sum(dtype=np.float64))
        weighted += float((luminance * alpha).sum(dtype=np.float64))
    if weight == 0.0:
        background = 255.0
    else:
        background = 0.0 if weighted / weight >= 128 else 255.0
    out = np.empty((height, width, 3), np.uint8)
    for band in _row_bands(height, width):
        alpha = rgba[band, :, 3:4].astype(np.float32) / 255.0
        blended = rgba[band, :, :3].astype(np.float32) * alpha + background * (1.0 - alpha)
        out[band] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    return out


def _bomb_message(exc: BaseException, max_pixels: int) -> str:
    """Our words for Pillow's refusal, keeping only the pixel count it read from the header."""
    found = re.search(r"\((\d{1,20}) pixels\)", str(exc))
    size = f"declares {int(found.group(1))} pixels" if found else "declares too many pixels"
    return f"the image is too large: it {size}, more than the limit of {max_pixels}"
