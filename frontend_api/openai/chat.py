"""POST /v1/chat/completions (and the WebSocket chat): render the chat template, generate, answer as one object,
as SSE chunks, or as WebSocket messages. With `session_id`, the stored history is prepended and the turn stored."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from typing import Any

import engine_contract as contract
from frontend_api.engine.protocol import Engine, EngineError, GenerationChunk
from frontend_api.errors import OpenAIError
from frontend_api.openai.engine_stream import EngineStream, EventStream, Tallies, Tally, coalesce
from frontend_api.openai.protocol import BaseGenerationRequest, ChatCompletionRequest
from frontend_api.openai.response_objects import (
    AssistantMessage,
    ChatCompletion,
    ChatCompletionChoice,
    ChatCompletionChunk,
    ChoiceLogprobs,
    FunctionCall,
    ToolCall,
    Usage,
)
from frontend_api.openai.serving import (
    FINISH_REASONS,
    SSE_DONE,
    LogprobsAsked,
    OpenAIServing,
    Prepared,
    engine_error_body,
    sse_event,
)
from frontend_api.openai.session_turns import SessionTurn, open_turn, reply_reserve
from frontend_api.openai.stream_events import ChunkTemplate, chat_choice, tool_call_delta
from frontend_api.openai.tokenization import Tokenizers
from frontend_api.openai.tool_calls import ToolOutputs, guide_of, offered_tools, parser_of
from frontend_api.openai.tool_parsers import ParsedDelta
from frontend_api.policy.auth import Principal
from frontend_api.policy.limits import Limiter
from frontend_api.settings import Settings
from frontend_api.storage.sessions import SessionStore


class ChatRun:
    """A started chat generation of n choices. Iterate `events()` for the engine's chunks (or `deltas()` for the
    text of a one-choice chat); afterwards `finish_reasons`, `finish_reason` (the first choice's) and `usage` are
    set. However the iteration ends, the engine request is closed and a session turn is stored once."""

    def __init__(
        self,
        serving: OpenAIServing,
        prepared: Prepared,
        chunks: EngineStream,
        turn: SessionTurn | None,
        outputs: ToolOutputs,
    ):
        self.serving = serving
        self.prepared = prepared
        self.chunks = chunks
        self.turn = turn
        self.outputs = outputs  # the choices' text read for tool calls (as plain text without tools)
        self.parsed = ParsedDelta()  # what the chunk `events()` yielded last reads as
        self.tallies = Tallies(prepared.engine_request.params.n)
        self.finish_reasons: list[str] = []
        self.finish_reason: str | None = None
        self.usage: Usage | None = None

    @property
    def tally(self) -> Tally:
        """The first (with a session: the only) choice's."""
        return self.tallies[0]

    @property
    def session_id(self) -> str | None:
        return self.turn.session_id if self.turn else None

    async def events(self, coalesced: bool = False) -> AsyncGenerator[GenerationChunk, None]:
        """The engine's chunks; `coalesced`: those that arrived together merged per choice (an SSE stream's)."""
        ended = "cancelled"
        try:
            async with aclosing(self.chunks):
                async for chunk in _coalesced(self.chunks) if coalesced else self.chunks:
                    self.tallies.add(chunk)
                    self.parsed = self.outputs.feed(chunk.index, chunk.text)
                    yield chunk
            reasons, self.usage = await self.serving.finish_all([(self.prepared, self.tallies)])
            self.finish_reasons = [self.outputs.finish_reason(i, reason) for i, reason in enumerate(reasons[0])]
            self.finish_reason = ended = self.finish_reasons[0]
        except EngineError:
            ended = "error"
            raise
        finally:
            await self._record(ended)

    async def _record(self, ended: str) -> None:
        if self.turn is not None:
            output = self.outputs.output(0)
            await self.turn.record(output.content or "", ended, self.usage, output.tool_calls, self.outputs.ids)

    async def deltas(self) -> AsyncGenerator[str, None]:
        """The first choice's text deltas (with tools: its content, the text outside tool calls)."""
        async with aclosing(self.events()) as events:
            async for chunk in events:
                if chunk.index == 0 and self.parsed.content:
                    yield self.parsed.content
        if rest := self.outputs.finish(0).content:
            yield rest

    async def aclose(self) -> None:
        """Close a run whose `events()` may never have started: cancel the engine request, store the turn."""
        await self.chunks.aclose()
        await self._record(self.finish_reason or "cancelled")

    async def text(self) -> str:
        async with aclosing(self.deltas()) as deltas:
            return "".join([delta async for delta in deltas])

    async def run_to_end(self) -> None:
        async with aclosing(self.events()) as events:
            async for _ in events:
                pass


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

    def param_of(self, input_name: str, request: BaseGenerationRequest | None = None) -> str:
        if input_name in _GUIDE_INPUTS and isinstance(request, ChatCompletionRequest) and guide_of(request):
            return "tool_choice"  # the guide is the tool choice's
        return super().param_of(input_name, request)

    async def start_chat(self, request: ChatCompletionRequest, arrived: float | None = None) -> ChatRun:
        """Start a chat generation; `arrived` (time.perf_counter()) is when a WebSocket frame asked for it."""
        model = await self.resolve_model(request.model)
        parser = parser_of(model)
        tools = offered_tools(request)
        turn, prompt_tokens = None, None
        if request.session_id is not None and request.choices_per_prompt > 1:
            raise OpenAIError(400, "n: a chat session has one reply: only n = 1 is accepted with session_id.", "n")
        if request.session_id is not None:
            turn, request = await open_turn(self.sessions, self.principal.key_id, request)
            reserve = reply_reserve(request, self.settings.default_max_tokens, model.max_model_len)
            _, prompt, prompt_tokens = await turn.conversation(
                self.tokenizers, model, self.settings.session_history_messages, reserve, tools
            )
        else:
            prompt = await self.tokenizers.render_chat(model, request.messages, tools)
        requested: int | None
        if request.max_completion_tokens is not None:
            requested, names = request.max_completion_tokens, ("max_completion_tokens", "messages")
        else:
            requested, names = request.max_tokens, ("max_tokens", "messages")
        logprobs = LogprobsAsked(output=bool(request.logprobs), top=request.top_logprobs or 0)
        prepared = await self.prepare(
            request,
            model,
            prompt,
            requested,
            names,
            id_prefix="chatcmpl",
            prompt_tokens=prompt_tokens,
            arrived=arrived,
            logprobs=logprobs,
        )
        self._guide(prepared, request)
        outputs = ToolOutputs(request, parser, request.choices_per_prompt)
        return ChatRun(self, prepared, await self.start(prepared), turn, outputs)

    def _guide(self, prepared: Prepared, request: ChatCompletionRequest) -> None:
        """A named function or "required": the output follows the tool choice's JSON schema."""
        if (guide := guide_of(request)) is None:
            return
        params = prepared.engine_request.params
        if params.guide_type is not None:
            message = 'tool_choice: a named function or "required" cannot be combined with response_format.'
            raise OpenAIError(400, message, param="tool_choice")
        params = dataclasses.replace(params, guide_type="json_schema", guide=guide)
        prepared.engine_request = dataclasses.replace(prepared.engine_request, params=params)
        self.check_capabilities(prepared.model, request, prepared.engine_request)

    def _message(self, run: ChatRun, index: int, text: str) -> AssistantMessage:
        if not run.outputs.parsing:
            return AssistantMessage(content=text)
        output = run.outputs.output(index)
        calls = [
            ToolCall(id=run.outputs.call_id(index, i), function=FunctionCall(name=call.name, arguments=call.arguments))
            for i, call in enumerate(output.tool_calls)
        ]
        return AssistantMessage(content=output.content, tool_calls=calls or None)

    async def create_chat_completion(
        self, request: ChatCompletionRequest
    ) -> ChatCompletion | AsyncIterator[str | bytes]:
        run = await self.start_chat(request)
        if request.stream:
            return EventStream(self._stream(request, run), run)
        await run.run_to_end()
        assert run.usage is not None
        choices = []
        for index, tally in run.tallies.items():
            logprobs = None
            if request.logprobs:
                content = await self.token_logprobs(
                    run.prepared.model, tally.token_ids, tally.logprobs, tally.top_logprobs
                )
                logprobs = ChoiceLogprobs(content=content)
            choices.append(
                ChatCompletionChoice(
                    index=index,
                    message=self._message(run, index, tally.text),
                    logprobs=logprobs,
                    finish_reason=run.finish_reasons[index],
                )
            )
        return ChatCompletion(
            id=run.prepared.id,
            created=run.prepared.created,
            model=request.model,
            choices=choices,
            usage=run.usage,
            session_id=run.session_id,
        )

    async def _stream(self, request: ChatCompletionRequest, run: ChatRun) -> AsyncGenerator[bytes, None]:
        envelope = ChatCompletionChunk(
            id=run.prepared.id,
            created=run.prepared.created,
            model=request.model,
            choices=[],
            session_id=run.session_id,
        )
        template = ChunkTemplate(envelope)

        def deltas(index: int, parsed: ParsedDelta, logprobs: dict[str, Any] | None = None) -> list[bytes]:
            """The events of what a choice's text read as: content, then each tool-call piece."""
            pieces: list[dict[str, Any]] = []
            if parsed.content or logprobs is not None:
                pieces.append({} if parsed.content is None else {"content": parsed.content})
            for call in parsed.tool_calls:
                if call.name is not None:
                    piece = tool_call_delta(call.index, "", run.outputs.call_id(index, call.index), call.name)
                else:
                    piece = tool_call_delta(call.index, call.arguments or "")
                pieces.append({"tool_calls": [piece]})
            return [
                template.event(chat_choice(index, delta, logprobs if i == 0 else None))
                for i, delta in enumerate(pieces)
            ]

        def finish(index: int, reason: str) -> list[bytes]:
            return [*deltas(index, run.outputs.finish(index)), template.event(chat_choice(index, {}, None, reason))]

        finished: set[int] = set()
        model = run.prepared.model
        async with aclosing(run.events(coalesced=True)) as events:
            try:
                for index in range(request.choices_per_prompt):
                    yield template.event(chat_choice(index, {"role": "assistant", "content": ""}))
                async for chunk in events:
                    logprobs = None
                    if request.logprobs and chunk.token_ids:
                        content = await self.token_logprobs(model, chunk.token_ids, chunk.logprobs, chunk.top_logprobs)
                        logprobs = ChoiceLogprobs(content=content).model_dump()
                    for line in deltas(chunk.index, run.parsed, logprobs):
                        yield line
                    # A choice's end as it comes; in a session, once the turn is stored (after the last chunk).
                    if chunk.finish_reason in FINISH_REASONS and chunk.index not in finished and run.turn is None:
                        finished.add(chunk.index)
                        for line in finish(chunk.index, run.outputs.finish_reason(chunk.index, chunk.finish_reason)):
                            yield line
                for index, reason in enumerate(run.finish_reasons):  # those the engine gave no (known) reason
                    if index not in finished:
                        for line in finish(index, reason):
                            yield line
                if request.include_usage:
                    yield sse_event(envelope.model_copy(update={"usage": run.usage}))
            except EngineError as exc:
                yield sse_event(engine_error_body(exc))
            yield SSE_DONE


async def _coalesced(chunks: EngineStream) -> AsyncGenerator[GenerationChunk, None]:
    while batch := await chunks.batch():
        for chunk in coalesce(batch):
            yield chunk


# The guided-decoding inputs (engine_contract, merged from the grammar branch); a refusal names the tool choice.
_GUIDE_INPUTS = frozenset(spec.name for spec in contract.INPUTS if spec.name.startswith("guided_decoding"))
