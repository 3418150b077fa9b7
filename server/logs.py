"""Log lines that an attacker or an overload could otherwise repeat thousands of times a second."""

from __future__ import annotations

import logging
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
