"""Logic shared by chat and text completions: model lookup, token budget, engine calls, usage, SSE framing.

The serving layer knows nothing of HTTP beyond producing response models or an iterator of SSE strings.
"""

from __future__ import annotations

import json
import math
import time
import uuid
from contextlib import aclosing
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

import engine_contract as contract
from frontend_api.engine.protocol import (
    Engine,
    EngineError,
    EngineModel,
    EngineUnavailable,
    GenerationRequest,
    SamplingParams,
    TopLogprobs,
)
from frontend_api.engine.triton import INPUT_TO_PARAM, needed_inputs
from frontend_api.errors import OpenAIError, error_body, model_not_found
from frontend_api.openai.engine_stream import EngineStream, Tallies, Tally
from frontend_api.openai.protocol import BaseGenerationRequest
from frontend_api.openai.response_objects import (
    CompletionLogprobs,
    ModelCard,
    ModelList,
    TokenLogprob,
    TopLogprob,
    Usage,
)
from frontend_api.openai.structured_output import GUIDE_INPUTS, Guide, guide_of, guide_param
from frontend_api.openai.timing import GenerationTimer
from frontend_api.openai.tokenization import Tokenizers
from frontend_api.policy.auth import Principal
from frontend_api.policy.limits import Admission, Limiter
from frontend_api.settings import Settings

SSE_DONE = b"data: [DONE]\n\n"
FINISH_REASONS = ("stop", "length")


def sse_event(payload: BaseModel | dict[str, Any]) -> bytes:
    data = payload.model_dump_json() if isinstance(payload, BaseModel) else json.dumps(payload, ensure_ascii=False)
    return f"data: {data}\n\n".encode()


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
    arrived: float | None = None
    request: BaseGenerationRequest | None = (
        None  # time.perf_counter() of a WebSocket chat frame (HTTP: the request's own)
    )
    timer: GenerationTimer | None = None  # set by start(): metrics and usage.stats


@dataclass(frozen=True)
class LogprobsAsked:
    """What a request asks of log-probabilities: of the output tokens, the k likeliest per position, and of the
    prompt tokens (completions' echo)."""

    output: bool = False
    top: int = 0
    prompt: bool = False


def sampling_params(
    request: BaseGenerationRequest,
    max_tokens: int,
    logprobs: LogprobsAsked = LogprobsAsked(),
    guide: Guide | None = None,  # the request's structured-output constraint (structured_output.guide_of)
) -> SamplingParams:
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
        stop_token_ids=tuple(request.stop_token_ids or ()),
        bad_words=tuple(request.bad_words or ()),
        logit_bias=tuple((int(token), float(bias)) for token, bias in (request.logit_bias or {}).items()),
        n=request.choices_per_prompt,
        logprobs=logprobs.output,
        top_logprobs=logprobs.top,
        prompt_logprobs=logprobs.prompt,
        guide_type=guide.guide_type if guide else None,
        guide=guide.guide if guide else "",
    )


def finite(logprob: float) -> float:
    """A log-probability JSON can carry: -inf (a token the sampler excluded) as OpenAI's -9999."""
    return logprob if math.isfinite(logprob) else -9999.0


