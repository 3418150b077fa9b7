"""The soak's attacks phase: one attack class at a time against a live server, loopback only,
while normal clients keep sending ordinary requests.

A server of its own (bench/soak.py starts this phase after the soak, or alone with
--attacks-only): `--workers` workers, an API token (so the lowercase-scheme check means
something; every other request carries the right header), a small body limit, a short task
timeout, and a temporary folder in service.filename_roots for the sandbox race.

Timeline: boot, a baseline of --baseline-seconds with normal clients only, then each class in
turn; before each class the pool gets up to 30 s to be back at full strength, and the normal
clients are measured over at least 5 s per class (a short class's aftermath). Every class runs
under a deadline (a multiple of --attack-seconds) on a thread of its own that is abandoned if
it overruns, so the phase always ends: about 3.5 minutes against today's server, 8 at the very
most with the default deadlines. Per class it records what was sent, the statuses seen, the
normal clients' p50/p95 latency and errors during the class against the baseline, and the
workers' peak RSS, sampled every 0.05 s. A worker above --attack-rss-limit MiB is SIGKILLed by
the soak itself (a "guard kill"): a memory bomb must not take the shared machine down with it.

Classes (ATTACKS):
- memory: det_limit_type=min with det_limit_side_len=4096 on a 200x100 PNG; use_det=false on
  20,000x20 and 60,000x20 PNGs; a 20x2,000,000 PNG; one after the other.
- stopped_worker: SIGSTOP the idlest worker, send three ~4 MB images, probe /health every
  0.5 s; SIGCONT at the end. The server should kill and replace the stopped worker.
- slow_clients: --slow-sockets connections that send a POST's headers with a Content-Length,
  then dribble one body byte a second (half of them) or nothing (the other half).
- sandbox_race: a thread swaps a directory on the path to a file inside the roots for a
  symlink to an outside folder holding a file of the same name, while --race-requests requests
  ask for the file; an answer with the outside image's size is an outside read.
- hostile_bodies: JSON nested 100,000 deep, a 5,000-digit JSON integer, a filename with a
  300-byte component, a chunked body over the limit, headers over 64 KB, and
  `Authorization: bearer <token>` (lowercase scheme, right token: to be accepted).

Imported by bench/soak.py, which puts the repository root on sys.path first.
"""

from __future__ import annotations

import argparse
import collections
import http.client
import io
import json
import os
import selectors
import signal
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import psutil
from PIL import Image, ImageDraw

from multirequest import percentile
from server.testing import LOOPBACK, RssSampler, ServerProcess, cpu_seconds, multipart, request

SAMPLES = Path(__file__).resolve().parent.parent / "docs" / "samples"
ATTACKS = ("memory", "stopped_worker", "slow_clients", "sandbox_race", "hostile_bodies")
# Each class's deadline, in units of --attack-seconds. Slow clients get 3: longer than a body
# timeout of 60 s (what the hardened server's default is), so its 408s or closes are seen.
BUDGET = {"memory": 3, "stopped_worker": 2, "slow_clients": 3, "sandbox_race": 1,
          "hostile_bodies": 1}
TOKEN = "soak-attack-token"
MAX_BODY = 8 * 1024 * 1024
RECOVERY_S = 30
MIN_WINDOW_S = 5  # the shortest window over which the normal clients are measured per class
INSIDE_SIZE, OUTSIDE_SIZE = (64, 48), (96, 64)  # the race's two images tell which was read


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add = parser.add_argument_group("attacks phase").add_argument
    add("--attack-seconds", type=float, default=30, help="deadline unit of one attack class "
        "(memory and slow_clients 3x, stopped_worker 2x, the others 1x; default %(default)s)")
    add("--baseline-seconds", type=float, default=10, help="normal clients alone, before the "
        "attacks (default %(default)s)")
    add("--attack-clients", type=int, default=2, help="normal clients during the attacks")
    add("--attack-task-timeout", type=float, default=20, help="ocr.process.task_timeout of "
        "the attacked server (default %(default)s)")
    add("--attack-rss-limit", type=float, default=3072, metavar="MIB", help="a worker above "
        "this RSS is killed by the soak (default %(default)s MiB)")
    add("--slow-sockets", type=int, default=2000, help="slow-client connections")
    add("--race-requests", type=int, default=1000, help="requests of the sandbox race")


