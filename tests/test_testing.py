"""server.testing, the harness of the tests and benchmarks: its small pieces on their own."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import psutil
import pytest
from tornado.httputil import parse_body_arguments

from server.testing import (
    LOOPBACK,
    MODELS_DIR,
    RssSampler,
    ServerExited,
    ServerProcess,
    cpu_seconds,
    free_port,
    multipart,
    process_tree,
    server_config,
    tree_rss,
    wait_for,
)


def test_multipart_round_trips_through_tornados_parser():
    body, content_type = multipart({"file_type": "file", "drop_score": "0.6"}, b"\x89PNG bytes",
                                   filename="a.png")
    fields, files = {}, {}
    parse_body_arguments(content_type, body, fields, files)
    assert fields == {"file_type": [b"file"], "drop_score": [b"0.6"]}
    assert files["file"][0]["body"] == b"\x89PNG bytes"
    assert files["file"][0]["filename"] == "a.png"
    body, content_type = multipart({"a": "1"})
    fields, files = {}, {}
    parse_body_arguments(content_type, body, fields, files)
    assert fields == {"a": [b"1"]} and files == {}


def test_server_config_applies_dotted_overrides_on_loopback_defaults():
    config = server_config(8123, {"ocr.process.number": 1, "web_server.api_token": "t",
                                  "service.filename_roots": ["/x"]})
    assert config == {"web_server": {"port": 8123, "address": LOOPBACK, "api_token": "t"},
                      "ocr": {"predict_system": {"models_dir": str(MODELS_DIR)},
                              "process": {"number": 1}},
                      "service": {"filename_roots": ["/x"]}}


def test_free_port_can_be_bound():
    with socket.socket() as sock:
        sock.bind((LOOPBACK, free_port()))


def test_wait_for_returns_once_true_and_raises_after_its_deadline():
    calls = iter([False, False, True])
    wait_for(lambda: next(calls), timeout=5, message="never", interval=0.001)
    with pytest.raises(TimeoutError, match="never true"):
        wait_for(lambda: False, timeout=0.01, message="never true", interval=0.001)


def test_process_tree_rss_and_cpu_of_a_child():
    child = subprocess.Popen([sys.executable, "-c", "import sys; sys.stdin.read()"],
                             stdin=subprocess.PIPE)
    try:
        roles = {proc.pid: role for role, proc in process_tree(psutil.Process().pid)}
        assert roles[psutil.Process().pid] == "server" and roles[child.pid] == "worker"
        rss = tree_rss(psutil.Process().pid)
        assert rss[child.pid][0] == "worker" and rss[child.pid][1] > 0
        assert cpu_seconds([psutil.Process(child.pid)]) >= 0
        sampler = RssSampler(psutil.Process().pid, 60, lambda: {"done": 3})
        with sampler:
            sampler.take()
        assert len(sampler.samples) == 2 and sampler.samples[1]["done"] == 3
        assert child.pid in sampler.samples[1]["rss"]
    finally:
        child.communicate(b"")
    assert cpu_seconds([]) == 0.0


def test_a_server_that_cannot_start_fails_fast_with_its_log(tmp_path):
    server = ServerProcess(tmp_path, {"ocr.process.numbr": 2})
    assert json.loads(server.config_path.read_text())["ocr"]["process"] == {"numbr": 2}
    with pytest.raises(ServerExited, match="ocr.process.numbr: unknown key"):
        server.start(ready_timeout=60)
    assert server.exit_code == 2
