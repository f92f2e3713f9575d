"""What every engine core of the `llm` model shares: the request and update types, the checks and the tokenization
they apply alike, the `EngineCore` interface model.py drives, and the registry model.py picks a core from.

A new core is one module implementing `EngineCore`, one line in `CORES` (and its name in engine_contract's
`honoured_by` of the inputs it acts on), and a run of tests/unit/test_engine_cores.py (parametrized over `CORES`).
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol, runtime_checkable

import engine_contract

# `engine_core` config parameter -> "module:class" in this folder, imported only when chosen (a core needs what
# another does not: torch and CUDA for `fast`, OpenVINO for `openvino`). No import here pulls in torch, so the
# OpenVINO core's process stays small.
CORES = {
    # ours on CPU: OpenVINO's runtime over the PagedAttention IR, our scheduler (kv_blocks, scheduler) and sampler
    "openvino_paged": "openvino_paged_core:OpenVINOPagedEngine",
    "openvino": "openvino_core:OpenVINOEngine",  # OpenVINO GenAI continuous batching on CPU (paged KV, int8)
    # ours, torch: paged KV, prefix cache, chunked prefill with decode, CUDA-graph decode (paged_runner.py)
    "fast": "paged_fast_core:PagedFastEngine",
}
DEFAULT_CORE = "openvino_paged"


class InvalidRequest(ValueError):
    """The request asks for something this engine cannot honour."""


@dataclass
class Sampling:
    """One request's generation settings (engine_contract's inputs, read by contract_io.parse_request). A core
    acts on those its contract entries list it in (`honoured_by`); contract_io refuses the others."""

    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0  # 0 = off
    min_tokens: int = 0
    end_id: int | None = None
    stop: tuple[str, ...] = ()
    seed: int | None = None  # None: the core draws one; a seeded request's tokens do not depend on its batch
    presence_penalty: float = 0.0  # OpenAI: over generated tokens
    frequency_penalty: float = 0.0  # OpenAI: over generated tokens, per occurrence
    repetition_penalty: float = 1.0  # HF/vLLM: over prompt and generated tokens
    logit_bias: tuple[tuple[int, float], ...] = ()  # (token id, bias added to its logit)
    stop_token_ids: tuple[int, ...] = ()  # end the sequence like end-of-sequence (the token is not in the text)
    bad_words: tuple[str, ...] = ()  # never generated (their token sequences are banned)
    n: int = 1  # sequences for this prompt (engine_contract.NUM_RETURN_SEQUENCES)
    logprobs: bool = False  # report each generated token's log-probability
    top_logprobs: int = 0  # and this many most likely tokens with theirs (0..engine_contract.MAX_TOP_LOG_PROBS)
    prompt_logprobs: bool = False  # report each prompt token's log-probability (with top_logprobs of them)
    # (guide type, guide): constrain the output to a grammar (engine_contract.GUIDE_TYPES; grammar.py compiles it)
    guide: tuple[str, str] | None = None

    @property
    def greedy(self) -> bool:
        return self.temperature == 0 or self.top_k == 1


# One token's most likely alternatives: (token id, log-probability), most likely first.
TopLogprobs = tuple[tuple[int, float], ...]


@dataclass
class Update:
    """What a core reports to a request's sink: one sequence's delta (`index` of `Sampling.n`), and on that
    sequence's last update its outcome. The request is over when every sequence has had its last update.

    `token_ids` are the tokens generated since the previous update of this sequence (the text may lag them while
    a stop string could still match); `logprobs` / `top_logprobs` align with them when asked for."""

    text: str
    finish_reason: str | None = None  # stop | length | cancelled | error
    error: str | None = None
    num_input_tokens: int = 0
    num_output_tokens: int = 0
    index: int = 0
    token_ids: tuple[int, ...] = ()
    logprobs: tuple[float, ...] = ()
    top_logprobs: tuple[TopLogprobs, ...] = ()
    prompt_logprobs: tuple[float, ...] | None = None  # once, on a sequence's first update: prompt tokens 1..
    prompt_top_logprobs: tuple[TopLogprobs, ...] | None = None

    def then(self, later: Update) -> Update:
        """This delta followed by `later` (of the same sequence) as one: texts and tokens joined, the later counts
        and outcome, the prompt's scores from whichever has them."""
        return Update(
            self.text + later.text,
            later.finish_reason,
            later.error,
            later.num_input_tokens,
            later.num_output_tokens,
            later.index,
            self.token_ids + later.token_ids,
            self.logprobs + later.logprobs,
            self.top_logprobs + later.top_logprobs,
            self.prompt_logprobs if self.prompt_logprobs is not None else later.prompt_logprobs,
            self.prompt_top_logprobs if self.prompt_top_logprobs is not None else later.prompt_top_logprobs,
        )


Sink = Callable[[Update], None]
Prompt = str | tuple[int, ...]  # text to tokenize, or token ids


@runtime_checkable
class EngineCore(Protocol):
    """An in-flight batching core. Constructed as
    `Core(checkpoint_dir, device=, dtype=, max_num_seqs=, kv_cache_blocks=, max_model_len=, prefix_caching=)`; a core
    refuses (ValueError) an option it cannot honour."""

    max_model_len: int  # prompt + max_tokens must fit

    @property
    def num_active(self) -> int:
        """Requests submitted and not finished (queued or generating)."""
        ...

    def submit(
        self, request_id: str, prompt: Prompt, sampling: Sampling, sink: Sink, is_cancelled: Callable[[], bool]
    ) -> None:
        """Queue a request (its prompt as text, or as token ids), or raise InvalidRequest. `sink` is called from the core's own thread, never from
        `submit`; its last call has a finish_reason. `is_cancelled` is polled: once true, the request ends
        "cancelled" and frees its KV cache."""
        ...

    def shutdown(self) -> None:
        """Stop the core's threads; requests still in flight end with finish_reason "error"."""
        ...