def parse_classes(parser: argparse.ArgumentParser, text: str | None) -> list[str]:
    if not text:
        return list(ATTACKS)
    chosen = [name.strip() for name in text.split(",") if name.strip()]
    unknown = set(chosen) - set(ATTACKS)
    if unknown or not chosen:
        parser.error(f"--only: choose from {', '.join(ATTACKS)}")
    return chosen


def log(message: str) -> None:
    print(f"[attacks {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------- normal clients

class NormalClients:
    """Threads that alternate a cache hit and an uncached read of the receipt, each on a fresh
    connection, and record every request as (start, end, kind, status or error kind).

    Paused between attack classes until the requests in flight have ended, so that every
    request belongs to the one class (or the baseline) in whose window it started."""

    def __init__(self, server: ServerProcess, count: int, timeout: float = 30) -> None:
        self.server, self.timeout = server, timeout
        self.image = (SAMPLES / "receipt.jpg").read_bytes()
        self.records: list[tuple[float, float, str, str]] = []  # list.append is atomic
        self._state = threading.Condition()  # guards the three below
        self._paused = self._stopped = False
        self._in_flight = 0
        self._threads = [threading.Thread(target=self._run, args=(i,), daemon=True)
                         for i in range(count)]
        self._serial = iter(range(10**9))

    def _turn(self) -> bool:
        """Waits while paused; False once stopped, else counts one request in flight."""
        with self._state:
            self._state.wait_for(lambda: not self._paused or self._stopped)
            self._in_flight += not self._stopped
            return not self._stopped

    def _run(self, index: int) -> None:
        uncached = bool(index % 2)
        while self._turn():
            fields = {"file_type": "file"}
            if uncached:  # a distinct cache key that cannot change the result
                fields["drop_score"] = f"0.5{next(self._serial):09d}"
            body, ctype = multipart(fields, self.image)
            start = time.monotonic()
            try:
                status, _, _ = request(self.server.port, "POST", "/ocr_service", body,
                                       {**self.server.headers, "Content-Type": ctype},
                                       self.timeout)
                outcome = str(status)
            except TimeoutError:
                outcome = "timeout"
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
            self.records.append((start, time.monotonic(), "uncached" if uncached else "cached",
                                 outcome))
            uncached = not uncached
            with self._state:
                self._in_flight -= 1
                self._state.notify_all()

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def pause(self, drain: float = 0) -> bool:
        """No new requests; waits up to `drain` seconds for those in flight to end (True if
        they all did)."""
        with self._state:
            self._paused = True
            return self._state.wait_for(lambda: self._in_flight == 0, timeout=drain)

    def resume(self) -> None:
        with self._state:
            self._paused = False
            self._state.notify_all()

    def stop(self) -> None:
        with self._state:
            self._stopped = True
            self._state.notify_all()
        for thread in self._threads:
            thread.join(self.timeout + 5)

    def window(self, start: float, end: float) -> dict:
        """The requests that started within [start, end): count, errors, and p50/p95 of the
        200s of each kind (uncached reads go through a worker, cache hits only the front end)."""
        chosen = [r for r in self.records if start <= r[0] < end]
        summary = {"requests": len(chosen), "errors": sum(r[3] != "200" for r in chosen),
                   "statuses": dict(collections.Counter(r[3] for r in chosen))}
        for kind in ("uncached", "cached"):
            ok = sorted((r[1] - r[0]) * 1000 for r in chosen if r[2] == kind and r[3] == "200")
            for q in (50, 95):
                value = percentile(ok, q)
                summary[f"{kind}_p{q}_ms"] = None if value is None else round(value, 1)
        return summary


class GuardedSampler(RssSampler):
    """Samples the server's tree and SIGKILLs a worker above `limit` bytes."""

    def __init__(self, pid: int, interval: float, limit: float) -> None:
        super().__init__(pid, interval)
        self.limit = limit
        self.guard_kills: list[dict] = []

    def take(self) -> dict:
        sample = super().take()
        for pid, (role, rss) in sample["rss"].items():
            if role == "worker" and rss > self.limit:
                try:
                    os.kill(pid, signal.SIGKILL)
                    self.guard_kills.append({"pid": pid, "rss_mib": round(rss / 2**20)})
                except ProcessLookupError:
                    pass
        return sample

    def worker_peak_mib(self, first: int = 0, last: int | None = None) -> float:
        """The largest worker RSS in samples[first:last], MiB."""
        return round(max((rss for s in self.samples[first:last] for role, rss in s["rss"].values()
                          if role == "worker"), default=0) / 2**20, 1)


# ----------------------------------------------------------------------------- raw HTTP

def parse_response(data: bytes) -> dict:
    """Status and whether the body is our JSON error shape, from raw response bytes."""
    head, sep, body = data.partition(b"\r\n\r\n")
    first = head.split(b"\r\n", 1)[0].split()
    status = int(first[1]) if len(first) > 1 and first[0].startswith(b"HTTP/") and \
        first[1].isdigit() else None
    try:
        json_error = isinstance(json.loads(body).get("error"), dict)
    except (ValueError, AttributeError):
        json_error = False
    return {"status": status, "json_error": json_error}


def _complete(data: bytes) -> bool:
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        return False
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length" and value.strip().isdigit():
            return len(body) >= int(value)
    return False  # no length: the answer ends when the server closes


def raw_exchange(port: int, head: bytes, chunks: Iterable[bytes] = (),
                 timeout: float = 15.0) -> dict:
    """Sends `head`, then `chunks` until the server says something, and reads the answer until
    it is complete, the server closes or `timeout` passes. Adds "outcome": answered, closed
    (no answer), reset or timeout, the bytes sent and the seconds taken."""
    started = time.monotonic()
    deadline = started + timeout
    sent, data, outcome = 0, b"", "timeout"
    try:
        sock = socket.create_connection((LOOPBACK, port), timeout=timeout)
    except OSError as exc:
        return {"status": None, "json_error": False, "outcome": f"connect {type(exc).__name__}",
                "sent": 0, "seconds": round(time.monotonic() - started, 2)}
    with sock:
        try:
            sock.sendall(head)
            sent += len(head)
            for chunk in chunks:
                # An early answer (413, say) ends the sending: read it before the server closes.
                if _readable(sock):
                    break
                if time.monotonic() > deadline:
                    break
                sock.sendall(chunk)
                sent += len(chunk)
        except OSError:
            pass  # the server stopped reading: what it answered is still to be read
        try:
            while not _complete(data):
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                chunk = sock.recv(65536)
                if not chunk:
                    outcome = "answered" if data else "closed"
                    break
                data += chunk
            else:
                outcome = "answered"
        except TimeoutError:
            outcome = "answered" if data else "timeout"
        except OSError:
            outcome = "answered" if data else "reset"
    return {**parse_response(data), "outcome": outcome, "sent": sent,
            "seconds": round(time.monotonic() - started, 2)}


def _readable(sock: socket.socket) -> bool:
    with selectors.DefaultSelector() as selector:
        selector.register(sock, selectors.EVENT_READ)
        return bool(selector.select(0))


def http_head(method: str, headers: dict[str, str], path: str = "/ocr_service") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", "Host: 127.0.0.1", *(f"{k}: {v}" for k, v in
                                                             headers.items())]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


