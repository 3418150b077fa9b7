#!/usr/bin/env python3
"""Load-test client for the OCR server's POST /ocr_service (standard library only).

    python multirequest.py --images samples/ --scenario different --concurrency 8 --requests 200
    python multirequest.py --images samples/ --scenario cached --duration 30 --mode base64 --json

Scenarios: different (a new image or cache key per request), same (one image sent concurrently,
uncached at the start of the run), cached (a warm-up request, then only cache hits), mixed (a
seeded random mix of the three, equally weighted unless --mix says otherwise, e.g.
--mix different=1,cached=4 for 20% uncached requests). Exit code: 0 all succeeded, 1 some failed,
2 usage error. For programs that drive it: --json prints the summary as JSON on stdout, and
--progress-json writes progress as JSON lines on stderr ({"done", "errors", "elapsed_s"}).
"""
from __future__ import annotations

import argparse
import base64
import functools
import http.client
import ipaddress
import json
import math
import mimetypes
import random
import secrets
import sys
import threading
import time
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TextIO
from urllib.parse import urlencode, urlsplit

IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff"})
BASE_SCENARIOS = ("different", "same", "cached")
SCENARIOS = (*BASE_SCENARIOS, "mixed")
MODES = ("upload", "filename", "base64")


@dataclass(frozen=True)
class Result:
    """One finished request. outcome: "ok", an HTTP status ("503") or an error kind ("timeout")."""
    latency_s: float
    outcome: str
    cached: bool = False

    @property
    def ok(self) -> bool:
        return self.outcome == "ok"


@dataclass(frozen=True)
class Planned:
    """What one request sends: an image and extra form options."""
    image: Path
    options: tuple[tuple[str, str], ...] = ()


def percentile(sorted_values: Sequence[float], q: float) -> float | None:
    """The q-th percentile (0..100) of ascending values, interpolating linearly between the
    closest ranks like numpy's default. None for no values: 0.0 would read as a fast server."""
    if not 0 <= q <= 100:
        raise ValueError(f"percentile q must be within 0..100, got {q}")
    if not sorted_values:
        return None
    rank = (len(sorted_values) - 1) * q / 100
    lo, hi = math.floor(rank), math.ceil(rank)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (rank - lo)


def classify_response(status: int, body: bytes) -> tuple[str, bool]:
    """(outcome, cached) of a final response. Only a 200 carrying JSON with "lines" succeeds:
    a proxy's 200 error page must not count as an OCR result."""
    if status != 200:
        return str(status), False
    try:
        doc = json.loads(body)
    except ValueError:
        return "invalid_body", False
    if not isinstance(doc, dict) or not isinstance(doc.get("lines"), list):
        return "invalid_body", False
    return "ok", doc.get("cached") is True


def classify_exception(exc: BaseException) -> str:
    # Order matters: socket.timeout is a TimeoutError is an OSError, and RemoteDisconnected is
    # both a ConnectionResetError and an HTTPException.
    if isinstance(exc, TimeoutError):
        return "timeout"
    if isinstance(exc, OSError):
        return "connection"
    if isinstance(exc, http.client.HTTPException):
        return "protocol"
    return "other"


def summarize(results: Sequence[Result], wall_s: float) -> dict:
    """Counts, errors by status or kind, and latency of the successful requests only (fast
    rejections would make an overloaded server look quick); latencies are None if none succeeded."""
    latencies = sorted(r.latency_s * 1000 for r in results if r.ok)
    errors: dict[str, int] = {}
    for r in results:
        if not r.ok:
            errors[r.outcome] = errors.get(r.outcome, 0) + 1
    mean = sum(latencies) / len(latencies) if latencies else None
    quantiles = {"p50": 50, "p95": 95, "p99": 99, "max": 100, "min": 0}
    latency = {"mean": mean, **{k: percentile(latencies, q) for k, q in quantiles.items()}}
    return {
        "requests": len(results),
        "ok": len(latencies),
        "errors": dict(sorted(errors.items())),
        "cached": sum(1 for r in results if r.ok and r.cached),
        "latency_ms": {k: None if v is None else round(v, 3) for k, v in latency.items()},
        "throughput_rps": round(len(results) / wall_s, 3) if wall_s > 0 else 0.0,
        "wall_s": round(wall_s, 3),
    }


