"""The one AsyncHTTPTestCase the HTTP-level tests share: the real app, wired as
server.main.serve wires it (metrics as the config says, a pool observer and in the context),
over a real WorkerPool, and the request helpers the tests speak through.

A test class picks its workers and config with class attributes:

- `real_models`: False runs tests/echo_worker.EchoOcrHandler (no models, boots in a blink) with
  the model names in `echo_models`; True runs server.ocr_worker.boot, the real engine with the
  models config.json names;
- `overrides`: config keys in load_config's dotted form; `pool_size`: the number of workers;
- `hardened`: True serves through the production listener (server.main.build_http_server,
  which builds its own Application from the same context); False through Tornado's plain
  HTTPServer on `self.app`, for tests that patch what get_app builds;
- `deadline`: seconds any wait may take; generous, only a broken server reaches it;
- `send_token`: True sends the config's token (`auth`) with every POST helper; False sends
  none unless a test adds it, for tests of the token rules over those helpers.

Waits are bounded polls of observable state (the task store), never sleeps.
"""

from __future__ import annotations

import asyncio
import base64
import json
import urllib.parse
from pathlib import Path
from typing import Any

import pytest
import tornado.testing
import tornado.web
from tornado.httpclient import HTTPResponse

from server.app import make_app
from server.config import load_config
from server.main import build_context, build_engine_spec, build_http_server, pool_config
from server.metrics import build_metrics
from server.ocr_worker import boot
from server.pool import WorkerPool
from server.protocol import EngineSpec
from server.testing import multipart
from tests.echo_worker import EchoOcrHandler
from tests.pool_handlers import EventLog

ROOT = Path(__file__).resolve().parent.parent
# How long a pool may take to close gracefully before its workers are killed.
CLOSE_TIMEOUT_S = 30
# The backend every test server runs (config overrides in load_config's dotted form).
# config.json says "auto", which times the backends at a server's first start: in a fresh
# clone that happens mid-run, under the other test worker's load, and the two workers may
# measure and store different choices, so servers in one run (even the two of a restart
# test) would read with different backends. Tests of "auto" itself (test_autoselect.py)
# set it back and seed or measure in their own folders.
PINNED_BACKEND = {"ocr.predict_system.backend": "openvino"}


def b64(image: bytes) -> str:
    return base64.b64encode(image).decode()


class AppTestCase(tornado.testing.AsyncHTTPTestCase):
    """A pool booted per test, the app over it; see the module docstring for the knobs."""

    real_models = False
    echo_models: tuple[str, ...] = ("ppocr-v4",)
    overrides: dict = {}
    pool_size = 1
    hardened = True
    deadline = 60.0
    send_token = True

    @pytest.fixture(autouse=True)
    def _pytest_fixtures(self, caplog, capfd, tmp_path):
        self.caplog, self.capfd, self.tmp_path = caplog, capfd, tmp_path

    def get_app(self) -> tornado.web.Application:
        self.config = load_config(ROOT / "config.json", {
            "ocr.process.number": self.pool_size, "ocr.process.threads": 1, **PINNED_BACKEND,
            **self.overrides})
        if self.real_models:
            worker, spec = boot, build_engine_spec(self.config)
        else:
            worker = EchoOcrHandler
            spec = EngineSpec(models=dict.fromkeys(self.echo_models),
                              defaults=self.config.ocr.predict_system.default_options())
        self.metrics = build_metrics(self.config)
        self.pool = WorkerPool(worker, spec, pool_config(self.config),
                               observers=[self.metrics] if self.metrics is not None else None)
        self.events = EventLog(self.pool)
        self.io_loop.run_sync(self.pool.start, timeout=self.deadline)
        self.ctx = build_context(self.config, self.pool, spec, self.metrics)
        self.service = self.ctx.services.ocr
        self.app = make_app(self.ctx)
        return self.app

    def get_http_server(self):
        if not self.hardened:
            return super().get_http_server()
        # AsyncHTTPTestCase binds it with add_sockets, which GuardedHTTPServer overrides.
        return build_http_server(self.config, self.ctx)

    def tearDown(self) -> None:
        self.io_loop.run_sync(lambda: self.pool.close(timeout=CLOSE_TIMEOUT_S),
                              timeout=self.deadline)
        super().tearDown()

    # -- requests -------------------------------------------------------------------------

    @property
    def auth(self) -> dict[str, str]:
        """The Authorization header the config's token needs (none without a token)."""
        token = self.config.web_server.api_token
        return {"Authorization": f"Bearer {token}"} if token else {}

    def request(self, path: str, method: str = "GET", body: bytes | str | None = None,
                headers: dict | None = None) -> HTTPResponse:
        """One exchange, any method, never raising for an error status. A POST, PUT or PATCH
        without a body sends an empty one."""
        if body is None and method in ("POST", "PUT", "PATCH"):
            body = b""
        return self.io_loop.run_sync(lambda: self.http_client.fetch(
            self.get_url(path), method=method, body=body, headers=headers, raise_error=False,
            request_timeout=self.deadline, allow_nonstandard_methods=True),
            timeout=self.deadline)

    def post(self, body: bytes | str, content_type: str, path: str = "/ocr_service",
             headers: dict | None = None) -> HTTPResponse:
        """POST `body` (with the token, if `send_token`); `headers` are added last."""
        token = self.auth if self.send_token else {}
        return self.request(path, "POST", body, {
            "Content-Type": content_type, **token, **(headers or {})})

    def post_json(self, fields: dict | str | None = None, headers: dict | None = None,
                  **named: Any) -> HTTPResponse:
        """POST /ocr_service with a JSON body: `fields` and the `named` ones (a str is sent
        as it is)."""
        body = fields if isinstance(fields, str) else json.dumps({**(fields or {}), **named})
        return self.post(body, "application/json", headers=headers)

    def post_form(self, **fields: str) -> HTTPResponse:
        return self.post(urllib.parse.urlencode(fields), "application/x-www-form-urlencoded")

    def upload(self, image: bytes, **fields: str) -> HTTPResponse:
        """POST /ocr_service as multipart/form-data: file_type=file, `fields`, the image."""
        body, content_type = multipart({"file_type": "file", **fields}, image)
        return self.post(body, content_type)

    def read(self, image: bytes, headers: dict | None = None, **fields) -> HTTPResponse:
        """POST /ocr_service with the image as base64 in a JSON body."""
        return self.post_json({"file_type": "base64", "img_src": b64(image), **fields}, headers)

    def wait_task(self, task_id: str) -> None:
        """Until the task is no longer pending: a bounded poll of the task store."""
        async def done() -> None:
            while (await self.service.task(task_id)).pending:
                await asyncio.sleep(0.02)
        self.io_loop.run_sync(done, timeout=self.deadline)

    def assert_error(self, response: HTTPResponse, status: int, code: str) -> dict:
        """The JSON error body, once it has `status` and error code `code`."""
        body = json.loads(response.body)
        assert response.code == status, (response.code, body)
        assert body["error"]["code"] == code, body
        assert response.headers["Content-Type"].startswith("application/json")
        return body
