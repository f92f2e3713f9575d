"""The request fields that constrain the output (OpenAI's `response_format`, vLLM's `structured_outputs` and its
older `guided_*` spellings), as pydantic models; structured_output.py turns them into the engine's guide."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationInfo,
    WithJsonSchema,
    field_validator,
    model_validator,
)

from frontend_api.openai.request_fields import FALSE, NULL


def _schema_or_its_text(value: Any) -> Any:
    if not isinstance(value, dict | str):
        raise ValueError("must be a JSON Schema: an object, or its JSON text")
    return value


# vLLM's JSON Schema fields take the schema or its text (one error naming the field, not one per union member)
SchemaOrText = Annotated[
    dict[str, Any] | str,
    PlainValidator(_schema_or_its_text),
    WithJsonSchema({"anyOf": [{"type": "object"}, {"type": "string"}]}),
]


class JsonSchemaFormat(BaseModel):
    """OpenAI's `response_format.json_schema`: the schema the output must follow (`strict` or not, it is enforced)."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(pattern=r"^[a-zA-Z0-9_-]{1,64}$", description="a-z, A-Z, 0-9, _ and -, at most 64 characters.")
    description: str | None = None
    schema_: dict[str, Any] | None = Field(None, alias="schema", description="A JSON Schema; absent: any JSON object.")
    strict: bool | None = None


class ResponseFormat(BaseModel):
    """OpenAI's `response_format` (also completions', as vLLM's): text, any JSON object, or a JSON Schema."""

    model_config = ConfigDict(extra="forbid")

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None

    @field_validator("json_schema")
    @classmethod
    def _schema_needs_its_type(cls, value: JsonSchemaFormat | None, info: ValidationInfo) -> JsonSchemaFormat | None:
        if value is not None and info.data.get("type") != "json_schema":
            raise ValueError('only allowed with "type": "json_schema"')
        return value

    @model_validator(mode="after")
    def _json_schema_type_needs_it(self) -> ResponseFormat:
        if self.type == "json_schema" and self.json_schema is None:
            raise ValueError('"type": "json_schema" requires the `json_schema` object')
        return self


class StructuredOutputs(BaseModel):
    """vLLM's `structured_outputs` (its StructuredOutputsParams): one constraint; its options only as defaults."""

    model_config = ConfigDict(extra="forbid")

    json_: SchemaOrText | None = Field(None, alias="json", description="A JSON Schema (object or its text).")
    regex: str | None = None
    choice: list[str] | None = None
    grammar: str | None = Field(None, description="An EBNF grammar (xgrammar's GBNF dialect).")
    json_object: bool | None = None
    disable_fallback: FALSE = None
    disable_any_whitespace: FALSE = None
    disable_additional_properties: FALSE = None
    whitespace_pattern: NULL = None
    structural_tag: NULL = None


class StructuredOutputFields(BaseModel):
    """The fields that constrain the output (at most one per request): OpenAI's `response_format`, vLLM's
    `structured_outputs` and vLLM's older (before 0.12) top-level spellings."""

    response_format: ResponseFormat | None = None
    structured_outputs: StructuredOutputs | None = None
    guided_json: SchemaOrText | None = Field(None, description="vLLM < 0.12: structured_outputs.json")
    guided_regex: str | None = Field(None, description="vLLM < 0.12: structured_outputs.regex")
    guided_choice: list[str] | None = Field(None, description="vLLM < 0.12: structured_outputs.choice")
    guided_grammar: str | None = Field(None, description="vLLM < 0.12: structured_outputs.grammar")
