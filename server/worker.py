"""Worker process side: build the handler once, then answer jobs from the pipe until told to stop.

The loop is single-threaded: one job at a time, so the engine inside is never shared between
threads. SIGINT is ignored (Ctrl-C in a terminal reaches the whole process group; the parent
decides how to shut down and tells workers to stop). A closed pipe means the parent is gone, and
the worker exits instead of lingering as an orphan.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ocr_engine import EngineConfig, ModelPaths, OcrEngine, OcrOptions

from .errors import error_info


def run_worker(conn, factory: Callable[[Any], Callable[[Any], Any]], spec: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        handler = factory(spec)
    except BaseException as exc:  # noqa: BLE001 - any boot failure must reach the parent
        conn.send(("boot_error", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", os.getpid()))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        if message[0] == "stop":
            return
        _, job_id, payload = message
        try:
            reply = ("result", job_id, True, handler(payload))
        except Exception as exc:  # noqa: BLE001 - one bad job must not end the worker
            reply = ("result", job_id, False, error_info(exc))
        conn.send(reply)


@dataclass(frozen=True)
class EngineSpec:
    """Everything a worker needs to build its engines: plain, picklable data."""

    models: dict[str, ModelPaths]
    threads: int = 1
    max_pixels: int = 40_000_000
    rec_batch_size: int = 6
    cls_batch_size: int = 6
    defaults: OcrOptions = field(default_factory=OcrOptions)


@dataclass(frozen=True)
class OcrJob:
    image: bytes
    options: OcrOptions
    model: str


class OcrHandler:
    """Loads one engine per configured model set, warms each up, then reads images."""

    def __init__(self, spec: EngineSpec) -> None:
        self.engines = {}
        for name, paths in spec.models.items():
            engine = OcrEngine(EngineConfig(paths, threads=spec.threads,
                                            max_pixels=spec.max_pixels,
                                            rec_batch_size=spec.rec_batch_size,
                                            cls_batch_size=spec.cls_batch_size,
                                            defaults=spec.defaults))
            # The first call on new input shapes is slow: pay it before taking traffic.
            engine.warm_up()
            self.engines[name] = engine

    def __call__(self, job: OcrJob) -> dict:
        result = self.engines[job.model].ocr(job.image, job.options)
        return {"model": job.model, **result.to_dict()}
