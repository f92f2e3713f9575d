"""One Triton stream response's output tensors (engine_contract) read into a GenerationChunk: the front-end's
work on every response, so the common case (no log-probabilities asked) reads only the six tensors it has, with a
C call or two each."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
from tritonclient.grpc import InferResult

import engine_contract as contract
from frontend_api.engine.protocol import GenerationChunk, TopLogprobs


def _top(values: tuple[float, ...], ids: tuple[int, ...], k: int, count: int) -> tuple[TopLogprobs, ...]:
    """Flattened [token][rank] top-k outputs -> per token ((id, logprob), ...); () when absent or misshapen."""
    if k <= 0 or not values or len(values) != len(ids) or len(values) != k * count:
        return ()
    pairs = [(int(i), float(v)) for i, v in zip(ids, values, strict=True)]
    return tuple(tuple(pairs[t * k : (t + 1) * k]) for t in range(count))


def _reader(spec: contract.TensorSpec) -> Callable[[np.ndarray | None], Any]:
    """TensorSpec.read for one output, without a Python call per element (this runs on every response)."""
    default, is_list, strings = spec.default, spec.is_list, spec.numpy_dtype is np.object_

    def read(array: np.ndarray | None) -> Any:
        if array is None:
            return default
        values = array.ravel().tolist()  # numbers become Python numbers; a string tensor holds bytes
        if not values:
            return default
        if strings:
            values = [v.decode("utf-8") if isinstance(v, bytes) else v for v in values]
            if is_list:
                return tuple(v for v in values if v != "")
        return tuple(values) if is_list else values[0]

    return read


_READ = {spec.name: _reader(spec) for spec in contract.OUTPUTS}
_TEXT, _FINISH, _INPUT_COUNT, _OUTPUT_COUNT, _INDEX, _IDS = (
    spec.name
    for spec in (
        contract.TEXT_OUTPUT,
        contract.FINISH_REASON,
        contract.NUM_INPUT_TOKENS,
        contract.NUM_OUTPUT_TOKENS,
        contract.SEQUENCE_INDEX,
        contract.OUTPUT_IDS,
    )
)
_LOGPROB_OUTPUTS = tuple(
    spec.name
    for spec in (
        contract.OUTPUT_LOG_PROBS,
        contract.TOP_LOG_PROBS,
        contract.TOP_LOG_PROB_IDS,
        contract.CUM_LOG_PROBS,
        contract.PROMPT_LOG_PROBS,
        contract.PROMPT_TOP_LOG_PROBS,
        contract.PROMPT_TOP_LOG_PROB_IDS,
    )
)


def _text(array: np.ndarray | None) -> str:
    """text_output: one string as a rule (a delta), else its pieces joined."""
    if array is None:
        return ""
    if array.size == 1:
        value = array.item(0)
        return value.decode("utf-8") if isinstance(value, bytes) else value
    return "".join(v.decode("utf-8") if isinstance(v, bytes) else v for v in array.ravel().tolist())


def parse_outputs(
    read: Callable[[str], np.ndarray | None], top_logprobs: int = 0, logprobs_asked: bool = True
) -> GenerationChunk:
    """The chunk of one response whose output arrays `read(name)` returns (None when absent); `top_logprobs` is
    the request's num_top_log_probs (the k of the flattened top-k outputs); `logprobs_asked`: whether the request asked
    for any log-probabilities (without, the seven log-probability outputs are not looked for)."""
    # The six outputs of every response, read with a C call or two each (inline: this runs once per response).
    text, finish, prompt_count, count, index, ids = (
        read(_TEXT),
        read(_FINISH),
        read(_INPUT_COUNT),
        read(_OUTPUT_COUNT),
        read(_INDEX),
        read(_IDS),
    )
    reason = None if finish is None or not finish.size else finish.item(0)
    if isinstance(reason, bytes):
        reason = reason.decode("utf-8")
    chunk = GenerationChunk(
        _text(text),
        reason or None,
        None if prompt_count is None or not prompt_count.size else prompt_count.item(0),
        None if count is None or not count.size else count.item(0),
        index.item(0) if index is not None and index.size else 0,
        () if ids is None else tuple(ids.ravel().tolist()),
    )
    if not logprobs_asked:
        return chunk
    arrays = {name: array for name in _LOGPROB_OUTPUTS if (array := read(name)) is not None}
    if not arrays:  # the common case: no log-probabilities asked
        return chunk

    def logprob_value(spec: contract.TensorSpec) -> Any:
        return _READ[spec.name](arrays.get(spec.name))

    logprobs = logprob_value(contract.OUTPUT_LOG_PROBS)
    prompt_logprobs = logprob_value(contract.PROMPT_LOG_PROBS)
    prompt_top = _top(
        logprob_value(contract.PROMPT_TOP_LOG_PROBS),
        logprob_value(contract.PROMPT_TOP_LOG_PROB_IDS),
        top_logprobs,
        len(prompt_logprobs),
    )
    cum = logprob_value(contract.CUM_LOG_PROBS)
    token_ids = chunk.token_ids
    chunk.logprobs = logprobs if len(logprobs) == len(token_ids) else ()
    chunk.top_logprobs = _top(
        logprob_value(contract.TOP_LOG_PROBS), logprob_value(contract.TOP_LOG_PROB_IDS), top_logprobs, len(token_ids)
    )
    chunk.cum_logprob = None if cum is None else float(cum)
    chunk.prompt_logprobs = prompt_logprobs or None
    chunk.prompt_top_logprobs = prompt_top or None
    return chunk


def parse_result(
    result: InferResult, top_logprobs: int = 0, logprobs_asked: bool = True
) -> tuple[GenerationChunk, bool]:
    """(chunk, is_final) of one stream response: final is Triton's flag, after the last sequence's response."""
    chunk = parse_outputs(result.as_numpy, top_logprobs, logprobs_asked)
    parameters = result.get_response().parameters
    final = "triton_final_response" in parameters and parameters["triton_final_response"].bool_param
    return chunk, bool(final)
