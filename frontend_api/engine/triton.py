"""The Engine protocol over Triton's gRPC API: one bidirectional stream per generation request, carrying the
tensors of engine_contract.

Every request is sent with stream=True (also for non-streaming HTTP requests, which accumulate): the models
are decoupled and answer with several responses, the last one flagged `triton_final_response`.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import tritonclient.grpc.aio as grpcclient
from tritonclient.grpc import InferInput
from tritonclient.utils import InferenceServerException

import engine_contract as contract
from frontend_api.engine.protocol import (
    EngineError,
    EngineModel,
    EngineUnavailable,
    GenerationChunk,
    GenerationRequest,
)
from frontend_api.engine.triton_outputs import parse_outputs as parse_outputs  # re-exported: the fake engine's
from frontend_api.engine.triton_outputs import parse_result

logger = logging.getLogger(__name__)

# What every request sends, whatever it asks: the models answer on a decoupled stream (also for non-streaming HTTP
# requests, which accumulate), with only the generated text, and with the token counts for `usage`.
_ALWAYS_SENT = (
    (contract.STREAM, True),
    (contract.EXCLUDE_INPUT_IN_OUTPUT, True),
    (contract.RETURN_NUM_INPUT_TOKENS, True),
    (contract.RETURN_NUM_OUTPUT_TOKENS, True),
)
# SamplingParams field -> the contract input that carries it, sent only when the request sets it.
_FROM_PARAMS = {
    "temperature": contract.TEMPERATURE,
    "top_p": contract.TOP_P,
    "top_k": contract.TOP_K,
    "seed": contract.SEED,
    "min_tokens": contract.MIN_TOKENS,
    "repetition_penalty": contract.REPETITION_PENALTY,
    "presence_penalty": contract.PRESENCE_PENALTY,
    "frequency_penalty": contract.FREQUENCY_PENALTY,
}
# Contract input name -> the OpenAI request field it comes from (for the `param` of a 400). The serving layer
# names a route's own fields where they differ (completions' `logprobs` is chat's `top_logprobs` too).
INPUT_TO_PARAM = {spec.name: field for field, spec in _FROM_PARAMS.items()} | {
    contract.TEXT_INPUT.name: "prompt",
    contract.INPUT_IDS.name: "prompt",
    contract.MAX_TOKENS.name: "max_tokens",
    contract.STOP_WORDS.name: "stop",
    contract.STOP_TOKEN_IDS.name: "stop_token_ids",
    contract.BAD_WORDS.name: "bad_words",
    contract.EMBEDDING_BIAS_TOKEN_IDS.name: "logit_bias",
    contract.EMBEDDING_BIAS_WEIGHTS.name: "logit_bias",
    contract.NUM_RETURN_SEQUENCES.name: "n",
    contract.RETURN_LOG_PROBS.name: "logprobs",
    contract.NUM_TOP_LOG_PROBS.name: "top_logprobs",
    contract.RETURN_PROMPT_LOG_PROBS.name: "echo",
    contract.GUIDED_DECODING_GUIDE_TYPE.name: "response_format",
    contract.GUIDED_DECODING_GUIDE.name: "response_format",
}
_PLUMBING = frozenset(spec.name for spec, _ in _ALWAYS_SENT)  # sent by the client itself, not asked for
_INVALID_MARKER = "invalid request:"
_UNEXPECTED_INPUT = re.compile(r"unexpected inference input '(\w+)'")
_UNAVAILABLE_CODES = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.CANCELLED, grpc.StatusCode.RESOURCE_EXHAUSTED}
_REQUIRED_PARAMETERS = ("served_model_name", "tokenizer_dir", "max_model_len")
_CAPABILITIES = "capabilities"  # the contract inputs the model's engine honours (engine_contract.capabilities)
_DRAIN_TIMEOUT_S = 1.0
# tritonclient's own channel options, plus a short reconnect backoff: after Triton restarts (the launcher
# supervises it) the channel reconnects within about a second instead of gRPC's default backoff of up to 120 s.
_MAX_MESSAGE_BYTES = 2**31 - 1  # tritonclient's default
_CHANNEL_ARGS = [
    ("grpc.max_send_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", _MAX_MESSAGE_BYTES),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 1000),
]


def _tensor(spec: contract.TensorSpec, value: Any) -> InferInput:
    array = spec.array(value)
    tensor = InferInput(spec.name, list(array.shape), spec.wire_type)
    tensor.set_data_from_numpy(array)
    return tensor


def input_values(request: GenerationRequest) -> list[tuple[contract.TensorSpec, Any]]:
    """The contract's inputs this request sends, with their values (an unset option is not sent)."""
    params = request.params
    prompt = (
        (contract.TEXT_INPUT, request.prompt)
        if request.prompt_token_ids is None
        else (contract.INPUT_IDS, request.prompt_token_ids)
    )
    values: list[tuple[contract.TensorSpec, Any]] = [prompt, (contract.MAX_TOKENS, params.max_tokens), *_ALWAYS_SENT]
    for field, spec in _FROM_PARAMS.items():
        if (value := getattr(params, field)) is not None:
            values.append((spec, value))
    if params.stop:
        values.append((contract.STOP_WORDS, params.stop))
    if params.stop_token_ids:
        values.append((contract.STOP_TOKEN_IDS, params.stop_token_ids))
    if params.bad_words:
        values.append((contract.BAD_WORDS, params.bad_words))
    if params.logit_bias:
        values.append((contract.EMBEDDING_BIAS_TOKEN_IDS, [token for token, _ in params.logit_bias]))
        values.append((contract.EMBEDDING_BIAS_WEIGHTS, [bias for _, bias in params.logit_bias]))
    if params.n != 1:
        values.append((contract.NUM_RETURN_SEQUENCES, params.n))
    if params.logprobs or params.top_logprobs or params.prompt_logprobs:
        values.append((contract.RETURN_LOG_PROBS, True))
    if params.top_logprobs:
        values.append((contract.NUM_TOP_LOG_PROBS, params.top_logprobs))
    if params.prompt_logprobs:
        values.append((contract.RETURN_PROMPT_LOG_PROBS, True))
    if params.guide_type is not None:
        values.append((contract.GUIDED_DECODING_GUIDE_TYPE, params.guide_type))
        if params.guide:  # "json" has none
            values.append((contract.GUIDED_DECODING_GUIDE, params.guide))
    return values


