"""Log lines that an attacker or an overload could otherwise repeat thousands of times a second."""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable


class Throttled:
    """Logs the first event at once, then at most one line per `interval` seconds, saying how
    many were folded into it. For accept errors, refusals and queue-full events."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._log = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}
        self._folded: dict[str, int] = {}

    def warning(self, topic: str, message: str, *args: object) -> bool:
        """Logs `message % args` unless `topic` was logged within the interval; True if logged."""
        now = self._clock()
        last = self._last.get(topic)
        if last is not None and now - last < self._interval:
            self._folded[topic] = self._folded.get(topic, 0) + 1
            return False
        folded = self._folded.pop(topic, 0)
        self._last[topic] = now
        suffix = f" ({folded} more like it in the last {now - last:.0f} s)" if folded else ""
        self._log.warning(message + suffix, *args)
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line, for log shippers; a record's `fields` extra is merged in."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {"time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S"),
                 "level": record.levelname.lower(), "logger": record.name,
                 "message": record.getMessage()}
        entry.update(getattr(record, "fields", {}))
        if record.exc_info:
            entry["traceback"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)


TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


def configure_logging(log_format: str = "text", prefix: str = "") -> None:
    """The process's root handler on stderr, as text or JSON lines (workers use it too)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else
                         logging.Formatter(TEXT_FORMAT.replace("%(name)s", "%(name)s" + prefix)))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)


class AccessLog:
    """Tornado's `log_function`: one line per request with method, path, status, time, cache
    hit, bytes in, engine time and request id (as fields too, for the JSON format)."""

    def __init__(self, logger: logging.Logger | None = None) -> None:
        self._log = logger or logging.getLogger("ppocr.access")

    def __call__(self, handler) -> None:
        status = handler.get_status()
        request = handler.request
        extra = getattr(handler, "log_fields", {})
        fields = {"method": request.method, "path": request.path[:200], "status": status,
                  "ms": round(request.request_time() * 1000, 1),
                  "cached": extra.get("cached"), "bytes_in": getattr(handler, "_size", 0),
                  "engine_ms": extra.get("engine_ms"),
                  "request_id": getattr(handler, "request_id", None)}
        level = logging.INFO if status < 400 else logging.WARNING if status < 500 \
            else logging.ERROR
        self._log.log(level, "%s %s %d %.1fms cached=%s in=%dB engine=%sms id=%s",
                      fields["method"], fields["path"], status, fields["ms"], fields["cached"],
                      fields["bytes_in"], fields["engine_ms"], fields["request_id"],
                      extra={"fields": fields})
