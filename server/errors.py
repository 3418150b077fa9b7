"""Errors with an HTTP status, and the mapping of engine error codes to statuses.

Handlers raise ApiError; the base handler turns every error into one JSON shape:
{"error": {"code": "...", "message": "..."}}. Errors from a worker cross the pipe as plain dicts
({"code", "message"}) and come back here through `error_from_dict`.
"""

from __future__ import annotations

# Engine and pool error codes -> HTTP status. Anything unknown is an internal error.
STATUS_OF_CODE = {
    "bad_request": 400,
    "invalid_option": 400,
    "invalid_field": 400,
    "missing_field": 400,
    "unknown_model": 400,
    "unauthorized": 401,
    "forbidden_path": 403,
    "not_found": 404,
    "file_not_found": 404,
    "method_not_allowed": 405,
    "too_large": 413,
    "image_too_large": 413,
    "invalid_image": 415,
    "unsupported_media_type": 415,
    "queue_full": 503,
    "unavailable": 503,
    "shutting_down": 503,
    "timeout": 504,
    "worker_crashed": 500,
    "model_not_found": 500,
    "internal_error": 500,
}


class ApiError(Exception):
    """An error to answer with: a status, a stable machine code and a human message."""

    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.retry_after = retry_after

    def to_dict(self) -> dict:
        return {"code": self.code, "message": self.message}


def error_from_dict(error: dict) -> ApiError:
    code = str(error.get("code", "internal_error"))
    status = STATUS_OF_CODE.get(code, 500)
    message = str(error.get("message", "internal error"))
    return ApiError(status, code, message, retry_after=error.get("retry_after"))


def error_to_dict(exc: BaseException) -> dict:
    """The picklable form of an exception raised in a worker."""
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in STATUS_OF_CODE:
        return {"code": code, "message": str(exc)}
    return {"code": "internal_error", "message": f"{type(exc).__name__}: {exc}"[:500]}
