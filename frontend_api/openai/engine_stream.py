"""What the engine produced for one generation: its chunks as a closeable stream (EngineStream), tallied per
sequence (Tally, Tallies), and a streaming response body that closes what it must (EventStream)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol

from frontend_api.engine.protocol import GenerationChunk, TopLogprobs
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
        self.logprobs.extend(chunk.logprobs)
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
    """The engine's chunks (`receive_first()` waits for the first one). Always closed (`async with aclosing(...)`,
    or by the EventStream of a response): closing it closes the engine generator, which cancels the request in
    the engine, and finishes the admission (frees the generation's slots and charges its completion tokens)."""

    def __init__(self, rest: AsyncIterator[GenerationChunk], admission: Admission | None = None):
        self._first: GenerationChunk | None = None
        self._rest = rest
        self._admission = admission
        self._counts: dict[int, int] = {}  # each sequence's count so far (the engine reports it on every response)

    async def receive_first(self) -> None:
        try:
            self._first = self._seen(await anext(self._rest))
        except StopAsyncIteration:
            self._first = None

    @property
    def num_output_tokens(self) -> int:
        """The tokens generated so far, over all the sequences."""
        return sum(self._counts.values())

    def _seen(self, chunk: GenerationChunk) -> GenerationChunk:
        if chunk.num_output_tokens is not None:
            self._counts[chunk.index] = chunk.num_output_tokens
        return chunk

    def __aiter__(self) -> EngineStream:
        return self

    async def __anext__(self) -> GenerationChunk:
        if self._first is not None:
            chunk, self._first = self._first, None
            return chunk
        return self._seen(await anext(self._rest))

    async def aclose(self) -> None:
        self._first = None
        try:
            await _close(self._rest)
        finally:
            if self._admission is not None:
                await self._admission.finish(self.num_output_tokens)


class Closeable(Protocol):
    async def aclose(self) -> None: ...


class EventStream:
    """A streaming response body: the SSE events, plus what must be closed with them. Closing a generator that
    never started runs none of its cleanup (the client can leave before the body is read), so `aclose` also
    closes `resource` (the engine stream, or a chat run that stores its turn); both closes are idempotent."""

    def __init__(self, events: AsyncGenerator[str, None], resource: Closeable):
        self._events = events
        self._resource = resource

    def __aiter__(self) -> EventStream:
        return self

    async def __anext__(self) -> str:
        return await anext(self._events)

    async def aclose(self) -> None:
        try:
            await self._events.aclose()
        finally:
            await self._resource.aclose()