class OpenAIServing:
    # Contract input -> the request field that asks for it, where this route's name differs from the default.
    param_names: dict[str, str] = {}

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

    def param_of(self, input_name: str, request: BaseGenerationRequest | None = None) -> str:
        """The request field that set a contract input (for the `param` of a 400)."""
        if input_name == contract.MIN_TOKENS.name and request is not None and request.ignore_eos:
            return "ignore_eos"
        if input_name in GUIDE_INPUTS and (field := guide_param(request)):
            return field
        return self.param_names.get(input_name) or INPUT_TO_PARAM.get(input_name, input_name)

    async def check_token_ids(self, model: EngineModel, fields: dict[str, list[int]]) -> None:
        """Token ids a request names must be in the model's vocabulary: a 400 naming the field."""
        if not any(fields.values()):
            return
        vocab = await self.tokenizers.vocab_size(model)
        for param, ids in fields.items():
            if outside := [i for i in ids if not 0 <= i < vocab]:
                raise OpenAIError(
                    400,
                    f"{param}: token id {outside[0]} is not in the vocabulary of model '{model.id}' "
                    f"(ids 0 to {vocab - 1}).",
                    param=param,
                )

    def check_capabilities(self, model: EngineModel, request: BaseGenerationRequest, engine: GenerationRequest) -> None:
        """Refuse, naming the field, what the model's engine does not honour (its declared `capabilities`; a model
        that declares none is left to refuse by itself)."""
        if model.capabilities is None:
            return
        for name in needed_inputs(engine):
            if name not in model.capabilities:
                param = self.param_of(name, request)
                raise OpenAIError(400, f"`{param}` is not supported by model '{model.id}'", param=param)

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
        prompt_token_ids: list[int] | None = None,  # send the prompt as these token ids
        logprobs: LogprobsAsked = LogprobsAsked(),
        request_id: str | None = None,
    ) -> Prepared:
        await self.check_token_ids(model, request.token_ids_to_check())
        guide = guide_of(request)
        if prompt_token_ids is not None:
            prompt_tokens = len(prompt_token_ids)
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
        request_id = request_id or new_id(id_prefix)
        engine_request = GenerationRequest(
            request_id=request_id,
            engine_model=model.engine_model,
            prompt=prompt,
            params=sampling_params(request, max_tokens, logprobs, guide),
            stream=request.stream,
            prompt_token_ids=tuple(prompt_token_ids) if prompt_token_ids is not None else None,
        )
        self.check_capabilities(model, request, engine_request)
        return Prepared(
            model=model,
            engine_request=engine_request,
            prompt_tokens=prompt_tokens,
            id=request_id,
            arrived=arrived,
            request=request,
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
        stream = EngineStream(self.engine.generate(prepared.engine_request), admission, timer)
        try:
            await stream.receive_first()
        except EngineError as exc:
            await stream.aclose()
            if exc.input_name is not None:  # the engine refused an input: name this route's field for it
                exc.param = self.param_of(exc.input_name, prepared.request)
            if exc.input_name in GUIDE_INPUTS:  # "guided_decoding_guide: not a valid regex ...": the field's words
                exc.message = f"{exc.param}: {exc.message.removeprefix(f'{exc.input_name}: ')}"
            raise
        except BaseException:
            await stream.aclose()
            raise
        return stream

    async def collect(self, chunks: EngineStream, n: int = 1) -> Tallies:
        tallies = Tallies(n)
        async with aclosing(chunks):
            async for chunk in chunks:
                tallies.add(chunk)
        return tallies

    async def completion_tokens(self, prepared: Prepared, tally: Tally) -> int:
        """The engine's count of a sequence's tokens when it sent one, else our tokenizer's."""
        if tally.num_output_tokens is not None:
            return tally.num_output_tokens
        return await self.tokenizers.count_tokens(prepared.model, tally.text, add_special_tokens=False)

    def finish_reason(self, prepared: Prepared, tally: Tally, completion_tokens: int) -> str:
        reason = tally.finish_reason
        if reason not in FINISH_REASONS:
            reason = "length" if completion_tokens >= prepared.engine_request.params.max_tokens else "stop"
        return reason

    async def finish_all(self, runs: list[tuple[Prepared, Tallies]]) -> tuple[list[list[str]], Usage]:
        """(each run's finish reason per sequence, the usage of them all): the prompts are counted once each (not
        per choice), the completion tokens of every sequence."""
        prompt_tokens = completion_tokens = 0
        reasons: list[list[str]] = []
        first: Prepared | None = None
        for prepared, tallies in runs:
            first = first or prepared
            counted = tallies.num_input_tokens
            prompt_tokens += counted if counted is not None else prepared.prompt_tokens
            run_reasons = []
            for _, tally in tallies.items():
                count = await self.completion_tokens(prepared, tally)
                completion_tokens += count
                run_reasons.append(self.finish_reason(prepared, tally, count))
            reasons.append(run_reasons)
        timer = first.timer if first else None
        usage = Usage(
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            total_tokens=prompt_tokens + completion_tokens,
            stats=timer.stats(timer.completion_tokens if len(runs) > 1 else completion_tokens) if timer else None,
        )
        return reasons, usage

    async def finish(self, prepared: Prepared, tally: Tally) -> tuple[str, Usage]:
        """(finish_reason, usage) of a one-sequence generation."""
        tallies = Tallies()
        tallies.by_index[0] = tally
        reasons, usage = await self.finish_all([(prepared, tallies)])
        return reasons[0][0], usage

    async def token_logprobs(
        self, model: EngineModel, token_ids: list[int] | tuple[int, ...], logprobs: Any, top: Any
    ) -> list[TokenLogprob]:
        """Chat's logprobs `content` of these tokens (their log-probabilities and top alternatives, aligned)."""
        if not token_ids or len(logprobs) != len(token_ids):
            return []
        alternatives = [pair for position in top for pair in position]
        pieces = await self.tokenizers.pieces(model, [*token_ids, *(i for i, _ in alternatives)])
        piece_of = dict(zip([*token_ids, *(i for i, _ in alternatives)], pieces, strict=True))
        content = []
        for position, (token_id, logprob) in enumerate(zip(token_ids, logprobs, strict=True)):
            piece = piece_of[token_id]
            tops = top[position] if position < len(top) else ()
            content.append(
                TokenLogprob(
                    token=piece.text,
                    logprob=finite(logprob),
                    bytes=piece.bytes,
                    top_logprobs=[
                        TopLogprob(token=piece_of[i].text, logprob=finite(lp), bytes=piece_of[i].bytes)
                        for i, lp in tops
                    ],
                )
            )
        return content

    async def completion_logprobs(
        self,
        model: EngineModel,
        token_ids: list[int] | tuple[int, ...],
        logprobs: list[float | None],
        top: list[TopLogprobs | None],
        text_offset: int = 0,
    ) -> CompletionLogprobs:
        """Completions' logprobs of these tokens: each token's text, log-probability (None: the first prompt
        token's), its likeliest alternatives with the token itself (as OpenAI's: up to logprobs + 1 entries),
        and its offset in the choice's text from `text_offset`."""
        alternatives = [i for position in top if position for i, _ in position]
        pieces = await self.tokenizers.pieces(model, [*token_ids, *alternatives])
        piece_of = dict(zip([*token_ids, *alternatives], pieces, strict=True))
        result = CompletionLogprobs()
        offset = text_offset
        for position, token_id in enumerate(token_ids):
            text = piece_of[token_id].text
            logprob = logprobs[position] if position < len(logprobs) else None
            tops = top[position] if position < len(top) else None
            result.tokens.append(text)
            result.token_logprobs.append(None if logprob is None else finite(logprob))
            if logprob is None:
                result.top_logprobs.append(None)
            else:
                ranked: dict[str, float] = {}
                for i, lp in tops or ():
                    ranked.setdefault(piece_of[i].text, finite(lp))
                ranked.setdefault(text, finite(logprob))
                result.top_logprobs.append(ranked)
            result.text_offset.append(offset)
            offset += len(text)
        return result

    async def list_models(self, created: int) -> ModelList:
        models = await self.engine.list_models()
        return ModelList(data=[_card(m, created) for m in models])

    async def get_model(self, model_id: str, created: int) -> ModelCard:
        return _card(await self.resolve_model(model_id), created)


def _card(model: EngineModel, created: int) -> ModelCard:
    return ModelCard(id=model.id, created=created, max_model_len=model.max_model_len)
