"""Typed errors raised by the engine; the server maps each to an HTTP status."""

from __future__ import annotations


class OcrError(Exception):
    """Base class: every error the engine raises on purpose derives from it."""

    code = "ocr_error"


class InvalidImageError(OcrError):
    """The bytes are empty, truncated, corrupt or not an image format we decode."""

    code = "invalid_image"


class ImageTooLargeError(OcrError):
    """The image declares more pixels than allowed; refused before decoding it."""

    code = "image_too_large"


class InvalidOptionError(OcrError, ValueError):
    """An OCR option is unknown, of the wrong type or out of range."""

    code = "invalid_option"

    def __init__(self, name: str, message: str) -> None:
        super().__init__(f"{name}: {message}")
        self.name = name


class ModelNotFoundError(OcrError):
    """A model set, format or model file is unknown or not installed."""

    code = "model_not_found"


class ModelChecksumError(OcrError):
    """A fetched model file does not match the sha256 in the manifest."""

    code = "model_checksum"


class BackendSetupError(OcrError):
    """A backend's process setup (backends.setup_process) was not applied before its engine
    was built; a programming error at start-up, never a per-request one."""

    code = "backend_setup"
