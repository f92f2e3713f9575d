"""Logic shared by chat and text completions: model lookup, token budget, engine calls, usage, SSE framing.

The serving layer knows nothing of HTTP beyond producing response models or an iterator of SSE strings.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any, Protocol

from pydantic import BaseModel

from frontend_api.engine.protocol import (
    Engine,
    EngineError,
    EngineModel,
    EngineUnavailable,
    GenerationChunk,
    GenerationRequest,
    SamplingParams,
)
from frontend_api.errors import OpenAIError, error_body, model_not_found
from frontend_api.openai.protocol import BaseGenerationRequest, ModelCard, ModelList, Usage
from frontend_api.openai.timing import GenerationTimer
from frontend_api.openai.tokenization import Tokenizers
from frontend_api.policy.auth import Principal
from frontend_api.policy.limits import Admission, Limiter
from frontend_api.settings import Settings

SSE_DONE = "data: [DONE]\n\n"
FINISH_REASONS = ("stop", "length")


def sse_event(payload: BaseModel | dict[str, Any]) -> str:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n"


def engine_error_body(exc: EngineError) -> dict[str, Any]:
    """The OpenAI error body of an engine failure (an HTTP answer, or the last SSE event of a stream)."""
    code = "engine_unavailable" if isinstance(exc, EngineUnavailable) else None
    return error_body(exc.status, exc.message, param=exc.param, code=code)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex}"


@dataclass
class Prepared:
    """A validated request ready for the engine."""

    model: EngineModel
    engine_request: GenerationRequest
    prompt_tokens: int
    id: str
    created: int = field(default_factory=lambda: int(time.time()))
    arrived: float | None = None  # time.perf_counter() of a WebSocket chat frame (HTTP: the request's own)
    timer: GenerationTimer | None = None  # set by start(): metrics and usage.stats


@dataclass
class Tally:
    """What the engine produced so far; the counts come from the engine's last chunk that carried them."""

    parts: list[str] = field(default_factory=list)
    finish_reason: str | None = None
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None

    def add(self, chunk: GenerationChunk) -> None:
        self.parts.append(chunk.text)
        self.finish_reason = chunk.finish_reason or self.finish_reason
        if chunk.num_input_tokens is not None:
            self.num_input_tokens = chunk.num_input_tokens
        if chunk.num_output_tokens is not None:
            self.num_output_tokens = chunk.num_output_tokens

    @property
    def text(self) -> str:
        return "".join(self.parts)


def sampling_params(request: BaseGenerationRequest, max_tokens: int) -> SamplingParams:
    return SamplingParams(
        max_tokens=max_tokens,
        temperature=request.temperature,
        top_p=request.top_p,
        top_k=request.top_k if request.top_k and request.top_k > 0 else None,
        seed=request.seed,
        min_tokens=max_tokens if request.ignore_eos else request.min_tokens,  # the engines then ignore end-of-sequence
        repetition_penalty=request.repetition_penalty,
        presence_penalty=request.presence_penalty,
        frequency_penalty=request.frequency_penalty,
        stop=tuple(request.stop or ()),
    )


