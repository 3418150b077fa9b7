"""The worst case per worker, over HTTP: the largest tensors the limits allow, sent to a real
one-worker server; the worker's peak (VmHWM) and resident memory after, read from /proc."""

from __future__ import annotations

import io
import json

from PIL import Image, ImageDraw

from tests.test_server import FIRST_LINE, RECEIPT, ServerTestCase

# README: "worst case per worker" (the engine's limits, ocr_engine/limits.py; measured peak
# ~1.6 GiB with PP-OCRv4 on onnxruntime). Bounds with headroom for other builds and kernels.
PEAK_BOUND_MIB = 2300
HELD_BOUND_MIB = 1200


def png(width: int, height: int, lines: int = 0) -> bytes:
    """A compressible image (white, a few black text-like bars) of any size, as PNG."""
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    for row in range(lines):
        top = int(height * (row + 1) / (lines + 1))
        draw.rectangle([width // 20, top, width - width // 20, top + max(2, height // 200)], 0)
    out = io.BytesIO()
    image.save(out, "PNG", optimize=True)
    return out.getvalue()


def status_mib(pid: int, field: str) -> float:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    raise AssertionError(f"{field} not in /proc/{pid}/status")


class TestWorstCaseMemory(ServerTestCase):
    overrides = {"ocr.process.number": 1, "ocr.process.task_timeout": 300.0,
                 "web_server.request_timeout": 600.0}

    def test_the_worst_inputs_the_limits_allow_stay_within_the_stated_memory(self):
        [worker] = self.pool.worker_pids()
        worst = [
            # Detection at its cap: max/4096 on a 6000 x 6000 page (clamped to 4000 and 9 Mpx).
            (png(6000, 6000, lines=40), {"det_limit_type": "max", "det_limit_side_len": "4096"}),
            # min/4096 on a tiny image: once a 4096 x 8192 input (6.8 GB).
            (png(200, 100, lines=2), {"det_limit_type": "min", "det_limit_side_len": "4096"}),
            # One line 60,000 px wide: once ~48,000 recognition columns at once (12 GB).
            (png(60_000, 20, lines=1), {"use_det": "false"}),
        ]
        for image, options in worst:
            response = self.upload(image, **options)
            assert response.code == 200, (options, response.body[:300])
            assert isinstance(json.loads(response.body)["lines"], list)
        peak, held = status_mib(worker, "VmHWM"), status_mib(worker, "VmRSS")
        print(f"worst inputs on {self.pool.spec.backend}: worker peak {peak:.0f} MiB, "
              f"held {held:.0f} MiB")
        assert worker in self.pool.worker_pids()  # not recycled, not killed
        assert peak < PEAK_BOUND_MIB, f"worker peak {peak:.0f} MiB"
        assert held < HELD_BOUND_MIB, f"worker holds {held:.0f} MiB after the worst inputs"
        # And it still reads ordinary images.
        assert json.loads(self.upload(RECEIPT.read_bytes()).body)["lines"][0]["text"] == \
            FIRST_LINE
