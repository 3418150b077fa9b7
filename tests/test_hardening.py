"""Hostile input, faults and overload against the real server: every request ends with a fitting
status, the server stays healthy, nothing leaks and no accepted task is lost."""

from __future__ import annotations

import asyncio
import io
import json
import os
import re
import signal
import socket
import struct
import threading
import urllib.request
import zipfile
import zlib

import numpy as np
import psutil
import pytest
from PIL import Image

from server.testing import ServerProcess, multipart, wait_for
from tests.app_testing import PINNED_BACKEND
from tests.test_server import FIRST_LINE, RECEIPT, ROOT, ServerTestCase

RECEIPT_BYTES = RECEIPT.read_bytes()


def encode(image: Image.Image, fmt: str, **params) -> bytes:
    out = io.BytesIO()
    image.save(out, fmt, **params)
    return out.getvalue()


def png_bomb(width: int = 100_000, height: int = 100_000) -> bytes:
    """A valid PNG header declaring a huge image, with a tiny (truncated) body."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1000)) + chunk(b"IEND", b""))


def zip_bytes() -> bytes:
    out = io.BytesIO()
    with zipfile.ZipFile(out, "w") as archive:
        archive.writestr("receipt.jpg", RECEIPT_BYTES)
    return out.getvalue()


def receipt() -> Image.Image:
    return Image.open(io.BytesIO(RECEIPT_BYTES)).convert("RGB")


def animated_gif() -> bytes:
    frames = [receipt().convert("P"), Image.new("P", (500, 500), 0)]
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=100)


def multipage_tiff() -> bytes:
    return encode(receipt(), "TIFF", save_all=True, append_images=[Image.new("RGB", (50, 50))])


def grey16_png() -> bytes:
    grey = np.asarray(receipt().convert("L"), dtype=np.uint16) * 257
    return encode(Image.fromarray(grey), "PNG")  # uint16 -> a 16-bit greyscale PNG


def palette_png_with_transparency() -> bytes:
    image = receipt().convert("P", palette=Image.Palette.ADAPTIVE, colors=64)
    return encode(image, "PNG", transparency=0)


# Uploads that are not usable images: each is refused with a 4xx naming the problem.
BAD_UPLOADS = {
    "zero_byte_file": (b"", 415, "invalid_image"),
    "plain_text": (b"hello, this is text\n" * 10, 415, "invalid_image"),
    "html": (b"<!doctype html><html><body><img src=x></body></html>", 415, "invalid_image"),
    # PDFs are documents now: a broken one is an invalid document (still 415).
    "pdf": (b"%PDF-1.4\n1 0 obj<<>>endobj\ntrailer<<>>\n%%EOF", 415, "invalid_document"),
    "svg": (b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"><text>hi</text>'
            b"</svg>", 415, "invalid_image"),
    "zip": (zip_bytes(), 415, "invalid_image"),
    "truncated_jpeg": (RECEIPT_BYTES[:len(RECEIPT_BYTES) // 3], 415, "invalid_image"),
    "truncated_png": (encode(receipt(), "PNG")[:5000], 415, "invalid_image"),
    "jpeg_header_only": (RECEIPT_BYTES[:20], 415, "invalid_image"),
    "random_bytes": (np.random.default_rng(1).bytes(4096), 415, "invalid_image"),
    "decompression_bomb": (png_bomb(), 413, "image_too_large"),
    "bomb_past_pillow_limit": (png_bomb(200_000, 200_000), 413, "image_too_large"),
}

# Odd but valid images: each is read (the receipt's first line where the receipt is inside).
ODD_IMAGES = {
    "animated_gif_first_frame": (animated_gif(), FIRST_LINE),
    "multipage_tiff_every_page": (multipage_tiff(), FIRST_LINE),
    "cmyk_jpeg": (encode(receipt().convert("CMYK"), "JPEG", quality=95), FIRST_LINE),
    "grey_16bit_png": (grey16_png(), FIRST_LINE),
    "palette_png_with_transparency": (palette_png_with_transparency(), FIRST_LINE),
    "webp": (encode(receipt(), "WEBP", quality=95), FIRST_LINE),
    "bmp": (encode(receipt(), "BMP"), FIRST_LINE),
    "one_by_one_png": (encode(Image.new("RGB", (1, 1), "white"), "PNG"), None),
    "all_black": (encode(Image.new("RGB", (640, 640)), "PNG"), None),
}


class TestHostileInput(ServerTestCase):
    overrides = {"web_server.max_body_size": 4 * 1024 * 1024,
                 "service.filename_roots": [str(ROOT / "docs" / "samples")]}

    def test_corpus_gets_fitting_errors_and_leaves_the_server_healthy(self):
        parent = psutil.Process()
        fds_before = parent.num_fds()
        pids_before = sorted(self.pool.worker_pids())
        for name, (data, status, code) in BAD_UPLOADS.items():
            body = self.assert_error(self.upload(data), status, code)
            message = body["error"]["message"]
            assert len(message) < 300, name
            # No library internals: no object reprs, no heap addresses (PIL's "<_io.BytesIO
            # object at 0x7f...>" once reached 415 messages).
            assert not re.search(r"object at|0x[0-9a-f]{6,}|Traceback", message), (name, message)
        for name, (data, first_line) in ODD_IMAGES.items():
            response = self.upload(data)
            assert response.code == 200, (name, response.body[:300])
            body = json.loads(response.body)
            # A multi-page TIFF is a document now: every page is read, the first is the receipt.
            lines = body["pages"][0]["lines"] if "pages" in body else body["lines"]
            if first_line is None:
                assert lines == [], name
            else:
                assert lines and lines[0]["text"] == first_line, (name, lines[:2])
        long_garbage = "A" * 100_000 + "!"
        body = self.assert_error(self.post_json(file_type="base64", img_src=long_garbage), 400,
                                 "invalid_field")
        assert long_garbage[:1000] not in body["error"]["message"]
        unknown = self.assert_error(self.post_form(file_type="x" * 10_000), 400,
                                    "invalid_field")
        assert len(unknown["error"]["message"]) < 300
        for options, field in ([{"det_db_box_thresh": "-0.1"}, "det_db_box_thresh"],
                               [{"det_limit_side_len": "99999"}, "det_limit_side_len"],
                               [{"drop_score": "nan"}, "drop_score"],
                               [{"use_angle_cls": "maybe"}, "use_angle_cls"],
                               [{"det_limit_type": "diagonal"}, "det_limit_type"]):
            error = self.assert_error(self.upload(RECEIPT_BYTES, **options), 400,
                                      "invalid_option")
            assert field in error["error"]["message"]
        # Every failure was the request's own: no worker died, no descriptor was left open.
        assert sorted(self.pool.worker_pids()) == pids_before
        assert parent.num_fds() <= fds_before + 2
        assert json.loads(self.fetch("/ready").body)["workers"] == 2
        assert self.upload(RECEIPT_BYTES).code == 200

    def test_bodies_and_content_types(self):
        self.assert_error(self.post(b"", "application/x-www-form-urlencoded"), 400,
                          "missing_field")
        self.assert_error(self.post(b"", "application/json"), 400, "bad_request")
        self.assert_error(self.post(b'{"file_type": ', "application/json"), 400, "bad_request")
        self.assert_error(self.post(b"--x\r\ngarbage", "multipart/form-data; boundary=x"), 400,
                          "bad_request")
        self.assert_error(self.post(RECEIPT_BYTES, "image/jpeg"), 415, "unsupported_media_type")
        self.assert_error(self.post_json(file_type="base64",
                                         img_src="data:image/png;base64,@@@"), 400,
                          "invalid_field")
        self.assert_error(self.post_json(file_type="base64", img_src="data:application/pdf;"
                                         "base64,JVBERi0="), 415, "invalid_document")
        self.assert_error(self.post_json(file_type="base64", img_src="data:text/html;"
                                         "base64,JVBERi0="), 415, "invalid_image")
        self.assert_error(self.post_json(file_type="file"), 400, "missing_field")
        self.assert_error(self.post_json(file_type="base64", img_src=12), 400, "missing_field")
        self.assert_error(self.post_json(file_type="filename", filename=["a"]), 400,
                          "missing_field")

    def test_filename_sandbox_over_http(self):
        samples = ROOT / "docs" / "samples"
        cases = [("../../config.json", 403, "forbidden_path"),
                 ("/etc/passwd", 403, "forbidden_path"),
                 ("receipt.jpg\x00.png", 400, "invalid_field"),
                 (".", 400, "invalid_field"),
                 ("missing.jpg", 404, "file_not_found"),
                 ("/dev/null", 403, "forbidden_path")]
        for name, status, code in cases:
            body = self.assert_error(self.post_json(file_type="filename", filename=name),
                                     status, code)
            assert "/etc" not in body["error"]["message"].replace(name, "")
        # Non-UTF-8 bytes in a form field.
        self.assert_error(self.post(b"file_type=filename&filename=%ff%fe.jpg",
                                    "application/x-www-form-urlencoded"), 400, "invalid_field")
        assert self.post_json(file_type="filename", filename=str(samples / "receipt.jpg")).code \
            == 200

    def test_oversized_upload_is_refused_from_its_length(self):
        # Announce 64 MB but send only the headers: the answer must come without the body.
        sock = socket.create_connection(("127.0.0.1", self.get_http_port()))
        reply = self.io_loop.run_sync(lambda: asyncio.get_running_loop().run_in_executor(
            None, _announce_and_read, sock, 64 * 1024 * 1024), timeout=30)
        assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
        assert b'"too_large"' in reply


def _announce_and_read(sock: socket.socket, length: int) -> bytes:
    with sock:
        sock.sendall(b"POST /ocr_service HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-"
                     b"data; boundary=b\r\nContent-Length: " + str(length).encode() + b"\r\n\r\n")
        sock.settimeout(20)
        data = b""
        while b"\r\n\r\n" not in data or b"}" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
        return data


class TestAuthAndCors(ServerTestCase):
    overrides = {"ocr.process.number": 1, "web_server.api_token": "s3cret",
                 "web_server.cors_origins": ["https://app.example"]}

    def test_token_is_required_except_for_health(self):
        self.assert_error(self.upload(RECEIPT_BYTES), 401, "unauthorized")
        self.assert_error(self.fetch("/ready", raise_error=False), 401, "unauthorized")
        assert self.fetch("/health").code == 200
        body, content_type = multipart({"file_type": "file"}, RECEIPT_BYTES)
        wrong = self.post(body, content_type, headers={"Authorization": "Bearer nope"})
        self.assert_error(wrong, 401, "unauthorized")
        right = self.post(body, content_type, headers={"Authorization": "Bearer s3cret",
                                                       "Origin": "https://app.example"})
        assert right.code == 200
        assert right.headers["Access-Control-Allow-Origin"] == "https://app.example"
        other = self.fetch("/health", headers={"Origin": "https://evil.example"})
        assert "Access-Control-Allow-Origin" not in other.headers


class TestCorsOffByDefault(ServerTestCase):
    overrides = {"ocr.process.number": 1}

    def test_no_cors_headers_and_no_token_needed(self):
        response = self.fetch("/health", headers={"Origin": "https://app.example"})
        assert "Access-Control-Allow-Origin" not in response.headers
        assert self.fetch("/ocr_service", method="OPTIONS", raise_error=False).code == 405


class TestWorkerFaults(ServerTestCase):
    def test_all_workers_down_answers_503_until_they_are_back(self):
        for pid in self.pool.worker_pids():
            os.kill(pid, signal.SIGKILL)
        self.io_loop.run_sync(lambda: self.events.wait_for(lambda: self.pool.ready_count == 0
                                            and len(self.pool.worker_pids()) == 2), timeout=60)
        response = self.upload(RECEIPT_BYTES)
        self.assert_error(response, 503, "unavailable")
        assert response.headers["Retry-After"]
        ready = self.fetch("/ready", raise_error=False)
        assert ready.code == 503 and json.loads(ready.body)["status"] == "not_ready"
        self.io_loop.run_sync(lambda: self.events.wait_for(lambda: self.pool.ready_count == 2),
                              timeout=240)
        assert self.upload(RECEIPT_BYTES).code == 200

    def test_killed_worker_non_blocking_task_still_ends(self):
        killed = []

        def kill_on_dispatch(event, worker):
            if event == "dispatch" and len(killed) < 2:  # twice: the retry dies too
                killed.append(worker.pid)
                os.kill(worker.pid, signal.SIGKILL)

        self.events.hooks.append(kill_on_dispatch)
        task = json.loads(self.upload(RECEIPT_BYTES, block_flag="false", drop_score="0.54").body)
        assert task["status"] == "pending"
        self.wait_task(task["id"])
        body = self.assert_error(self.fetch(task["result_url"], raise_error=False), 500,
                                 "worker_crashed")
        assert body["status"] == "failed" and len(killed) == 2
        self.io_loop.run_sync(lambda: self.events.wait_for(lambda: self.pool.ready_count == 2),
                              timeout=240)
        # A bad image fails only its own request.
        assert self.upload(b"GIF89a broken").code == 415
        assert self.upload(RECEIPT_BYTES).code == 200

    def test_disconnected_client_leaks_nothing_and_fills_the_cache(self):
        body, content_type = multipart({"file_type": "file", "drop_score": "0.55"}, RECEIPT_BYTES)
        sock = socket.create_connection(("127.0.0.1", self.get_http_port()))
        sock.sendall(b"POST /ocr_service HTTP/1.1\r\nHost: x\r\nContent-Type: "
                     + content_type.encode() + b"\r\nContent-Length: "
                     + str(len(body)).encode() + b"\r\n\r\n" + body)
        self.io_loop.run_sync(lambda: self.events.wait_for(lambda: len(self.service.inflight) == 1),
                              timeout=60)
        sock.close()  # gone before the answer
        self.io_loop.run_sync(lambda: self.events.wait_for(lambda: len(self.service.inflight) == 0),
                              timeout=120)
        again = json.loads(self.post(body, content_type).body)
        assert again["cached"] is True and again["lines"][0]["text"] == FIRST_LINE
        assert self.ctx.lifecycle.active_requests == 0


def test_sigterm_under_load_finishes_accepted_requests_and_exits_zero(tmp_path):
    # The workers are held (SIGSTOP) until SIGTERM is sent, so all six requests are accepted
    # and none has finished when it arrives, however slow the machine; held workers must not
    # be killed or count as not ready meanwhile.
    server = ServerProcess(tmp_path, {"ocr.process.number": 2, "ocr.process.threads": 1,
                                      "ocr.process.ping_interval": 600,
                                      "ocr.process.ping_timeout": 600,
                                      "service.img_number": 0, **PINNED_BACKEND})
    port = server.port
    with server.start(ready_timeout=240):
        workers = server.workers()
        assert len(workers) == 2
        for worker in workers:
            worker.suspend()
        results: list = [None] * 6
        started = threading.Barrier(len(results) + 1)

        def call(index: int) -> None:
            body, content_type = multipart({"file_type": "file",
                                            "drop_score": f"0.5{index}"}, RECEIPT_BYTES)
            request = urllib.request.Request(f"http://127.0.0.1:{port}/ocr_service", data=body,
                                             headers={"Content-Type": content_type})
            started.wait()
            try:
                with urllib.request.urlopen(request, timeout=120) as response:
                    results[index] = response.status
            except urllib.error.HTTPError as error:
                results[index] = error.code
            except OSError as error:
                results[index] = repr(error)

        threads = [threading.Thread(target=call, args=(i,)) for i in range(len(results))]
        for thread in threads:
            thread.start()
        started.wait()

        def accepted() -> bool:  # every request running or queued
            state = server.get_json("/ready")[1]
            return state["busy"] + state["queued"] >= len(results)

        try:
            wait_for(accepted, 60, "requests never reached the workers", interval=0.02)
            server.proc.send_signal(signal.SIGTERM)
        finally:
            for worker in workers:
                worker.resume()
        for thread in threads:
            thread.join(180)
        assert server.proc.wait(120) == 0
        assert results == [200] * len(results)
        # pool.close() joined them before the server exited: none may be left running.
        assert not [w for w in workers if w.is_running() and w.status() != psutil.STATUS_ZOMBIE]
        with pytest.raises(OSError):
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=5)
