"""The one interface the routers use to talk to an inference engine.

The front-end never branches on the engine: the Triton implementation speaks the TensorRT-LLM ensemble
tensor contract, which both our python-backend `llm` model and the TRT-LLM `ensemble` implement.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings, already validated by the protocol layer."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: tuple[str, ...] = ()
    stop_token_ids: tuple[int, ...] = ()
    bad_words: tuple[str, ...] = ()
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    n: int = 1  # sequences generated for the prompt
    logprobs: bool = False  # each generated token's log-probability
    top_logprobs: int = 0  # and this many most likely alternatives of each step
    prompt_logprobs: bool = False  # each prompt token's log-probability (completions' echo with logprobs)
    # Grammar-constrained decoding, as TensorRT-LLM's guided-decoding inputs: `guide_type` one of
    # engine_contract.GUIDE_TYPES ("json": any JSON object, "json_schema", "regex", "ebnf_grammar",
    # "structural_tag"), `guide` its text (the schema as JSON, the pattern, the grammar; empty for "json").
    guide_type: str | None = None
    guide: str = ""


# One position's most likely tokens: (token id, log-probability), most likely first.
TopLogprobs = tuple[tuple[int, float], ...]


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    engine_model: str  # the Triton model to call
    prompt: str  # the text (for a prompt given as token ids, their decoded text: what echo shows)
    params: SamplingParams
    stream: bool = True
    prompt_token_ids: tuple[int, ...] | None = None  # when set, sent as input_ids instead of the text


@dataclass(slots=True)  # one per engine response: slots make it cheaper to build and read
class GenerationChunk:
    """One engine response: one sequence's delta (`index` of n), and on that sequence's last response its finish
    reason. The token counts are the sequence's so far. The generation ends after every sequence finished.

    `token_ids` are the tokens generated since this sequence's previous response (the text may lag them while a
    stop string could still match); `logprobs` and `top_logprobs` are aligned with them when asked for."""

    text: str
    finish_reason: str | None = None  # stop | length | cancelled, on each sequence's last chunk
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None
    index: int = 0
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    top_logprobs: tuple[TopLogprobs, ...] = ()
    cum_logprob: float | None = None
    prompt_logprobs: tuple[float, ...] | None = None  # on a sequence's first chunk: prompt tokens 1..
    prompt_top_logprobs: tuple[TopLogprobs, ...] | None = None


@dataclass(frozen=True)
class EngineModel:
    """A model the engine serves, as discovered from its configuration."""

    id: str  # the OpenAI `model` field
    engine_model: str  # the Triton model name
    tokenizer_dir: str
    max_model_len: int
    metadata: dict[str, str] = field(default_factory=dict)
    # The contract inputs its engine honours (its config's `capabilities`); None: not declared, the engine refuses
    # what it cannot honour itself.
    capabilities: frozenset[str] | None = None


class EngineError(Exception):
    """The engine rejected a request (bad parameter) or failed; `status` is the HTTP status to return."""

    def __init__(self, message: str, status: int = 500, param: str | None = None, input_name: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param
        self.input_name = input_name  # the contract input refused, when the engine named one


class EngineUnavailable(EngineError):
    def __init__(self, message: str = "The inference server is not ready; retry shortly."):
        super().__init__(message, status=503)


class Engine(Protocol):
    async def ready(self) -> bool: ...

    async def list_models(self) -> list[EngineModel]: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Yield chunks until every sequence has had its final one (which has `finish_reason`). Closing the
        iterator cancels the request in the engine."""
        ...

    def abort(self, message: str) -> None:
        """End every open generation with EngineUnavailable(message), and refuse new ones (shutdown)."""
        ...

    async def close(self) -> None: ...
