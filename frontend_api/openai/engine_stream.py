"""What the engine produced for one generation: its chunks as a closeable stream (EngineStream), tallied per
sequence (Tally, Tallies), and a streaming response body that closes what it must (EventStream).

An event stream takes the engine's chunks in batches (`EngineStream.batch`): the next chunk and every other one
the engine has ready without waiting (already received, or sent in a burst), merged per sequence (`coalesce`) into
one SSE event each, as OpenAI allows (a delta of several tokens). It never waits for a chunk that has not arrived.
The consumer's own task reads the engine (ready_reader.py): no reader task, no hand-over per chunk."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from frontend_api.engine.protocol import GenerationChunk, TopLogprobs
from frontend_api.openai.ready_reader import ReadyReader
from frontend_api.openai.timing import GenerationTimer
from frontend_api.policy.limits import Admission


@dataclass
class Tally:
    """What the engine produced so far for one sequence; the counts come from its last chunk that carried them."""

    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[TopLogprobs] = field(default_factory=list)
    prompt_logprobs: tuple[float, ...] | None = None
    prompt_top_logprobs: tuple[TopLogprobs, ...] | None = None
    chunks: int = 0

    def add(self, chunk: GenerationChunk) -> None:
        self.chunks += 1
        self.parts.append(chunk.text)
        self.finish_reason = chunk.finish_reason or self.finish_reason
        if chunk.num_input_tokens is not None:
            self.num_input_tokens = chunk.num_input_tokens
        if chunk.num_output_tokens is not None:
            self.num_output_tokens = chunk.num_output_tokens
        self.token_ids.extend(chunk.token_ids)
        if chunk.logprobs:  # per chunk: most have none
            self.logprobs.extend(chunk.logprobs)
        if chunk.top_logprobs:
            self.top_logprobs.extend(chunk.top_logprobs)
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs = chunk.prompt_logprobs
            self.prompt_top_logprobs = chunk.prompt_top_logprobs

    @property
    def text(self) -> str:
        return "".join(self.parts)


class Tallies:
    """The tallies of a generation's n sequences, by index (a chunk says which sequence it is for)."""

    def __init__(self, n: int = 1):
        self.by_index = {i: Tally() for i in range(n)}

    def add(self, chunk: GenerationChunk) -> Tally:
        tally = self.by_index.setdefault(chunk.index, Tally())
        tally.add(chunk)
        return tally

    def __getitem__(self, index: int) -> Tally:
        return self.by_index.setdefault(index, Tally())

    def items(self) -> list[tuple[int, Tally]]:
        return sorted(self.by_index.items())

    @property
    def num_input_tokens(self) -> int | None:
        return next((t.num_input_tokens for _, t in self.items() if t.num_input_tokens is not None), None)


async def _close(chunks: AsyncIterator[GenerationChunk]) -> None:
    aclose = getattr(chunks, "aclose", None)
    if aclose is not None:
        await aclose()


