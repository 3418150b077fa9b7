"""multirequest.py against a live server: `python setup.py` with one real worker and the real
models, a handful of requests, the JSON summary checked against the server's own count of
engine runs (GET /ready), then a SIGTERM that must end the server cleanly."""
from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "docs" / "samples"
BOOT_DEADLINE_S = 180


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def get_ready(port: int) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", "/ready")
        response = conn.getresponse()
        return response.status, json.loads(response.read())
    finally:
        conn.close()


def wait_ready(server: subprocess.Popen, port: int, log: Path) -> None:
    deadline = time.monotonic() + BOOT_DEADLINE_S
    while time.monotonic() < deadline:
        try:
            if get_ready(port)[0] == 200:
                return
        except (OSError, http.client.HTTPException, ValueError):
            pass  # not listening yet
        try:
            code = server.wait(timeout=0.2)  # the pause between polls also notices an exit
        except subprocess.TimeoutExpired:
            continue
        raise AssertionError(f"server exited with {code} before ready:\n{log.read_text()}")
    raise AssertionError(f"server not ready within {BOOT_DEADLINE_S} s:\n{log.read_text()}")


def multirequest(port: int, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(ROOT / "multirequest.py"), "--url",
         f"http://127.0.0.1:{port}/ocr_service", "--images", str(SAMPLES), "--json",
         "--no-progress", "--requests", "6", "--concurrency", "3", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_multirequest_against_a_live_server(tmp_path: Path) -> None:
    port = free_port()
    config = tmp_path / "config.json"
    config.write_text(json.dumps({
        "web_server": {"address": "127.0.0.1"},
        "ocr": {"process": {"number": 1},
                "predict_system": {"models_dir": str(ROOT / "models")}},
        "service": {"filename_roots": [str(SAMPLES)]},
    }))
    log = tmp_path / "server.log"
    with open(log, "w") as out:
        server = subprocess.Popen(
            [sys.executable, "setup.py", "--config", str(config), "--port", str(port),
             "--workers", "1"], cwd=ROOT, stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_ready(server, port, log)

        runs = get_ready(port)[1]["engine_runs"]
        summary = multirequest(port, "--scenario", "cached", "--mode", "upload")
        assert {k: summary[k] for k in ("requests", "ok", "errors", "cached", "mode")} == \
            {"requests": 6, "ok": 6, "errors": {}, "cached": 6, "mode": "upload"}
        assert all(summary["latency_ms"][k] > 0 for k in ("min", "p50", "p99", "max"))
        # The warm-up request read the image; the six were cache hits.
        assert get_ready(port)[1]["engine_runs"] - runs == 1

        runs = get_ready(port)[1]["engine_runs"]
        summary = multirequest(port, "--scenario", "same", "--mode", "filename")
        assert (summary["requests"], summary["ok"], summary["errors"], summary["mode"]) == \
            (6, 6, {}, "filename")
        # One uncached key: the first three share one run (cached false), each later request
        # starts after one of them has finished, so it is a cache hit.
        assert 3 <= summary["cached"] <= 5
        assert get_ready(port)[1]["engine_runs"] - runs == 1

        server.send_signal(signal.SIGTERM)
        assert server.wait(timeout=60) == 0, log.read_text()
    finally:
        if server.poll() is None:
            server.kill()
            server.wait()
