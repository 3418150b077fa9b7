"""Small real worker handlers for pool tests: they boot in a blink and misbehave on demand."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from pathlib import Path

from server.pool import PoolObserver


class MisbehavingHandler:
    def __init__(self, spec: dict) -> None:
        if spec.get("boot_error"):
            raise RuntimeError("model files are missing (test)")
        if spec.get("boot_crash"):
            os._exit(3)

    def __call__(self, payload: dict) -> dict:
        kind = payload["kind"]
        if kind == "echo":
            return {"pid": os.getpid(), "value": payload.get("value")}
        if kind == "raise":
            raise ValueError("this input always fails")
        if kind == "hang":
            while True:  # a worker stuck in native code, as far as the pool can tell
                time.sleep(3600)
        if kind == "crash":
            os.kill(os.getpid(), signal.SIGKILL)
        if kind == "sleep":
            time.sleep(payload["seconds"])
            return {"pid": os.getpid(), "value": payload.get("value")}
        if kind == "big":
            return {"pid": os.getpid(), "size": len(payload["data"])}
        if kind == "grow":  # hold on to memory, so the worker's RSS after the job is high
            self.hoard = bytearray(payload["mb"] * 2**20)
            self.hoard[::4096] = b"x" * len(self.hoard[::4096])
            return {"pid": os.getpid()}
        if kind == "hang_first_time":
            # First attempt: leave a mark, tell the test (through a FIFO, whose open blocks
            # until the test reads) and hang until killed. The retry finds the mark and answers.
            marker = Path(payload["marker"])
            if not marker.exists():
                marker.write_text(str(os.getpid()))
                with open(payload["fifo"], "w") as fifo:
                    fifo.write(str(os.getpid()))
                while True:
                    time.sleep(3600)
            return {"pid": os.getpid(), "retried": True}
        raise AssertionError(kind)


class EventLog(PoolObserver):
    """Records pool events by name ("started", "ready", "dispatch", "done", "exit", "refused",
    "fatal") so a test can wait for one instead of sleeping; `hooks` run on each event."""

    def __init__(self, pool=None) -> None:
        self.pool = pool
        self.seen: list[str] = []
        # (lane, payload's "value", background jobs running once this one went out)
        self.dispatches: list[tuple] = []
        self.exits: list[tuple[int, str]] = []  # (pid, reason)
        self.hooks: list = []
        self._changed = asyncio.Event()
        if pool is not None:
            pool.observers.append(self)

    def _event(self, name: str, worker=None) -> None:
        self.seen.append(name)
        self._changed.set()
        for hook in list(self.hooks):
            hook(name, worker)

    def worker_started(self, worker) -> None:
        self._event("started", worker)

    def worker_ready(self, worker) -> None:
        self._event("ready", worker)

    def job_dispatched(self, worker, job) -> None:
        value = job.payload.get("value") if isinstance(job.payload, dict) else None
        busy = self.pool.background_busy if self.pool is not None else None
        self.dispatches.append((job.lane, value, busy))
        self._event("dispatch", worker)

    def job_finished(self, worker, job, duration_s, ok) -> None:
        self._event("done", worker)

    def worker_exited(self, worker, reason, exitcode) -> None:
        self.exits.append((worker.pid, reason))
        self._event("exit", worker)

    def queue_refused(self, lane, code) -> None:
        self._event("refused")

    def fatal(self, message) -> None:
        self._event("fatal")

    async def wait_for(self, predicate, poll: float | None = 1.0) -> None:
        """Waits until `predicate()` holds, re-checking after every event (and every `poll`
        seconds, for conditions that change without a pool event)."""
        while not predicate():
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), poll)
            except TimeoutError:
                pass