def format_table(summary: dict) -> str:
    lat = summary["latency_ms"]
    errors = "".join(f"  {k}={v}" for k, v in summary["errors"].items())
    rows = [
        ("scenario", f"{summary['scenario']} ({summary['mode']}, "
                     f"concurrency {summary['concurrency']})"),
        ("requests", summary["requests"]),
        ("ok", summary["ok"]),
        ("errors", f"{sum(summary['errors'].values())}{errors}"),
        ("cached", summary["cached"]),
        ("latency ms", "  ".join(f"{k} {'-' if lat[k] is None else f'{lat[k]:.1f}'}"
                                 for k in ("min", "mean", "p50", "p95", "p99", "max"))),
        ("throughput", f"{summary['throughput_rps']:.2f} req/s over {summary['wall_s']:.2f} s"),
    ]
    return "\n".join(f"{name:<12}{value}" for name, value in rows)


def render_progress(done: int, errors: int, elapsed: float, total: int | None,
                    duration: float | None, width: int = 30) -> str:
    if total:
        fraction, count = done / total, f"{done}/{total}"
    else:
        fraction = elapsed / duration if duration else 0.0
        count = f"{done} in {elapsed:.1f}/{duration:g}s"
    filled = int(min(max(fraction, 0.0), 1.0) * width)
    rate = done / elapsed if elapsed > 0 else 0.0
    return f"[{'#' * filled}{'.' * (width - filled)}] {count}  {rate:.1f} req/s  errors {errors}"


def render_progress_json(done: int, errors: int, elapsed: float) -> str:
    return json.dumps({"done": done, "errors": errors, "elapsed_s": round(elapsed, 3)})


def tiny_drop_score(k: int, nonce: int) -> str:
    """drop_score 0.5 + k*1e-9 + nonce*1e-13: a distinct cache key per (request, run) that cannot
    change a result in practice (it moves the threshold by at most 1e-3)."""
    return f"0.500{k % 1_000_000:06d}{nonce % 10_000:04d}"


def parse_mix(text: str) -> tuple[float, ...]:
    """--mix "different=1,cached=4" -> weights in BASE_SCENARIOS order; unnamed parts weigh 0."""
    weights = dict.fromkeys(BASE_SCENARIOS, 0.0)
    for part in text.split(","):
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in weights:
            raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT pairs with NAME in "
                                             f"{', '.join(BASE_SCENARIOS)}, got {part!r}")
        try:
            weight = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name}: weight {value!r} is not a number") from None
        if not (weight >= 0 and math.isfinite(weight)):
            raise argparse.ArgumentTypeError(f"{name}: weight must be finite and >= 0")
        weights[name] = weight
    if not sum(weights.values()) > 0:
        raise argparse.ArgumentTypeError("at least one weight must be positive")
    return tuple(weights.values())


def plan_request(index: int, *, scenario: str, images: Sequence[Path], nonce: int,
                 seed: int, mix: Sequence[float] | None = None) -> Planned:
    if scenario == "mixed":
        # From (seed, index), not a shared generator, so the mix is the same whatever order the
        # threads claim indexes in.
        rng = random.Random(seed * 1_000_003 + index)
        scenario = rng.choice(BASE_SCENARIOS) if mix is None else \
            rng.choices(BASE_SCENARIOS, weights=mix)[0]
    if scenario == "different":
        score = tiny_drop_score(index + 1, nonce)
        return Planned(images[index % len(images)], (("drop_score", score),))
    if scenario == "same":
        return Planned(images[0], (("drop_score", tiny_drop_score(0, nonce)),))
    return Planned(images[0])  # cached: the server's default options, as the warm-up used


def multipart_body(fields: Sequence[tuple[str, str]], file_name: str, data: bytes,
                   boundary: str) -> bytes:
    parts = [f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n{value}\r\n'
             .encode() for name, value in fields]
    safe = file_name.replace('"', "%22").replace("\r", "").replace("\n", "")
    ctype = mimetypes.guess_type(file_name)[0] or "application/octet-stream"
    parts.append(f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                 f'filename="{safe}"\r\nContent-Type: {ctype}\r\n\r\n'.encode() + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts)


