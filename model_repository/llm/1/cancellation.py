"""Polling cancellations at a bounded rate.

`response_sender.is_cancelled()` is a round trip to the Triton process, so checking every request in flight on
every poll costs the engine loop more as load grows (256 requests x ~0.3 ms each, every 50 ms, would leave it no
time at all). This poller checks at most `rate` requests per second, round robin: with few requests each is
checked every poll; with many, each is checked every len(requests) / rate seconds.
"""

from __future__ import annotations

import time

POLLS_PER_SECOND = 500.0


class CancellationPoller:
    def __init__(self, rate: float = POLLS_PER_SECOND):
        self._rate = rate
        self._last = time.monotonic()
        self._credit = 0.0
        self._cursor = 0

    def due(self, items: list) -> list:
        """The items whose cancellation to check now (possibly none)."""
        now = time.monotonic()
        self._credit = min(self._credit + (now - self._last) * self._rate, float(len(items)))
        self._last = now
        count = int(self._credit)
        if count == 0 or not items:
            return []
        self._credit -= count
        start = self._cursor % len(items)
        self._cursor = start + count
        return (items[start:] + items[:start])[:count]