def needed_inputs(request: GenerationRequest) -> list[str]:
    """The contract inputs this request sets to something but their default: those its model must honour (the
    client's own plumbing, stream and the token counts, aside)."""
    return [
        spec.name
        for spec, value in input_values(request)
        if spec.name not in _PLUMBING and spec.array(value).tolist() != _default_list(spec)
    ]


def _default_list(spec: contract.TensorSpec) -> Any:
    return None if spec.default is None else spec.array(spec.default).tolist()


def build_inputs(request: GenerationRequest) -> list[InferInput]:
    """Tensors with a leading batch dim of 1 (the models have max_batch_size > 0)."""
    return [_tensor(spec, value) for spec, value in input_values(request)]


def infer_error(message: str) -> EngineError:
    """Map an in-band error of a stream response (a model's "invalid request: ...") to the HTTP-facing
    EngineError, naming the OpenAI field of the refused input."""
    if _INVALID_MARKER in message:
        detail = message.split(_INVALID_MARKER, 1)[1].strip()
        first_word = re.match(r"\w+", detail)
        name = first_word.group(0) if first_word else None
        return EngineError(
            detail,
            status=400,
            param=INPUT_TO_PARAM.get(name) if name else None,
            input_name=name if name in contract.INPUTS_BY_NAME else None,
        )
    if unexpected := _UNEXPECTED_INPUT.search(message):
        name = unexpected.group(1)
        param = INPUT_TO_PARAM.get(name, name)
        return EngineError(f"`{param}` is not supported by this model.", status=400, param=param, input_name=name)
    if "unknown model" in message.lower():
        return EngineUnavailable("The model is not loaded on the inference server; retry shortly.")
    logger.error("inference server error: %s", message)
    return EngineError("The inference engine failed to process the request.", status=500)


def _rpc_error(exc: grpc.RpcError) -> EngineError:
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    if code in _UNAVAILABLE_CODES:
        return EngineUnavailable()
    logger.error("gRPC stream to the inference server failed: %s", exc)
    return EngineError("The inference engine failed to process the request.", status=500)


def _parameter(config: dict[str, Any], key: str) -> str | None:
    value = config.get("parameters", {}).get(key, {}).get("string_value")
    return value or None


def engine_model_from_config(name: str, config: dict[str, Any]) -> EngineModel | None:
    """The served model described by a Triton model config, or None if it is not an OpenAI-served model."""
    values = {key: _parameter(config, key) for key in _REQUIRED_PARAMETERS}
    if any(v is None for v in values.values()):
        return None
    try:
        max_model_len = int(values["max_model_len"] or "")
    except ValueError:
        logger.warning("model %s: max_model_len %r is not an integer; not served", name, values["max_model_len"])
        return None
    metadata = {
        key: value["string_value"]
        for key, value in config.get("parameters", {}).items()
        if key not in _REQUIRED_PARAMETERS and key != _CAPABILITIES and "string_value" in value
    }
    declared = config.get("parameters", {}).get(_CAPABILITIES, {}).get("string_value")
    capabilities = contract.parse_capabilities(declared) if declared is not None else None
    return EngineModel(
        id=values["served_model_name"] or name,
        engine_model=name,
        tokenizer_dir=values["tokenizer_dir"] or "",
        max_model_len=max_model_len,
        metadata=metadata,
        capabilities=capabilities,
    )


