"""Unit tests of multirequest.py's statistics, accounting and argument handling, plus one run
against a tiny stand-in server speaking the /ocr_service API."""
from __future__ import annotations

import argparse
import hashlib
import http.client
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

import multirequest
from multirequest import Result, percentile, summarize

# ---------------------------------------------------------------- percentile

def test_percentile_empty_is_none() -> None:
    assert percentile([], 50) is None


def test_percentile_one_value() -> None:
    assert [percentile([7.0], q) for q in (0, 50, 99, 100)] == [7.0, 7.0, 7.0, 7.0]


def test_percentile_two_values_interpolates() -> None:
    assert percentile([10.0, 20.0], 0) == 10.0
    assert percentile([10.0, 20.0], 50) == 15.0
    assert percentile([10.0, 20.0], 95) == pytest.approx(19.5)
    assert percentile([10.0, 20.0], 100) == 20.0


def test_percentile_hand_computed() -> None:
    values = [1.0, 2.0, 3.0, 4.0, 10.0]
    # rank = (n - 1) * q / 100 = 4q/100
    assert percentile(values, 50) == 3.0            # rank 2
    assert percentile(values, 25) == 2.0            # rank 1
    assert percentile(values, 90) == pytest.approx(7.6)   # rank 3.6: 4 + 0.6 * 6
    assert percentile(values, 99) == pytest.approx(9.76)  # rank 3.96: 4 + 0.96 * 6
    assert percentile(list(range(1, 101)), 95) == pytest.approx(95.05)  # rank 94.05


def test_percentile_rejects_out_of_range_q() -> None:
    with pytest.raises(ValueError):
        percentile([1.0], 101)
    with pytest.raises(ValueError):
        percentile([1.0], -1)


# ---------------------------------------------------------------- accounting

@pytest.mark.parametrize(("status", "body", "expected"), [
    (200, b'{"lines": [], "cached": false}', ("ok", False)),
    (200, b'{"lines": [{"text": "a"}], "cached": true}', ("ok", True)),
    (200, b'{"status": "done"}', ("invalid_body", False)),
    (200, b'{"lines": "not a list"}', ("invalid_body", False)),
    (200, b"<html>oops</html>", ("invalid_body", False)),
    (200, b"\xff\xfe", ("invalid_body", False)),
    (202, b'{"status": "pending"}', ("202", False)),
    (503, b'{"error": {"code": "overloaded"}}', ("503", False)),
    (404, b"", ("404", False)),
])
def test_classify_response(status: int, body: bytes, expected: tuple[str, bool]) -> None:
    assert multirequest.classify_response(status, body) == expected


@pytest.mark.parametrize(("exc", "kind"), [
    (TimeoutError("slow"), "timeout"),
    (TimeoutError("slow"), "timeout"),
    (ConnectionRefusedError(), "connection"),
    (http.client.RemoteDisconnected("gone"), "connection"),
    (BrokenPipeError(), "connection"),
    (http.client.IncompleteRead(b""), "protocol"),
    (http.client.HTTPException("202 without a result_url"), "protocol"),
    (RuntimeError("bug"), "other"),
])
def test_classify_exception(exc: BaseException, kind: str) -> None:
    assert multirequest.classify_exception(exc) == kind


def test_summarize_mixed_outcomes() -> None:
    results = [
        Result(0.010, "ok"), Result(0.020, "ok", cached=True), Result(0.030, "ok"),
        Result(0.040, "ok", cached=True), Result(0.001, "503"), Result(0.002, "503"),
        Result(5.0, "timeout"), Result(0.003, "connection"), Result(0.004, "invalid_body"),
    ]
    summary = summarize(results, wall_s=2.0)
    assert summary["requests"] == 9
    assert summary["ok"] == 4
    assert summary["errors"] == {"503": 2, "connection": 1, "invalid_body": 1, "timeout": 1}
    assert list(summary["errors"]) == sorted(summary["errors"])
    assert summary["cached"] == 2
    # Latency covers successes only: 10, 20, 30, 40 ms.
    lat = summary["latency_ms"]
    assert lat["mean"] == pytest.approx(25.0)
    assert lat["p50"] == pytest.approx(25.0)
    assert lat["p95"] == pytest.approx(38.5)   # rank 2.85
    assert lat["p99"] == pytest.approx(39.7)   # rank 2.97
    assert lat["max"] == pytest.approx(40.0)
    assert lat["min"] == pytest.approx(10.0)
    assert summary["throughput_rps"] == pytest.approx(4.5)
    assert summary["wall_s"] == 2.0


