"""Real redis-server and nginx for the scale-out tests and benchmark, as the test user's own
processes on free loopback ports (no system service, nothing left behind).

The configuration texts are the ones docs/DEPLOY.md shows: `redis_conf` and `nginx_site` render
them, and tests/test_cluster.py checks the document's blocks against these functions, so the
deployment guide is the configuration the tests run.

- `RedisServer`: `redis-server <workdir>/redis.conf` (persistence off, allkeys-lru), with
  `stop` / `start` on the same port (a Redis outage and its return) and `client()` for checks;
- `Nginx`: `nginx -p <workdir> -c nginx.conf`, `daemon off`, every path (pid, logs, temp
  folders) inside `workdir`, round-robin over the given nodes;
- `require_binaries()`: the installed binaries, or a failure that names `make cluster-deps`.
"""

from __future__ import annotations

import os
import pwd
import shutil
import signal
import socket
import subprocess
from pathlib import Path

from server.testing import LOOPBACK, free_port, wait_for

REDIS_SERVER = "redis-server"
NGINX = "nginx"
NGINX_FALLBACK = "/usr/sbin/nginx"  # Debian's; /usr/sbin may be off a test user's PATH


def require_binaries() -> tuple[str, str]:
    """(redis-server, nginx) paths; a clear failure when either is missing (never a skip:
    a skipped scale-out suite reads as a pass)."""
    redis_server = shutil.which(REDIS_SERVER)
    nginx = shutil.which(NGINX) or (NGINX_FALLBACK if Path(NGINX_FALLBACK).exists() else None)
    if redis_server is None or nginx is None:
        raise RuntimeError("redis-server and nginx are needed for the scale-out tests: run "
                           "`make cluster-deps` (Debian's redis-server and nginx, pinned)")
    return redis_server, nginx


# ---------------------------------------------------------------- configuration texts

def redis_conf(port: int, bind: str = LOOPBACK, maxmemory: str = "256mb",
               requirepass: str | None = None) -> str:
    """redis.conf for the shared Redis: a cache and short-lived state, so no persistence,
    and every key has an expiry, so memory is bounded by evicting the least recently used."""
    lines = [f"bind {bind}", f"port {port}", "protected-mode yes", 'save ""',
             "appendonly no", f"maxmemory {maxmemory}", "maxmemory-policy allkeys-lru",
             "timeout 0", "tcp-keepalive 60"]
    if requirepass:
        lines.append(f"requirepass {requirepass}")
    return "\n".join(lines) + "\n"


def nginx_site(listen: str, nodes: list[str], max_body: str = "21m",
               read_timeout_s: int = 130) -> str:
    """The http-level part of nginx.conf in front of the nodes (host:port each): round robin,
    keep-alive to the nodes, bodies up to web_server.max_body_size, a read timeout above
    web_server.request_timeout. A node that refuses connections is skipped for 5 s; a request
    already sent to a node that dies is not resent (POST is not idempotent to nginx: it
    answers 502), which the client retries."""
    servers = "\n".join(f"    server {node} max_fails=1 fail_timeout=5s;" for node in nodes)
    return f"""upstream ppocr {{
{servers}
    keepalive 32;
}}

server {{
    listen {listen};
    client_max_body_size {max_body};
    location / {{
        proxy_pass http://ppocr;
        proxy_http_version 1.1;
        proxy_set_header Connection "";
        proxy_set_header Host $host;
        proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        proxy_set_header X-Request-ID $request_id;
        proxy_read_timeout {read_timeout_s}s;
        proxy_send_timeout 60s;
        proxy_next_upstream error timeout;
        proxy_request_buffering on;
    }}
}}
"""


def nginx_conf(workdir: Path, site: str) -> str:
    """A whole nginx.conf for a foreground nginx owned by the test: pid, logs and temp
    folders in `workdir` (nginx -p), the site inside http. Started by root (CI), nginx would
    switch its workers to `nobody`, who cannot enter a private pytest folder: they stay the
    test user's."""
    indented = "".join(f"    {line}\n" if line else "\n" for line in site.splitlines())
    user = f"user {pwd.getpwuid(os.geteuid()).pw_name};\n" if os.geteuid() == 0 else ""
    return f"""daemon off;
{user}master_process on;
worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{
    worker_connections 512;
}}
http {{
    access_log {workdir}/access.log;
    client_body_temp_path {workdir}/client_body;
    proxy_temp_path {workdir}/proxy;
    fastcgi_temp_path {workdir}/fastcgi;
    uwsgi_temp_path {workdir}/uwsgi;
    scgi_temp_path {workdir}/scgi;
{indented}}}
"""