def encode_request(mode: str, planned: Planned, payload: bytes | str | None, block: bool,
                   boundary: str) -> tuple[bytes, dict[str, str]]:
    """Body and headers of one POST; payload is the image bytes (upload) or base64 text."""
    fields = [*planned.options, *([] if block else [("block_flag", "false")])]
    if mode == "upload":
        body = multipart_body([("file_type", "file"), *fields], planned.image.name, payload,
                              boundary)
        return body, {"Content-Type": f"multipart/form-data; boundary={boundary}"}
    if mode == "filename":
        body = urlencode([("file_type", "filename"), ("img_src", str(planned.image)), *fields])
        return body.encode(), {"Content-Type": "application/x-www-form-urlencoded"}
    # The only planned options are numeric (drop_score): JSON numbers.
    doc = {"file_type": "base64", "img_src": payload, **{k: float(v) for k, v in planned.options}}
    if not block:
        doc["block_flag"] = False
    return json.dumps(doc).encode(), {"Content-Type": "application/json"}


class Connection:
    """One keep-alive connection; once closed, http.client reopens it on the next request."""

    def __init__(self, scheme: str, host: str, port: int | None, timeout: float) -> None:
        cls = http.client.HTTPSConnection if scheme == "https" else http.client.HTTPConnection
        self._conn = cls(host, port, timeout=timeout)
        self._reusable = False

    def exchange(self, method: str, path: str, body: bytes | None = None,
                 headers: dict[str, str] | None = None) -> tuple[int, bytes]:
        # A kept-alive connection the server closed while idle fails on first reuse; retry that
        # once on a fresh one (as urllib3 does) so idle timeouts don't count as server errors.
        for attempt in (1, 2):
            try:
                self._conn.request(method, path, body=body, headers=headers or {})
                response = self._conn.getresponse()
                data = response.read()
            except BaseException as exc:
                stale = attempt == 1 and self._reusable and isinstance(exc, ConnectionError)
                self.close()
                if not stale:
                    raise
                continue
            self._reusable = not response.will_close
            return response.status, data
        raise AssertionError("unreachable: the second attempt returns or raises")

    def close(self) -> None:
        self._conn.close()
        self._reusable = False


@dataclass(frozen=True)
class Client:
    """Turns planned requests into results: the settings every worker shares (read-only)."""
    url: str
    mode: str
    block: bool
    timeout: float
    poll_interval: float
    payloads: dict[Path, bytes | str]
    boundary: str = field(default_factory=lambda: f"multirequest-{uuid.uuid4().hex}")

    def connect(self) -> Connection:
        parts = urlsplit(self.url)
        return Connection(parts.scheme, parts.hostname, parts.port, self.timeout)

    def execute(self, conn: Connection, planned: Planned) -> Result:
        body, headers = encode_request(self.mode, planned, self.payloads.get(planned.image),
                                       self.block, self.boundary)
        start = time.perf_counter()
        try:
            status, data = conn.exchange("POST", request_path(self.url), body, headers)
            if not self.block and status == 202:
                status, data = self._poll(conn, data, start + self.timeout)
            outcome, cached = classify_response(status, data)
        except Exception as exc:  # every failure is a measurement, not a crash of the tool
            conn.close()
            outcome, cached = classify_exception(exc), False
        return Result(time.perf_counter() - start, outcome, cached)

    def _poll(self, conn: Connection, accepted: bytes, deadline: float) -> tuple[int, bytes]:
        try:
            path = request_path(json.loads(accepted)["result_url"])
        except (ValueError, KeyError, TypeError):
            raise http.client.HTTPException("202 without a result_url") from None
        status, data = 202, accepted
        while status == 202:
            if time.perf_counter() + self.poll_interval > deadline:
                raise TimeoutError("result not ready within --timeout")
            time.sleep(self.poll_interval)
            status, data = conn.exchange("GET", path)
        return status, data


def request_path(url: str) -> str:
    """Path and query of a URL; a relative result_url is relative to the server."""
    parts = urlsplit(url)
    return (parts.path or "/") + (f"?{parts.query}" if parts.query else "")


