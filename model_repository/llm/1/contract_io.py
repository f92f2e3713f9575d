"""The engine contract's tensors (engine_contract) <-> what a core takes and gives (core.Sampling, core.Update).

No Triton import: model.py hands in a reader of the request's input arrays and wraps the arrays it gets back,
so the translation is unit-tested in process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import engine_contract as contract

from core import InvalidRequest, Prompt, Sampling, Update


@dataclass(frozen=True)
class ParsedRequest:
    prompt: Prompt  # text, or token ids (input_ids)
    sampling: Sampling
    stream: bool
    exclude_input_in_output: bool


def parse_request(read: Callable[[str], np.ndarray | None], core: str) -> ParsedRequest:
    """The request whose input arrays `read(name)` returns (None when absent), for the core named `core`.
    Raises InvalidRequest for a missing required input, and for an input the core does not honour set to
    anything but its default: nothing is silently ignored."""

    values = {spec.name: spec.read(read(spec.name)) for spec in contract.INPUTS}  # each tensor read once

    def value(spec: contract.TensorSpec):
        return values[spec.name]

    for spec in contract.INPUTS:
        if not spec.optional and value(spec) is None:
            raise InvalidRequest(f"{spec.name} is required")
    text, ids = value(contract.TEXT_INPUT), value(contract.INPUT_IDS)
    if (text is None) == (not ids):
        raise InvalidRequest("text_input is required (or input_ids instead, not both)")
    for spec in contract.not_honoured(core):
        if value(spec) != spec.default:
            raise InvalidRequest(f"{spec.name} is not supported by the llm engine core {core!r}")
    bias_ids, bias_weights = value(contract.EMBEDDING_BIAS_TOKEN_IDS), value(contract.EMBEDDING_BIAS_WEIGHTS)
    if len(bias_ids) != len(bias_weights):
        raise InvalidRequest("embedding_bias_token_ids and embedding_bias_weights must have the same length")
    guide_type, guide = value(contract.GUIDED_DECODING_GUIDE_TYPE), value(contract.GUIDED_DECODING_GUIDE)
    if guide_type is None and guide:
        raise InvalidRequest("guided_decoding_guide_type is required with guided_decoding_guide")
    sampling = Sampling(
        max_tokens=int(value(contract.MAX_TOKENS)),
        temperature=float(value(contract.TEMPERATURE)),
        top_p=float(value(contract.TOP_P)),
        top_k=int(value(contract.TOP_K)),
        min_tokens=int(value(contract.MIN_TOKENS)),
        end_id=value(contract.END_ID),
        stop=value(contract.STOP_WORDS),
        seed=value(contract.SEED),
        presence_penalty=float(value(contract.PRESENCE_PENALTY)),
        frequency_penalty=float(value(contract.FREQUENCY_PENALTY)),
        repetition_penalty=float(value(contract.REPETITION_PENALTY)),
        logit_bias=tuple(zip(map(int, bias_ids), map(float, bias_weights), strict=True)),
        stop_token_ids=tuple(map(int, value(contract.STOP_TOKEN_IDS))),
        bad_words=value(contract.BAD_WORDS),
        n=int(value(contract.NUM_RETURN_SEQUENCES)),
        logprobs=bool(value(contract.RETURN_LOG_PROBS)),
        top_logprobs=int(value(contract.NUM_TOP_LOG_PROBS)),
        prompt_logprobs=bool(value(contract.RETURN_PROMPT_LOG_PROBS)),
        guide=None if guide_type is None else (guide_type, guide),
    )
    return ParsedRequest(
        prompt=text if text is not None else tuple(map(int, ids)),
        sampling=sampling,
        stream=bool(value(contract.STREAM)),
        exclude_input_in_output=bool(value(contract.EXCLUDE_INPUT_IN_OUTPUT)),
    )


def response_arrays(
    update: Update, text: str, sampling: Sampling | None = None, cum_logprob: float = 0.0
) -> dict[str, np.ndarray]:
    """The output tensors of one response, for one sequence (`update.index`): `text`, the counts, the token ids of
    the delta; the log-probabilities `sampling` asks for (cum_logprob: the sequence's sum so far; top-k flattened
    [token][rank]); the prompt's on the sequence's first response; the finish reason on its last."""
    arrays = {
        contract.TEXT_OUTPUT.name: contract.TEXT_OUTPUT.array([text]),
        contract.NUM_INPUT_TOKENS.name: contract.NUM_INPUT_TOKENS.array(update.num_input_tokens),
        contract.NUM_OUTPUT_TOKENS.name: contract.NUM_OUTPUT_TOKENS.array(update.num_output_tokens),
        contract.SEQUENCE_INDEX.name: contract.SEQUENCE_INDEX.array(update.index),
        contract.OUTPUT_IDS.name: contract.OUTPUT_IDS.array(update.token_ids),
    }
    if update.finish_reason:
        arrays[contract.FINISH_REASON.name] = contract.FINISH_REASON.array(update.finish_reason)
    if sampling is not None and sampling.logprobs:
        arrays[contract.OUTPUT_LOG_PROBS.name] = contract.OUTPUT_LOG_PROBS.array(update.logprobs)
        arrays[contract.CUM_LOG_PROBS.name] = contract.CUM_LOG_PROBS.array(cum_logprob)
    if sampling is not None and sampling.top_logprobs:
        _put_top(arrays, contract.TOP_LOG_PROBS, contract.TOP_LOG_PROB_IDS, update.top_logprobs)
    if update.prompt_logprobs is not None:
        arrays[contract.PROMPT_LOG_PROBS.name] = contract.PROMPT_LOG_PROBS.array(update.prompt_logprobs)
        if update.prompt_top_logprobs is not None:
            _put_top(
                arrays, contract.PROMPT_TOP_LOG_PROBS, contract.PROMPT_TOP_LOG_PROB_IDS, update.prompt_top_logprobs
            )
    return arrays


def _put_top(arrays: dict, values: contract.TensorSpec, ids: contract.TensorSpec, top) -> None:
    arrays[values.name] = values.array([value for ranks in top for _, value in ranks])
    arrays[ids.name] = ids.array([token for ranks in top for token, _ in ranks])
