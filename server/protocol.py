"""Every message between the parent and a worker process, declared once, and their framing.

Parent -> worker: `Job`, `Ping`, `Stop`. Worker -> parent: `Ready` or `BootError` once, then
`Started` when it takes a job, `Result` or `Failure` when the job ends, `Pong` for each ping.
Job payloads and their results are the handler's business (for OCR: `OcrJob` in, the result dict
out); errors cross as `ErrorInfo` data, never as live exceptions.

Framing: a 4-byte big-endian length, then a pickle of the message (the wire format of
multiprocessing.Connection, so either end may be a Connection). The worker reads and writes
blocking; the parent never blocks: `Channel` writes from a buffer when the socket is writable
and reads whatever has arrived, both from the IOLoop. A worker that stops reading (SIGSTOP, a
hang in native code) can therefore never freeze the parent, however large the job.
"""

from __future__ import annotations

import asyncio
import errno
import os
import pickle
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ocr_engine import EngineLimits, ModelPaths, OcrOptions
from ocr_engine.backends import StagePrecision
from ocr_engine.documents import DEFAULT_MAX_PAGES, PdfSandbox

from .errors import ErrorInfo

# --- parent -> worker ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Job:
    id: int
    payload: Any
    request_id: str | None = None  # for the worker's log lines


@dataclass(frozen=True)
class Ping:
    seq: int


@dataclass(frozen=True)
class Stop:
    pass


# --- worker -> parent ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Ready:
    pid: int


@dataclass(frozen=True)
class BootError:
    message: str


@dataclass(frozen=True)
class Started:
    job_id: int


@dataclass(frozen=True)
class Result:
    job_id: int
    value: Any
    rss_bytes: int  # the worker's resident memory after the job (the pool recycles on it)


@dataclass(frozen=True)
class Failure:
    job_id: int
    error: ErrorInfo
    rss_bytes: int


@dataclass(frozen=True)
class Pong:
    seq: int


TO_WORKER = (Job, Ping, Stop)
TO_PARENT = (Ready, BootError, Started, Result, Failure, Pong)


# --- OCR payloads -------------------------------------------------------------------------------


@dataclass(frozen=True)
class EngineSpec:
    """Everything a worker needs to build its engines: plain, picklable data."""

    models: dict[str, ModelPaths]
    backend: str = "onnxruntime"
    threads: int = 1
    # Each stage's compute precision (the configured one, "auto" already resolved).
    precision: StagePrecision = field(default_factory=StagePrecision)
    # How the backend and precision were chosen, for /ready: BackendChoice.to_dict().
    backend_choice: dict = field(default_factory=dict)
    max_pixels: int = 40_000_000
    rec_batch_size: int = 6
    cls_batch_size: int = 6
    defaults: OcrOptions = field(default_factory=OcrOptions)
    limits: EngineLimits = field(default_factory=EngineLimits)
    pdf_sandbox: PdfSandbox = field(default_factory=PdfSandbox)  # each PDF read's budget


@dataclass(frozen=True)
class OcrJob:
    image: bytes
    options: OcrOptions
    model: str


# --- framing ------------------------------------------------------------------------------------

_HEADER = struct.Struct("!i")
_READ_CHUNK = 1 << 20


def encode(message: Any) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return _HEADER.pack(len(body)) + body


def send_blocking(fd: int, message: Any) -> None:
    """Worker side: writes one whole frame (the fd is blocking)."""
    view = memoryview(encode(message))
    while view:
        view = view[os.write(fd, view):]


def recv_blocking(fd: int) -> Any:
    """Worker side: reads one whole frame; EOFError when the parent has gone."""
    size, = _HEADER.unpack(_read_exactly(fd, _HEADER.size))
    return pickle.loads(_read_exactly(fd, size))


def _read_exactly(fd: int, size: int) -> bytes:
    parts, left = [], size
    while left:
        chunk = os.read(fd, min(left, _READ_CHUNK))
        if not chunk:
            raise EOFError("the pipe closed")
        parts.append(chunk)
        left -= len(chunk)
    return b"".join(parts)