class Dispatcher:
    """Hands out request indexes until the count or the duration runs out; the one object the
    worker threads share, hence the lock."""

    def __init__(self, limit: int, duration: float | None) -> None:
        self._lock = threading.Lock()
        self._limit = limit
        self._deadline = None if duration is None else time.perf_counter() + duration
        self._next = self._done = self._errors = 0
        self.stop = threading.Event()

    def claim(self) -> int | None:
        with self._lock:
            expired = self._deadline is not None and time.perf_counter() >= self._deadline
            if self.stop.is_set() or expired or self._next >= self._limit:
                return None
            self._next += 1
            return self._next - 1

    def record(self, result: Result) -> None:
        with self._lock:
            self._done += 1
            self._errors += not result.ok

    def counts(self) -> tuple[int, int]:
        with self._lock:
            return self._done, self._errors


def work(dispatcher: Dispatcher, client: Client, plan: Callable[[int], Planned],
         out: list[Result]) -> None:
    conn = client.connect()
    try:
        while (index := dispatcher.claim()) is not None:
            result = client.execute(conn, plan(index))
            out.append(result)
            dispatcher.record(result)
    finally:
        conn.close()


def show_progress(dispatcher: Dispatcher, finished: threading.Event, total: int | None,
                  duration: float | None, stream: TextIO, as_json: bool = False) -> None:
    start = time.perf_counter()
    while True:
        stop = finished.wait(0.2)
        done, errors = dispatcher.counts()
        elapsed = time.perf_counter() - start
        if as_json:
            stream.write(render_progress_json(done, errors, elapsed) + "\n")
        else:
            line = render_progress(done, errors, elapsed, total, duration)
            stream.write(f"\r{line}" + ("\n" if stop else ""))
        stream.flush()
        if stop:
            return


def run_load(args: argparse.Namespace, client: Client,
             plan: Callable[[int], Planned]) -> tuple[list[Result], float]:
    limit = args.max_requests if args.duration is not None else args.requests
    progress = args.progress_json or (args.progress if args.progress is not None
                                      else sys.stderr.isatty())
    dispatcher = Dispatcher(limit, args.duration)
    per_worker: list[list[Result]] = [[] for _ in range(args.concurrency)]
    threads = [threading.Thread(target=work, args=(dispatcher, client, plan, out), daemon=True)
               for out in per_worker]
    finished = threading.Event()
    bar = threading.Thread(target=show_progress, daemon=True, args=(
        dispatcher, finished, None if args.duration else limit, args.duration, sys.stderr,
        args.progress_json))
    start = time.perf_counter()
    for t in threads + ([bar] if progress else []):
        t.start()
    try:
        for t in threads:
            t.join()
    except KeyboardInterrupt:  # let in-flight requests finish, then report what was measured
        dispatcher.stop.set()
        for t in threads:
            t.join()
    wall = time.perf_counter() - start
    finished.set()
    if progress:
        bar.join()
    return [r for out in per_worker for r in out], wall


def is_loopback(host: str) -> bool:
    host = host.strip("[]").rstrip(".").lower()
    if host == "localhost":
        return True
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        return False  # any other name may resolve anywhere
    mapped = getattr(addr, "ipv4_mapped", None)
    return addr.is_loopback or bool(mapped and mapped.is_loopback)


