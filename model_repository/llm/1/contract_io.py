"""The engine contract's tensors (engine_contract) <-> what a core takes and gives (core.Sampling, core.Update).

No Triton import: model.py hands in a reader of the request's input arrays and wraps the arrays it gets back,
so the translation is unit-tested in process.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

import engine_contract as contract

from core import InvalidRequest, Sampling, Update

# Why the llm engine refuses an input it does not honour, where there is more to say than "not supported".
_WHY_NOT = {contract.SEED.name: "its batching loop has one random generator for all requests"}  # the fast core


@dataclass(frozen=True)
class ParsedRequest:
    prompt: str
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
    for spec in contract.not_honoured(core):
        if value(spec) != spec.default:
            why = f" ({_WHY_NOT[spec.name]})" if spec.name in _WHY_NOT else ""
            raise InvalidRequest(f"{spec.name} is not supported by the llm engine{why}")
    sampling = Sampling(
        max_tokens=int(value(contract.MAX_TOKENS)),
        temperature=float(value(contract.TEMPERATURE)),
        top_p=float(value(contract.TOP_P)),
        top_k=int(value(contract.TOP_K)),
        min_tokens=int(value(contract.MIN_TOKENS)),
        end_id=value(contract.END_ID),
        stop=value(contract.STOP_WORDS),
        seed=value(contract.SEED),
    )
    return ParsedRequest(
        prompt=value(contract.TEXT_INPUT),
        sampling=sampling,
        stream=bool(value(contract.STREAM)),
        exclude_input_in_output=bool(value(contract.EXCLUDE_INPUT_IN_OUTPUT)),
    )


def response_arrays(update: Update, text: str) -> dict[str, np.ndarray]:
    """The output tensors of one response: `text` and the counts; the finish reason on the final one."""
    arrays = {
        contract.TEXT_OUTPUT.name: contract.TEXT_OUTPUT.array([text]),
        contract.NUM_INPUT_TOKENS.name: contract.NUM_INPUT_TOKENS.array(update.num_input_tokens),
        contract.NUM_OUTPUT_TOKENS.name: contract.NUM_OUTPUT_TOKENS.array(update.num_output_tokens),
    }
    if update.finish_reason:
        arrays[contract.FINISH_REASON.name] = contract.FINISH_REASON.array(update.finish_reason)
    return arrays
