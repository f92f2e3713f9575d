"""The request of POST /v1/responses (OpenAI's Responses API) and its input items, validated here.

Shapes as the `openai` Python SDK types them (openai/types/responses/response_create_params.py,
response_input_item_param.py, SDK 3.57). A field is honoured (declared with its type), or accepted only with a
value that changes nothing (request_fields.Refused), or unrecognized: the request forbids extra fields, as the
chat request does. Input items are parsed by `parse_input_items`, which names the failing item (`input[2].type`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from frontend_api.errors import OpenAIError
from frontend_api.openai.request_fields import EMPTY_LIST, FALSE, NULL, Refused

MAX_METADATA_KEYS = 16  # OpenAI's limits on `metadata`
MAX_METADATA_KEY_CHARS = 64
MAX_METADATA_VALUE_CHARS = 512


class Strict(BaseModel):
    """A nested object whose unknown fields are refused (a typo is an error, not ignored)."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


# ---------------------------------------------------------------------------------------------- tools, text


class FunctionTool(Strict):
    type: Literal["function"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunction(Strict):
    """tool_choice {"type": "function", "name": ...}: call this function."""

    type: Literal["function"]
    name: str = Field(min_length=1)


ToolChoice = Literal["none", "auto", "required"] | NamedFunction


class TextFormatText(Strict):
    type: Literal["text"]


class TextFormatJsonObject(Strict):
    type: Literal["json_object"]


class TextFormatJsonSchema(Strict):
    type: Literal["json_schema"]
    name: str = Field(min_length=1, max_length=64, pattern=r"^[a-zA-Z0-9_-]+$")
    schema_: dict[str, Any] = Field(alias="schema")
    description: str | None = None
    strict: bool | None = None

    model_config = ConfigDict(extra="forbid", populate_by_name=True, serialize_by_alias=True)


TextFormat = Annotated[TextFormatText | TextFormatJsonObject | TextFormatJsonSchema, Field(discriminator="type")]


class TextConfig(Strict):
    format: TextFormat = Field(default_factory=lambda: TextFormatText(type="text"))
    verbosity: Annotated[Any, Refused("medium")] = None


# ---------------------------------------------------------------------------------------------- input items


class InputText(Strict):
    type: Literal["input_text"]
    text: str


class OutputText(Strict):
    """An assistant message's text, as a previous response returned it (its annotations and logprobs are
    accepted as sent back, and not used)."""

    type: Literal["output_text"]
    text: str
    annotations: list[Any] | None = None
    logprobs: list[Any] | None = None


class InputMessage(Strict):
    """A message: `{"role": ..., "content": ...}` (the SDK's EasyInputMessage, `type` optional) or an output
    message of an earlier response sent back (with its `id` and `status`)."""

    type: Literal["message"] = "message"
    role: Literal["user", "assistant", "system", "developer"]
    content: str | list[Annotated[InputText | OutputText, Field(discriminator="type")]]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None
    phase: Literal["commentary", "final_answer"] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.content, str):
            return self.content
        return "".join(part.text for part in self.content)


class FunctionCallItem(Strict):
    """A function call the model made (an output item of an earlier response, sent back)."""

    type: Literal["function_call"]
    call_id: str = Field(min_length=1)
    name: str = Field(min_length=1)
    arguments: str
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None


class FunctionCallOutputItem(Strict):
    """What the caller's function returned for a call."""

    type: Literal["function_call_output"]
    call_id: str = Field(min_length=1)
    output: str | list[InputText]
    id: str | None = None
    status: Literal["in_progress", "completed", "incomplete"] | None = None

    @property
    def text(self) -> str:
        if isinstance(self.output, str):
            return self.output
        return "".join(part.text for part in self.output)


InputItem = InputMessage | FunctionCallItem | FunctionCallOutputItem
ITEM_TYPES: dict[str, type[InputItem]] = {
    "message": InputMessage,
    "function_call": FunctionCallItem,
    "function_call_output": FunctionCallOutputItem,
}


