"""Every error the service can answer with, declared once, and the one mapping to HTTP.

- `CATALOGUE` declares each error code once: its HTTP status, its Retry-After (for the 503s) and
  a description (the README table and the OpenAPI document come from it).
- `ErrorInfo` is an error as data: what crosses the worker pipe, what a failed task stores and
  what is logged. `details` is for the log only (a worker's traceback, say), never the client.
- `ApiError` is the exception handlers raise; it is built from a code, so the status cannot
  disagree with the catalogue.
- `to_api_error` maps anything raised below the handlers (the engine's typed errors, the pool's
  errors, Tornado's HTTPError, a stray exception) to an ApiError. It is the only such mapping.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorKind:
    code: str
    status: int
    description: str
    retry_after: int | None = None


CATALOGUE: dict[str, ErrorKind] = {kind.code: kind for kind in (
    ErrorKind("bad_request", 400, "the body could not be parsed (malformed JSON, form or "
              "multipart)"),
    ErrorKind("invalid_field", 400, "a request field has a wrong type or value, or is unknown"),
    ErrorKind("missing_field", 400, "a required request field is missing"),
    ErrorKind("invalid_option", 400, "an OCR option is of the wrong type or out of range"),
    ErrorKind("unknown_model", 400, "the requested model set is not loaded"),
    ErrorKind("password_required", 400, "the PDF is encrypted: send its 'password'"),
    ErrorKind("wrong_password", 400, "the 'password' does not open the encrypted PDF"),
    ErrorKind("invalid_archive", 400, "the upload is not a readable ZIP, or an entry has an "
              "unsafe name (absolute, '..'), is a link, is encrypted or is itself an archive"),
    ErrorKind("unauthorized", 401, "missing or wrong 'Authorization: Bearer' token"),
    ErrorKind("forbidden_path", 403, "the filename is outside service.filename_roots, or "
              "filename mode is disabled"),
    ErrorKind("not_found", 404, "no such endpoint, or no such task or job (unknown, expired "
              "or deleted)"),
    ErrorKind("file_not_found", 404, "the filename does not exist inside the allowed roots"),
    ErrorKind("method_not_allowed", 405, "the endpoint does not take this HTTP method"),
    ErrorKind("job_finished", 409, "the job has already finished; there is nothing to cancel"),
    ErrorKind("too_large", 413, "the request body or file is over web_server.max_body_size"),
    ErrorKind("too_many_items", 413, "the folder or ZIP holds more files than jobs.max_items, "
              "or the ZIP declares more entries than jobs.max_zip_entries"),
    ErrorKind("archive_too_large", 413, "the ZIP's entries declare more than jobs.max_zip_bytes "
              "uncompressed, or one entry more than web_server.max_body_size"),
    ErrorKind("image_too_large", 413, "the image, or a document page at the asked dpi, has "
              "more pixels than max_pixels (refused before decoding or rendering)"),
    ErrorKind("too_many_pages", 413, "the document has more pages than service.max_pages"),
    ErrorKind("batch_too_large", 413, "the request sends more images than service.max_batch"),
    ErrorKind("invalid_image", 415, "the bytes are not a decodable image"),
    ErrorKind("invalid_document", 415, "the PDF or TIFF cannot be read (truncated, corrupt, "
              "no pages, an unsupported encryption)"),
    ErrorKind("unsupported_media_type", 415, "the request's Content-Type is not supported"),
    ErrorKind("document_too_complex", 422, "reading the document ran past its memory or "
              "time budget, or crashed the PDF reader (a PDF bomb, or just too complex)"),
    ErrorKind("headers_too_large", 431, "the request's headers are over the limit"),
    ErrorKind("worker_crashed", 500, "the OCR worker died on this image twice"),
    ErrorKind("model_not_found", 500, "a model file the server needs is missing"),
    ErrorKind("internal_error", 500, "an unexpected error; the server log has the details "
              "under the response's request id"),
    ErrorKind("task_lost", 500, "the server restarted while the document or batch task was "
              "pending, and the copy of its request it kept (in service.state_dir) was missing "
              "or unreadable, so it could not be redone: send the request again"),
    ErrorKind("queue_full", 503, "every worker is busy and the queue is full", retry_after=1),
    ErrorKind("unavailable", 503, "no OCR worker is running right now", retry_after=2),
    ErrorKind("shutting_down", 503, "the server is shutting down", retry_after=5),
    ErrorKind("store_unavailable", 503, "the shared job store (Redis, service.redis_url) "
              "cannot be reached now; the job and its items are kept there, retry",
              retry_after=2),
    ErrorKind("too_many_connections", 503, "the server has web_server.max_connections open "
              "connections", retry_after=1),
    ErrorKind("timeout", 504, "no result within ocr.process.task_timeout or "
              "web_server.request_timeout"),
)}

def clip(text: str, limit: int = 80) -> str:
    """A short, printable rendering of untrusted input for error messages."""
    text = "".join(ch if ch.isprintable() else "?" for ch in text[:limit])
    return repr(text + ("..." if len(text) >= limit else ""))


# What a client sees for an error whose cause is ours, not theirs.
INTERNAL_MESSAGE = "internal error while reading the image; the server log has the details"


@dataclass(frozen=True)
class ErrorInfo:
    """An error as plain data (picklable, storable, comparable)."""

    code: str
    message: str
    details: str | None = None  # for the log: never sent to the client

    @property
    def kind(self) -> ErrorKind:
        return CATALOGUE.get(self.code, CATALOGUE["internal_error"])

    def public_dict(self) -> dict:
        return {"code": self.code if self.code in CATALOGUE else "internal_error",
                "message": self.message}


class ApiError(Exception):
    """An error to answer with: a catalogue code and a message for the client."""

    def __init__(self, code: str, message: str, *, details: str | None = None) -> None:
        if code not in CATALOGUE:
            raise ValueError(f"undeclared error code {code!r}")
        super().__init__(message)
        self.info = ErrorInfo(code, message, details)

    @classmethod
    def from_info(cls, info: ErrorInfo) -> ApiError:
        return cls(info.code if info.code in CATALOGUE else "internal_error", info.message,
                   details=info.details)

    @property
    def code(self) -> str:
        return self.info.code

    @property
    def message(self) -> str:
        return self.info.message

    @property
    def status(self) -> int:
        return CATALOGUE[self.info.code].status

    @property
    def retry_after(self) -> int | None:
        return CATALOGUE[self.info.code].retry_after

    def to_dict(self) -> dict:
        return self.info.public_dict()


def error_info(exc: BaseException) -> ErrorInfo:
    """The data form of any exception: typed errors keep their code and message; anything
    else becomes internal_error with the original text kept as details (for the log)."""
    if isinstance(exc, ApiError):
        return exc.info
    info = getattr(exc, "info", None)
    if isinstance(info, ErrorInfo):
        return info
    code = getattr(exc, "code", None)
    if isinstance(code, str) and code in CATALOGUE:
        return ErrorInfo(code, str(exc)[:500])
    return ErrorInfo("internal_error", INTERNAL_MESSAGE, details=f"{type(exc).__name__}: {exc}")


def to_api_error(exc: BaseException | None, status_code: int = 500) -> ApiError:
    """The one mapping from whatever was raised to what the client is told."""
    from tornado.web import HTTPError

    if isinstance(exc, ApiError):
        return exc
    if isinstance(exc, HTTPError):
        code = _CODE_OF_STATUS.get(exc.status_code,
                                   "internal_error" if exc.status_code >= 500 else "bad_request")
        message = exc.log_message % exc.args if exc.log_message else exc.reason or code
        return ApiError(code, str(message)[:300])
    if exc is None:
        if status_code < 500:
            return ApiError(_CODE_OF_STATUS.get(status_code, "bad_request"), "bad request")
        return ApiError("internal_error", INTERNAL_MESSAGE)
    return ApiError.from_info(error_info(exc))


# Tornado's own HTTPErrors (a malformed request line, a 405, a 413 it raises itself) by status.
_CODE_OF_STATUS = {400: "bad_request", 401: "unauthorized", 403: "forbidden_path",
                   404: "not_found", 405: "method_not_allowed", 413: "too_large",
                   415: "unsupported_media_type", 431: "headers_too_large"}
