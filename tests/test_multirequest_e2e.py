"""multirequest.py against a live server: `python setup.py` with one real worker and the real
models, a handful of requests, the JSON summary checked against the server's own count of
engine runs (GET /ready), then a SIGTERM that must end the server cleanly."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

from server.testing import ServerProcess
from tests.app_testing import PINNED_BACKEND

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "docs" / "samples"
BOOT_DEADLINE_S = 180


def multirequest(port: int, *args: str) -> dict:
    done = subprocess.run(
        [sys.executable, str(ROOT / "multirequest.py"), "--url",
         f"http://127.0.0.1:{port}/ocr_service", "--images", str(SAMPLES), "--json",
         "--no-progress", "--requests", "6", "--concurrency", "3", *args],
        cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    return json.loads(done.stdout)


def test_multirequest_against_a_live_server(tmp_path: Path) -> None:
    # The port comes from the launcher's --port option: the file has none.
    server = ServerProcess(tmp_path, {"ocr.process.number": 1, **PINNED_BACKEND,
                                      "service.filename_roots": [str(SAMPLES)]},
                           cli_port=True, args=("--workers", "1"))
    port = server.port
    with server.start(ready_timeout=BOOT_DEADLINE_S):
        runs = server.get_json("/ready")[1]["engine_runs"]
        summary = multirequest(port, "--scenario", "cached", "--mode", "upload")
        assert {k: summary[k] for k in ("requests", "ok", "errors", "cached", "mode")} == \
            {"requests": 6, "ok": 6, "errors": {}, "cached": 6, "mode": "upload"}
        assert all(summary["latency_ms"][k] > 0 for k in ("min", "p50", "p99", "max"))
        # The warm-up request read the image; the six were cache hits.
        assert server.get_json("/ready")[1]["engine_runs"] - runs == 1

        runs = server.get_json("/ready")[1]["engine_runs"]
        summary = multirequest(port, "--scenario", "same", "--mode", "filename")
        assert (summary["requests"], summary["ok"], summary["errors"], summary["mode"]) == \
            (6, 6, {}, "filename")
        # One uncached key: the first three share one run (cached false), each later request
        # starts after one of them has finished, so it is a cache hit.
        assert 3 <= summary["cached"] <= 5
        assert server.get_json("/ready")[1]["engine_runs"] - runs == 1

        server.proc.send_signal(signal.SIGTERM)
        assert server.proc.wait(timeout=60) == 0, server.log_tail(100)
