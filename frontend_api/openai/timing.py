"""Timing of one generation: time to first token, inter-token latency, end-to-end latency, tokens by model and
key name, the in-flight gauge, the outcome (stop, length, cancelled, error), and the per-response `usage.stats`.

The generation's EngineStream feeds the timer each chunk as it is received from the engine (`on_chunk`: not when
the HTTP layer gets round to it) and how the generation ended (`exhausted`, `failed`), and records it when the
stream is closed: exhausted after the final chunk, closed early (the client went away: cancelled) or ended by an
engine error. `watch` does the same around a plain chunk iterator.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator

from frontend_api.engine.protocol import GenerationChunk
from frontend_api.observability.context import RequestContext, current_request
from frontend_api.observability.metrics import HistogramTally
from frontend_api.openai.response_objects import GenerationStats

FINISHED = ("stop", "length")


class GenerationTimer:
    def __init__(self, model: str, key_name: str, max_tokens: int, prompt_tokens: int, arrived: float | None = None):
        self.context: RequestContext | None = current_request()
        self.metrics = self.context.metrics if self.context else None
        self.model = model
        self.key_name = key_name
        self.max_tokens = max_tokens
        self.sent = time.perf_counter()
        # TTFT counts from the request's arrival (template and tokenization included): the HTTP request's, or the
        # `arrived` the caller gives (a WebSocket chat frame's); without either, from when it is sent to the engine.
        if arrived is None and self.context and self.context.kind == "http":
            arrived = self.context.started
        self.arrived = self.sent if arrived is None else arrived
        self.first_token_at: float | None = None
        self.last_token_at: float | None = None
        self.prompt_tokens = prompt_tokens
        self.completion_tokens = 0  # over all the sequences (n)
        self._counts: dict[int, int] = {}  # each sequence's count
        self.chunks = 0
        self.engine_reason: str | None = None
        self.exhausted = False
        self.failed = False
        if self.metrics:
            self.metrics.in_flight.labels(model).inc()
            # Per token only counted here; added to the histogram when the generation is recorded.
            self.inter_token_latency = HistogramTally(self.metrics.inter_token_latency.labels(model))

    async def watch(self, chunks: AsyncIterator[GenerationChunk]) -> AsyncIterator[GenerationChunk]:
        """`chunks`, observed. Closing the result closes `chunks` and records the generation."""
        try:
            async for chunk in chunks:
                self.on_chunk(chunk)
                yield chunk
            self.exhausted = True
        except Exception:
            self.failed = True  # an engine error (or a bug): recorded, then passed on
            raise
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()
            self.record()

    def on_chunk(self, chunk: GenerationChunk) -> None:
        now = time.perf_counter()
        self.chunks += 1
        if chunk.num_input_tokens is not None:
            self.prompt_tokens = chunk.num_input_tokens
        if chunk.finish_reason:
            self.engine_reason = chunk.finish_reason
        # The engine reports each sequence's running count of generated tokens; without one, a chunk with text is
        # one token.
        before = self._counts.get(chunk.index, 0)
        count = chunk.num_output_tokens if chunk.num_output_tokens is not None else before + bool(chunk.text)
        new = count - before
        if new <= 0:
            return
        self._counts[chunk.index] = count
        self.completion_tokens += new
        if self.first_token_at is None:
            self.first_token_at = now
            if self.metrics:
                self.metrics.time_to_first_token.labels(self.model).observe(now - self.arrived)
        elif self.metrics:
            # A chunk carrying n tokens after a gap g counts as n tokens g/n apart.
            assert self.last_token_at is not None  # set with the first token
            self.inter_token_latency.observe((now - self.last_token_at) / new, new)
        self.last_token_at = now

    @property
    def outcome(self) -> str:
        if self.failed:
            return "error"
        if self.engine_reason == "cancelled":
            return "cancelled"
        if self.engine_reason in FINISHED:
            return self.engine_reason
        if self.exhausted:  # an engine that does not report a reason (the TensorRT-LLM ensemble)
            return "length" if self.completion_tokens >= self.max_tokens else "stop"
        return "cancelled"  # closed before the final chunk: the client went away

    def stats(self, completion_tokens: int) -> GenerationStats | None:
        """The `usage.stats` of a finished generation (None if no token came)."""
        if self.first_token_at is None or self.last_token_at is None:
            return None
        decode = self.last_token_at - self.first_token_at
        return GenerationStats(
            ttft_ms=_ms(self.first_token_at - self.arrived),
            prefill_ms=_ms(self.first_token_at - self.sent),
            decode_ms=_ms(decode),
            e2e_ms=_ms(self.last_token_at - self.arrived),
            tokens_per_second=round((completion_tokens - 1) / decode, 2)
            if completion_tokens > 1 and decode > 0
            else None,
        )

    def record(self) -> None:
        """Once, when the engine iterator is closed."""
        outcome = self.outcome
        if self.context:
            self.context.fields.update(model=self.model, finish_reason=outcome)
            self.context.add_tokens(self.prompt_tokens if self.chunks else 0, self.completion_tokens)
        if not self.metrics:
            return
        self.metrics.in_flight.labels(self.model).dec()
        self.inter_token_latency.flush()
        self.metrics.generations.labels(self.model, self.key_name, outcome).inc()
        if self.chunks:  # the engine accepted the request (a rejected one processed no prompt)
            self.metrics.prompt_tokens.labels(self.model, self.key_name).inc(self.prompt_tokens)
            self.metrics.completion_tokens.labels(self.model, self.key_name).inc(self.completion_tokens)
        if outcome in FINISHED and self.last_token_at is not None:
            self.metrics.e2e_latency.labels(self.model).observe(self.last_token_at - self.arrived)


def _ms(seconds: float) -> float:
    return round(seconds * 1000, 3)