class EngineStream:
    """The engine's chunks (`receive_first()` waits for the first one), read one by one (`async for`) or in
    batches (`batch()`), not both. Always closed (`async with aclosing(...)`, or by the EventStream of a
    response): closing it closes the engine generator, which cancels the request in the engine, records the
    generation's timer (metrics, access-log fields) and finishes the admission (frees the generation's slots and
    charges its completion tokens)."""

    def __init__(
        self,
        rest: AsyncIterator[GenerationChunk],
        admission: Admission | None = None,
        timer: GenerationTimer | None = None,
    ):
        self._first: GenerationChunk | None = None
        self._rest = rest
        self._admission = admission
        # The metrics and usage.stats: it sees each chunk as it is received here (not a generator wrapped around the
        # engine's: one async hop less per chunk), and records the generation once, when this stream is closed.
        self._timer = timer
        self._on_chunk = timer.on_chunk if timer is not None else None
        self._counts: dict[int, int] = {}  # each sequence's count so far (the engine reports it on every response)
        self._reader = ReadyReader(rest)  # batch()'s: the chunks the engine has ready without waiting
        self._end: BaseException | None = None  # StopAsyncIteration, or the engine's error, met after a batch's first

    async def receive_first(self) -> None:
        try:
            self._first = self._seen(await anext(self._rest))
        except StopAsyncIteration:
            self._first = None
            self._ended()
        except Exception:
            self._failed()
            raise

    @property
    def num_output_tokens(self) -> int:
        """The tokens generated so far, over all the sequences."""
        return sum(self._counts.values())

    def _seen(self, chunk: GenerationChunk) -> GenerationChunk:
        if chunk.num_output_tokens is not None:
            self._counts[chunk.index] = chunk.num_output_tokens
        if self._on_chunk is not None:
            self._on_chunk(chunk)
        return chunk

    def _ended(self) -> None:
        if self._timer is not None:
            self._timer.exhausted = True

    def _failed(self) -> None:
        if self._timer is not None:
            self._timer.failed = True  # an engine error (or a bug): recorded, then passed on

    def __aiter__(self) -> EngineStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._first is not None:
            chunk, self._first = self._first, None
            return chunk
        try:
            return self._seen(await anext(self._rest))
        except StopAsyncIteration:
            self._ended()
            raise
        except Exception:
            self._failed()
            raise

    async def batch(self) -> list[GenerationChunk]:
        """The next chunks: at least one (waiting for it), and every other one the engine has ready without
        waiting; [] at the end. Raises the engine's error once the chunks before it are taken."""
        if self._first is not None:
            chunks = [self._first]
            self._first = None
        elif self._end is not None:
            if isinstance(self._end, StopAsyncIteration):
                return []
            raise self._end
        else:
            try:
                chunks = [self._seen(await self._reader.next())]
            except StopAsyncIteration:
                self._end = StopAsyncIteration()
                self._ended()
                return []
            except Exception as exc:
                self._end = exc
                self._failed()
                raise
        while True:
            try:
                chunk = self._reader.poll()
            except StopAsyncIteration as end:
                self._end = end
                self._ended()
                return chunks
            except Exception as exc:  # the engine's error: raised by the next batch(), after these chunks
                self._end = exc
                self._failed()
                return chunks
            if chunk is None:
                return chunks
            chunks.append(self._seen(chunk))

    async def aclose(self) -> None:
        self._first = None
        try:
            await self._reader.cancel()  # a read batch() left pending: ended as a cancelled task ends it
            await _close(self._rest)  # which cancels the request in the engine
        finally:
            if self._timer is not None:
                timer, self._timer, self._on_chunk = self._timer, None, None
                timer.record()  # once: a stream may be closed more than once
            if self._admission is not None:
                await self._admission.finish(self.num_output_tokens)


def _shape(chunk: GenerationChunk) -> tuple[bool, bool]:
    """Whether a chunk's log-probabilities and top log-probabilities are aligned with its tokens."""
    count = len(chunk.token_ids)
    return len(chunk.logprobs) == count, len(chunk.top_logprobs) == count


def _joinable(first: GenerationChunk, then: GenerationChunk) -> bool:
    """Whether `then` can be sent in one event with `first`: nothing after a finish, prompt log-probabilities
    only on a sequence's first chunk, and per-token lists that stay aligned with the tokens when concatenated."""
    if first.finish_reason is not None or then.prompt_logprobs is not None:
        return False
    return not first.token_ids or not then.token_ids or _shape(first) == _shape(then)


def _join(first: GenerationChunk, then: GenerationChunk) -> GenerationChunk:
    return dataclasses.replace(
        first,
        text=first.text + then.text,
        finish_reason=then.finish_reason,
        num_input_tokens=then.num_input_tokens if then.num_input_tokens is not None else first.num_input_tokens,
        num_output_tokens=then.num_output_tokens if then.num_output_tokens is not None else first.num_output_tokens,
        token_ids=first.token_ids + then.token_ids,
        logprobs=first.logprobs + then.logprobs,
        top_logprobs=first.top_logprobs + then.top_logprobs,
        cum_logprob=then.cum_logprob if then.cum_logprob is not None else first.cum_logprob,
    )


def coalesce(chunks: list[GenerationChunk]) -> list[GenerationChunk]:
    """A batch's chunks merged per sequence where they can be (`_joinable`): one chunk of the joined delta, its
    token lists concatenated, the last one's counts and finish reason. The sequences keep their first chunk's order."""
    if len(chunks) < 2:
        return chunks
    merged: list[GenerationChunk] = []
    latest: dict[int, int] = {}  # sequence -> position of its latest chunk in `merged`
    for chunk in chunks:
        position = latest.get(chunk.index)
        if position is not None and _joinable(merged[position], chunk):
            merged[position] = _join(merged[position], chunk)
        else:
            latest[chunk.index] = len(merged)
            merged.append(chunk)
    return merged


class Closeable(Protocol):
    async def aclose(self) -> None: ...


class EventStream:
    """A streaming response body: the SSE events, plus what must be closed with them. Closing a generator that
    never started runs none of its cleanup (the client can leave before the body is read), so `aclose` also
    closes `resource` (the engine stream, or a chat run that stores its turn); both closes are idempotent."""

    def __init__(self, events: AsyncGenerator[str | bytes, None], resource: Closeable):
        self._events = events
        self._resource = resource

    def __aiter__(self) -> AsyncGenerator[str | bytes, None]:
        return self._events  # `async for` then steps the generator itself: no wrapper call per event

    async def __anext__(self) -> str | bytes:
        return await anext(self._events)

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            await self._resource.aclose()