def test_summarize_nothing_succeeded() -> None:
    summary = summarize([Result(0.5, "500"), Result(1.0, "timeout")], wall_s=0.0)
    assert summary["ok"] == 0 and summary["cached"] == 0
    assert summary["errors"] == {"500": 1, "timeout": 1}
    assert set(summary["latency_ms"].values()) == {None}
    assert summary["throughput_rps"] == 0.0


def test_format_table_mentions_every_figure() -> None:
    summary = {**summarize([Result(0.01, "ok"), Result(0.02, "503")], 1.0),
               "scenario": "same", "mode": "upload", "concurrency": 3}
    table = multirequest.format_table(summary)
    assert "503=1" in table and "p99" in table and "req/s" in table


def test_render_progress() -> None:
    assert multirequest.render_progress(50, 2, 5.0, 100, None, width=10) == \
        "[#####.....] 50/100  10.0 req/s  errors 2"
    assert multirequest.render_progress(3, 0, 2.5, None, 10.0, width=4).startswith("[#...] 3 in")
    assert json.loads(multirequest.render_progress_json(50, 2, 5.0)) == \
        {"done": 50, "errors": 2, "elapsed_s": 5.0}


# ---------------------------------------------------------------- planning

def test_plan_request_scenarios() -> None:
    images = [Path("a.png"), Path("b.png")]
    plan = lambda i, s: multirequest.plan_request(i, scenario=s, images=images, nonce=42, seed=1)  # noqa: E731
    different = [plan(i, "different") for i in range(5)]
    assert [p.image.name for p in different] == ["a.png", "b.png", "a.png", "b.png", "a.png"]
    assert len({p.options for p in different}) == 5  # every request its own cache key
    assert all(0.5 < float(dict(p.options)["drop_score"]) < 0.5001 for p in different)
    assert len({plan(i, "same") for i in range(5)}) == 1
    assert plan(0, "same").options  # differs from the cached scenario's default options
    assert {plan(i, "cached") for i in range(5)} == {multirequest.Planned(Path("a.png"))}
    mixed = [plan(i, "mixed") for i in range(60)]
    assert mixed == [plan(i, "mixed") for i in range(60)]  # seeded
    assert len({p.options for p in mixed}) > 3


def test_mix_weights_the_mixed_scenario() -> None:
    assert multirequest.parse_mix("different=1, cached=4") == (1.0, 0.0, 4.0)
    for bad in ("different", "other=1", "cached=x", "cached=-1", "cached=0", "same=nan"):
        with pytest.raises(argparse.ArgumentTypeError):
            multirequest.parse_mix(bad)
    images = [Path("a.png"), Path("b.png")]
    plans = [multirequest.plan_request(i, scenario="mixed", images=images, nonce=42, seed=1,
                                       mix=(1.0, 0.0, 4.0)) for i in range(1000)]
    uncached = sum(bool(p.options) for p in plans)  # only "different" requests carry options
    assert 150 <= uncached <= 250  # 20% expected; seeded, so the exact count never changes
    assert multirequest.main(["--images", ".", "--scenario", "cached", "--mix", "cached=1"]) == 2