class Channel:
    """Parent side of one worker's socket: non-blocking framed writes and reads on the loop.

    `on_message(message)` is called for each whole frame that arrives. When the worker's end
    closes, the channel stops watching it: the process's exit is reported by its sentinel.
    """

    def __init__(self, fd: int, loop: asyncio.AbstractEventLoop,
                 on_message: Callable[[Any], None]) -> None:
        self.fd = fd
        self._loop = loop
        self._on_message = on_message
        self._inbox = bytearray()
        self._outbox = bytearray()
        self._writing = False
        self.closed = False
        os.set_blocking(fd, False)
        loop.add_reader(fd, self.read_available)

    @property
    def pending_bytes(self) -> int:
        return len(self._outbox)

    def send(self, message: Any) -> None:
        if self.closed:
            return
        self._outbox += encode(message)
        self._write_available()

    def read_available(self) -> None:
        """Reads what has arrived (also called once more when the worker exits)."""
        while not self.closed:
            try:
                chunk = os.read(self.fd, _READ_CHUNK)
            except BlockingIOError:
                break
            except OSError:
                chunk = b""
            if not chunk:
                self._close_end()
                break
            self._inbox += chunk
        self._deliver()

    def close(self) -> None:
        """Stops watching the fd (its owner, the Connection object, closes it)."""
        if not self.closed:
            self.closed = True
            self._remove_handlers()

    def _deliver(self) -> None:
        while len(self._inbox) >= _HEADER.size:
            size, = _HEADER.unpack_from(self._inbox)
            if len(self._inbox) < _HEADER.size + size:
                return
            body = bytes(self._inbox[_HEADER.size:_HEADER.size + size])
            del self._inbox[:_HEADER.size + size]
            self._on_message(pickle.loads(body))

    def _write_available(self) -> None:
        while self._outbox and not self.closed:
            try:
                written = os.write(self.fd, self._outbox)
            except BlockingIOError:
                break
            except OSError as exc:
                if exc.errno in (errno.EPIPE, errno.ECONNRESET, errno.EBADF):
                    self._outbox.clear()  # the worker is gone; its sentinel reports it
                    break
                raise
            del self._outbox[:written]
        want_writer = bool(self._outbox) and not self.closed
        if want_writer and not self._writing:
            self._loop.add_writer(self.fd, self._write_available)
        elif not want_writer and self._writing:
            self._loop.remove_writer(self.fd)
        self._writing = want_writer

    def _close_end(self) -> None:
        self.closed = True
        self._remove_handlers()

    def _remove_handlers(self) -> None:
        self._loop.remove_reader(self.fd)
        if self._writing:
            self._loop.remove_writer(self.fd)
            self._writing = False
        self._outbox.clear()


# --- document payloads (ocr_engine.documents; the handler is server/ocr_worker.py) --------------


@dataclass(frozen=True)
class DocumentProbeJob:
    """What a document is -> {"kind": "pdf" | "tiff" | "image", "pages": int,
    "page_sizes": [[w, h], ...] (points for PDF, pixels otherwise), "text_pages": [bool, ...],
    "page_digests": [hex, ...] (equal only for pages that read the same: a page's cache key)}.
    A PDF over `max_pages` fails with too_many_pages before any page is read."""

    data: bytes
    password: str | None = None
    max_pages: int = DEFAULT_MAX_PAGES


@dataclass(frozen=True)
class PageJob:
    """One page (1-based) of a document -> {"model", "page", "width", "height", "lines",
    "text", "source": "ocr" | "text_layer", "timings_ms"}, lines shaped as an OcrJob's.

    pdf_text: "ocr" always renders and reads the page; "auto" answers from the PDF's text
    layer when the page has one, else OCRs it; "only" answers from the text layer (no lines
    when there is none) and never renders. `dpi` sizes the rendered PDF page, and the text
    layer's boxes are in that page's pixels; a TIFF page keeps its own pixels.
    """

    data: bytes
    page: int
    dpi: int  # ocr_engine.documents.DEFAULT_DPI is the usual choice
    pdf_text: str
    password: str | None
    options: OcrOptions
    model: str
