"""Helpers for tests and benchmarks that drive a real ppocr-server, as users start it.

Like tornado.testing, a small public module of the package for its tests and benchmarks; the
server never imports it at run time, and it imports nothing from tests/ or bench/.

- `ServerProcess`: `python setup.py --config <temp config.json>` on a free loopback port, with a
  readiness wait that fails fast (and shows the server's log) when the process exits;
- `multipart`: a multipart/form-data body (multirequest.py keeps its own copy: it is a standalone,
  standard-library-only tool);
- `request` / `get_json`: one HTTP exchange on a fresh loopback connection;
- `wait_for`: polling observable state with a deadline, never a bare sleep;
- `process_tree`, `cpu_seconds`, `busy_cpu_seconds`, `tree_rss`, `RssSampler`: RSS and CPU of
  the server process and its workers, and the machine's busy CPU time (psutil).

Nothing here is thread-safe unless it says so; `RssSampler` runs its own thread and only appends.
"""

from __future__ import annotations

import http.client
import json
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
MODELS_DIR = ROOT / "models"
LOOPBACK = "127.0.0.1"


class ServerExited(RuntimeError):
    """The server process ended before it was ready; the message carries its log's tail."""


def free_port() -> int:
    """A TCP port free on the loopback interface now (the kernel's pick)."""
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def wait_for(condition: Callable[[], bool], timeout: float, message: str,
             interval: float = 0.05) -> None:
    """Polls `condition` until it holds; TimeoutError(message) after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(message)
        time.sleep(interval)  # polling observable state, bounded by the deadline


def multipart(fields: Mapping[str, str], file: bytes | None = None, filename: str = "img.jpg"
              ) -> tuple[bytes, str]:
    """(body, content type) of a multipart/form-data request: the fields, then the optional
    upload in the field named `file`."""
    boundary = uuid.uuid4().hex
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
             f"{value}\r\n".encode() for name, value in fields.items()]
    if file is not None:
        parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                     f'filename="{filename}"\r\nContent-Type: image/jpeg\r\n\r\n'.encode()
                     + file + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), f"multipart/form-data; boundary={boundary}"


def request(port: int, method: str, path: str, body: bytes | None = None,
            headers: Mapping[str, str] | None = None, timeout: float = 5.0
            ) -> tuple[int, http.client.HTTPMessage, bytes]:
    """(status, headers, body) of one request to the loopback server on `port`."""
    conn = http.client.HTTPConnection(LOOPBACK, port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=dict(headers or {}))
        response = conn.getresponse()
        return response.status, response.headers, response.read()
    finally:
        conn.close()


def get_json(port: int, path: str, headers: Mapping[str, str] | None = None,
             timeout: float = 5.0) -> tuple[int, dict]:
    status, _, body = request(port, "GET", path, headers=headers, timeout=timeout)
    return status, json.loads(body or b"{}")


def server_config(port: int, overrides: Mapping[str, object] | None = None) -> dict:
    """A config.json document: loopback on `port`, the repository's models, then `overrides`
    in load_config's dotted form ({"ocr.process.number": 1, ...}). Other keys keep their
    defaults (not the repository's config.json, whose relative paths would not resolve)."""
    config: dict = {"web_server": {"port": port, "address": LOOPBACK},
                    "ocr": {"predict_system": {"models_dir": str(MODELS_DIR)}}}
    for dotted, value in (overrides or {}).items():
        node = config
        *parents, last = dotted.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return config


class ServerProcess:
    """`python setup.py --config <workdir>/config-<name>.json` on a free loopback port.

    stdout and stderr go to <workdir>/server-<name>.log, so a crash shows its log; `workdir` is
    the caller's (a pytest tmp_path, a benchmark's work folder) and outlives the process.
    `cli_port` passes the port as setup.py's --port instead of writing it into the file;
    `args` are further launcher options; `preexec_fn` runs in the child before the launcher
    (a lowered open-file limit, say). Use as a context manager, or start() then stop().
    """

    def __init__(self, workdir: Path, overrides: Mapping[str, object] | None = None, *,
                 name: str = "server", cli_port: bool = False, args: Iterable[str] = (),
                 preexec_fn: Callable[[], None] | None = None) -> None:
        self.name = name
        self.preexec_fn = preexec_fn  # run in the child before exec (e.g. lower a limit)
        self.port = free_port()
        self.config = server_config(self.port, overrides)
        if cli_port:
            del self.config["web_server"]["port"]
        self.config_path = Path(workdir) / f"config-{name}.json"
        self.config_path.write_text(json.dumps(self.config, indent=2))
        self.log_path = Path(workdir) / f"server-{name}.log"
        self.argv = [sys.executable, "setup.py", "--config", str(self.config_path),
                     *(["--port", str(self.port)] if cli_port else []), *args]
        token = self.config["web_server"].get("api_token")
        self.headers = {"Authorization": f"Bearer {token}"} if token else {}
        self.proc: subprocess.Popen | None = None
        self.ready_s: float | None = None  # seconds from launch to the first 200 from /ready
        self.exit_code: int | None = None

    @property
    def pid(self) -> int:
        return self.proc.pid

    def url(self, path: str = "/ocr_service") -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def start(self, ready_timeout: float | None = 300) -> ServerProcess:
        """Launches the server and, unless `ready_timeout` is None, waits until it is ready."""
        with open(self.log_path, "wb") as log:  # the child holds its own descriptor
            self.proc = subprocess.Popen(self.argv, cwd=ROOT, stdout=log,
                                         stderr=subprocess.STDOUT, preexec_fn=self.preexec_fn)
        self._started = time.monotonic()
        if ready_timeout is not None:
            try:
                self.wait_ready(ready_timeout)
            except BaseException:
                self.kill()  # a server that never got ready must not outlive the caller
                raise
        return self

    def wait_ready(self, timeout: float = 300) -> None:
        """Polls GET /ready until 200; ServerExited at once if the process ends meanwhile."""
        def ready() -> bool:
            if self.proc.poll() is not None:
                raise ServerExited(f"server {self.name} exited with {self.proc.returncode} "
                                   f"before it was ready:\n{self.log_tail()}")
            try:
                return self.get_json("/ready", timeout=2)[0] == 200
            except (OSError, http.client.HTTPException, ValueError):
                return False  # not listening yet

        try:
            wait_for(ready, timeout, "", interval=0.2)
        except TimeoutError:
            raise TimeoutError(f"server {self.name} not ready within {timeout:g} s:\n"
                               f"{self.log_tail()}") from None
        self.ready_s = time.monotonic() - self._started

    def get_json(self, path: str, timeout: float = 5.0) -> tuple[int, dict]:
        return get_json(self.port, path, self.headers, timeout)

    def workers(self) -> list[psutil.Process]:
        """The worker processes: the server's children but multiprocessing's resource tracker."""
        return [proc for role, proc in process_tree(self.pid) if role == "worker"]

    def worker_pids(self) -> list[int]:
        return [proc.pid for proc in self.workers()]

    def log_tail(self, lines: int = 30) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self, timeout: float = 120) -> int:
        """SIGTERM, then the exit code; SIGKILL if it has not exited within `timeout` s."""
        if self.exit_code is None and self.proc is not None:
            if self.proc.poll() is None:
                self.proc.send_signal(signal.SIGTERM)
            try:
                self.exit_code = self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.exit_code = self.kill()
        return self.exit_code

    def kill(self) -> int:
        """SIGKILL now (each worker exits when it finds its pipe to the server closed)."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.exit_code = self.proc.wait()
        return self.exit_code

    def __enter__(self) -> ServerProcess:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc_info) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.kill()


# ---------------------------------------------------------------- RSS and CPU of a process tree

def process_tree(pid: int) -> list[tuple[str, psutil.Process]]:
    """(role, process) of `pid` ("server") and each child: "worker", or "other" for
    multiprocessing's resource tracker (a few MiB, exits on its own). Gone children are left out."""
    parent = psutil.Process(pid)
    found = [("server", parent)]
    try:
        children = parent.children()
    except psutil.Error:
        return found
    for child in children:
        try:
            cmdline = " ".join(child.cmdline())
        except psutil.Error:
            continue
        found.append(("other" if "resource_tracker" in cmdline else "worker", child))
    return found


