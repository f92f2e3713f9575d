"""Pydantic models of the OpenAI API subset we serve (requests validated here, responses built by serving).

A request field is either honoured (declared here) or refused with a 400 naming it: a field of OpenAI's or vLLM's
API that we cannot honour is accepted only with a value that changes nothing (request_fields.py), and a field
neither defines is unrecognized (as OpenAI answers a typo).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_serializer

from frontend_api.openai.request_fields import RefusedChatFields, RefusedCompletionFields

MAX_STOP_SEQUENCES = 16
MAX_STOP_CHARS = 1000  # per sequence: the engine holds back up to this much streamed text while it might be a stop
UINT64_MAX = 2**64 - 1
INT32_MAX = 2**31 - 1  # the engine contract's INT32 inputs


class OpenAIBaseModel(BaseModel):
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)  # nested objects (messages) and responses


# ---------------------------------------------------------------------------------------------- requests


class SessionSettings(BaseModel):
    """Generation defaults stored with a session (and sent in a WebSocket chat frame); a request's own values win."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX)
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    repetition_penalty: float | None = Field(None, gt=0)


class StreamOptions(OpenAIBaseModel):
    include_usage: bool = False


class BaseGenerationRequest(OpenAIBaseModel):
    """Fields shared by chat and text completions (field order matters: `stream` precedes `stream_options`)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    model: str = Field(min_length=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool = False
    stream_options: StreamOptions | None = None
    stop: list[str] | None = None
    seed: int | None = Field(None, ge=0, le=UINT64_MAX)
    presence_penalty: float | None = Field(None, ge=-2, le=2)
    frequency_penalty: float | None = Field(None, ge=-2, le=2)
    user: str | None = None
    # Extensions (vLLM / TensorRT-LLM names)
    top_k: int | None = Field(None, ge=-1, le=INT32_MAX, description="-1 or 0 turns top-k sampling off.")
    min_tokens: int | None = Field(None, ge=0, le=INT32_MAX)
    repetition_penalty: float | None = Field(None, gt=0)
    ignore_eos: bool = Field(False, description="Generate exactly the max tokens: end-of-sequence is ignored.")

    @field_validator("stream_options")
    @classmethod
    def _options_need_stream(cls, value: StreamOptions | None, info: ValidationInfo) -> StreamOptions | None:
        if value is not None and not info.data.get("stream"):
            raise ValueError("only allowed when stream is true")
        return value

    @field_validator("stop", mode="before")
    @classmethod
    def _stop_as_list(cls, value: Any) -> Any:
        return [value] if isinstance(value, str) else value

    @field_validator("stop")
    @classmethod
    def _stop_rules(cls, value: list[str] | None) -> list[str] | None:
        if value is None:
            return None
        if len(value) > MAX_STOP_SEQUENCES:
            raise ValueError(f"at most {MAX_STOP_SEQUENCES} sequences are allowed, got {len(value)}")
        if any(s == "" for s in value):
            raise ValueError("sequences must not be empty strings")
        if any(len(s) > MAX_STOP_CHARS for s in value):
            raise ValueError(f"each sequence may have at most {MAX_STOP_CHARS} characters")
        return value

    @property
    def include_usage(self) -> bool:
        return bool(self.stream and self.stream_options and self.stream_options.include_usage)


class ChatMessage(OpenAIBaseModel):
    role: Literal["system", "developer", "user", "assistant"]
    content: str
    name: str | None = None

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


class ChatCompletionRequest(RefusedChatFields, BaseGenerationRequest):  # the honoured fields first
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    # Identifiers of the end user, as `user` (which they replace in OpenAI's API); nothing here uses them.
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None
    # Extension: chat inside a stored session (its history is prepended, the turn is stored).
    session_id: str | None = Field(None, min_length=1, max_length=40)


class CompletionRequest(RefusedCompletionFields, BaseGenerationRequest):
    prompt: str = Field(min_length=1)
    max_tokens: int | None = Field(16, ge=1)

    @field_validator("prompt", mode="before")
    @classmethod
    def _single_prompt(cls, value: Any) -> Any:
        if isinstance(value, list):
            if len(value) != 1 or not isinstance(value[0], str):
                raise ValueError("must be a string or a list of exactly one string")
            return value[0]
        return value


# --------------------------------------------------------------------------------------------- responses


class GenerationStats(OpenAIBaseModel):
    """Our extension of `usage` (docs/METRICS_AND_LOGS.md): where the time of this response went."""

    ttft_ms: float = Field(description="Request arrival to the first generated token.")
    prefill_ms: float = Field(description="Request sent to the engine to the first token: engine queue + prefill.")
    decode_ms: float = Field(description="First token to the last token.")
    e2e_ms: float = Field(description="Request arrival to the last token.")
    tokens_per_second: float | None = Field(description="(completion_tokens - 1) / decode time; null for 1 token.")


class Usage(OpenAIBaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    stats: GenerationStats | None = None

    @model_serializer(mode="wrap")
    def _omit_missing_stats(self, handler: Any) -> dict[str, Any]:
        data = handler(self)
        if data.get("stats") is None:
            data.pop("stats", None)
        return data


class AssistantMessage(OpenAIBaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatCompletionChoice(OpenAIBaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: None = None
    finish_reason: str


class ChatCompletion(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    session_id: str | None = Field(None, exclude_if=lambda value: value is None)  # extension, with session_id


class DeltaMessage(OpenAIBaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: Any) -> dict[str, Any]:
        # A delta carries only what changed: {"role": ..., "content": ""}, {"content": "..."} or {}.
        return {key: value for key, value in handler(self).items() if value is not None}


class ChatCompletionChunkChoice(OpenAIBaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: None = None
    finish_reason: str | None = None


class ChatCompletionChunk(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int
    model: str
    choices: list[ChatCompletionChunkChoice]
    usage: Usage | None = None
    session_id: str | None = Field(None, exclude_if=lambda value: value is None)  # extension, with session_id


class CompletionChoice(OpenAIBaseModel):
    index: int = 0
    text: str
    logprobs: None = None
    finish_reason: str | None = None


class Completion(OpenAIBaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage | None = None


# Streamed text completions use the same object as the final response, one choice delta per event.
CompletionChunk = Completion


class ModelCard(OpenAIBaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str = "llmserve"
    max_model_len: int


class ModelList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
