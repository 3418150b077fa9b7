"""Turning an HTTP request into an OCR job: fields, image bytes, options, and the path sandbox.

Pure functions of the request's parts, so they are tested directly (hypothesis included)
without a server. Every failure is an ApiError whose message names the field and never echoes
more than a short, sanitised piece of the input.
"""

from __future__ import annotations

import base64
import binascii
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tornado.httputil import HTTPFile, HTTPInputError, parse_body_arguments

from ocr_engine import InvalidOptionError, OcrOptions, parse_options
from ocr_engine.options import OPTION_NAMES

from .errors import ApiError

FILE_TYPES = ("file", "filename", "base64")
CONTROL_FIELDS = ("file_type", "block_flag", "img_src", "filename", "model")
# The per-request options: PaddleOCR's names (use_det is our extension for line crops).
REQUEST_OPTIONS = OPTION_NAMES
_DATA_URL = re.compile(r"^data:([\w.+-]+/[\w.+-]+)?((?:;[\w.+-]+=[\w.+-]+)*)(;base64)?,", re.I)


@dataclass(frozen=True)
class OcrRequest:
    file_type: str
    image: bytes
    options: OcrOptions
    model: str
    block: bool


def clip(text: str, limit: int = 80) -> str:
    """A short, printable rendering of untrusted input for error messages."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return repr(text + ("..." if len(text) >= limit else ""))


def read_fields(content_type: str, body: bytes, query: dict[str, list[bytes]]
                ) -> tuple[dict[str, Any], dict[str, list[HTTPFile]]]:
    """The request's fields (JSON body, or form/multipart body plus query string) and files."""
    media_type = content_type.split(";", 1)[0].strip().lower()
    files: dict[str, list[HTTPFile]] = {}
    if media_type == "application/json":
        try:
            data = json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ApiError("bad_request", f"the body is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise ApiError("bad_request", "the JSON body must be an object")
        return data, files
    if media_type not in ("", "application/x-www-form-urlencoded", "multipart/form-data"):
        raise ApiError("unsupported_media_type",
                       f"content type {clip(media_type, 60)} is not supported; send "
                       "multipart/form-data, application/x-www-form-urlencoded or "
                       "application/json")
    raw: dict[str, list[bytes]] = {k: list(v) for k, v in query.items()}
    if body and media_type:
        try:
            parse_body_arguments(content_type, body, raw, files)
        except HTTPInputError as exc:
            raise ApiError("bad_request", f"the body could not be parsed: "
                           f"{clip(str(exc), 120)}") from None
        if media_type == "multipart/form-data" and not raw and not files:
            raise ApiError("bad_request", "the multipart body could not be parsed "
                           "(check the boundary and the parts)")
    fields: dict[str, Any] = {}
    for name, values in raw.items():
        try:
            fields[name] = values[-1].decode("utf-8")
        except UnicodeDecodeError:
            raise ApiError("invalid_field",
                           f"field {clip(name, 40)} is not valid UTF-8") from None
    return fields, files


def build_request(fields: dict[str, Any], files: dict[str, list[HTTPFile]],
                  defaults: OcrOptions, default_model: str, models: tuple[str, ...],
                  roots: tuple[Path, ...], max_bytes: int) -> OcrRequest:
    unknown = [name for name in fields if name not in CONTROL_FIELDS + REQUEST_OPTIONS]
    if unknown:
        raise ApiError("invalid_field", f"unknown field {clip(str(unknown[0]), 40)}; "
                       f"fields: {', '.join(CONTROL_FIELDS + REQUEST_OPTIONS)}")
    file_type = fields.get("file_type")
    if file_type is None:
        # Friendly default: an upload or a base64 string says what it is.
        file_type = "file" if "file" in files else "base64" if "img_src" in fields else None
    if file_type not in FILE_TYPES:
        raise ApiError("missing_field" if file_type is None else "invalid_field",
                       "file_type must be one of file, filename, base64"
                       + ("" if file_type is None else f"; got {clip(str(file_type), 40)}"))
    block = _block_flag(fields.get("block_flag", True))
    model = fields.get("model", default_model)
    if not isinstance(model, str) or model not in models:
        raise ApiError("unknown_model", f"model {clip(str(model), 40)} is not loaded; "
                       f"loaded: {', '.join(models)}")
    try:
        options = parse_options({k: v for k, v in fields.items() if k in REQUEST_OPTIONS},
                                defaults)
    except InvalidOptionError as exc:
        raise ApiError("invalid_option", str(exc)) from None
    if file_type == "file":
        image = _upload(files)
    elif file_type == "base64":
        image = decode_base64(fields.get("img_src"))
    else:
        image = read_sandboxed(fields.get("filename", fields.get("img_src")), roots, max_bytes)
    if not image:
        raise ApiError("invalid_image", "the image is empty (0 bytes)")
    if len(image) > max_bytes:
        raise ApiError("too_large", f"the image is {len(image)} bytes; the limit is "
                       f"{max_bytes}")
    return OcrRequest(file_type, image, options, model, block)


def _block_flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.strip().lower() in ("1", "true", "yes", "on", ""):
        return True
    if isinstance(value, str) and value.strip().lower() in ("0", "false", "no", "off"):
        return False
    raise ApiError("invalid_field", "block_flag must be true or false")


def _upload(files: dict[str, list[HTTPFile]]) -> bytes:
    uploads = files.get("file")
    if not uploads:
        raise ApiError("missing_field", "file_type=file needs a multipart file field "
                       "named 'file'")
    return uploads[0]["body"]


def decode_base64(value: Any) -> bytes:
    """Raw base64 (standard or URL-safe alphabet, padding optional) or a data: URL."""
    if not isinstance(value, str) or not value.strip():
        raise ApiError("missing_field", "file_type=base64 needs the base64 image in "
                       "'img_src'")
    text = value.strip()
    match = _DATA_URL.match(text)
    if match:
        media_type = (match.group(1) or "text/plain").lower()
        if not media_type.startswith("image/"):
            raise ApiError("invalid_image", f"the data URL says {clip(media_type, 40)}, "
                           "not an image type")
        if not match.group(3):
            raise ApiError("invalid_field", "the data URL must be base64-encoded")
        text = text[match.end():]
    compact = re.sub(r"\s+", "", text)
    compact += "=" * (-len(compact) % 4)
    try:
        if "-" in compact or "_" in compact:
            return base64.b64decode(compact, altchars=b"-_", validate=True)
        return base64.b64decode(compact, validate=True)
    except (binascii.Error, ValueError):
        raise ApiError("invalid_field", "img_src is not valid base64") from None


def read_sandboxed(name: Any, roots: tuple[Path, ...], max_bytes: int) -> bytes:
    """Reads a regular file whose real path lies inside one of `roots`.

    Real paths are compared, so '..' and symlinks cannot leave the roots. Errors never reveal
    where a path outside the roots points.
    """
    if not roots:
        raise ApiError("forbidden_path", "file_type=filename is disabled: the server has "
                       "no service.filename_roots configured")
    if not isinstance(name, str) or not name:
        raise ApiError("missing_field", "file_type=filename needs the path in 'filename'")
    if "\0" in name or len(name) > 4096:
        raise ApiError("invalid_field", "filename contains a NUL byte or is too long")
    candidates = [Path(name)] if os.path.isabs(name) else [root / name for root in roots]
    inside = None
    for candidate in candidates:
        try:
            real = Path(os.path.realpath(candidate))
        except (OSError, ValueError):
            continue
        if any(real == root or root in real.parents for root in roots):
            inside = real
            if real.exists():
                break
    if inside is None:
        raise ApiError("forbidden_path", f"{clip(name)} is outside the allowed folders")
    try:
        info = os.stat(inside)
    except FileNotFoundError:
        raise ApiError("file_not_found", f"no such file: {clip(name)}") from None
    except (OSError, ValueError):
        raise ApiError("invalid_field", f"cannot read {clip(name)}") from None
    if not stat.S_ISREG(info.st_mode):
        # A FIFO or device would block or never end; a directory is not an image.
        raise ApiError("invalid_field", f"{clip(name)} is not a regular file")
    if info.st_size > max_bytes:
        raise ApiError("too_large", f"the file is {info.st_size} bytes; the limit is "
                       f"{max_bytes}")
    try:
        fd = os.open(inside, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        raise ApiError("forbidden_path", f"cannot open {clip(name)}") from None
    with os.fdopen(fd, "rb") as handle:
        if not stat.S_ISREG(os.fstat(handle.fileno()).st_mode):
            raise ApiError("invalid_field", f"{clip(name)} is not a regular file")
        return handle.read(max_bytes + 1)
