"""Small real worker handlers for pool tests: they boot in a blink and misbehave on demand."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path


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
