"""POST /v1/completions: the prompt as given (no template), answered as one object or as SSE chunks."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from frontend_api.engine.protocol import EngineError
from frontend_api.openai.protocol import Completion, CompletionChoice, CompletionChunk, CompletionRequest, Usage
from frontend_api.openai.serving import (
    SSE_DONE,
    EngineStream,
    EventStream,
    OpenAIServing,
    Prepared,
    Tally,
    engine_error_body,
    sse_event,
)


class OpenAIServingCompletion(OpenAIServing):
    async def create_completion(self, request: CompletionRequest) -> Completion | AsyncIterator[str]:
        model = await self.resolve_model(request.model)
        names = ("max_tokens", "prompt")
        prepared = await self.prepare(request, model, request.prompt, request.max_tokens, names, id_prefix="cmpl")
        chunks = await self.start(prepared)
        if request.stream:
            return EventStream(self._stream(request, prepared, chunks), chunks)
        tally = await self.collect(chunks)
        reason, usage = await self.finish(prepared, tally)
        return self._completion(request, prepared, [CompletionChoice(text=tally.text, finish_reason=reason)], usage)

    async def _stream(
        self, request: CompletionRequest, prepared: Prepared, chunks: EngineStream
    ) -> AsyncGenerator[str, None]:
        tally = Tally()
        async with aclosing(chunks):
            try:
                async for chunk in chunks:
                    tally.add(chunk)
                    if chunk.text:
                        yield sse_event(self._completion(request, prepared, [CompletionChoice(text=chunk.text)]))
                reason, usage = await self.finish(prepared, tally)
                yield sse_event(self._completion(request, prepared, [CompletionChoice(text="", finish_reason=reason)]))
                if request.include_usage:
                    yield sse_event(self._completion(request, prepared, [], usage))
            except EngineError as exc:
                yield sse_event(engine_error_body(exc))
            yield SSE_DONE

    @staticmethod
    def _completion(
        request: CompletionRequest, prepared: Prepared, choices: list[CompletionChoice], usage: Usage | None = None
    ) -> CompletionChunk:
        return Completion(id=prepared.id, created=prepared.created, model=request.model, choices=choices, usage=usage)
