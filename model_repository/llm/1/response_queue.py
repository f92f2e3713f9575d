"""Between an engine core and Triton's response senders: ONE sending thread that merges what piled up.

Sending a response from the python backend is an inter-process round trip (hundreds of microseconds measured on
an H100 host), so the engine's loop must not send itself: it only enqueues. The sending thread takes everything
queued, merges each sequence's pending deltas into one update, and sends one response per request. Under
light load that is one response per token; under heavy load a response carries several tokens, and the number
of responses per second stays within what the backend can send (docs/PERFORMANCE.md).
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable

from core import Update

log = logging.getLogger("llm.responses")

_STOP = object()


class ResponseQueue:
    def __init__(self) -> None:
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="llm-responses", daemon=True)
        self._thread.start()

    def sink_for(self, writer: Callable[[Update], None]) -> Callable[[Update], None]:
        """The sink to give the engine for one request: it enqueues, the sending thread calls `writer`."""
        put = self._queue.put
        return lambda update: put((writer, update))

    def close(self, timeout: float = 10) -> None:
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            items = [self._queue.get()]
            while True:  # take whatever else is already there
                try:
                    items.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            stop = any(item is _STOP for item in items)
            for (writer, _), update in merge(item for item in items if item is not _STOP).items():
                try:
                    writer(update)
                except Exception:  # e.g. the client is gone; other requests must still get their responses
                    log.exception("sending a response failed")
            if stop:
                return


def merge(items) -> dict:
    """Per (writer, sequence index), in order: its deltas joined into one update (core.Update.then) carrying the
    latest counts and outcome."""
    merged: dict = {}
    for writer, update in items:
        key = (writer, update.index)
        previous = merged.get(key)
        if previous is not None and previous.finish_reason is None:
            update = previous.then(update)
        merged[key] = update
    return merged