def load_core(name: str) -> type[EngineCore]:
    """The core class registered as `name`."""
    if name not in CORES:
        raise ValueError(f"engine_core must be one of {sorted(CORES)}, not {name!r}")
    if name not in engine_contract.ENGINES:  # it must say which contract inputs the core honours
        raise ValueError(f"engine core {name!r} is not among engine_contract.ENGINES")
    module, cls = CORES[name].split(":")
    return getattr(importlib.import_module(module), cls)


def checkpoint_eos_ids(checkpoint: Path) -> frozenset[int]:
    """The end-of-sequence ids a checkpoint declares (generation_config.json first, then config.json)."""
    ids: object = None
    for name in ("generation_config.json", "config.json"):
        path = checkpoint / name
        if ids is None and path.is_file():
            ids = json.loads(path.read_text()).get("eos_token_id")
    if ids is None:
        return frozenset()
    return frozenset([ids] if isinstance(ids, int) else ids)  # type: ignore[arg-type]


def validate_sampling(sampling: Sampling, vocab_size: int) -> None:
    """Reject what no engine core can honour."""
    if sampling.max_tokens < 1:
        raise InvalidRequest("max_tokens must be at least 1")
    if not 0 <= sampling.temperature:
        raise InvalidRequest("temperature must be >= 0")
    if not 0 < sampling.top_p <= 1:
        raise InvalidRequest("top_p must be in (0, 1]")
    if sampling.top_k < 0:
        raise InvalidRequest("top_k must be >= 0")
    if sampling.min_tokens < 0:
        raise InvalidRequest("min_tokens must be >= 0")
    if sampling.end_id is not None and not 0 <= sampling.end_id < vocab_size:
        raise InvalidRequest(f"end_id must be a token id in [0, {vocab_size})")
    if not 0 < sampling.repetition_penalty:
        raise InvalidRequest("repetition_penalty must be > 0")
    for name, value in (
        ("presence_penalty", sampling.presence_penalty),
        ("frequency_penalty", sampling.frequency_penalty),
    ):
        if not -2 <= value <= 2:
            raise InvalidRequest(f"{name} must be in [-2, 2]")
    if not 1 <= sampling.n <= engine_contract.MAX_RETURN_SEQUENCES:
        raise InvalidRequest(f"num_return_sequences must be in [1, {engine_contract.MAX_RETURN_SEQUENCES}]")
    if not 0 <= sampling.top_logprobs <= engine_contract.MAX_TOP_LOG_PROBS:
        raise InvalidRequest(f"num_top_log_probs must be in [0, {engine_contract.MAX_TOP_LOG_PROBS}]")
    bound = engine_contract.MAX_EMBEDDING_BIAS
    for token, weight in sampling.logit_bias:
        if not 0 <= token < vocab_size:
            raise InvalidRequest(f"embedding_bias_token_ids must be token ids in [0, {vocab_size}), not {token}")
        if not -bound <= weight <= bound:
            raise InvalidRequest(f"embedding_bias_weights must be in [-{bound:g}, {bound:g}], not {weight:g}")
    for token in sampling.stop_token_ids:
        if not 0 <= token < vocab_size:
            raise InvalidRequest(f"stop_token_ids must be token ids in [0, {vocab_size}), not {token}")
    if sampling.guide is not None:
        validate_guide(*sampling.guide)


def validate_guide(guide_type: str, guide: str) -> None:
    """A guide's type is one of the contract's, and it has a guide exactly when the type needs one."""
    if guide_type not in engine_contract.GUIDE_TYPES:
        raise InvalidRequest(
            f"guided_decoding_guide_type must be one of {', '.join(engine_contract.GUIDE_TYPES)}, not {guide_type!r}"
        )
    if guide_type == "json" and guide:
        raise InvalidRequest("guided_decoding_guide must be empty with guided_decoding_guide_type json (any object)")
    if guide_type != "json" and not guide:
        raise InvalidRequest(f"guided_decoding_guide is required with guided_decoding_guide_type {guide_type}")


def check_prompt_ids(prompt: tuple[int, ...], vocab_size: int) -> list[int]:
    """A prompt given as token ids (input_ids), once they are known to be the vocabulary's."""
    outside = [token for token in prompt if not 0 <= token < vocab_size]
    if outside:
        raise InvalidRequest(f"input_ids must be token ids in [0, {vocab_size}): {outside[:5]} are not")
    return list(prompt)


def check_prompt(
    input_ids: list[int], sampling: Sampling, max_model_len: int, default_eos_ids: frozenset[int]
) -> frozenset[int]:
    """The ids that end this request, once the prompt is known to fit. No end ids when min_tokens >= max_tokens:
    exactly max_tokens tokens are generated (benchmarks)."""
    if not input_ids:
        raise InvalidRequest("text_input is empty after tokenization")
    if len(input_ids) + sampling.max_tokens > max_model_len:
        raise InvalidRequest(
            f"prompt ({len(input_ids)} tokens) + max_tokens ({sampling.max_tokens}) exceeds the context of "
            f"{max_model_len} tokens this engine holds per sequence"
        )
    if sampling.min_tokens >= sampling.max_tokens:
        return frozenset()
    return frozenset([sampling.end_id]) if sampling.end_id is not None else default_eos_ids
