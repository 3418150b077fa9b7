"""The HTTP layer's hardening over real HTTP: the real app and the hardened listener
(`build_http_server`), with real worker processes running the model-free echo handler
(tests/echo_worker.py), so each test boots its pool in well under a second.

Raw sockets (asyncio streams, on the test's IOLoop) are used wherever a client library would
hide the behaviour: chunked bodies, bodies that never arrive, oversized headers, idle
connections. Nothing here asserts on time; waits are bounded polls of observable state under
generous deadlines.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import secrets

import tornado.testing
from tornado.httpclient import HTTPResponse
from tornado.log import gen_log

from server.errors import INTERNAL_MESSAGE
from server.service import request_key
from server.testing import multipart
from tests.app_testing import AppTestCase, b64
from tests.echo_worker import SECRET_TEXT, echo_text

# Generous: a deadline that only a broken server reaches, never a measure of speed.
DEADLINE = 60.0
TOKEN = "s3cret-token"
ORIGIN = "https://app.example"
TASK_ID = re.compile(r"[0-9a-f]{64}")


def parse_response(raw: bytes) -> tuple[int, dict[str, str], bytes]:
    """(status, headers with lower-case names, body) of one raw HTTP/1.1 response."""
    head, separator, body = raw.partition(b"\r\n\r\n")
    assert separator, f"not an HTTP response: {raw[:200]!r}"
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status_line.split()[1]), headers, body


def without_request_id(body: dict) -> dict:
    """An error body without its per-response request id (if the server adds one)."""
    error = {key: value for key, value in body["error"].items() if key != "request_id"}
    return {**body, "error": error}


class EchoServerTestCase(AppTestCase):
    """The real app behind the hardened listener, over a pool of echo workers (AppTestCase's
    defaults), with helpers for tasks, raw sockets and logs.

    `overrides` tune config.json for the test class; `pool_size` is the number of workers.
    """

    deadline = DEADLINE

    def submit(self, image: bytes) -> str:
        response = self.read(image, block_flag=False)
        body = json.loads(response.body)
        assert response.code == 202, body
        assert body["status"] == "pending" and body["result_url"] == f"/ocr_service/{body['id']}"
        return body["id"]

    def poll(self, task_id: str) -> HTTPResponse:
        return self.request(f"/ocr_service/{task_id}", headers=self.auth)

    def poll_until_done(self, task_id: str) -> HTTPResponse:
        """Polls the task over HTTP until it is no longer pending (bounded)."""
        async def finished() -> HTTPResponse:
            while True:
                response = await self.http_client.fetch(
                    self.get_url(f"/ocr_service/{task_id}"), headers=self.auth,
                    raise_error=False, request_timeout=DEADLINE)
                if response.code != 202:
                    return response
                await asyncio.sleep(0.02)
        return self.io_loop.run_sync(finished, timeout=DEADLINE)

    def assert_ready(self) -> None:
        response = self.request("/ready", headers=self.auth)
        assert response.code == 200, response.body
        assert json.loads(response.body)["status"] == "ready"

    # -- HTTP through a raw socket ------------------------------------------------------

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        return await asyncio.open_connection("127.0.0.1", self.get_http_port())

    def exchange(self, data: bytes) -> bytes:
        """Sends `data` on a fresh connection and returns everything the server sends back
        until it closes the connection."""
        async def talk() -> bytes:
            reader, writer = await self.connect()
            try:
                writer.write(data)
                await writer.drain()
                return await reader.read()
            finally:
                writer.close()
        return self.io_loop.run_sync(talk, timeout=DEADLINE)

    def raw_request(self, method: str, path: str, headers: dict[str, str],
                    body: bytes = b"") -> bytes:
        lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", "Connection: close",
                 *(f"{name}: {value}" for name, value in headers.items())]
        return "\r\n".join(lines).encode() + b"\r\n\r\n" + body

    def assert_raw_error(self, raw: bytes, status: int, code: str) -> dict[str, str]:
        got, headers, body = parse_response(raw)
        assert got == status, raw[:500]
        assert headers["content-type"].startswith("application/json")
        assert json.loads(body)["error"]["code"] == code, body
        return headers

    # -- logs -----------------------------------------------------------------------------

    def tracebacks(self) -> list[logging.LogRecord]:
        return [record for record in self.caplog.records if record.exc_info]


def chunked(body: bytes, size: int = 1000) -> bytes:
    pieces = [body[i:i + size] for i in range(0, len(body), size)]
    return b"".join(b"%x\r\n%s\r\n" % (len(piece), piece) for piece in pieces) + b"0\r\n\r\n"


class TestCors(EchoServerTestCase):
    overrides = {"web_server.cors_origins": [ORIGIN], "web_server.api_token": TOKEN,
                 "web_server.max_body_size": 4096}

    def assert_cors(self, headers) -> None:
        assert headers.get("Access-Control-Allow-Origin") == ORIGIN, dict(headers)
        assert "Origin" in headers.get("Vary", "")
        assert "Authorization" in headers.get("Access-Control-Allow-Headers", "")

    def test_error_responses_carry_the_cors_headers(self):
        origin = {"Origin": ORIGIN}
        with_token = {**origin, **self.auth}
        cases = [
            (self.request("/ready", headers=origin), 401, "unauthorized"),
            (self.request("/nowhere", headers=with_token), 404, "not_found"),
            (self.request("/ocr_service/" + "0" * 64, headers=with_token), 404, "not_found"),
            (self.request("/ocr_service", "DELETE", headers=with_token), 405,
             "method_not_allowed"),
            (self.post_json("{nope", headers=origin), 400, "bad_request"),
            (self.post_json({"file_type": "pdf"}, headers=origin), 400, "invalid_field"),
            (self.request("/ocr_service", "POST", b"x",
                          {**with_token, "Content-Type": "text/plain"}), 415,
             "unsupported_media_type"),
        ]
        body, content_type = multipart({"file_type": "file"}, b"FAIL")
        cases.append((self.request("/ocr_service", "POST", body,
                                   {**with_token, "Content-Type": content_type}),
                      415, "invalid_image"))
        for response, status, code in cases:
            self.assert_error(response, status, code)
            self.assert_cors(response.headers)
        ok = self.request("/ready", headers=with_token)
        assert ok.code == 200
        self.assert_cors(ok.headers)

    def test_too_large_responses_carry_the_cors_headers(self):
        headers = {"Origin": ORIGIN, **self.auth, "Content-Type": "application/octet-stream"}
        limit = self.config.web_server.max_body_size
        declared = self.exchange(self.raw_request(
            "POST", "/ocr_service", {**headers, "Content-Length": str(limit + 1)}))
        streamed = self.exchange(self.raw_request(
            "POST", "/ocr_service", {**headers, "Transfer-Encoding": "chunked"},
            chunked(b"x" * (limit + 1))))
        for raw in (declared, streamed):
            found = self.assert_raw_error(raw, 413, "too_large")
            assert found["access-control-allow-origin"] == ORIGIN
            assert "Origin" in found["vary"]
        self.assert_ready()

    def test_preflight_and_unlisted_origin(self):
        preflight = self.request("/ocr_service", "OPTIONS", headers={
            "Origin": ORIGIN, "Access-Control-Request-Method": "POST"})
        assert preflight.code == 204  # no token needed for a preflight
        self.assert_cors(preflight.headers)
        stranger = self.request("/ready", headers={"Origin": "https://evil.example"})
        self.assert_error(stranger, 401, "unauthorized")
        assert "Access-Control-Allow-Origin" not in stranger.headers
        self.assert_ready()


class TestAuth(EchoServerTestCase):
    overrides = {"web_server.api_token": TOKEN}

    def test_the_bearer_scheme_is_case_insensitive(self):
        for scheme in ("Bearer", "bearer", "BEARER", "bEaReR"):
            headers = {"Authorization": f"{scheme} {TOKEN}"}
            assert self.request("/ready", headers=headers).code == 200, scheme
            response = self.request("/ocr_service", "POST", json.dumps(
                {"img_src": b64(b"auth image")}), {**headers, "Content-Type": "application/json"})
            assert response.code == 200, (scheme, response.body)
            assert json.loads(response.body)["text"] == echo_text(b"auth image")

    def test_a_wrong_or_missing_token_is_refused(self):
        for value in (None, f"Bearer {TOKEN}x", f"Bearer {TOKEN[:-1]}", f"Basic {TOKEN}",
                      TOKEN, "Bearer", "Bearer ", f"Token {TOKEN}"):
            headers = {} if value is None else {"Authorization": value}
            for path in ("/ready", "/ocr_service/" + "0" * 64):
                self.assert_error(self.request(path, headers=headers), 401, "unauthorized")
            response = self.request("/ocr_service", "POST", json.dumps(
                {"img_src": b64(b"x")}), {**headers, "Content-Type": "application/json"})
            self.assert_error(response, 401, "unauthorized")
        assert self.service.engine_runs == 0
        self.assert_ready()

    def test_health_needs_no_token(self):
        response = self.request("/health")
        assert response.code == 200 and json.loads(response.body) == {"status": "ok"}
        self.assert_ready()


class TestBodyAndHeaderLimits(EchoServerTestCase):
    overrides = {"web_server.max_body_size": 4096}

    def test_a_chunked_body_over_the_limit_is_413_json(self):
        limit = self.config.web_server.max_body_size
        raw = self.exchange(self.raw_request(
            "POST", "/ocr_service", {"Transfer-Encoding": "chunked",
                                     "Content-Type": "application/octet-stream"},
            chunked(b"x" * (limit + 1))))
        self.assert_raw_error(raw, 413, "too_large")
        # Just under the limit is read (and refused for what it is, not for its size).
        raw = self.exchange(self.raw_request(
            "POST", "/ocr_service", {"Transfer-Encoding": "chunked",
                                     "Content-Type": "application/octet-stream"},
            chunked(b"x" * (limit - 100))))
        self.assert_raw_error(raw, 415, "unsupported_media_type")
        assert not self.tracebacks()
        self.assert_ready()

    def test_a_declared_length_over_the_limit_is_413_before_the_body(self):
        limit = self.config.web_server.max_body_size
        # The body is never sent: the answer must not wait for it.
        raw = self.exchange(self.raw_request(
            "POST", "/ocr_service", {"Content-Length": str(limit + 1),
                                     "Content-Type": "application/json"}))
        self.assert_raw_error(raw, 413, "too_large")
        # Huge declared lengths: past Tornado's own limit, and past int()'s 4300 digits.
        for declared in (str(10**12), str(10**30), "9" * 5000):
            raw = self.exchange(self.raw_request(
                "POST", "/ocr_service", {"Content-Length": declared,
                                         "Content-Type": "application/json"}))
            self.assert_raw_error(raw, 413, "too_large")
            assert raw.count(b"HTTP/1.1") == 1, raw[:300]
        assert not self.tracebacks(), [r.getMessage() for r in self.tracebacks()]
        self.assert_ready()

    def test_a_malformed_content_length_is_a_json_400(self):
        # b"\xb2" is '\u00b2' once decoded: str.isdigit() passes it, int() does not.
        for declared in (b"\xb2", b"12abc", b"-5", b"5, 6", b"1e3"):
            request = (b"POST /ocr_service HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                       b"Content-Type: application/json\r\nContent-Length: " + declared
                       + b"\r\n\r\n{}")
            raw = self.exchange(request)
            self.assert_raw_error(raw, 400, "bad_request")
            assert raw.count(b"HTTP/1.1") == 1, raw[:300]
        # A duplicated but agreeing length (as some proxies send) is a length.
        raw = self.exchange(b"POST /ocr_service HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: "
                            b"close\r\nContent-Type: application/json\r\nContent-Length: 2, 2"
                            b"\r\n\r\n{}")
        self.assert_raw_error(raw, 400, "missing_field")
        assert not self.tracebacks(), [r.getMessage() for r in self.tracebacks()]
        self.assert_ready()
        self.assert_ready()

    def test_bodies_over_the_small_limit_on_other_routes_are_413_json(self):
        # Routes without an upload take 64 KB; the handler must not answer twice.
        body = chunked(b"x" * (64 * 1024 + 1), size=8192)
        for method, path in (("GET", "/ready"), ("GET", "/health"),
                             ("GET", "/ocr_service/" + "0" * 64)):
            raw = self.exchange(self.raw_request(method, path,
                                                 {"Transfer-Encoding": "chunked"}, body))
            self.assert_raw_error(raw, 413, "too_large")
            assert raw.count(b"HTTP/1.1") == 1, raw[:300]
        assert not self.tracebacks(), [r.getMessage() for r in self.tracebacks()]
        self.assert_ready()

    def test_headers_over_64_kb_get_431_json(self):
        # No end of headers is ever sent: everything sent is read, so the close is clean.
        big = b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Padding: " + b"a" * (66 * 1024)
        raw = self.exchange(big)
        self.assert_raw_error(raw, 431, "headers_too_large")
        assert not self.tracebacks()
        self.assert_ready()

    def test_an_overlong_chunk_size_line_is_not_called_oversized_headers(self):
        # Tornado bounds a chunk-size line to 64 bytes with the same kind of read as the
        # headers; overrunning it is a malformed body, never a 431.
        raw = self.exchange(self.raw_request(
            "POST", "/ocr_service", {"Transfer-Encoding": "chunked",
                                     "Content-Type": "application/json"}) + b"f" * 100)
        assert b"431" not in raw and b"headers_too_large" not in raw, raw
        assert not self.tracebacks()
        self.assert_ready()


class TestSlowClients(EchoServerTestCase):
    # Small, so the cuts come soon; a normal client sends its request in one go, far within.
    overrides = {"web_server.body_timeout": 1.0, "web_server.header_timeout": 1.0}

    def test_a_stalled_body_is_cut_by_body_timeout_while_others_are_served(self):
        async def stalled() -> bytes:
            reader, writer = await self.connect()
            try:
                writer.write(self.raw_request("POST", "/ocr_service", {
                    "Content-Length": "1000", "Content-Type": "application/json"}) + b'{"im')
                await writer.drain()
                # Served meanwhile (the stalled connection is still open: its cut is below).
                served = await self.http_client.fetch(self.get_url("/ready"),
                                                      request_timeout=DEADLINE)
                assert served.code == 200
                return await reader.read()  # EOF once the server cuts it
            finally:
                writer.close()

        with tornado.testing.ExpectLog(gen_log, "Timeout reading body", level=logging.INFO):
            answer = self.io_loop.run_sync(stalled, timeout=DEADLINE)
        assert answer == b""
        assert self.ctx.lifecycle.active_requests == 0
        self.assert_ready()

    def test_unfinished_headers_are_cut_by_header_timeout_while_others_are_served(self):
        async def stalled() -> bytes:
            reader, writer = await self.connect()
            try:
                writer.write(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
                await writer.drain()
                served = await self.http_client.fetch(self.get_url("/health"),
                                                      request_timeout=DEADLINE)
                assert served.code == 200
                return await reader.read()
            finally:
                writer.close()

        assert self.io_loop.run_sync(stalled, timeout=DEADLINE) == b""
        self.assert_ready()


class TestConnectionCap(EchoServerTestCase):
    overrides = {"web_server.max_connections": 20, "web_server.header_timeout": 600.0}

    def wait_open_connections(self, count: int) -> None:
        async def settled() -> None:
            while self.http_server.open_connections != count:
                await asyncio.sleep(0.01)  # bounded poll of the server's own count
        self.io_loop.run_sync(settled, timeout=DEADLINE)

    def test_past_the_cap_a_new_connection_gets_503_at_once(self):
        cap = self.config.web_server.max_connections
        assert self.http_server.max_connections == cap

        async def open_idle() -> list:
            return [await self.connect() for _ in range(cap)]

        idle = self.io_loop.run_sync(open_idle, timeout=DEADLINE)
        try:
            self.wait_open_connections(cap)
            # Nothing is sent: the refusal comes without reading a request.
            raw = self.exchange(b"")
            headers = self.assert_raw_error(raw, 503, "too_many_connections")
            assert headers["retry-after"] == "1"
            assert headers["connection"] == "close"
            assert self.http_server.refused == 1
        finally:
            for _, writer in idle:
                writer.close()
        self.wait_open_connections(0)
        response = self.request("/ocr_service", "POST", json.dumps(
            {"img_src": b64(b"after the flood")}), {"Content-Type": "application/json"})
        assert response.code == 200, response.body
        self.assert_ready()


class TestClientErrorsAreQuiet400s(EchoServerTestCase):
    overrides = {"web_server.max_body_size": 4 * 1024 * 1024}

    def test_hostile_bodies_answer_400_without_a_traceback(self):
        digits = "7" * 5000
        image = b64(b"fine image")
        deep_array = '{"img_src": ' + "[" * 100_000 + "]" * 100_000 + "}"
        deep_object = '{"a": ' * 100_000 + "1" + "}" * 100_000
        cases = [
            self.post_json(deep_array),
            self.post_json(deep_object),
            self.post_json('{"file_type": "base64", "img_src": ' + digits + "}"),
            self.post_json('{"img_src": "' + image + '", "det_limit_side_len": ' + digits + "}"),
            self.post_json('{"img_src": "' + image + '", "det_db_thresh": ' + digits + "}"),
            self.post_json('{"img_src": "' + image + '", "block_flag": ' + digits + "}"),
            self.post_form(img_src=image, det_limit_side_len=digits),
            self.post_form(img_src=image, det_db_thresh=digits),
            self.post_form(file_type="filename", filename="a" * 300 + ".jpg"),
            self.post_form(file_type="filename", filename="sub/" + "b" * 300 + "/x.jpg"),
            self.post_form(file_type="filename", filename="file.jpg/"),
            self.post_json({"file_type": "filename", "filename": "receipt.jpg/"}),
        ]
        for index, response in enumerate(cases):
            body = json.loads(response.body)
            assert response.code == 400, (index, response.code, body)
            assert body["error"]["code"] in ("bad_request", "invalid_field", "invalid_option"), \
                (index, body)
            assert len(body["error"]["message"]) < 400, (index, body)
        assert not self.tracebacks(), [r.getMessage() for r in self.tracebacks()]
        assert self.service.engine_runs == 0
        self.assert_ready()


class TestTaskIds(EchoServerTestCase):
    pool_size = 2

    def test_ids_are_random_and_never_the_cache_key(self):
        image = b"the same image twice"
        first, second = self.submit(image), self.submit(image)
        assert TASK_ID.fullmatch(first) and TASK_ID.fullmatch(second)
        assert first != second
        key = request_key(image, self.ctx.requests.defaults.cache_key(), "ppocr-v4")
        assert key not in (first, second)
        for task_id in (first, second):
            done = self.poll_until_done(task_id)
            assert done.code == 200, done.body
            body = json.loads(done.body)
            assert body["id"] == task_id and body["status"] == "done"
            assert body["text"] == echo_text(image)
        # Neither the key nor a random id that was never handed out names a task.
        for never in (key, secrets.token_hex(32)):
            self.assert_error(self.poll(never), 404, "not_found")
        self.assert_error(self.poll("not-an-id"), 404, "not_found")
        self.assert_ready()

    def test_a_task_is_202_while_pending_then_200(self):
        gate = self.tmp_path / "release"
        image = b"WAIT:" + str(gate).encode()
        task_id = self.submit(image)
        for _ in range(3):  # the job cannot finish before the gate exists
            pending = self.poll(task_id)
            assert pending.code == 202
            assert json.loads(pending.body) == {"id": task_id, "status": "pending",
                                                "result_url": f"/ocr_service/{task_id}"}
        gate.touch()
        done = self.poll_until_done(task_id)
        assert done.code == 200
        assert json.loads(done.body)["text"] == echo_text(image)
        self.assert_ready()


class TestTaskOutlivesTheCache(EchoServerTestCase):
    """Defect 1: a task answered from the cache must not depend on the cache keeping it."""

    overrides = {"service.img_number": 1}

    def test_a_cached_submission_stays_readable_after_eviction(self):
        image_a, image_b = b"image A", b"image B"
        first = self.submit(image_a)
        assert self.poll_until_done(first).code == 200
        second = self.submit(image_a)  # answered from the cache, still a task of its own
        assert second != first
        pushed = self.read(image_b)
        assert pushed.code == 200 and json.loads(pushed.body)["cached"] is False
        done = self.poll(second)
        assert done.code == 200, done.body
        body = json.loads(done.body)
        assert body["id"] == second and body["status"] == "done"
        assert body["text"] == echo_text(image_a)
        # A really was pushed out: reading it again is a fresh run.
        again = self.read(image_a)
        assert again.code == 200 and json.loads(again.body)["cached"] is False
        assert self.service.engine_runs == 3
        self.assert_ready()


class TestFailedTask(EchoServerTestCase):
    """Defect 2: a failed task answers the same error however often it is polled."""

    def test_a_failed_task_answers_the_same_415_every_time(self):
        task_id = self.submit(b"FAIL")
        first = self.poll_until_done(task_id)
        expected = without_request_id(self.assert_error(first, 415, "invalid_image"))
        assert expected["id"] == task_id and expected["status"] == "failed"
        for _ in range(100):
            again = self.poll(task_id)
            assert again.code == 415
            assert without_request_id(json.loads(again.body)) == expected
        assert self.service.engine_runs == 1
        assert not self.tracebacks()
        self.assert_ready()


class TestInternalError(EchoServerTestCase):
    """Defect 4: an unexpected error in a job is a generic 500 for the client, a traceback in
    the worker's log and its details once in the parent's."""

    def worker_stderr(self) -> str:
        err = self.capfd.readouterr().err
        self.captured_err += err
        return self.captured_err

    def wait_worker_log(self, needle: str) -> str:
        async def logged() -> None:
            while needle not in self.worker_stderr():
                await asyncio.sleep(0.02)  # bounded poll of the captured stderr
        self.io_loop.run_sync(logged, timeout=DEADLINE)
        return self.captured_err

    def details_logged(self) -> list[logging.LogRecord]:
        return [record for record in self.caplog.records if SECRET_TEXT in record.getMessage()]

    def test_blocking_request_gets_a_generic_500(self):
        self.captured_err = ""
        response = self.read(b"BOOM")
        body = self.assert_error(response, 500, "internal_error")
        assert body["error"]["message"] == INTERNAL_MESSAGE
        assert SECRET_TEXT not in response.body.decode()
        err = self.wait_worker_log(SECRET_TEXT)
        assert "Traceback (most recent call last)" in err and "RuntimeError" in err
        assert len(self.details_logged()) == 1, [r.getMessage() for r in self.caplog.records]
        assert not self.tracebacks()
        self.assert_ready()

    def test_a_failed_task_keeps_its_details_out_of_every_answer(self):
        self.captured_err = ""
        task_id = self.submit(b"BOOM")
        first = self.poll_until_done(task_id)
        expected = without_request_id(self.assert_error(first, 500, "internal_error"))
        assert expected["error"]["message"] == INTERNAL_MESSAGE
        for _ in range(5):
            again = self.poll(task_id)
            assert again.code == 500 and without_request_id(json.loads(again.body)) == expected
            assert SECRET_TEXT not in again.body.decode()
        self.wait_worker_log(SECRET_TEXT)
        assert len(self.details_logged()) == 1, [r.getMessage() for r in self.caplog.records]
        # The worker that raised is still serving.
        assert json.loads(self.read(b"after boom").body)["text"] == echo_text(b"after boom")
        self.assert_ready()
