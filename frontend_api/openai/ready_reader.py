"""Reading an async iterator from the task that consumes it, and knowing which items it has READY: an item its
iterator can produce without waiting (already received, or computed at once).

An SSE stream sends the engine's chunks that are ready together as one event. Knowing that used to take a reader
task per stream, whose hand-over to the consumer (a future, a wake-up, a second task step) cost more than the rest
of an event. Here the consumer steps the iterator itself: `poll()` runs one read (`__anext__`) until it either
returns an item, or yields to the event loop; in that case the read is kept, suspended where it stopped, and
`next()` awaits the rest of it exactly as `await` would have (the same future, the same cancellation), so no
item is lost and nothing waits twice. `cancel()` ends a read left suspended, as cancelling its task would.

Only the consumer's task touches a reader (no locking); one read at a time, in order."""

from __future__ import annotations

import asyncio
import types
from collections.abc import AsyncIterator, Generator
from typing import Any, Generic, TypeVar

T = TypeVar("T")


@types.coroutine
def _rest_of(step: Generator[Any, None, Any], blocker: Any) -> Generator[Any, Any, Any]:
    """Await the rest of `step`, a read already started that yielded `blocker` to the event loop: what `await` does
    after its first step (PEP 380's `yield from`), so the task waits for the same future and a cancellation thrown
    into the task reaches the read."""
    while True:
        try:
            sent = yield blocker
        except GeneratorExit:
            step.close()
            raise
        except BaseException as exc:  # thrown into the awaiting task (a cancellation): passed on to the read
            try:
                blocker = step.throw(exc)
            except StopIteration as done:
                return done.value
            continue
        try:
            blocker = step.send(sent)
        except StopIteration as done:
            return done.value


class ReadyReader(Generic[T]):
    """`next()` waits for the next item; `poll()` returns it only if it is ready. Both raise what the iterator
    raises (StopAsyncIteration at its end)."""

    def __init__(self, source: AsyncIterator[T]):
        self._source = source
        self._step: Generator[Any, None, T] | None = None  # a read that yielded to the loop, suspended there
        self._blocker: Any = None  # what it yielded: the future it waits for, or None (it gave up its turn)

    async def next(self) -> T:
        step = self._step
        if step is None:
            return await anext(self._source)
        blocker, self._step, self._blocker = self._blocker, None, None
        return await _rest_of(step, blocker)

    def poll(self) -> T | None:
        """The next item if the iterator has it without waiting, else None: the read then stays pending (`next()`
        finishes it). A read that gave up its turn (sleep(0)) is not ready: it gets its turn first."""
        step = self._step
        if step is None:
            step = self._source.__anext__().__await__()
            blocker = None
        else:
            blocker = self._blocker
            if blocker is None or not blocker.done():
                return None
            self._step = self._blocker = None
        try:
            self._blocker = step.send(None)  # after a future is done, a task sends None too: the read takes its result
        except StopIteration as done:
            return done.value
        self._step = step
        return None

    async def cancel(self) -> None:
        """End a pending read as a cancelled task would end it: its future cancelled (or, after a bare yield, a
        CancelledError at that point), and whatever cleanup it awaits let run."""
        step, blocker = self._step, self._blocker
        if step is None:
            return
        self._step = self._blocker = None
        try:
            if blocker is None:
                blocker = step.throw(asyncio.CancelledError())
            else:
                blocker.cancel()
                blocker = step.send(None)  # the read takes the cancelled future's result: CancelledError
            await _rest_of(step, blocker)  # it awaits something in its cleanup: let it
        except (StopIteration, StopAsyncIteration, asyncio.CancelledError):
            pass  # it ended, as a cancelled read does
