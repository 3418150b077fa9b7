"""Request ids and the access log: every response carries X-Request-ID (the client's when it is
sane), error bodies quote it, and each request is one access-log line, as text or JSON."""

from __future__ import annotations

import json
import logging

from server.logs import JsonFormatter
from tests.test_http_hardening import EchoServerTestCase, b64


class TestRequestIds(EchoServerTestCase):
    def test_a_sane_client_id_is_kept_and_others_replaced(self):
        kept = self.post_json({"file_type": "base64", "img_src": b64(b"hello")},
                              headers={"X-Request-ID": "abc-123"})
        assert kept.code == 200 and kept.headers["X-Request-ID"] == "abc-123"
        for hostile in ("x" * 500, "a b", "<script>", "é"):
            response = self.request("/health", headers={"X-Request-ID": hostile})
            given = response.headers["X-Request-ID"]
            assert given != hostile and len(given) == 32 and int(given, 16) >= 0
        fresh = {self.request("/health").headers["X-Request-ID"] for _ in range(3)}
        assert len(fresh) == 3

    def test_error_bodies_quote_the_request_id(self):
        response = self.post_json({"file_type": "base64", "img_src": b64(b"FAIL")},
                                  headers={"X-Request-ID": "trace-9"})
        body = json.loads(response.body)
        assert response.code == 415 and body["error"]["request_id"] == "trace-9"
        assert response.headers["X-Request-ID"] == "trace-9"
        missing = self.request("/nowhere")
        assert json.loads(missing.body)["error"]["request_id"] == missing.headers["X-Request-ID"]

    def test_one_access_line_per_request_with_its_fields(self):
        with self.caplog.at_level(logging.INFO, logger="ppocr.access"):
            self.caplog.clear()
            first = self.post_json({"file_type": "base64", "img_src": b64(b"page")},
                                   headers={"X-Request-ID": "first"})
            second = self.post_json({"file_type": "base64", "img_src": b64(b"page")},
                                    headers={"X-Request-ID": "second"})
            self.request("/nowhere", headers={"X-Request-ID": "third"})
        assert first.code == second.code == 200
        records = [r for r in self.caplog.records if r.name == "ppocr.access"]
        assert [r.fields["request_id"] for r in records] == ["first", "second", "third"]
        uncached, cached, missing = (r.fields for r in records)
        assert (uncached["method"], uncached["path"], uncached["status"]) == \
            ("POST", "/ocr_service", 200)
        assert uncached["cached"] is False and cached["cached"] is True
        assert uncached["bytes_in"] > 0 and uncached["engine_ms"] == 0.0
        assert missing["status"] == 404 and records[2].levelno == logging.WARNING
        assert "id=second" in records[1].getMessage() and "cached=True" in \
            records[1].getMessage()
        # The JSON format is one object per line with the same fields.
        line = json.loads(JsonFormatter().format(records[1]))
        assert line["request_id"] == "second" and line["status"] == 200
        assert line["logger"] == "ppocr.access" and "\n" not in JsonFormatter().format(records[1])