class TritonEngine:
    """Create inside the running event loop (the gRPC aio channel binds to it); one per app."""

    def __init__(self, url: str, *, rpc_timeout_s: float = 5.0, models_ttl_s: float = 2.0):
        self._client = grpcclient.InferenceServerClient(url, channel_args=_CHANNEL_ARGS)
        self._rpc_timeout_s = rpc_timeout_s
        self._models_ttl_s = models_ttl_s
        self._models: list[EngineModel] | None = None
        self._models_at = 0.0
        self._models_lock = asyncio.Lock()
        self._streams: set[Any] = set()  # open generation streams, for abort()
        self._abort_message: str | None = None

    def abort(self, message: str) -> None:
        """End every open generation with EngineUnavailable(message) (the drain timeout at shutdown is over)."""
        self._abort_message = message
        for responses in list(self._streams):
            responses.cancel()

    async def ready(self) -> bool:
        try:
            timeout = self._rpc_timeout_s
            live = await self._client.is_server_live(client_timeout=timeout)
            ready = live and await self._client.is_server_ready(client_timeout=timeout)
            return bool(ready and await self.list_models())
        except (EngineError, InferenceServerException, grpc.RpcError, OSError) as exc:
            logger.debug("inference server not ready: %s", exc)
            return False

    async def list_models(self) -> list[EngineModel]:
        if self._models is not None and time.monotonic() - self._models_at < self._models_ttl_s:
            return self._models
        async with self._models_lock:  # one refresh at a time; the others reuse its result
            if self._models is None or time.monotonic() - self._models_at >= self._models_ttl_s:
                try:
                    self._models = await self._discover()
                except EngineUnavailable:
                    if self._models is None:
                        raise
                    # A Triton too busy to answer in time (seen at 200 streams on 2 cores) still serves the models
                    # it had; a Triton that is gone fails the generation stream itself, with its own 503.
                    logger.warning("model list refresh failed; serving the %d model(s) known", len(self._models))
                self._models_at = time.monotonic()
            return self._models

    async def _discover(self) -> list[EngineModel]:
        timeout = self._rpc_timeout_s
        try:
            index = await self._client.get_model_repository_index(as_json=True, client_timeout=timeout)
        except InferenceServerException as exc:
            raise EngineUnavailable() from exc
        names = sorted({m["name"] for m in index.get("models", []) if m.get("state") == "READY"})
        models: dict[str, EngineModel] = {}
        for name in names:
            try:
                config = (await self._client.get_model_config(name, as_json=True, client_timeout=timeout))["config"]
            except InferenceServerException as exc:
                if any(code in str(exc.status()) for code in ("DEADLINE_EXCEEDED", "UNAVAILABLE")):
                    raise EngineUnavailable() from exc  # too slow or gone, not unloaded: keep what is known
                logger.info("skipping model %s: %s", name, exc)  # unloaded since the index was read
                continue
            model = engine_model_from_config(name, config)
            if model is None:
                continue
            if model.id in models:
                first = models[model.id].engine_model
                logger.warning("models %s and %s both serve %r; using %s", first, name, model.id, first)
                continue
            models[model.id] = model
        return list(models.values())

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        inputs = build_inputs(request)
        payload = {"model_name": request.engine_model, "inputs": inputs, "request_id": request.request_id}

        async def requests() -> AsyncIterator[dict[str, Any]]:
            # One request, then half-close: Triton ends the stream once that request's responses are all sent.
            yield payload

        if self._abort_message is not None:
            raise EngineUnavailable(self._abort_message)
        responses = self._client.stream_infer(inputs_iterator=requests())
        self._streams.add(responses)
        unfinished = set(range(request.params.n))  # sequences that have not had their finish_reason
        params = request.params
        logprobs_asked = params.logprobs or params.top_logprobs > 0 or params.prompt_logprobs
        try:
            while True:
                try:
                    result, error = await responses.__anext__()
                except StopAsyncIteration:
                    return
                if error is not None:  # an in-band error is the request's final response
                    await self._drain(responses)
                    raise infer_error(error.message() or str(error))
                chunk, final = parse_result(result, params.top_logprobs, logprobs_asked)
                if chunk.finish_reason:
                    unfinished.discard(chunk.index)
                yield chunk
                if final or not unfinished:  # Triton's flag, or (an engine that sends none) every sequence ended
                    await self._drain(responses)
                    return
        except grpc.RpcError as exc:
            raise _rpc_error(exc) from None
        except asyncio.CancelledError:
            # abort() cancelled the gRPC call (gRPC reports that as CancelledError); a cancelled task is not ours.
            task = asyncio.current_task()
            if self._abort_message is None or (task is not None and task.cancelling()):
                raise
            raise EngineUnavailable(self._abort_message) from None
        finally:
            self._streams.discard(responses)
            # No-op when the stream already ended; otherwise (client gone, error) Triton sees the cancellation.
            responses.cancel()

    @staticmethod
    async def _drain(responses: Any) -> None:
        """Let Triton end the stream after the final response. Cancelling a stream whose request has just finished
        can keep Triton 2.51 from unloading the model at shutdown (it then waits out its exit timeout)."""
        try:
            await asyncio.wait_for(responses.__anext__(), _DRAIN_TIMEOUT_S)
        except (TimeoutError, StopAsyncIteration, grpc.RpcError):
            pass

    async def close(self) -> None:
        await self._client.close()