class OpenAIServing:
    def __init__(
        self,
        engine: Engine,
        tokenizers: Tokenizers,
        settings: Settings,
        principal: Principal,
        limiter: Limiter | None = None,  # None: nothing is limited (tests of the serving logic alone)
    ):
        self.engine = engine
        self.tokenizers = tokenizers
        self.settings = settings
        self.principal = principal  # who asks: limits, session ownership, per-key metrics
        self.limiter = limiter

    async def resolve_model(self, model_id: str) -> EngineModel:
        for model in await self.engine.list_models():
            if model.id == model_id:
                return model
        raise model_not_found(model_id)

    def max_tokens(self, model: EngineModel, prompt_tokens: int, requested: int | None, names: tuple[str, str]) -> int:
        """The completion budget; `names` = (max-tokens field, prompt field) for error messages."""
        tokens_param, prompt_param = names
        limit = model.max_model_len
        cap = self.settings.max_tokens_limit
        if requested is not None and cap is not None and requested > cap:
            raise OpenAIError(
                400,
                f"{tokens_param} is {requested}, more than this server's limit of {cap}.",
                param=tokens_param,
                code="max_tokens_exceeded",
            )
        if requested is not None:
            if prompt_tokens + requested > limit:
                raise OpenAIError(
                    400,
                    f"This model's maximum context length is {limit} tokens. However, you requested "
                    f"{prompt_tokens + requested} tokens ({prompt_tokens} in the {prompt_param}, {requested} in the "
                    f"completion). Please reduce the length of the {prompt_param} or {tokens_param}.",
                    param=tokens_param,
                    code="context_length_exceeded",
                )
            return requested
        room = limit - prompt_tokens
        if room < 1:
            raise OpenAIError(
                400,
                f"This model's maximum context length is {limit} tokens, and the {prompt_param} has "
                f"{prompt_tokens} tokens, which leaves no room for a completion.",
                param=prompt_param,
                code="context_length_exceeded",
            )
        default = self.settings.default_max_tokens
        return min(default or room, room, cap or room)

    async def prepare(
        self,
        request: BaseGenerationRequest,
        model: EngineModel,
        prompt: str,
        requested_max_tokens: int | None,
        names: tuple[str, str],
        id_prefix: str,
        prompt_tokens: int | None = None,  # when the caller has counted the prompt already
        arrived: float | None = None,
    ) -> Prepared:
        if prompt_tokens is None:
            prompt_tokens = await self.tokenizers.count_tokens(model, prompt)
        longest = self.settings.max_prompt_tokens
        if longest is not None and prompt_tokens > longest:
            raise OpenAIError(
                400,
                f"The {names[1]} has {prompt_tokens} tokens, more than this server's limit of "
                f"{longest}. Please shorten it.",
                param=names[1],
                code="prompt_too_long",
            )
        max_tokens = self.max_tokens(model, prompt_tokens, requested_max_tokens, names)
        if request.min_tokens is not None and request.min_tokens > max_tokens:
            raise OpenAIError(
                400, f"min_tokens ({request.min_tokens}) must not exceed max_tokens ({max_tokens}).", param="min_tokens"
            )
        request_id = new_id(id_prefix)
        engine_request = GenerationRequest(
            request_id=request_id,
            engine_model=model.engine_model,
            prompt=prompt,
            params=sampling_params(request, max_tokens),
            stream=request.stream,
        )
        return Prepared(
            model=model, engine_request=engine_request, prompt_tokens=prompt_tokens, id=request_id, arrived=arrived
        )

    async def admit(self, prepared: Prepared) -> Admission | None:
        """Apply the limits (frontend_api/policy/limits.py) to a generation about to start: raises 429/503, or returns the
        admission that the generation's EngineStream finishes when it closes."""
        if self.limiter is None:
            return None
        return await self.limiter.admit(self.principal, prepared.prompt_tokens)

    async def start(self, prepared: Prepared) -> EngineStream:
        """Admit the request (limits), send it and wait for the engine's first response, so that a request the
        engine rejects is answered with an HTTP error status instead of an error inside a 200 event stream.
        The returned stream must be closed; closing it releases the admission. The timer records the metrics."""
        admission = await self.admit(prepared)
        timer = prepared.timer = GenerationTimer(
            prepared.model.id,
            self.principal.name,
            prepared.engine_request.params.max_tokens,
            prepared.prompt_tokens,
            prepared.arrived,
        )
        stream = EngineStream(timer.watch(self.engine.generate(prepared.engine_request)), admission)
        try:
            await stream.receive_first()
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def collect(self, chunks: EngineStream) -> Tally:
        tally = Tally()
        async with aclosing(chunks):
            async for chunk in chunks:
                tally.add(chunk)
        return tally

    async def finish(self, prepared: Prepared, tally: Tally) -> tuple[str, Usage]:
        """(finish_reason, usage): the engine's counts when it sent them, else our tokenizer's."""
        prompt_tokens = tally.num_input_tokens if tally.num_input_tokens is not None else prepared.prompt_tokens
        completion_tokens = tally.num_output_tokens
        if completion_tokens is None:
            completion_tokens = await self.tokenizers.count_tokens(prepared.model, tally.text, add_special_tokens=False)
        reason = tally.finish_reason
        if reason not in FINISH_REASONS:
            reason = "length" if completion_tokens >= prepared.engine_request.params.max_tokens else "stop"
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            stats=prepared.timer.stats(completion_tokens) if prepared.timer else None,
        )
        return reason, usage

    async def list_models(self, created: int) -> ModelList:
        models = await self.engine.list_models()
        return ModelList(data=[_card(m, created) for m in models])

    async def get_model(self, model_id: str, created: int) -> ModelCard:
        return _card(await self.resolve_model(model_id), created)


def _card(model: EngineModel, created: int) -> ModelCard:
    return ModelCard(id=model.id, created=created, max_model_len=model.max_model_len)


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
        self.num_output_tokens = 0  # the engine's count so far (it reports it on every response)

    async def receive_first(self) -> None:
        try:
            self._first = self._seen(await anext(self._rest))
        except StopAsyncIteration:
            self._first = None

    def _seen(self, chunk: GenerationChunk) -> GenerationChunk:
        if chunk.num_output_tokens is not None:
            self.num_output_tokens = chunk.num_output_tokens
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