def cpu_seconds(processes: Iterable[psutil.Process], children: bool = False) -> float:
    """User + system CPU seconds of the processes still alive, or with `children` those of
    their children that have exited and been waited for."""
    total = 0.0
    for proc in processes:
        try:
            times = proc.cpu_times()
        except psutil.Error:
            continue
        total += (times.children_user + times.children_system if children
                  else times.user + times.system)
    return total


def busy_cpu_seconds() -> float:
    """CPU seconds the whole machine has spent not idle, all cores together: what the rest of
    the machine used meanwhile is this minus the measured processes' cpu_seconds."""
    times = psutil.cpu_times()  # guest time is already inside user time on Linux
    return sum(getattr(times, name, 0.0) for name in ("user", "nice", "system", "irq", "softirq"))


def tree_rss(pid: int) -> dict[int, tuple[str, int]]:
    """{pid: (role, RSS bytes)} of `pid` and its children, now."""
    rss = {}
    for role, proc in process_tree(pid):
        try:
            rss[proc.pid] = (role, proc.memory_info().rss)
        except psutil.Error:
            continue
    return rss


class RssSampler:
    """Samples `tree_rss(pid)` every `interval` seconds on its own thread, from start() until
    stop(). Each sample is {"t": seconds since start, "rss": {pid: (role, bytes)}, **annotate()};
    `annotate` (say, requests done so far) is called on the sampling thread."""

    def __init__(self, pid: int, interval: float,
                 annotate: Callable[[], dict] = dict) -> None:
        self.pid, self.interval, self.annotate = pid, interval, annotate
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._started = time.monotonic()

    def take(self) -> dict:
        """One sample now (from any thread), appended to `samples`."""
        try:
            rss = tree_rss(self.pid)
        except psutil.Error:  # the server itself is gone
            rss = {}
        sample = {"t": round(time.monotonic() - self._started, 2), "rss": rss,
                  **self.annotate()}
        self.samples.append(sample)
        return sample

    def _run(self) -> None:
        while True:
            self.take()
            if self._stop.wait(self.interval):
                return

    def start(self) -> RssSampler:
        self._started = time.monotonic()
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    def __enter__(self) -> RssSampler:
        return self.start()

    def __exit__(self, *exc_info) -> None:
        self.stop()


def edit_distance(first: str, second: str) -> int:
    """Levenshtein distance (insertions, deletions, substitutions): character errors of an OCR
    reading against its reference, for the tests' and benchmarks' CER."""
    previous = list(range(len(second) + 1))
    for i, char in enumerate(first, 1):
        current = [i]
        for j, other in enumerate(second, 1):
            current.append(min(previous[j] + 1, current[j - 1] + 1,
                               previous[j - 1] + (char != other)))
        previous = current
    return previous[-1]


def squeezed(text: str) -> str:
    """`text` without any whitespace (line breaks and spacing differ between readers)."""
    return "".join(text.split())


__all__ = ["ROOT", "MODELS_DIR", "LOOPBACK", "ServerExited", "ServerProcess", "RssSampler",
           "free_port", "wait_for", "multipart", "request", "get_json", "server_config",
           "process_tree", "cpu_seconds", "busy_cpu_seconds", "tree_rss", "edit_distance",
           "squeezed"]