def parse_input_items(value: str | list[dict[str, Any]]) -> list[InputItem]:
    """The request's `input` as items; a 400 naming the item and field that is wrong (`input[1].content`)."""
    if isinstance(value, str):
        return [InputMessage(role="user", content=value)]
    items: list[InputItem] = []
    for index, raw in enumerate(value):
        kind = raw.get("type", "message" if "role" in raw else None)
        model = ITEM_TYPES.get(kind) if isinstance(kind, str) else None
        if model is None:
            supported = ", ".join(ITEM_TYPES)
            raise OpenAIError(
                400,
                f"input[{index}].type: item type {kind!r} is not supported (supported: {supported}).",
                param=f"input[{index}].type",
            )
        try:
            items.append(model.model_validate(raw))
        except ValidationError as exc:
            error = _most_telling(exc.errors())
            where = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in _field_path(error["loc"]))
            param = f"input[{index}]{where}"
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown field"
            raise OpenAIError(400, f"{param}: {message}", param=param) from exc
    return items


_TYPE_MISMATCHES = {"string_type", "list_type", "dict_type", "model_type"}
_PART_TAGS = {"input_text", "output_text"}


def _most_telling(errors: list[Any]) -> Any:
    """Of a union's errors (`content` is a string or a list of parts), the one about what was sent: not the
    member whose type did not even match."""
    return next((e for e in errors if e["type"] not in _TYPE_MISMATCHES), errors[0])


def _field_path(loc: tuple[Any, ...]) -> list[Any]:
    """The error's location as fields and indexes, without pydantic's union member labels (`str`, `list[...]`,
    a part's tag)."""
    return [p for p in loc if isinstance(p, int) or not (p in _PART_TAGS or p == "str" or "[" in p)]


# ---------------------------------------------------------------------------------------------- the request


class ResponsesRequest(Strict):
    model: str = Field(min_length=1)
    input: str | list[dict[str, Any]] = Field(
        description="A string (one user message), or a list of items: messages, function_call, function_call_output."
    )
    instructions: str | None = Field(None, description="A system message put first; not carried to later responses.")
    max_output_tokens: int | None = Field(None, ge=1)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    stream: bool | None = False
    store: bool | None = Field(None, description="Store the response (default true): retrieve it, chain to it.")
    previous_response_id: str | None = Field(None, min_length=1, max_length=64)
    metadata: dict[str, str] | None = None
    user: str | None = None
    safety_identifier: str | None = None  # identifiers of the end user: accepted, nothing here uses them
    prompt_cache_key: str | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = None
    text: TextConfig | None = None
    # Known fields we do not honour: accepted only as null or the value that changes nothing.
    truncation: Annotated[Any, Refused("disabled", reason="prompts are never truncated")] = None
    reasoning: Annotated[Any, Refused(reason="not a reasoning model")] = None
    include: EMPTY_LIST = None
    top_logprobs: Annotated[Any, Refused(0)] = None
    background: FALSE = None
    background_options: NULL = None
    conversation: NULL = None
    prompt: NULL = None
    service_tier: Annotated[Any, Refused("auto", "default")] = None
    stream_options: NULL = None
    max_tool_calls: NULL = None
    context_management: NULL = None
    prompt_cache_options: NULL = None
    prompt_cache_retention: NULL = None
    moderation: NULL = None
    image: NULL = None
    access_programs: NULL = None

    @field_validator("input")
    @classmethod
    def _some_input(cls, value: str | list[dict[str, Any]]) -> str | list[dict[str, Any]]:
        if value == "":
            raise ValueError("must not be empty")
        return value

    @field_validator("metadata")
    @classmethod
    def _metadata_limits(cls, value: dict[str, str] | None) -> dict[str, str] | None:
        if value is None:
            return None
        if len(value) > MAX_METADATA_KEYS:
            raise ValueError(f"at most {MAX_METADATA_KEYS} keys are allowed, got {len(value)}")
        for key, item in value.items():
            if len(key) > MAX_METADATA_KEY_CHARS:
                raise ValueError(f"keys may have at most {MAX_METADATA_KEY_CHARS} characters")
            if len(item) > MAX_METADATA_VALUE_CHARS:
                raise ValueError(f"values may have at most {MAX_METADATA_VALUE_CHARS} characters")
        return value

    @property
    def stored(self) -> bool:
        return self.store is not False

    @property
    def function_tools(self) -> list[FunctionTool]:
        return self.tools or []

    @property
    def text_config(self) -> TextConfig:
        return self.text or TextConfig()
