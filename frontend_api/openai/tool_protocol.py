"""The request shapes of OpenAI tool calling: `tools`, `tool_choice`, and the tool calls of assistant messages in
the history (as the `openai` SDK types them: ChatCompletionFunctionToolParam, ChatCompletionNamedToolChoiceParam,
ChatCompletionMessageFunctionToolCallParam). Kept apart from protocol.py, which imports them, so that they import
nothing of it. docs/API.md "Tool calling" describes what is honoured."""

from __future__ import annotations

import json
from typing import Any, Literal

from jsonschema import Draft202012Validator, SchemaError
from pydantic import BaseModel, ConfigDict, Field, field_validator

MAX_TOOLS = 128  # OpenAI's limit on `tools`
FUNCTION_NAME_PATTERN = r"^[a-zA-Z0-9_-]{1,64}$"  # OpenAI's rule for function names


class _Strict(BaseModel):
    # A field OpenAI does not define in these objects is refused, not ignored (a typo must not pass silently).
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class FunctionDefinition(_Strict):
    name: str = Field(pattern=FUNCTION_NAME_PATTERN, description="a-z, A-Z, 0-9, _ and -, at most 64 characters.")
    description: str | None = None
    parameters: dict[str, Any] | None = Field(None, description="A JSON Schema; omitted: no arguments.")
    strict: bool | None = Field(None, description="Accepted; named and required tool choices always follow it.")

    @field_validator("parameters")
    @classmethod
    def _is_a_json_schema(cls, value: dict[str, Any] | None) -> dict[str, Any] | None:
        if value is None:
            return None
        try:
            Draft202012Validator.check_schema(value)
        except SchemaError as exc:
            raise ValueError(f"not a valid JSON Schema: {exc.message}") from None
        return value

    @property
    def parameters_schema(self) -> dict[str, Any]:
        """The arguments' schema; a function without parameters takes an empty object (as OpenAI's)."""
        return self.parameters if self.parameters is not None else {"type": "object", "properties": {}}


class ToolDefinition(_Strict):
    type: Literal["function"]
    function: FunctionDefinition


class NamedFunction(_Strict):
    name: str


class NamedToolChoice(_Strict):
    type: Literal["function"]
    function: NamedFunction


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class FunctionCallIn(_Strict):
    name: str = Field(min_length=1)
    arguments: str = Field(description="The arguments as a JSON object in a string (as the model produced them).")

    @field_validator("arguments")
    @classmethod
    def _json_object(cls, value: str) -> str:
        try:
            parsed = json.loads(value) if value.strip() else {}
        except json.JSONDecodeError as exc:
            raise ValueError(f"must be JSON text: {exc.msg}") from None
        if not isinstance(parsed, dict):
            raise ValueError("must be a JSON object")
        return value

    @property
    def arguments_object(self) -> dict[str, Any]:
        parsed = json.loads(self.arguments) if self.arguments.strip() else {}
        assert isinstance(parsed, dict)
        return parsed


class ToolCallIn(_Strict):
    """A tool call of an assistant message in the history."""

    id: str = Field(min_length=1)
    type: Literal["function"]
    function: FunctionCallIn
