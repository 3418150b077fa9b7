"""Worker process side: build the handler once, then answer messages until told to stop.

The loop is single-threaded: one job at a time, so the engine inside is never shared between
threads. It speaks only the messages of `protocol`: `Started` as soon as it takes a job (the
parent's hand-over timer waits for it), then `Result` or `Failure`; `Pong` for every `Ping`, so
the parent can tell a live idle worker from a stopped one. An unexpected exception in a job is
logged here with its traceback and the job's request id, and crosses the pipe as an
internal_error whose details the parent logs; the client only sees a generic message.

SIGINT is ignored (Ctrl-C in a terminal reaches the whole process group; the parent decides how
to shut down and tells workers to stop). A closed pipe means the parent is gone, and the worker
exits instead of lingering as an orphan.
"""

from __future__ import annotations

import logging
import os
import signal
import traceback
from collections.abc import Callable
from typing import Any

from . import protocol
from .errors import ErrorInfo, error_info
from .logs import configure_logging

log = logging.getLogger("ppocr.worker")

_PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")


def run_worker(conn: Any, factory: Callable[[Any], Callable[[Any], Any]], spec: Any,
               log_format: str = "text") -> None:
    """The worker process's main function. `factory(spec)` builds the job handler (and does the
    process-wide set-up the handler needs, before anything heavy is imported)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    configure_logging(log_format, prefix=f"[{os.getpid()}]")
    fd = conn.fileno()
    try:
        handler = factory(spec)
    except BaseException as exc:  # noqa: BLE001 - any boot failure must reach the parent
        _send(fd, protocol.BootError(f"{type(exc).__name__}: {exc}"))
        return
    _send(fd, protocol.Ready(os.getpid()))
    while True:
        try:
            message = protocol.recv_blocking(fd)
        except (EOFError, OSError):
            return
        if isinstance(message, protocol.Stop):
            return
        if isinstance(message, protocol.Ping):
            _send(fd, protocol.Pong(message.seq))
        elif isinstance(message, protocol.Job):
            _send(fd, protocol.Started(message.id))
            _send(fd, _run_job(handler, message))
        else:
            log.warning("ignoring an unknown message from the parent: %r", type(message))


def _run_job(handler: Callable[[Any], Any], job: protocol.Job) -> Any:
    try:
        value = handler(job.payload)
    except Exception as exc:  # noqa: BLE001 - one bad job must not end the worker
        info = error_info(exc)
        if info.code == "internal_error":
            details = traceback.format_exc(limit=20)
            log.error("job %d (request %s) failed unexpectedly:\n%s", job.id, job.request_id,
                      details)
            info = ErrorInfo(info.code, info.message, details=details[-4000:])
        return protocol.Failure(job.id, info, resident_bytes())
    return protocol.Result(job.id, value, resident_bytes())


def resident_bytes() -> int:
    """This process's RSS from /proc (cheap: one small read)."""
    try:
        with open("/proc/self/statm", "rb") as statm:
            return int(statm.read().split()[1]) * _PAGE_SIZE
    except (OSError, ValueError, IndexError):
        return 0


def _send(fd: int, message: Any) -> None:
    try:
        protocol.send_blocking(fd, message)
    except OSError:
        pass  # the parent is gone; the next read ends the loop