def test_encode_request_modes(tmp_path: Path) -> None:
    planned = multirequest.Planned(tmp_path / "x.png", (("drop_score", "0.5000000010042"),))
    body, headers = multirequest.encode_request("upload", planned, b"IMG", False, "BND")
    assert headers["Content-Type"] == "multipart/form-data; boundary=BND"
    assert b'name="file"; filename="x.png"\r\nContent-Type: image/png\r\n\r\nIMG\r\n' in body
    assert b'name="block_flag"\r\n\r\nfalse' in body and body.endswith(b"--BND--\r\n")
    body, headers = multirequest.encode_request("filename", planned, None, True, "BND")
    assert headers["Content-Type"] == "application/x-www-form-urlencoded"
    assert b"file_type=filename" in body and b"block_flag" not in body
    body, _ = multirequest.encode_request("base64", planned, "SU1H", False, "BND")
    assert json.loads(body) == {"file_type": "base64", "img_src": "SU1H",
                                "drop_score": 0.5000000010042, "block_flag": False}


# ---------------------------------------------------------------- command line

@pytest.mark.parametrize(("host", "loopback"), [
    ("127.0.0.1", True), ("127.5.6.7", True), ("localhost", True), ("LOCALHOST", True),
    ("::1", True), ("[::1]", True), ("::ffff:127.0.0.1", True),
    ("128.0.0.1", False), ("10.0.0.1", False), ("example.com", False), ("0.0.0.0", False),
    ("localhost.example.com", False),
])
def test_is_loopback(host: str, loopback: bool) -> None:
    assert multirequest.is_loopback(host) is loopback


def test_check_url() -> None:
    assert multirequest.check_url("http://[::1]:8888/ocr_service", False) is None
    assert "allow-remote" in multirequest.check_url("http://example.com/ocr_service", False)
    assert multirequest.check_url("http://example.com/ocr_service", True) is None
    assert multirequest.check_url("ftp://127.0.0.1/", False) is not None
    assert multirequest.check_url("http://127.0.0.1:99999/", False) is not None


def test_parse_args_defaults(tmp_path: Path) -> None:
    args = multirequest.parse_args(["--images", str(tmp_path)])
    assert (args.url, args.concurrency, args.requests, args.duration) == \
        ("http://127.0.0.1:8888/ocr_service", 10, 100, None)
    assert (args.scenario, args.mode, args.no_block, args.timeout, args.poll_interval) == \
        ("different", "upload", False, 60.0, 0.05)
    assert (args.max_requests, args.progress, args.json, args.allow_remote) == \
        (100_000, None, False, False)
    args = multirequest.parse_args(["--images", str(tmp_path), "--duration", "2.5",
                                    "--no-progress"])
    assert (args.requests, args.duration, args.progress) == (None, 2.5, False)


@pytest.mark.parametrize("extra", [
    ["--requests", "5", "--duration", "1"],
    ["--requests", "0"],
    ["--concurrency", "0"],
    ["--requests", "11", "--max-requests", "10"],
    ["--scenario", "bogus"],
    ["--mode", "ftp"],
    ["--url", "http://192.0.2.1:8888/ocr_service"],
])
def test_usage_errors_exit_2(tmp_path: Path, extra: list[str],
                             capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "a.png").write_bytes(b"x")
    assert multirequest.main(["--images", str(tmp_path), *extra]) == 2
    assert capsys.readouterr().err


def test_no_images_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "notes.txt").write_text("not an image")
    assert multirequest.main(["--images", str(tmp_path)]) == 2
    assert multirequest.main([]) == 2  # --images is required
    assert multirequest.find_images(tmp_path) == []


# ---------------------------------------------------------------- the HTTP loop