# ---------------------------------------------------------------- processes

def _end(proc: subprocess.Popen | None, signum: int, timeout: float) -> None:
    """Sends `signum` to a running `proc` and waits for it; SIGKILL after `timeout` s."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signum)
        try:
            proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _listening(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _redis_ping(port: int, password: str | None = None) -> bool:
    """PING over a raw socket (no client library in the way)."""
    try:
        with socket.create_connection((LOOPBACK, port), timeout=1) as sock:
            if password:
                sock.sendall(f"AUTH {password}\r\n".encode())
                sock.recv(64)
            sock.sendall(b"PING\r\n")
            return sock.recv(64).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """A redis-server on a free loopback port, configured by `redis_conf`."""

    def __init__(self, workdir: Path, password: str | None = None) -> None:
        self.binary = require_binaries()[0]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.password = password
        self.conf_path = self.workdir / "redis.conf"
        self.conf_path.write_text(redis_conf(self.port, requirepass=password))
        self.log_path = self.workdir / "redis.log"
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        auth = f":{self.password}@" if self.password else ""
        return f"redis://{auth}{LOOPBACK}:{self.port}/0"

    def start(self, timeout: float = 20) -> RedisServer:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.binary, str(self.conf_path), "--dir",
                                          str(self.workdir)], cwd=self.workdir, stdout=log,
                                         stderr=subprocess.STDOUT)
        try:
            wait_for(lambda: self._alive() and _redis_ping(self.port, self.password), timeout,
                     f"redis-server did not answer on port {self.port}")
        except BaseException:
            self.kill()
            raise
        return self

    def _alive(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited with {self.proc.returncode}: "
                               f"{self.log_path.read_text(errors='replace')[-2000:]}")
        return True

    def stop(self, timeout: float = 20) -> None:
        """SIGTERM (no save: persistence is off) and wait; the port is free afterwards."""
        _end(self.proc, signal.SIGTERM, timeout)
        self.proc = None

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def command(self, *args: str) -> bytes:
        """One command through redis-cli's raw output (for checks and clean-up)."""
        argv = [shutil.which("redis-cli") or "redis-cli", "-p", str(self.port), "--raw"]
        if self.password:
            argv += ["-a", self.password, "--no-auth-warning"]
        return subprocess.run([*argv, *args], check=True, capture_output=True,
                              timeout=10).stdout

    def __enter__(self) -> RedisServer:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc_info) -> None:
        self.kill()


class Nginx:
    """nginx in the foreground (`daemon off`), round robin over `nodes` (ports on loopback),
    everything it writes inside `workdir`."""

    def __init__(self, workdir: Path, node_ports: list[int]) -> None:
        self.binary = require_binaries()[1]
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = free_port()
        self.site = nginx_site(f"{LOOPBACK}:{self.port}",
                               [f"{LOOPBACK}:{port}" for port in node_ports])
        self.conf_path = self.workdir / "nginx.conf"
        self.conf_path.write_text(nginx_conf(self.workdir, self.site))
        self.log_path = self.workdir / "nginx.out"
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 20) -> Nginx:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([self.binary, "-p", str(self.workdir), "-c",
                                          str(self.conf_path)], cwd=self.workdir, stdout=log,
                                         stderr=subprocess.STDOUT)

        def up() -> bool:
            if self.proc.poll() is not None:
                error_log = self.workdir / "error.log"
                errors = error_log.read_text(errors="replace") if error_log.exists() else ""
                raise RuntimeError(f"nginx exited with {self.proc.returncode}: "
                                   f"{self.log_path.read_text(errors='replace')[-2000:]}"
                                   f"{errors[-2000:]}")
            return _listening(self.port)

        try:
            wait_for(up, timeout, f"nginx did not listen on port {self.port}")
        except BaseException:
            self.stop()
            raise
        return self

    def stop(self, timeout: float = 20) -> None:
        _end(self.proc, signal.SIGQUIT, timeout)  # graceful: workers finish their requests
        self.proc = None

    def __enter__(self) -> Nginx:
        return self.start() if self.proc is None else self

    def __exit__(self, *exc_info) -> None:
        self.stop()


__all__ = ["RedisServer", "Nginx", "redis_conf", "nginx_site", "nginx_conf",
           "require_binaries"]
