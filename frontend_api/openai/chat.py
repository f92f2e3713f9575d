"""POST /v1/chat/completions (and the WebSocket chat): render the chat template, generate, answer as one object,
as SSE chunks, or as WebSocket messages. With `session_id`, the stored history is prepended and the turn stored."""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing

from frontend_api.engine.protocol import Engine, EngineError
from frontend_api.openai.protocol import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChatCompletionRequest,
    DeltaMessage,
    Usage,
)
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
from frontend_api.openai.session_turns import SessionTurn, open_turn, reply_reserve
from frontend_api.openai.tokenization import Tokenizers
from frontend_api.policy.auth import Principal
from frontend_api.policy.limits import Limiter
from frontend_api.settings import Settings
from frontend_api.storage.sessions import SessionStore


class ChatRun:
    """A started chat generation. Iterate `deltas()` for the text; afterwards `finish_reason` and `usage` are set.
    However the iteration ends, the engine request is closed and a session turn is stored once."""

    def __init__(self, serving: OpenAIServing, prepared: Prepared, chunks: EngineStream, turn: SessionTurn | None):
        self.serving = serving
        self.prepared = prepared
        self.chunks = chunks
        self.turn = turn
        self.tally = Tally()
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    @property
    def session_id(self) -> str | None:
        return self.turn.session_id if self.turn else None

    async def deltas(self) -> AsyncGenerator[str, None]:
        ended = "cancelled"
        try:
            async with aclosing(self.chunks):
                async for chunk in self.chunks:
                    self.tally.add(chunk)
                    if chunk.text:
                        yield chunk.text
            self.finish_reason, self.usage = await self.serving.finish(self.prepared, self.tally)
            ended = self.finish_reason
        except EngineError:
            ended = "error"
            raise
        finally:
            if self.turn is not None:
                await self.turn.record(self.tally.text, ended, self.usage)

    async def aclose(self) -> None:
        """Close a run whose `deltas()` may never have started: cancel the engine request, store the turn."""
        await self.chunks.aclose()
        if self.turn is not None:
            await self.turn.record(self.tally.text, self.finish_reason or "cancelled", self.usage)

    async def text(self) -> str:
        async with aclosing(self.deltas()) as deltas:
            return "".join([delta async for delta in deltas])


class OpenAIServingChat(OpenAIServing):
    def __init__(
        self,
        engine: Engine,
        tokenizers: Tokenizers,
        settings: Settings,
        principal: Principal,
        limiter: Limiter | None,
        sessions: SessionStore,
    ):
        super().__init__(engine, tokenizers, settings, principal, limiter)
        self.sessions = sessions

    async def start_chat(self, request: ChatCompletionRequest, arrived: float | None = None) -> ChatRun:
        """Start a chat generation; `arrived` (time.perf_counter()) is when a WebSocket frame asked for it."""
        model = await self.resolve_model(request.model)
        turn, prompt_tokens = None, None
        if request.session_id is not None:
            turn, request = await open_turn(self.sessions, self.principal.key_id, request)
            reserve = reply_reserve(request, self.settings.default_max_tokens, model.max_model_len)
            _, prompt, prompt_tokens = await turn.conversation(
                self.tokenizers, model, self.settings.session_history_messages, reserve
            )
        else:
            prompt = await self.tokenizers.render_chat(model, request.messages)
        requested: int | None
        if request.max_completion_tokens is not None:
            requested, names = request.max_completion_tokens, ("max_completion_tokens", "messages")
        else:
            requested, names = request.max_tokens, ("max_tokens", "messages")
        prepared = await self.prepare(
            request, model, prompt, requested, names, id_prefix="chatcmpl", prompt_tokens=prompt_tokens, arrived=arrived
        )
        return ChatRun(self, prepared, await self.start(prepared), turn)

    async def create_chat_completion(self, request: ChatCompletionRequest) -> ChatCompletion | AsyncIterator[str]:
        run = await self.start_chat(request)
        if request.stream:
            return EventStream(self._stream(request, run), run)
        text = await run.text()
        assert run.finish_reason is not None and run.usage is not None
        choice = ChatCompletionChoice(message=AssistantMessage(content=text), finish_reason=run.finish_reason)
        return ChatCompletion(
            id=run.prepared.id,
            created=run.prepared.created,
            model=request.model,
            choices=[choice],
            usage=run.usage,
            session_id=run.session_id,
        )

    async def _stream(self, request: ChatCompletionRequest, run: ChatRun) -> AsyncGenerator[str, None]:
        def event(choices: list[ChatCompletionChunkChoice], usage: Usage | None = None) -> str:
            return sse_event(
                ChatCompletionChunk(
                    id=run.prepared.id,
                    created=run.prepared.created,
                    model=request.model,
                    choices=choices,
                    usage=usage,
                    session_id=run.session_id,
                )
            )

        async with aclosing(run.deltas()) as deltas:
            try:
                yield event([ChatCompletionChunkChoice(delta=DeltaMessage(role="assistant", content=""))])
                async for text in deltas:
                    yield event([ChatCompletionChunkChoice(delta=DeltaMessage(content=text))])
                yield event([ChatCompletionChunkChoice(delta=DeltaMessage(), finish_reason=run.finish_reason)])
                if request.include_usage:
                    yield event([], run.usage)
            except EngineError as exc:
                yield sse_event(engine_error_body(exc))
            yield SSE_DONE
