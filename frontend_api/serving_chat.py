"""POST /v1/chat/completions: render the chat template, generate, answer as one object or as SSE chunks."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import aclosing

from frontend_api.engine.protocol import EngineError
from frontend_api.errors import engine_error_body
from frontend_api.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    DeltaMessage,
    Usage,
)
from frontend_api.serving import SSE_DONE, EngineStream, OpenAIServing, Prepared, Tally, sse_event


class OpenAIServingChat(OpenAIServing):
    async def create_chat_completion(self, request: ChatCompletionRequest) -> ChatCompletion | AsyncIterator[str]:
        model = await self.resolve_model(request.model)
        prompt = await self.tokenizers.render_chat(model, request.messages)
        if request.max_completion_tokens is not None:
            requested, names = request.max_completion_tokens, ("max_completion_tokens", "messages")
        else:
            requested, names = request.max_tokens, ("max_tokens", "messages")
        prepared = await self.prepare(request, model, prompt, requested, names, id_prefix="chatcmpl")
        chunks = await self.start(prepared)
        if request.stream:
            return self._stream(request, prepared, chunks)
        tally = await self.collect(chunks)
        reason, usage = await self.finish(prepared, tally)
        return ChatCompletion(
            id=prepared.id,
            created=prepared.created,
            model=request.model,
            choices=[ChatCompletionChoice(message=AssistantMessage(content=tally.text), finish_reason=reason)],
            usage=usage,
        )

    async def _stream(
        self, request: ChatCompletionRequest, prepared: Prepared, chunks: EngineStream
    ) -> AsyncIterator[str]:
        def event(delta: DeltaMessage, finish_reason: str | None = None) -> str:
            choice = ChatCompletionChunkChoice(delta=delta, finish_reason=finish_reason)
            return sse_event(self._chunk(request, prepared, [choice]))

        tally = Tally()
        async with aclosing(chunks):
            try:
                yield event(DeltaMessage(role="assistant", content=""))
                async for chunk in chunks:
                    tally.add(chunk)
                    if chunk.text:
                        yield event(DeltaMessage(content=chunk.text))
                reason, usage = await self.finish(prepared, tally)
                yield event(DeltaMessage(), finish_reason=reason)
                if request.include_usage:
                    yield sse_event(self._chunk(request, prepared, [], usage))
            except EngineError as exc:
                yield sse_event(engine_error_body(exc))
            yield SSE_DONE

    @staticmethod
    def _chunk(
        request: ChatCompletionRequest,
        prepared: Prepared,
        choices: list[ChatCompletionChunkChoice],
        usage: Usage | None = None,
    ) -> ChatCompletionChunk:
        return ChatCompletionChunk(
            id=prepared.id, created=prepared.created, model=request.model, choices=choices, usage=usage
        )