class FakeOCRHandler(BaseHTTPRequestHandler):
    """Answers like /ocr_service: a body seen before is "cached"; block_flag=false gets a 202
    whose result_url answers 202 once, then the result. Any other path is a JSON 404."""

    protocol_version = "HTTP/1.1"  # keep-alive, as the real server

    def log_message(self, *args: object) -> None:
        pass

    def _send(self, status: int, doc: dict) -> None:
        data = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        with self.server.state["lock"]:  # type: ignore[attr-defined]
            self.server.state["peers"].add(self.client_address)  # type: ignore[attr-defined]
        if self.path != "/ocr_service":
            return self._send(404, {"error": {"code": "not_found", "message": self.path}})
        state = self.server.state  # type: ignore[attr-defined]
        key = hashlib.sha256(body).hexdigest()
        with state["lock"]:
            cached = key in state["seen"]
            state["seen"].add(key)
            state["posts"] += 1
        done = {"id": key, "status": "done", "cached": cached, "lines": [{"text": "hi"}],
                "text": "hi"}
        if b"block_flag" not in body:
            return self._send(200, done)
        with state["lock"]:
            state["pending"][key] = [done, 1]
        self._send(202, {"id": key, "status": "pending", "result_url": f"/ocr_service/{key}"})

    def do_GET(self) -> None:
        state = self.server.state  # type: ignore[attr-defined]
        with state["lock"]:
            entry = state["pending"].get(self.path.rsplit("/", 1)[-1])
            if entry and entry[1]:
                entry[1] -= 1
                return self._send(202, {"status": "pending"})
        if entry is None:
            return self._send(404, {"error": {"code": "not_found", "message": "no such task"}})
        self._send(200, entry[0])


@pytest.fixture
def fake_server():
    server = ThreadingHTTPServer(("127.0.0.1", 0), FakeOCRHandler)
    server.state = {"lock": threading.Lock(), "seen": set(), "pending": {}, "posts": 0,
                    "peers": set()}  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


def test_runs_against_a_fake_server(fake_server, tmp_path: Path,
                                    capsys: pytest.CaptureFixture) -> None:
    for name in ("a.png", "b.jpg", "c.webp"):
        (tmp_path / name).write_bytes(name.encode() * 10)
    base = f"http://127.0.0.1:{fake_server.server_address[1]}"

    def run(*extra: str) -> tuple[int, dict]:
        code = multirequest.main(["--url", f"{base}/ocr_service", "--images", str(tmp_path),
                                  "--concurrency", "4", "--no-progress", "--json", *extra])
        return code, json.loads(capsys.readouterr().out)

    code, summary = run("--scenario", "cached", "--requests", "20")
    assert code == 0
    keys = ("requests", "ok", "errors", "cached", "scenario", "mode", "concurrency")
    assert {k: summary[k] for k in keys} == \
        {"requests": 20, "ok": 20, "errors": {}, "cached": 20, "scenario": "cached",
         "mode": "upload", "concurrency": 4}
    assert set(summary["latency_ms"]) == {"mean", "p50", "p95", "p99", "max", "min"}
    assert summary["throughput_rps"] > 0 and summary["wall_s"] > 0
    assert fake_server.state["posts"] == 21  # the warm-up plus 20
    assert len(fake_server.state["peers"]) <= 5  # keep-alive: one connection per worker + warm-up

    code, summary = run("--scenario", "different", "--requests", "12", "--mode", "base64",
                        "--no-block", "--poll-interval", "0.001")
    assert (code, summary["ok"], summary["cached"], summary["errors"]) == (0, 12, 0, {})

    code, summary = run("--scenario", "mixed", "--requests", "15", "--mode", "filename")
    assert (code, summary["requests"], summary["ok"], summary["errors"]) == (0, 15, 15, {})

    code, summary = run("--url", f"{base}/nope", "--scenario", "same", "--requests", "6")
    assert (code, summary["ok"], summary["errors"]) == (1, 0, {"404": 6})

    code, summary = run("--duration", "0.3", "--scenario", "same")
    assert code == 0 and summary["requests"] == summary["ok"] > 0

    # Progress as JSON lines on stderr, for programs that drive multirequest; the last is final.
    code = multirequest.main(["--url", f"{base}/ocr_service", "--images", str(tmp_path),
                              "--requests", "5", "--json", "--progress-json"])
    captured = capsys.readouterr()
    progress = [json.loads(line) for line in captured.err.splitlines()]
    assert code == 0 and json.loads(captured.out)["requests"] == 5
    assert progress and progress[-1]["done"] == 5 and progress[-1]["errors"] == 0