def statuses_of(results: Iterable[dict]) -> dict:
    return dict(collections.Counter(str(r["status"] or r["outcome"]) for r in results))


# ----------------------------------------------------------------------------- images

def png(width: int, height: int) -> bytes:
    """A white greyscale PNG with a few dark bars (something for the detector to look at)."""
    image = Image.new("L", (width, height), 255)
    draw = ImageDraw.Draw(image)
    step = max(width, height) // 8 or 1
    for offset in range(step // 2, max(width, height), step):
        if width >= height:
            draw.rectangle([offset, height // 4, offset + step // 4, 3 * height // 4], fill=0)
        else:
            draw.rectangle([width // 4, offset, 3 * width // 4, offset + step // 4], fill=0)
    out = io.BytesIO()
    image.save(out, "PNG")
    return out.getvalue()


def four_mb_image(side: int) -> bytes:
    """The receipt scaled to side x side as an uncompressed BMP: ~4 MB at side 1180."""
    image = Image.open(SAMPLES / "receipt.jpg").convert("RGB").resize((side, side))
    out = io.BytesIO()
    image.save(out, "BMP")
    return out.getvalue()


# ----------------------------------------------------------------------------- the classes

@dataclass
class Attack:
    """What a class gets: the server, the normal clients, the options, its folder and its
    deadline."""
    server: ServerProcess
    clients: NormalClients
    args: argparse.Namespace
    workdir: Path
    deadline: float
    sampler: GuardedSampler | None = None

    def remaining(self, cap: float | None = None) -> float:
        left = max(0.5, self.deadline - time.monotonic())
        return left if cap is None else min(cap, left)

    def upload(self, image: bytes, fields: dict, timeout: float) -> dict:
        body, ctype = multipart({"file_type": "file", **fields}, image)
        head = http_head("POST", {**self.server.headers, "Content-Type": ctype,
                                  "Content-Length": str(len(body))})
        return raw_exchange(self.server.port, head + body, timeout=timeout)


def memory_bombs(attack: Attack) -> dict:
    bombs = [("det min/4096 on a 200x100 PNG", (200, 100),
              {"det_limit_type": "min", "det_limit_side_len": "4096"}),
             ("use_det=false on a 20,000x20 PNG", (20_000, 20), {"use_det": "false"}),
             ("use_det=false on a 60,000x20 PNG", (60_000, 20), {"use_det": "false"}),
             ("a 20x2,000,000 PNG", (20, 2_000_000), {})]
    results = []
    for name, size, fields in bombs:
        if time.monotonic() >= attack.deadline:
            results.append({"bomb": name, "status": None, "outcome": "not sent (deadline)"})
            continue
        first = len(attack.sampler.samples)
        result = attack.upload(png(*size), fields,
                               attack.remaining(attack.args.attack_task_timeout + 15))
        peak = attack.sampler.worker_peak_mib(first)
        results.append({"bomb": name, **result, "worker_peak_mib": peak})
        log(f"  {name}: {result['status'] or result['outcome']} in {result['seconds']} s, "
            f"worker peak {peak:.0f} MiB")
    statuses = statuses_of(results)
    kills = attack.sampler.guard_kills
    return {"sent": "4 memory bombs, one after the other", "statuses": statuses,
            "details": results,
            "expected": "each answered without a 5xx; no worker near the RSS guard",
            "met": all(r["status"] is not None and r["status"] < 500 for r in results)
            and not kills}


def stopped_worker(attack: Attack) -> dict:
    server = attack.server
    images = [four_mb_image(1180 + 10 * i) for i in range(3)]
    answers: list[dict] = []
    threads = [threading.Thread(target=lambda data=data: answers.append(attack.upload(
        data, {}, attack.remaining()))) for data in images]
    # The normal clients keep the workers busy most of the time: hold them until the workers
    # are idle, stop one, and let the three images reach the pool first, so that one of them
    # (not a small normal request) is what the stopped worker gets.
    attack.clients.pause(drain=10)
    try:
        victim, idle = idlest_worker(server, time.monotonic() + 10)
        log(f"  SIGSTOP worker {victim.pid} ({'idle' if idle else 'busy: none was idle'})")
        victim.suspend()
        for thread in threads:
            thread.start()
        time.sleep(1.0)  # 12 MB over loopback: the uploads are in well before this
    finally:
        attack.clients.resume()
    probes: list[tuple[float, str]] = []
    try:
        while time.monotonic() < attack.deadline:
            started = time.monotonic()
            try:
                outcome = str(request(server.port, "GET", "/health", timeout=2)[0])
            except TimeoutError:
                outcome = "timeout"
            except (OSError, http.client.HTTPException) as exc:
                outcome = type(exc).__name__
            probes.append((round(time.monotonic() - started, 3), outcome))
            if _gone(victim) and not any(t.is_alive() for t in threads):
                break
            time.sleep(0.5)  # the probe interval
        for thread in threads:
            thread.join(attack.remaining())
    finally:
        resumed = not _gone(victim)
        if resumed:  # SIGCONT: the server did not kill it
            try:
                victim.resume()
            except psutil.NoSuchProcess:
                resumed = False
    replaced = not resumed and victim.pid not in server.worker_pids()
    failed = [outcome for _, outcome in probes if outcome != "200"]
    return {"sent": f"SIGSTOP {'idle' if idle else 'busy'} worker {victim.pid}; 3 images of "
                    f"{len(images[0]) / 1e6:.1f} MB; {len(probes)} /health probes",
            "statuses": statuses_of(answers),
            "details": {"victim": victim.pid, "victim_was_idle": idle,
                        "replaced_by_server": replaced, "sigcont_sent": resumed,
                        "health_probes": len(probes), "health_failures": len(failed),
                        "health_max_s": max((s for s, _ in probes), default=None),
                        "answers": answers},
            "expected": "/health answers throughout; the stopped worker is killed and "
                        "replaced; the images get 200 (or 504)",
            "met": not failed and replaced and len(answers) == 3
            and all(a["status"] in (200, 504) for a in answers)}


def idlest_worker(server: ServerProcess, deadline: float) -> tuple[psutil.Process, bool]:
    """A worker that used no CPU over a 0.1 s window (tried until `deadline`), else the least
    busy one; and whether it was idle."""
    while True:
        workers = server.workers()
        before = {w.pid: cpu_seconds([w]) for w in workers}
        time.sleep(0.1)  # the measuring window
        used = {w.pid: cpu_seconds([w]) - before[w.pid] for w in workers}
        victim = min(workers, key=lambda w: used[w.pid])
        if used[victim.pid] < 0.005 or time.monotonic() > deadline:
            return victim, used[victim.pid] < 0.005


def _gone(proc: psutil.Process) -> bool:
    try:
        return proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def slow_clients(attack: Attack) -> dict:
    count = min(attack.args.slow_sockets, attack.args.fd_limit - 512)
    length = 1_000_000
    selector = selectors.DefaultSelector()
    state: dict[socket.socket, dict] = {}
    connect_errors = collections.Counter()
    for index in range(count):
        if time.monotonic() >= attack.deadline:
            break
        try:
            sock = socket.create_connection((LOOPBACK, attack.server.port), timeout=2)
            sock.sendall(http_head("POST", {**attack.server.headers,
                                            "Content-Type": "application/octet-stream",
                                            "Content-Length": str(length)}))
        except OSError as exc:
            connect_errors[type(exc).__name__] += 1
            continue
        sock.setblocking(False)
        state[sock] = {"dribble": index % 2 == 0, "data": b"", "end": None}
        selector.register(sock, selectors.EVENT_READ)
    log(f"  {len(state)} slow sockets open")
    next_drip = time.monotonic()
    while time.monotonic() < attack.deadline and selector.get_map():
        if time.monotonic() >= next_drip:
            for sock, info in state.items():
                if info["dribble"] and info["end"] is None:
                    try:
                        sock.send(b"x")
                    except OSError:
                        pass  # a closed socket shows as readable with no data
            next_drip += 1.0
        for key, _ in selector.select(timeout=0.2):
            sock, info = key.fileobj, state[key.fileobj]
            try:
                chunk = sock.recv(65536)
            except BlockingIOError:
                continue
            except OSError:
                chunk, info["end"] = b"", "reset"
            info["data"] += chunk
            if not chunk:
                info["end"] = info["end"] or "closed"
                selector.unregister(sock)
    outcomes = collections.Counter()
    for sock, info in state.items():
        response = parse_response(info["data"])
        if response["status"] is not None:
            label = f"{response['status']}{' json' if response['json_error'] else ''}"
        else:
            label = info["end"] or "still open"
        outcomes[("dribble " if info["dribble"] else "withhold ") + label] += 1
        sock.close()
    selector.close()
    outcomes.update({f"connect {k}": v for k, v in connect_errors.items()})
    answered = sum(v for k, v in outcomes.items() if "still open" not in k
                   and not k.startswith("connect"))
    return {"sent": f"{len(state)} sockets: POST headers with Content-Length {length:,}, then "
                    "1 byte/s (half) or nothing (half)",
            "statuses": dict(outcomes),
            "details": {"opened": len(state), "answered_or_closed": answered,
                        "fd_limit": attack.args.fd_limit},
            "expected": "each socket gets a 408/503 JSON answer or a close; normal clients "
                        "served without errors",
            "met": answered == len(state) and not connect_errors}


def race_dirs(workdir: Path) -> tuple[Path, Path]:
    """The race's root (in service.filename_roots) and the outside folder."""
    return workdir / "race-root", workdir / "race-outside"


def prepare_race(workdir: Path) -> Path:
    """<root>/sub/page.png inside the roots, <outside>/page.png (the "secret") not; the root."""
    root, outside = race_dirs(workdir)
    (root / "sub").mkdir(parents=True)
    outside.mkdir()
    Image.new("L", INSIDE_SIZE, 255).save(root / "sub" / "page.png")
    Image.new("L", OUTSIDE_SIZE, 255).save(outside / "page.png")
    return root


def sandbox_race(attack: Attack) -> dict:
    root, outside = race_dirs(attack.workdir)
    sub, hold = root / "sub", root / "sub.hold"
    target = str(sub / "page.png")
    swaps = 0
    stop = threading.Event()

    def swap() -> None:
        nonlocal swaps
        try:
            while not stop.is_set():
                os.rename(sub, hold)
                os.symlink(outside, sub)
                os.unlink(sub)
                os.rename(hold, sub)
                swaps += 1
        finally:  # whatever stopped it, leave the real folder in place
            if hold.exists():
                if sub.is_symlink():
                    os.unlink(sub)
                os.rename(hold, sub)

    results = collections.Counter()
    lock = threading.Lock()
    claimed = iter(range(attack.args.race_requests))
    body = json.dumps({"file_type": "filename", "filename": target}).encode()
    headers = {**attack.server.headers, "Content-Type": "application/json"}

    def ask() -> None:
        for _ in claimed:
            if time.monotonic() >= attack.deadline:
                return
            try:
                status, _, data = request(attack.server.port, "POST", "/ocr_service", body,
                                          headers, timeout=attack.remaining(30))
                label = str(status)
                if status == 200:
                    doc = json.loads(data)
                    size = (doc.get("width"), doc.get("height"))
                    label = "200 outside" if size == OUTSIDE_SIZE else \
                        "200 inside" if size == INSIDE_SIZE else f"200 {size}"
            except (OSError, http.client.HTTPException, ValueError) as exc:
                label = type(exc).__name__
            with lock:
                results[label] += 1

    swapper = threading.Thread(target=swap, daemon=True)
    swapper.start()
    askers = [threading.Thread(target=ask, daemon=True) for _ in range(8)]
    for thread in askers:
        thread.start()
    for thread in askers:
        thread.join(attack.remaining())
    stop.set()
    swapper.join(5)
    outside_reads = results["200 outside"]
    return {"sent": f"{sum(results.values())} filename requests for {target} during "
                    f"{swaps} swaps of {sub.name}/ for a symlink to an outside folder",
            "statuses": dict(results),
            "details": {"swaps": swaps, "outside_reads": outside_reads,
                        "requests": sum(results.values())},
            "expected": "0 outside reads", "met": outside_reads == 0}


def hostile_bodies(attack: Attack) -> dict:
    auth = attack.server.headers
    receipt = (SAMPLES / "receipt.jpg").read_bytes()

    def post_json(text: str) -> tuple[bytes, list[bytes]]:
        body = text.encode()
        return http_head("POST", {**auth, "Content-Type": "application/json",
                                  "Content-Length": str(len(body))}) + body, []

    def chunked_over_limit() -> tuple[bytes, Iterable[bytes]]:
        chunk = b"0" * 65536
        count = MAX_BODY // len(chunk) + 16
        frames = (b"%x\r\n%s\r\n" % (len(chunk), chunk) for _ in range(count))
        return http_head("POST", {**auth, "Content-Type": "application/octet-stream",
                                  "Transfer-Encoding": "chunked"}), \
            [*frames, b"0\r\n\r\n"]

    def big_headers() -> tuple[bytes, list[bytes]]:
        return http_head("GET", {**auth, "X-Padding": "a" * 70_000}, "/ready"), []

    def lowercase_bearer() -> tuple[bytes, list[bytes]]:
        body, ctype = multipart({"file_type": "file"}, receipt)
        return http_head("POST", {"Authorization": f"bearer {TOKEN}", "Content-Type": ctype,
                                  "Content-Length": str(len(body))}) + body, []

    cases: list[tuple[str, Callable[[], tuple[bytes, Iterable[bytes]]], set, bool]] = [
        ("JSON nested 100,000 deep",
         lambda: post_json('{"img_src": ' + "[" * 100_000 + "]" * 100_000 + "}"), {400}, True),
        ("a 5,000-digit JSON integer",
         lambda: post_json('{"file_type": "base64", "img_src": "iVBORw0K", '
                           '"det_limit_side_len": ' + "7" * 5000 + "}"), {400}, True),
        ("a filename with a 300-byte component",
         lambda: post_json(json.dumps({"file_type": "filename",
                                       "filename": "a" * 300 + ".png"})), {400, 403, 404},
         True),
        (f"a chunked body over max_body_size ({MAX_BODY >> 20} MiB)", chunked_over_limit,
         {413}, True),
        ("headers over 64 KB", big_headers, {400, 431, None}, False),
        ("Authorization: bearer <right token>", lowercase_bearer, {200}, False),
    ]
    results = []
    for name, build, expected, needs_json in cases:
        if time.monotonic() >= attack.deadline:
            results.append({"case": name, "status": None, "outcome": "not sent (deadline)",
                            "met": False})
            continue
        head, chunks = build()
        result = raw_exchange(attack.server.port, head, chunks, attack.remaining(15))
        met = result["status"] in expected and (result["json_error"] or not needs_json) and \
            (result["status"] is not None or result["outcome"] in ("closed", "reset"))
        results.append({"case": name, **result, "met": met})
        log(f"  {name}: {result['status'] or result['outcome']}"
            f"{' (JSON error)' if result['json_error'] else ''}")
    return {"sent": f"{len(results)} hostile requests",
            "statuses": {r["case"]: f"{r['status'] or r['outcome']}"
                         f"{' json' if r.get('json_error') else ''}" for r in results},
            "details": results,
            "expected": "400 JSON, 400 JSON, 400/403/404 JSON, 413 JSON, 431 or a close, 200",
            "met": all(r["met"] for r in results)}


CLASSES: dict[str, Callable[[Attack], dict]] = {
    "memory": memory_bombs, "stopped_worker": stopped_worker, "slow_clients": slow_clients,
    "sandbox_race": sandbox_race, "hostile_bodies": hostile_bodies}


# ----------------------------------------------------------------------------- the phase

def run_class(name: str, attack: Attack) -> dict:
    """One class under its deadline, on a thread that is abandoned if it overruns."""
    box: dict = {}

    def target() -> None:
        try:
            box["row"] = CLASSES[name](attack)
        except Exception as exc:  # an attack that breaks is a result, not the end of the soak
            box["row"] = {"sent": "-", "statuses": {}, "error": repr(exc)[:300],
                          "expected": "-", "met": False}

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(attack.deadline - time.monotonic() + 15)
    if thread.is_alive():
        return {"sent": "-", "statuses": {}, "error": "overran its deadline; abandoned",
                "expected": "-", "met": False}
    return box["row"]


def wait_for_full_pool(server: ServerProcess, size: int, timeout: float) -> float | None:
    """Seconds until /ready reports every worker ready, or None after `timeout`."""
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        try:
            if server.get_json("/ready", timeout=2)[1].get("workers") == size:
                return round(time.monotonic() - started, 1)
        except (OSError, ValueError):
            pass
        time.sleep(0.5)  # polling observable server state, bounded by the timeout
    return None


def run_attacks(args: argparse.Namespace, workdir: Path) -> dict:
    started = time.monotonic()
    race_root = prepare_race(workdir)
    server = ServerProcess(workdir, {
        "ocr.process.number": args.workers, "ocr.process.threads": 1,
        "ocr.process.task_timeout": args.attack_task_timeout,
        "web_server.api_token": TOKEN, "web_server.max_body_size": MAX_BODY,
        "web_server.request_timeout": 120, "service.filename_roots": [str(race_root)]},
        name="attacks")
    rows = []
    with server.start():
        log(f"server ready in {server.ready_s:.1f} s; baseline {args.baseline_seconds:g} s")
        clients = NormalClients(server, args.attack_clients)
        clients.start()
        baseline = (time.monotonic(), time.monotonic() + args.baseline_seconds)
        time.sleep(args.baseline_seconds)  # the baseline window: normal clients alone
        for name in args.attack_list:
            clients.pause(drain=clients.timeout)  # what started in the last window ends there
            recovery = wait_for_full_pool(server, args.workers, RECOVERY_S)
            clients.resume()
            budget = BUDGET[name] * args.attack_seconds
            log(f"{name} (deadline {budget:g} s)")
            attack = Attack(server, clients, args, workdir, time.monotonic() + budget)
            attack.sampler = GuardedSampler(server.pid, 0.05, args.attack_rss_limit * 2**20)
            with attack.sampler:
                begun = time.monotonic()
                row = run_class(name, attack)
                ended = time.monotonic()
                # A short class's window stays open a little: its aftermath counts too.
                time.sleep(max(0.0, MIN_WINDOW_S - (ended - begun)))
            rows.append({"attack": name, **row, "window": (begun, time.monotonic()),
                         "seconds": round(ended - begun, 1),
                         "pool_recovery_s_before": recovery,
                         "worker_peak_mib": attack.sampler.worker_peak_mib(),
                         "guard_kills": attack.sampler.guard_kills})
            log(f"  {name}: {'met' if row['met'] else 'NOT met'}; statuses {row['statuses']}")
        clients.stop()
        exit_code = server.stop(timeout=60)
    base = clients.window(*baseline)
    for row in rows:
        row["normal"] = clients.window(*row.pop("window"))
        if row["attack"] == "slow_clients":  # normal clients must be served meanwhile
            row["met"] = row["met"] and row["normal"]["errors"] == 0
    result = {"server": {"workers": args.workers, "task_timeout": args.attack_task_timeout,
                         "max_body_size": MAX_BODY, "exit_code": exit_code,
                         "ready_s": round(server.ready_s, 1),
                         "log_tail": server.log_tail(20).splitlines()},
              "baseline": base, "classes": rows,
              "elapsed_s": round(time.monotonic() - started, 1)}
    result["table"] = table(result)
    return result


def table(result: dict) -> str:
    def latency(normal: dict) -> str:
        return " / ".join("-" if normal[key] is None else f"{normal[key]:.0f}" for key in
                          ("uncached_p50_ms", "uncached_p95_ms", "cached_p50_ms",
                           "cached_p95_ms"))

    base = result["baseline"]
    lines = [f"Attacks, {result['server']['workers']} workers. Normal clients alone (baseline): "
             f"{base['requests']} requests, {base['errors']} errors, uncached p50 / p95, cache "
             f"hit p50 / p95: {latency(base)} ms. Server exit code "
             f"{result['server']['exit_code']}; {result['elapsed_s']:.0f} s in all.", "",
             "| attack | sent | statuses seen | normal: requests / errors | normal: uncached "
             "p50 / p95, cache hit p50 / p95 ms | worker peak RSS MiB | expected | met |",
             "|---|---|---|---|---|---|---|---|"]
    for row in result["classes"]:
        normal = row["normal"]
        statuses = ", ".join(f"{k}: {v}" for k, v in row["statuses"].items()) or \
            row.get("error", "-")
        guard = f" ({len(row['guard_kills'])} guard kills)" if row["guard_kills"] else ""
        lines.append(f"| {row['attack']} | {row['sent']} | {statuses} | {normal['requests']} "
                     f"/ {normal['errors']} | {latency(normal)} | "
                     f"{row['worker_peak_mib']:.0f}{guard} | {row['expected']} | "
                     f"{'yes' if row['met'] else 'NO'} |")
    return "\n".join(lines)
