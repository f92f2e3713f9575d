"""The engine contract: every tensor the front-end and the Triton models exchange, defined once.

The names are the TensorRT-LLM ensemble's (tensorrtllm_backend), plus ours where it has none (`finish_reason`,
top-k and prompt log-probabilities, `stop_token_ids`, the token ids of `logit_bias`).
The front-end's Triton client builds its inputs and parses its outputs from this table, the `llm` model reads
and writes its tensors by it, its config is rendered from it, and the TensorRT-LLM templates are tested against it.
Nothing here imports the rest of the repository: both the front-end and the Triton models install it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np

# The engines that speak the contract: our `llm` model's cores, and TensorRT-LLM (ensemble / tensorrt_llm_bls).
OPENVINO_PAGED = "openvino_paged"  # ours over OpenVINO's runtime (the CPU default)
OPENVINO = "openvino"  # OpenVINO GenAI's continuous-batching pipeline
FAST = "fast"
TENSORRT_LLM = "tensorrt_llm"
ENGINES = (OPENVINO_PAGED, OPENVINO, FAST, TENSORRT_LLM)
LLM_CORES = (OPENVINO_PAGED, OPENVINO, FAST)  # the engine cores of our `llm` model (core.py registers their modules)
OPENVINO_IR_CORES = (OPENVINO_PAGED, OPENVINO)  # the CPU cores, which load the OpenVINO IR that build_engines exports
_ALL = frozenset(ENGINES)
_LLM = frozenset(LLM_CORES)
_TRTLLM_ONLY = frozenset({TENSORRT_LLM})

# Triton config type -> (the wire datatype tritonclient and KServe v2 use, the numpy dtype of its arrays)
_TYPES: dict[str, tuple[str, type]] = {
    "TYPE_STRING": ("BYTES", np.object_),
    "TYPE_BOOL": ("BOOL", np.bool_),
    "TYPE_INT32": ("INT32", np.int32),
    "TYPE_UINT64": ("UINT64", np.uint64),
    "TYPE_FP32": ("FP32", np.float32),
}


@dataclass(frozen=True)
class TensorSpec:
    """One tensor of the contract. `dims` exclude the batch dimension (every model has max_batch_size > 0)."""

    name: str
    triton_type: str  # as in config.pbtxt: TYPE_FP32
    dims: tuple[int, ...]
    optional: bool
    meaning: str
    honoured_by: frozenset[str]  # the engines that act on it (the others refuse any value but `default`)
    default: Any = None  # what an absent optional input means

    def __post_init__(self) -> None:
        if self.triton_type not in _TYPES:
            raise ValueError(f"{self.name}: unknown Triton type {self.triton_type}")
        if not self.honoured_by <= _ALL:
            raise ValueError(f"{self.name}: unknown engines {sorted(self.honoured_by - _ALL)}")

    @property
    def wire_type(self) -> str:
        """The datatype on the wire (tritonclient's InferInput): FP32, BYTES, ..."""
        return _TYPES[self.triton_type][0]

    @property
    def numpy_dtype(self) -> type:
        return _TYPES[self.triton_type][1]

    @property
    def is_list(self) -> bool:
        """A variable-length list (dims [-1]) rather than one value."""
        return self.dims == (-1,)

    def array(self, value: Any) -> np.ndarray:
        """A batch of one: [[value]], or [[v, ...]] for a list tensor; strings are sent as UTF-8 bytes."""
        values = list(value) if self.is_list else [value]
        if self.numpy_dtype is np.object_:
            values = [v.encode("utf-8") if isinstance(v, str) else v for v in values]
        return np.array([values], dtype=self.numpy_dtype)

    def read(self, array: np.ndarray | None) -> Any:
        """The value of a received array (the inverse of `array`): one value, or a tuple of a list tensor's
        values (empty strings dropped); `default` when the tensor is absent or empty."""
        if array is None or array.size == 0:
            return self.default
        values = [_python(v) for v in array.reshape(-1)]
        if self.is_list:
            return tuple(v for v in values if v != "")
        return values[0]


def _python(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode("utf-8")
    return value.item() if isinstance(value, np.generic) else value


def _input(name, triton_type, meaning, honoured_by=_ALL, default=None, dims=(1,), optional=True) -> TensorSpec:
    return TensorSpec(name, triton_type, dims, optional, meaning, frozenset(honoured_by), default)


# ---------------------------------------------------------------------------------------------------- inputs
TEXT_INPUT = _input("text_input", "TYPE_STRING", "the prompt, already templated (or send input_ids instead)")
INPUT_IDS = _input(
    "input_ids",
    "TYPE_INT32",
    "the prompt as token ids, instead of text_input (TensorRT-LLM's name)",
    dims=(-1,),
    default=(),
)
MAX_TOKENS = _input("max_tokens", "TYPE_INT32", "the most tokens to generate", optional=False)
STREAM = _input("stream", "TYPE_BOOL", "send text deltas as they come, else one response at the end", default=False)
TEMPERATURE = _input("temperature", "TYPE_FP32", "sampling temperature; 0 is greedy", default=1.0)
TOP_P = _input("top_p", "TYPE_FP32", "nucleus sampling: keep the tokens of this much probability", default=1.0)
TOP_K = _input("top_k", "TYPE_INT32", "keep the k most likely tokens; 0 keeps all", default=0)
REPETITION_PENALTY = _input(
    "repetition_penalty",
    "TYPE_FP32",
    "HF/vLLM: divide positive (multiply negative) logits of tokens in the prompt or generated so far",
    default=1.0,
)
PRESENCE_PENALTY = _input(
    "presence_penalty", "TYPE_FP32", "OpenAI: subtract from the logits of tokens generated so far", default=0.0
)
FREQUENCY_PENALTY = _input(
    "frequency_penalty", "TYPE_FP32", "OpenAI: subtract per occurrence of a token generated so far", default=0.0
)
MIN_TOKENS = _input("min_tokens", "TYPE_INT32", "no end of sequence before this many tokens", default=0)
SEED = _input("seed", "TYPE_UINT64", "the random seed of this request's sampling (its own generator)")
STOP_WORDS = _input(
    "stop_words", "TYPE_STRING", "strings that end the output (not included in it)", dims=(-1,), default=()
)
STOP_TOKEN_IDS = _input(
    "stop_token_ids", "TYPE_INT32", "ours (vLLM's name): token ids that end the output", dims=(-1,), default=()
)
BAD_WORDS = _input(
    "bad_words",
    "TYPE_STRING",
    "strings never to generate",
    {TENSORRT_LLM, FAST, OPENVINO_PAGED},
    dims=(-1,),
    default=(),
)
EMBEDDING_BIAS_TOKEN_IDS = _input(
    "embedding_bias_token_ids",
    "TYPE_INT32",
    "ours: the token ids of OpenAI's logit_bias (the TRT-LLM templates build its dense embedding_bias from them)",
    {TENSORRT_LLM, FAST, OPENVINO_PAGED},
    dims=(-1,),
    default=(),
)
EMBEDDING_BIAS_WEIGHTS = _input(
    "embedding_bias_weights",
    "TYPE_FP32",
    "the bias added to the logit of each of embedding_bias_token_ids (-100..100)",
    {TENSORRT_LLM, FAST, OPENVINO_PAGED},
    dims=(-1,),
    default=(),
)
# Grammar-constrained decoding (TensorRT-LLM's GuidedDecodingParams, its names and guide types).
GUIDE_TYPES = ("json", "json_schema", "regex", "ebnf_grammar", "structural_tag")
_GUIDED = {TENSORRT_LLM, FAST, OPENVINO_PAGED}
GUIDED_DECODING_GUIDE_TYPE = _input(
    "guided_decoding_guide_type",
    "TYPE_STRING",
    "constrain the output: json (any JSON object), json_schema, regex, ebnf_grammar or structural_tag",
    _GUIDED,
)
GUIDED_DECODING_GUIDE = _input(
    "guided_decoding_guide",
    "TYPE_STRING",
    "the guide of guided_decoding_guide_type: the JSON schema, the regex, the EBNF grammar, the structural tag's "
    "JSON (empty for json)",
    _GUIDED,
    default="",
)
END_ID = _input("end_id", "TYPE_INT32", "the token that ends the sequence instead of the model's own")
PAD_ID = _input("pad_id", "TYPE_INT32", "the padding token (TensorRT-LLM's; the llm cores need none)")
NUM_RETURN_SEQUENCES = _input(
    "num_return_sequences",
    "TYPE_INT32",
    "sequences generated for this prompt (OpenAI's n)",
    {OPENVINO, TENSORRT_LLM, FAST, OPENVINO_PAGED},
    default=1,
)
RETURN_LOG_PROBS = _input(
    "return_log_probs",
    "TYPE_BOOL",
    "send output_log_probs and cum_log_probs",
    {OPENVINO, TENSORRT_LLM, FAST, OPENVINO_PAGED},
    default=False,
)
NUM_TOP_LOG_PROBS = _input(
    "num_top_log_probs",
    "TYPE_INT32",
    "ours: send the this many most likely tokens of each step with their log-probabilities (0..20)",
    {FAST, OPENVINO_PAGED},
    default=0,
)
RETURN_PROMPT_LOG_PROBS = _input(
    "return_prompt_log_probs",
    "TYPE_BOOL",
    "ours: send the log-probability of each prompt token (completions' echo with logprobs)",
    {OPENVINO, FAST, OPENVINO_PAGED},
    default=False,
)
EXCLUDE_INPUT_IN_OUTPUT = _input(
    "exclude_input_in_output", "TYPE_BOOL", "leave the prompt out of a non-streamed output", default=False
)
RETURN_NUM_INPUT_TOKENS = _input(
    "return_num_input_tokens", "TYPE_BOOL", "send num_input_tokens (the llm cores always do)", default=False
)
RETURN_NUM_OUTPUT_TOKENS = _input(
    "return_num_output_tokens", "TYPE_BOOL", "send num_output_tokens (the llm cores always do)", default=False
)

INPUTS: tuple[TensorSpec, ...] = (
    TEXT_INPUT,
    INPUT_IDS,
    MAX_TOKENS,
    STREAM,
    TEMPERATURE,
    TOP_P,
    TOP_K,
    REPETITION_PENALTY,
    PRESENCE_PENALTY,
    FREQUENCY_PENALTY,
    MIN_TOKENS,
    SEED,
    STOP_WORDS,
    STOP_TOKEN_IDS,
    BAD_WORDS,
    EMBEDDING_BIAS_TOKEN_IDS,
    EMBEDDING_BIAS_WEIGHTS,
    GUIDED_DECODING_GUIDE_TYPE,
    GUIDED_DECODING_GUIDE,
    END_ID,
    PAD_ID,
    NUM_RETURN_SEQUENCES,
    RETURN_LOG_PROBS,
    NUM_TOP_LOG_PROBS,
    RETURN_PROMPT_LOG_PROBS,
    EXCLUDE_INPUT_IN_OUTPUT,
    RETURN_NUM_INPUT_TOKENS,
    RETURN_NUM_OUTPUT_TOKENS,
)

# ---------------------------------------------------------------------------------------------------- outputs
# One response carries one sequence's delta (sequence_index says which, for num_return_sequences > 1); the
# per-token outputs are aligned with output_ids, the top-k ones flattened as [token][rank].
TEXT_OUTPUT = TensorSpec(
    "text_output", "TYPE_STRING", (-1,), False, "the text delta (streaming) or the whole text", _ALL, ""
)
NUM_INPUT_TOKENS = TensorSpec("num_input_tokens", "TYPE_INT32", (1,), False, "tokens of the prompt", _ALL)
NUM_OUTPUT_TOKENS = TensorSpec(
    "num_output_tokens", "TYPE_INT32", (1,), False, "tokens this sequence generated so far", _ALL
)
FINISH_REASON = TensorSpec(
    "finish_reason",
    "TYPE_STRING",
    (1,),
    False,
    "stop | length, on each sequence's final response (ours: TensorRT-LLM has none)",
    _ALL,
    "",
)
SEQUENCE_INDEX = TensorSpec(
    "sequence_index", "TYPE_INT32", (1,), False, "which of num_return_sequences this response is for", _ALL, 0
)
OUTPUT_IDS = TensorSpec("output_ids", "TYPE_INT32", (-1,), False, "the token ids of this response's delta", _ALL, ())
OUTPUT_LOG_PROBS = TensorSpec(
    "output_log_probs", "TYPE_FP32", (-1,), False, "with return_log_probs: log-probability of each output id", _ALL, ()
)
CUM_LOG_PROBS = TensorSpec(
    "cum_log_probs", "TYPE_FP32", (1,), False, "with return_log_probs: the sum of this sequence's so far", _ALL
)
TOP_LOG_PROBS = TensorSpec(
    "top_log_probs", "TYPE_FP32", (-1,), False, "ours: num_top_log_probs log-probabilities per output id", _LLM, ()
)
TOP_LOG_PROB_IDS = TensorSpec(
    "top_log_prob_ids", "TYPE_INT32", (-1,), False, "ours: the token ids of top_log_probs", _LLM, ()
)
PROMPT_LOG_PROBS = TensorSpec(
    "prompt_log_probs",
    "TYPE_FP32",
    (-1,),
    False,
    "ours, on the first response with return_prompt_log_probs: one per prompt token after the first",
    _LLM,
    (),
)
PROMPT_TOP_LOG_PROBS = TensorSpec(
    "prompt_top_log_probs", "TYPE_FP32", (-1,), False, "ours: num_top_log_probs per prompt_log_probs entry", _LLM, ()
)
PROMPT_TOP_LOG_PROB_IDS = TensorSpec(
    "prompt_top_log_prob_ids", "TYPE_INT32", (-1,), False, "ours: the token ids of prompt_top_log_probs", _LLM, ()
)

OUTPUTS: tuple[TensorSpec, ...] = (
    TEXT_OUTPUT,
    NUM_INPUT_TOKENS,
    NUM_OUTPUT_TOKENS,
    FINISH_REASON,
    SEQUENCE_INDEX,
    OUTPUT_IDS,
    OUTPUT_LOG_PROBS,
    CUM_LOG_PROBS,
    TOP_LOG_PROBS,
    TOP_LOG_PROB_IDS,
    PROMPT_LOG_PROBS,
    PROMPT_TOP_LOG_PROBS,
    PROMPT_TOP_LOG_PROB_IDS,
)

# The limits of the contract's values that every engine shares (the front-end validates against them too).
MAX_TOP_LOG_PROBS = 20
MAX_RETURN_SEQUENCES = 16
MAX_EMBEDDING_BIAS = 100.0

INPUTS_BY_NAME = {spec.name: spec for spec in INPUTS}
OUTPUTS_BY_NAME = {spec.name: spec for spec in OUTPUTS}


def capabilities(engine: str) -> str:
    """The `capabilities` parameter of a model config: the names of the inputs `engine` honours, comma-separated.
    The front-end reads it with the model list and refuses, per model, a request that needs any other."""
    return ",".join(spec.name for spec in honoured(engine))


def parse_capabilities(value: str) -> frozenset[str]:
    """The input names of a `capabilities` parameter (the inverse of `capabilities`)."""
    return frozenset(name.strip() for name in value.split(",") if name.strip())


def honoured(engine: str, specs: Iterable[TensorSpec] = INPUTS) -> tuple[TensorSpec, ...]:
    """The tensors `engine` acts on."""
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, not {engine!r}")
    return tuple(spec for spec in specs if engine in spec.honoured_by)


def not_honoured(engine: str, specs: Iterable[TensorSpec] = INPUTS) -> tuple[TensorSpec, ...]:
    """The inputs `engine` must refuse when a request sets them to anything but their default."""
    honoured(engine, ())  # checks the name
    return tuple(spec for spec in specs if engine not in spec.honoured_by)
