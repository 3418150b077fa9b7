"""The listening side, hardened: a connection cap with a fast refusal, accept errors that are
logged once per interval instead of spinning, a JSON 431 for oversized headers, and the fd limit
raised to what the cap needs.

Tornado's own accept loop lets an EMFILE escape into the IOLoop: the listening socket stays
readable, so the loop spins at 100% CPU logging the same traceback thousands of times a second.
Here an accept error pauses accepting on that socket for a moment and is logged through
`Throttled`. Past `max_connections` open connections a new one is answered at once with a
canned 503 (written without reading the request) and closed, so a flood of slow clients costs
each new client one round trip, not a hang. Slow clients themselves are cut by the header and
body timeouts (HTTPServer's idle_connection_timeout and body_timeout).
"""

from __future__ import annotations

import errno
import json
import logging
import resource
import socket
from typing import Any

from tornado.httpserver import HTTPServer
from tornado.ioloop import IOLoop
from tornado.iostream import IOStream, UnsatisfiableReadError

from .errors import CATALOGUE
from .logs import Throttled

log = logging.getLogger("ppocr.http")

# File descriptors kept free beyond the connection cap: workers' pipes and sentinels, files
# read in filename mode, the listening sockets, logging.
FD_RESERVE = 256
# How long accepting pauses after an accept error such as EMFILE.
ACCEPT_PAUSE_S = 0.25
_ACCEPT_ERRORS = (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM)


def canned_response(code: str, message: str) -> bytes:
    """A complete HTTP/1.1 error response with the JSON error body, closing the connection."""
    kind = CATALOGUE[code]
    body = json.dumps({"error": {"code": code, "message": message}}).encode()
    reason = {431: "Request Header Fields Too Large", 503: "Service Unavailable"}.get(
        kind.status, "Error")
    retry = f"Retry-After: {kind.retry_after}\r\n" if kind.retry_after else ""
    return (f"HTTP/1.1 {kind.status} {reason}\r\nContent-Type: application/json; "
            f"charset=utf-8\r\nContent-Length: {len(body)}\r\n{retry}Connection: close\r\n\r\n"
            ).encode() + body


class _HeaderGuardStream(IOStream):
    """Answers 431 before closing when the request's headers pass the size limit (Tornado
    itself just closes the connection)."""

    def close(self, exc_info: Any = False) -> None:
        error = exc_info if isinstance(exc_info, BaseException) else None
        # Only the headers are read with a regex (HTTP1Connection's read_until_regex, bounded
        # by max_header_size). The other bounded read, a chunk-size line (64 bytes at most),
        # is a malformed body, not oversized headers: Tornado's plain close stands for it.
        if isinstance(error, UnsatisfiableReadError) and self._read_regex is not None \
                and self.socket is not None:
            try:
                self.socket.send(_HEADERS_TOO_LARGE, socket.MSG_DONTWAIT)
            except OSError:
                pass
        super().close(exc_info)


class GuardedHTTPServer(HTTPServer):
    def initialize(self, *args: Any, max_connections: int = 10_000, **kwargs: Any) -> None:
        super().initialize(*args, **kwargs)
        self.max_connections = max_connections
        self.refused = 0
        self._throttled = Throttled(log)
        self._paused: set[int] = set()

    def add_sockets(self, sockets: list[socket.socket]) -> None:
        for sock in sockets:
            self._sockets[sock.fileno()] = sock
            self._watch(sock)

    @property
    def open_connections(self) -> int:
        return len(self._connections)

    def _watch(self, sock: socket.socket) -> None:
        loop = IOLoop.current()
        loop.add_handler(sock, lambda fd, events: self._accept(sock), IOLoop.READ)
        self._handlers[sock.fileno()] = lambda: loop.remove_handler(sock)

    def _accept(self, sock: socket.socket) -> None:
        for _ in range(128):  # a bounded batch, then back to the loop
            try:
                connection, address = sock.accept()
            except BlockingIOError:
                return
            except ConnectionAbortedError:
                continue
            except OSError as exc:
                if exc.errno not in _ACCEPT_ERRORS:
                    raise
                self._throttled.warning("accept", "cannot accept connections: %s; pausing "
                                        "accepts for %.2f s", exc.strerror, ACCEPT_PAUSE_S)
                self._pause(sock)
                return
            if len(self._connections) >= self.max_connections:
                self._refuse(connection)
                continue
            connection.setblocking(False)
            stream = _HeaderGuardStream(connection, max_buffer_size=self.max_buffer_size,
                                        read_chunk_size=self.read_chunk_size)
            self.handle_stream(stream, address)

    def _refuse(self, connection: socket.socket) -> None:
        self.refused += 1
        self._throttled.warning("cap", "%d connections open (web_server.max_connections): "
                                "refusing new ones with 503", len(self._connections))
        try:
            connection.send(_TOO_MANY_CONNECTIONS, socket.MSG_DONTWAIT)
            connection.shutdown(socket.SHUT_WR)
            # Closing with unread request bytes would send a reset, and the client's kernel
            # would drop our answer with it: read what has arrived (never wait) first.
            while connection.recv(65536, socket.MSG_DONTWAIT):
                pass
        except OSError:
            pass
        connection.close()

    def _pause(self, sock: socket.socket) -> None:
        fd = sock.fileno()
        if fd in self._paused or fd not in self._handlers:
            return
        self._paused.add(fd)
        self._handlers.pop(fd)()
        IOLoop.current().call_later(ACCEPT_PAUSE_S, self._resume, sock)

    def _resume(self, sock: socket.socket) -> None:
        self._paused.discard(sock.fileno())
        if not self._stopped and sock.fileno() in self._sockets:
            self._watch(sock)

    def stop(self) -> None:
        for fd in self._paused:  # TCPServer.stop removes every socket's handler
            self._handlers.setdefault(fd, lambda: None)
        self._paused.clear()
        super().stop()


def raise_fd_limit(max_connections: int) -> int:
    """Raises the soft RLIMIT_NOFILE to what `max_connections` needs (up to the hard limit) and
    returns the connection cap that fits under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FD_RESERVE
    if hard != resource.RLIM_INFINITY:
        wanted = min(wanted, hard)
    if wanted > soft:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
            soft = wanted
        except (ValueError, OSError) as exc:
            log.warning("cannot raise the open-file limit to %d: %s", wanted, exc)
    cap = max(1, min(max_connections, soft - FD_RESERVE))
    if cap < max_connections:
        log.warning("the open-file limit (%d) allows %d connections; web_server.max_connections "
                    "is %d: capping at %d", soft, cap, max_connections, cap)
    return cap


_HEADERS_TOO_LARGE = canned_response("headers_too_large", "the request's headers are over the "
                                     "64 KB limit")
_TOO_MANY_CONNECTIONS = canned_response("too_many_connections", "too many open connections; "
                                        "retry later")
