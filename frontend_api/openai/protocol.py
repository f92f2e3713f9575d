"""Pydantic models of the OpenAI API subset we serve (requests validated here, responses built by serving).

A request field is either honoured (declared here) or refused with a 400 naming it: a field of OpenAI's or vLLM's
API that we cannot honour is accepted only with a value that changes nothing (request_fields.py), and a field
neither defines is unrecognized (as OpenAI answers a typo).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    ValidationError,
    ValidationInfo,
    field_validator,
)

import engine_contract as contract
from frontend_api.openai.request_fields import RefusedChatFields, RefusedCompletionFields
from frontend_api.openai.structured_protocol import StructuredOutputFields
from frontend_api.openai.tool_protocol import MAX_TOOLS, NamedToolChoice, ToolCallIn, ToolChoice, ToolDefinition

MAX_STOP_SEQUENCES = 16
MAX_STOP_TOKEN_IDS = 64
MAX_LOGIT_BIAS = 1024
MAX_PROMPTS = 16  # prompts in one completions request (each with its n choices)
MAX_TOP_LOG_PROBS = contract.MAX_TOP_LOG_PROBS
MAX_RETURN_SEQUENCES = contract.MAX_RETURN_SEQUENCES
MAX_EMBEDDING_BIAS = contract.MAX_EMBEDDING_BIAS
MAX_STOP_CHARS = 1000  # per sequence: the engine holds back up to this much streamed text while it might be a stop
UINT64_MAX = 2**64 - 1
INT32_MAX = 2**31 - 1  # the engine contract's INT32 inputs


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # nested objects (messages) and responses


# ---------------------------------------------------------------------------------------------- requests


def _check_sequences(value: list[str] | None, what: str = "sequences") -> list[str] | None:
    if value is None:
        return None
    if len(value) > MAX_STOP_SEQUENCES:
        raise ValueError(f"at most {MAX_STOP_SEQUENCES} {what} are allowed, got {len(value)}")
    if any(s == "" for s in value):
        raise ValueError(f"{what} must not be empty strings")
    if any(len(s) > MAX_STOP_CHARS for s in value):
        raise ValueError(f"each of the {what} may have at most {MAX_STOP_CHARS} characters")
    return value


class SamplingFields(BaseModel):
    """The sampling fields of a generation: the same models validate a request's, a stored session's settings and
    a WebSocket chat frame's. Token ids are checked against the model's vocabulary when the model is known."""

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stop: list[str] | None = None
    seed: int | None = Field(None, ge=0, le=UINT64_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = Field(
        None,
        description="Token id (as a string) -> a bias from -100 to 100 added to its logit.",
        json_schema_extra={"propertyNames": {"pattern": "^[0-9]+$"}},
    )
    # Extensions (vLLM / TensorRT-LLM names)
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX, description="-1 or 0 turns top-k sampling off.")
    min_tokens: int | None = Field(None, ge=0, le=INT32_MAX)
    repetition_penalty: float | None = Field(None, gt=0)
    stop_token_ids: list[Annotated[int, Field(ge=0, le=INT32_MAX)]] | None = Field(
        None, max_length=MAX_STOP_TOKEN_IDS, description="Token ids that end the output (not included in it)."
    )
    bad_words: list[str] | None = Field(None, description="Strings never to generate.")

    @field_validator("stop", "bad_words", mode="before")
    @classmethod
    def _as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _stop_rules(cls, value: list[str] | None) -> list[str] | None:
        return _check_sequences(value)

    @field_validator("bad_words")
    @classmethod
    def _bad_words_rules(cls, value: list[str] | None) -> list[str] | None:
        return _check_sequences(value, "words")

    @field_validator("logit_bias")
    @classmethod
    def _logit_bias_rules(cls, value: dict[str, float] | None) -> dict[str, float] | None:
        if value is None:
            return None
        if len(value) > MAX_LOGIT_BIAS:
            raise ValueError(f"at most {MAX_LOGIT_BIAS} tokens may be biased, got {len(value)}")
        for key, bias in value.items():
            if not (key.isascii() and key.isdigit()) or int(key) > INT32_MAX:
                raise ValueError(f"keys must be token ids (decimal strings), not {key!r}")
            if not -MAX_EMBEDDING_BIAS <= bias <= MAX_EMBEDDING_BIAS:
                raise ValueError(
                    f"the bias of token {key} is {bias:g}; biases must be from {-MAX_EMBEDDING_BIAS:g} to "
                    f"{MAX_EMBEDDING_BIAS:g}"
                )
        return value

    def token_ids_to_check(self) -> dict[str, list[int]]:
        """field -> the token ids it names (checked against the model's vocabulary)."""
        return {
            "logit_bias": [int(key) for key in self.logit_bias or {}],
            "stop_token_ids": list(self.stop_token_ids or ()),
        }


class SessionSettings(SamplingFields):
    """Generation defaults stored with a session (and sent in a WebSocket chat frame); a request's own values win.
    The sampling fields of a chat request, validated the same way; a chat session has one reply (n 1)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    n: int | None = Field(None, description="Only 1: a chat session has one reply.")

    @field_validator("n")
    @classmethod
    def _one_reply(cls, value: int | None) -> int | None:
        if value is not None and value != 1:
            raise ValueError("a chat session has one reply: only 1 is accepted")
        return value


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class BaseGenerationRequest(StructuredOutputFields, SamplingFields):
    """Fields shared by chat and text completions (field order matters: `stream` precedes `stream_options`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    n: int | None = Field(None, ge=1, le=MAX_RETURN_SEQUENCES, description="Choices to generate.")
    user: str | None = None
    ignore_eos: bool = Field(False, description="Generate exactly the max tokens: end-of-sequence is ignored.")

    @field_validator("stream_options")
    @classmethod
    def _options_need_stream(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("only allowed when stream is true")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)

    @property
    def choices_per_prompt(self) -> int:
        return self.n or 1


class ChatMessage(OpenAIBaseModel):
    """A message of the conversation. An assistant message may carry `tool_calls` (its content then may be null);
    a `tool` message answers one of them by `tool_call_id`. Validated in field order: role first."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    tool_calls: list[ToolCallIn] | None = None
    tool_call_id: str | None = Field(None, validate_default=True, max_length=256)
    name: str | None = None
    content: str | None = Field(None, validate_default=True)

    @field_validator("content", mode="before")
    @classmethod
    def _join_text_parts(cls, value: Any) -> Any:
        if not isinstance(value, list):
            return value
        texts = []
        for part in value:
            if not (isinstance(part, dict) and part.get("type") == "text" and isinstance(part.get("text"), str)):
                raise ValueError('only text content parts are supported: {"type": "text", "text": "..."}')
            texts.append(part["text"])
        return "\n".join(texts)

    @field_validator("tool_calls")
    @classmethod
    def _only_assistants_call_tools(cls, value: list[ToolCallIn] | None, info: ValidationInfo) -> Any:
        if value and info.data.get("role") != "assistant":
            raise ValueError("only assistant messages have tool_calls")
        return value or None

    @field_validator("tool_call_id")
    @classmethod
    def _tool_messages_answer_a_call(cls, value: str | None, info: ValidationInfo) -> str | None:
        role = info.data.get("role")
        if role == "tool" and not value:
            raise ValueError("required in a tool message: the id of the tool call it answers")
        if role != "tool" and value is not None:
            raise ValueError("only tool messages have a tool_call_id")
        return value

    @field_validator("content")
    @classmethod
    def _content_present(cls, value: str | None, info: ValidationInfo) -> str | None:
        if value is None and not (info.data.get("role") == "assistant" and info.data.get("tool_calls")):
            raise ValueError("required (null only in an assistant message with tool_calls)")
        return value


class ChatCompletionRequest(RefusedChatFields, BaseGenerationRequest):  # the honoured fields first
    messages: list[ChatMessage] = Field(min_length=1)
    logprobs: bool | None = Field(None, description="Return each output token's log-probability.")
    top_logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOG_PROBS, description="With logprobs: this many most likely tokens per position."
    )
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # Identifiers of the end user, as `user` (which they replace in OpenAI's API); nothing here uses them.
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    # Extension: chat inside a stored session (its history is prepended, the turn is stored).
    session_id: str | None = Field(None, min_length=1, max_length=40)
    # Tool calling (docs/API.md "Tool calling"); in this order: tool_choice is checked against tools.
    tools: list[ToolDefinition] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = Field(None, validate_default=True)
    parallel_tool_calls: StrictBool | None = Field(None, description="Default true; false: at most one tool call.")

    @field_validator("tools")
    @classmethod
    def _unique_tool_names(cls, value: list[ToolDefinition] | None) -> list[ToolDefinition] | None:
        names = [tool.function.name for tool in value or ()]
        if duplicates := sorted({name for name in names if names.count(name) > 1}):
            raise ValueError(f"function names must be unique; repeated: {', '.join(duplicates)}")
        return value or None  # [] offers nothing, as no tools

    @field_validator("tool_choice", mode="before")
    @classmethod
    def _choice_shape(cls, value: Any) -> Any:
        # Checked here, so that an error names tool_choice (not a member of the union).
        if value is None or (isinstance(value, str) and value in ("none", "auto", "required")):
            return value
        if isinstance(value, dict):
            try:
                return NamedToolChoice.model_validate(value)
            except ValidationError as exc:
                first = exc.errors()[0]
                where = ".".join(str(part) for part in first["loc"])
                raise ValueError(f"{where}: {first['msg']}") from None
        raise ValueError('must be "none", "auto", "required" or {"type": "function", "function": {"name": ...}}')

    @field_validator("tool_choice")
    @classmethod
    def _choice_among_tools(cls, value: ToolChoice | None, info: ValidationInfo) -> ToolChoice | None:
        if "tools" not in info.data:  # tools itself was invalid: that error is the one reported
            return value
        tools: list[ToolDefinition] = info.data["tools"] or []
        if value is None:
            return "auto" if tools else "none"  # OpenAI's defaults
        if not tools and value != "none":
            raise ValueError('only allowed when tools are specified (or "none")')
        if isinstance(value, NamedToolChoice) and value.function.name not in {t.function.name for t in tools}:
            raise ValueError(f"names the function {value.function.name!r}, which is not among the tools")
        return value

    @property
    def allows_parallel_tool_calls(self) -> bool:
        return self.parallel_tool_calls is not False

    @field_validator("top_logprobs")
    @classmethod
    def _top_needs_logprobs(cls, value: int | None, info: ValidationInfo) -> int | None:
        if value and not info.data.get("logprobs"):
            raise ValueError("requires logprobs to be true")
        return value


Prompt = str | list[int]  # one prompt: text, or token ids


class CompletionRequest(RefusedCompletionFields, BaseGenerationRequest):
    prompt: str | list[str] | list[int] | list[list[int]] = Field(
        description="A string, a list of strings, a list of token ids, or a list of lists of token ids."
    )
    max_tokens: int | None = Field(16, ge=1)
    logprobs: int | None = Field(
        None, ge=0, le=MAX_TOP_LOG_PROBS, description="Log-probabilities of the output tokens and this many likeliest."
    )
    echo: bool | None = Field(None, description="Return the prompt in front of the completion.")
    best_of: int | None = Field(None, description="Only null or equal to n: one choice is generated per choice.")

    @field_validator("prompt", mode="before")
    @classmethod
    def _prompt_shape(cls, value: Any) -> Any:
        if isinstance(value, str):
            if not value:
                raise ValueError("must not be empty")
            return value
        if not isinstance(value, list) or not value:
            raise ValueError("must be a string, a list of strings, a list of token ids or a list of lists of them")
        if all(isinstance(v, str) for v in value):
            prompts: list[Any] = value
        elif all(_is_token_id(v) for v in value):
            prompts = [value]
        elif all(isinstance(v, list) for v in value):
            prompts = value
            if not all(p and all(_is_token_id(t) for t in p) for p in prompts):
                raise ValueError(
                    f"each list of token ids must be non-empty, of integers from 0 to {INT32_MAX} (not strings)"
                )
        elif all(type(v) is int for v in value):
            raise ValueError(f"token ids must be integers from 0 to {INT32_MAX}")
        else:
            raise ValueError("a list prompt must hold only strings, only token ids, or only lists of token ids")
        if len(prompts) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts are allowed, got {len(prompts)}")
        if any(p == "" for p in prompts):
            raise ValueError("prompts must not be empty strings")
        return value

    @field_validator("best_of")
    @classmethod
    def _best_of_is_n(cls, value: int | None, info: ValidationInfo) -> int | None:
        n = info.data.get("n") or 1
        if value is not None and value != n:
            if value > n:
                raise ValueError(f"best_of > n is not supported: best_of must be null or equal to n ({n})")
            raise ValueError(f"must be at least n ({n})")
        return value

    @property
    def prompts(self) -> list[Prompt]:
        """One entry per prompt: text, or token ids."""
        value = self.prompt
        if isinstance(value, str):
            return [value]
        if all(isinstance(v, int) for v in value):
            return [list(value)]  # type: ignore[arg-type]
        return list(value)  # type: ignore[arg-type]


def _is_token_id(value: Any) -> bool:
    return type(value) is int and 0 <= value <= INT32_MAX
