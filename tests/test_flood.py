"""Socket exhaustion: a flood of connections that never finish their requests, against the real
server in a subprocess with a lowered open-file limit; and the accept guard against EMFILE."""

from __future__ import annotations

import asyncio
import errno
import json
import logging
import os
import resource
import signal
import socket
import time
import urllib.request

import pytest
import tornado.web

from server.http import GuardedHTTPServer
from server.testing import ServerProcess, multipart, wait_for
from tests.app_testing import PINNED_BACKEND
from tests.test_hardening import RECEIPT_BYTES
from tests.test_server import FIRST_LINE

FLOOD = 1500
FD_LIMIT = 600  # the server can keep at most ~344 connections open under it
# Long enough for the whole flood to be open at once. The listen backlog fills and connects
# wait for SYN retries (a 1 s pause at ~600 connections even on a quiet machine); with a 3 s
# header timeout a loaded CI run once saw none of the last 200 refused, most likely because
# the first connections were cut before the flood ended and the last found free slots.
HEADER_TIMEOUT_S = 10


def _limit_fds() -> None:
    resource.setrlimit(resource.RLIMIT_NOFILE, (FD_LIMIT, FD_LIMIT))


@pytest.fixture
def room_for_the_flood():
    """This process holds the whole flood's sockets: its own soft open-file limit must allow
    them, whatever limit the test run started with (a server built by an earlier test in the
    same worker may have raised it, or not)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    needed = FLOOD + 512
    if hard != resource.RLIM_INFINITY and hard < needed:
        pytest.fail(f"the flood needs {needed} open files; this process may have {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, needed), hard))
    yield
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


@pytest.mark.usefixtures("room_for_the_flood")
def test_connection_flood_is_refused_fast_cut_by_timeouts_and_the_pool_stays_whole(tmp_path):
    server = ServerProcess(tmp_path, {
        "web_server.max_connections": 5000, "web_server.header_timeout": HEADER_TIMEOUT_S,
        "web_server.body_timeout": 3, "ocr.process.number": 1, "ocr.process.threads": 1,
        "ocr.process.ping_interval": 1, "ocr.process.ping_timeout": 3, **PINNED_BACKEND},
        preexec_fn=_limit_fds)
    sockets: list[socket.socket] = []
    try:
        server.start()
        started = time.monotonic()
        # Headers started, never finished: each holds a connection until header_timeout.
        for _ in range(FLOOD):
            sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
            sock.sendall(b"POST /ocr_service HTTP/1.1\r\nHost: x\r\nContent-Length: 999\r\n")
            sockets.append(sock)
        # The ones past the cap were answered at once with a JSON 503 and closed.
        refused = 0
        for sock in sockets[-200:]:
            sock.settimeout(10)
            try:
                reply = sock.recv(4096)
            except OSError:
                continue
            if reply.startswith(b"HTTP/1.1 503"):
                refused += 1
                assert b'"too_many_connections"' in reply and b"Retry-After" in reply
        assert refused > 0
        # A worker killed during the flood is replaced (spawning needs descriptors too).
        [worker] = server.worker_pids()
        os.kill(worker, signal.SIGKILL)
        wait_for(lambda: server.worker_pids() and worker not in server.worker_pids(), 120,
                 "the killed worker was never replaced")
        # Once header_timeout has cut the slow connections, everyone is served again (the
        # replacement answers /ready once it has loaded its models).
        server.wait_ready(timeout=120)
        body, content_type = multipart({"file_type": "file"}, RECEIPT_BYTES)
        status, answer = _post(server, body, content_type)
        assert status == 200 and answer["lines"][0]["text"] == FIRST_LINE
        assert server.proc.poll() is None
    finally:
        for sock in sockets:
            sock.close()
        server.stop()
    served = time.monotonic() - started  # the longest refusals can have gone on
    log = server.log_path.read_text()
    assert "Traceback" not in log, log[-3000:]
    assert "allows 344 connections" in log  # the cap was fitted to the open-file limit
    # Refusals (over a thousand) are logged once per 10 s interval, not once per connection.
    assert 1 <= log.count("refusing new ones") <= 2 + served // 10, (
        log.count("refusing new ones"), served)


def _post(server: ServerProcess, body: bytes, content_type: str) -> tuple[int, dict]:
    request = urllib.request.Request(server.url(), data=body,
                                     headers={"Content-Type": content_type})
    with urllib.request.urlopen(request, timeout=120) as response:
        return response.status, json.loads(response.read())


class _FailingSocket(socket.socket):
    """A listening socket whose accept() fails as it does when the process is out of fds."""

    attempts = 0

    def accept(self):
        type(self).attempts += 1
        raise OSError(errno.EMFILE, "Too many open files")


def test_accept_errors_pause_accepting_and_are_logged_once_per_interval(caplog):
    async def scenario() -> None:
        listener = _FailingSocket(socket.AF_INET, socket.SOCK_STREAM)
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        listener.setblocking(False)
        client = socket.create_connection(listener.getsockname())  # makes it readable
        server = GuardedHTTPServer(tornado.web.Application([]))
        server.add_sockets([listener])
        await asyncio.sleep(1.3)  # the loop runs the guard meanwhile; we count what it did
        server.stop()
        client.close()

    with caplog.at_level(logging.WARNING, logger="ppocr.http"):
        asyncio.run(scenario())
    # Without the guard the loop would retry the readable socket thousands of times a second.
    assert 2 <= _FailingSocket.attempts <= 10, _FailingSocket.attempts
    lines = [r for r in caplog.records if "cannot accept connections" in r.getMessage()]
    assert len(lines) == 1 and not any(r.exc_info for r in caplog.records)

