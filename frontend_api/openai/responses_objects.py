"""The objects POST /v1/responses answers with: the Response, its output items and usage, the input-item list and
the deletion answer; shapes as the `openai` SDK types them (openai/types/responses/response.py and friends)."""

from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import Field

from frontend_api.openai.protocol import OpenAIBaseModel
from frontend_api.openai.response_objects import Usage


def new_item_id(prefix: str) -> str:
    """OpenAI's ids: `resp_...`, `msg_...`, `fc_...`, `fco_...` (an underscore, then hex)."""
    return f"{prefix}_{uuid.uuid4().hex}"


class OutputTextPart(OpenAIBaseModel):
    type: Literal["output_text"] = "output_text"
    text: str
    annotations: list[Any] = Field(default_factory=list)
    logprobs: list[Any] = Field(default_factory=list)


class OutputMessage(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: new_item_id("msg"))
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    content: list[OutputTextPart] = Field(default_factory=list)


class FunctionCall(OpenAIBaseModel):
    id: str = Field(default_factory=lambda: new_item_id("fc"))
    type: Literal["function_call"] = "function_call"
    status: Literal["in_progress", "completed", "incomplete"] = "completed"
    call_id: str
    name: str
    arguments: str = ""


OutputItem = OutputMessage | FunctionCall


class InputTokensDetails(OpenAIBaseModel):
    cached_tokens: int = 0
    cache_write_tokens: int = 0


class OutputTokensDetails(OpenAIBaseModel):
    reasoning_tokens: int = 0


class ResponseUsage(OpenAIBaseModel):
    input_tokens: int
    input_tokens_details: InputTokensDetails = Field(default_factory=InputTokensDetails)
    output_tokens: int
    output_tokens_details: OutputTokensDetails = Field(default_factory=OutputTokensDetails)
    total_tokens: int


class IncompleteDetails(OpenAIBaseModel):
    reason: Literal["max_output_tokens"] = "max_output_tokens"


class ResponseError(OpenAIBaseModel):
    code: str = "server_error"
    message: str


class Response(OpenAIBaseModel):
    """The Response object; the request's settings are echoed, as OpenAI's are."""

    id: str = Field(default_factory=lambda: new_item_id("resp"))
    object: Literal["response"] = "response"
    created_at: int
    status: Literal["completed", "incomplete", "in_progress", "failed"]
    error: ResponseError | None = None
    incomplete_details: IncompleteDetails | None = None
    model: str
    output: list[OutputItem] = Field(default_factory=list)
    usage: ResponseUsage | None = None
    # echoed from the request
    instructions: str | None = None
    max_output_tokens: int | None = None
    metadata: dict[str, str] = Field(default_factory=dict)
    parallel_tool_calls: bool = True
    previous_response_id: str | None = None
    reasoning: dict[str, Any] | None = None
    store: bool = True
    temperature: float | None = None
    text: dict[str, Any] = Field(default_factory=lambda: {"format": {"type": "text"}})
    tool_choice: str | dict[str, Any] = "auto"
    tools: list[dict[str, Any]] = Field(default_factory=list)
    top_p: float | None = None
    truncation: Literal["disabled"] = "disabled"
    user: str | None = None
    background: bool = False

    @property
    def output_text(self) -> str:
        return "".join(p.text for item in self.output if isinstance(item, OutputMessage) for p in item.content)


class ResponseDeleted(OpenAIBaseModel):
    id: str
    object: Literal["response"] = "response"
    deleted: bool = True


class InputItemList(OpenAIBaseModel):
    object: Literal["list"] = "list"
    data: list[dict[str, Any]]
    first_id: str | None
    last_id: str | None
    has_more: bool


def response_usage(usage: Usage) -> ResponseUsage:
    return ResponseUsage(
        input_tokens=usage.prompt_tokens, output_tokens=usage.completion_tokens, total_tokens=usage.total_tokens
    )


def finished(response: Response, finish_reason: str | None, usage: Usage | None) -> Response:
    """The response once generated: `length` makes it incomplete (max_output_tokens), as OpenAI's."""
    response.usage = response_usage(usage) if usage is not None else None
    if finish_reason == "length":
        response.status = "incomplete"
        response.incomplete_details = IncompleteDetails(reason="max_output_tokens")
    else:
        response.status = "completed"
    return response
