"""The objects the OpenAI API subset answers with (chat completions and their chunks, completions, models),
built by serving from the engine's output; the requests are in protocol.py."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, model_serializer

from frontend_api.openai.protocol import OpenAIBaseModel


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


def _without_nulls(data: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in data.items() if value is not None}


class FunctionCall(OpenAIBaseModel):
    name: str
    arguments: str  # JSON text


class ToolCall(OpenAIBaseModel):
    id: str
    type: Literal["function"] = "function"
    function: FunctionCall


class AssistantMessage(OpenAIBaseModel):
    role: Literal["assistant"] = "assistant"
    content: str | None  # null when the reply is only tool calls
    tool_calls: list[ToolCall] | None = Field(None, exclude_if=lambda value: not value)


class TopLogprob(OpenAIBaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(OpenAIBaseModel):
    """Chat's log-probability of one output token, and the likeliest tokens at its position."""

    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChoiceLogprobs(OpenAIBaseModel):
    content: list[TokenLogprob] | None = None
    refusal: list[TokenLogprob] | None = None


class CompletionLogprobs(OpenAIBaseModel):
    """Completions' (legacy) log-probabilities: parallel lists, one entry per token."""

    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class ChatCompletionChoice(OpenAIBaseModel):
    index: int = 0
    message: AssistantMessage
    logprobs: ChoiceLogprobs | None = None
    finish_reason: str


class ChatCompletion(OpenAIBaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatCompletionChoice]
    usage: Usage
    session_id: str | None = Field(None, exclude_if=lambda value: value is None)  # extension, with session_id


class DeltaFunctionCall(OpenAIBaseModel):
    name: str | None = None
    arguments: str | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: Any) -> dict[str, Any]:
        return _without_nulls(handler(self))


class DeltaToolCall(OpenAIBaseModel):
    """OpenAI's streamed tool call: the first piece {index, id, type, function: {name, arguments: ""}}, then
    {index, function: {arguments: "<fragment>"}}."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: Any) -> dict[str, Any]:
        return _without_nulls(handler(self))


class DeltaMessage(OpenAIBaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None

    @model_serializer(mode="wrap")
    def _omit_unset(self, handler: Any) -> dict[str, Any]:
        # A delta carries only what changed: {"role": ..., "content": ""}, {"content": "..."}, {"tool_calls": ...}
        # or {}.
        return _without_nulls(handler(self))


class ChatCompletionChunkChoice(OpenAIBaseModel):
    index: int = 0
    delta: DeltaMessage
    logprobs: ChoiceLogprobs | None = None
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
    logprobs: CompletionLogprobs | None = None
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