def check_url(url: str, allow_remote: bool) -> str | None:
    """Why the URL is unusable, or None. Remote hosts need --allow-remote so that a typo cannot
    aim a load test at someone else's server."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError on a bad port
    except ValueError as exc:
        return f"bad --url {url!r}: {exc}"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return f"bad --url {url!r}: expected http(s)://host[:port]/path"
    if not allow_remote and not is_loopback(parts.hostname):
        return f"refusing non-loopback host {parts.hostname!r}; pass --allow-remote to test it"
    return None


def find_images(path: Path) -> list[Path]:
    files = [path] if path.is_file() else sorted(path.iterdir()) if path.is_dir() else []
    return [p for p in files if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and validate; usage errors raise SystemExit(2) as argparse does."""
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add = parser.add_argument
    add("--url", default="http://127.0.0.1:8888/ocr_service")
    add("--concurrency", type=int, default=10, help="worker threads, one connection each")
    amount = parser.add_mutually_exclusive_group()
    amount.add_argument("--requests", type=int, help="number of requests (default 100)")
    amount.add_argument("--duration", type=float, help="run for SECONDS instead")
    add("--max-requests", type=int, default=100_000, help="hard cap on requests")
    add("--images", type=Path, required=True, help="directory of images, or one image; "
        "with --mode filename their paths are sent as given")
    add("--scenario", choices=SCENARIOS, default="different")
    add("--mode", choices=MODES, default="upload")
    add("--no-block", action="store_true", help="send block_flag=false, then poll result_url")
    add("--poll-interval", type=float, default=0.05, help="seconds between polls")
    add("--timeout", type=float, default=60.0, help="per request, seconds")
    add("--json", action="store_true", help="print a JSON summary instead of a table")
    add("--seed", type=int, default=0, help="seed of the mixed scenario")
    add("--mix", type=parse_mix, help="weights of the mixed scenario's parts, e.g. "
        "different=1,cached=4 (default: equal)")
    add("--allow-remote", action="store_true", help="allow a host that is not loopback")
    add("--progress", action=argparse.BooleanOptionalAction, default=None,
        help="progress bar on stderr (default: when stderr is a terminal)")
    add("--progress-json", action="store_true", help="progress as JSON lines on stderr "
        "instead of the bar, every 0.2 s and once at the end")
    args = parser.parse_args(argv)
    if args.requests is None and args.duration is None:
        args.requests = 100
    for name in ("concurrency", "max_requests", "poll_interval", "timeout", "requests", "duration"):
        if getattr(args, name) is not None and not getattr(args, name) > 0:
            parser.error(f"--{name.replace('_', '-')} must be positive")
    if args.mix is not None and args.scenario != "mixed":
        parser.error("--mix needs --scenario mixed")
    if args.requests is not None and args.requests > args.max_requests:
        parser.error(f"--requests {args.requests} exceeds --max-requests {args.max_requests}")
    if (problem := check_url(args.url, args.allow_remote)) is not None:
        parser.error(problem)
    return args


def load_payloads(mode: str, images: Sequence[Path]) -> dict[Path, bytes | str]:
    # Read and encode once up front: disk I/O and base64 are not what is being measured.
    if mode == "filename":
        return {}
    raw = {p: p.read_bytes() for p in images}
    if mode == "base64":
        return {p: base64.b64encode(data).decode("ascii") for p, data in raw.items()}
    return raw


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = parse_args(argv)
    except SystemExit as exc:  # return rather than exit, so callers and tests get the code
        return exc.code if isinstance(exc.code, int) else 2
    try:
        images = find_images(args.images)[: 1 if args.scenario in ("same", "cached") else None]
        payloads = load_payloads(args.mode, images)
    except OSError as exc:
        print(f"multirequest: cannot read images: {exc}", file=sys.stderr)
        return 2
    if not images:
        print(f"multirequest: no {', '.join(sorted(IMAGE_SUFFIXES))} files in {args.images}",
              file=sys.stderr)
        return 2
    client = Client(args.url, args.mode, not args.no_block, args.timeout, args.poll_interval,
                    payloads)
    # Per run and deliberately not from --seed: a rerun must not be served from the last run's
    # cache entries.
    nonce = secrets.randbelow(10_000)
    plan = functools.partial(plan_request, scenario=args.scenario, images=images, nonce=nonce,
                             seed=args.seed, mix=args.mix)
    if args.scenario in ("cached", "mixed"):
        conn = client.connect()
        warm = client.execute(conn, Planned(images[0]))
        conn.close()
        if not warm.ok:
            print(f"multirequest: warm-up request failed ({warm.outcome})", file=sys.stderr)
    results, wall = run_load(args, client, plan)
    summary = {**summarize(results, wall), "scenario": args.scenario, "mode": args.mode,
               "concurrency": args.concurrency}
    print(json.dumps(summary, indent=2) if args.json else format_table(summary))
    return 0 if not summary["errors"] else 1


if __name__ == "__main__":
    sys.exit(main())
