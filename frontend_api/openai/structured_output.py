"""Structured output: the request fields that constrain a generation, mapped onto the engine's guided decoding
(TensorRT-LLM's `guided_decoding_guide_type` / `guided_decoding_guide`, SamplingParams.guide_type / guide).

The fields (structured_protocol.StructuredOutputFields), at most one constraint per request:
- OpenAI's `response_format`: `{"type": "json_object"}` -> "json" (any JSON object), `{"type": "json_schema",
  "json_schema": {"name", "schema", ...}}` -> "json_schema" (enforced, `strict` or not; no schema: any JSON object);
- vLLM's `structured_outputs` {json | regex | choice | grammar | json_object} and its spellings before 0.12,
  `guided_json`, `guided_regex`, `guided_choice`, `guided_grammar`. A choice becomes a regex of its alternatives.
A schema must be a valid JSON Schema (jsonschema's check of the dialect its `$schema` names, 2020-12 by default)
and a regex must compile with Python's `re`, else a 400 naming the field. The engine compiles the guide itself
(xgrammar, whose regex and schema support differ a little): its refusal is a 400 naming the same field
(`guide_param`, which serving's param_of uses for the guide's contract inputs).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import jsonschema
from jsonschema.exceptions import SchemaError

import engine_contract as contract
from frontend_api.errors import OpenAIError

if TYPE_CHECKING:
    from frontend_api.openai.structured_protocol import StructuredOutputFields

# The contract inputs that carry the guide, and the guide types we send (of contract.GUIDE_TYPES)
GUIDE_INPUTS = frozenset({contract.GUIDED_DECODING_GUIDE_TYPE.name, contract.GUIDED_DECODING_GUIDE.name})
JSON, JSON_SCHEMA, REGEX, EBNF_GRAMMAR = "json", "json_schema", "regex", "ebnf_grammar"
assert {JSON, JSON_SCHEMA, REGEX, EBNF_GRAMMAR} <= set(contract.GUIDE_TYPES)
# Characters a regex treats as syntax: escaped in a choice's alternatives (both Python's and xgrammar's dialect
# accept a backslash before each). Control characters are written as escapes.
_REGEX_SYNTAX = frozenset("\\^$.|?*+()[]{}/")
_CONTROL_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f", "\v": "\\v"}


@dataclass(frozen=True)
class Guide:
    """One constraint: the engine's guide type and text, and the request field that asked for it."""

    guide_type: str
    guide: str
    param: str


@dataclass(frozen=True)
class _Asked:
    """A constraint as the request gives it, not yet checked: `kind` is a guide type, or "choice"."""

    param: str
    kind: str
    value: Any = None


def guide_of(request: StructuredOutputFields) -> Guide | None:
    """The request's constraint (None: unconstrained text); a 400 naming the field for an invalid one or for two."""
    asked = _asked(request)
    if not asked:
        return None
    if len(asked) > 1:
        first, second = asked[0].param, asked[1].param
        names = f"`{first}` and `{second}`" if first != second else f"more than one constraint in `{first}`"
        raise OpenAIError(
            400, f"{second}: only one structured-output constraint is allowed per request, got {names}.", param=second
        )
    one = asked[0]
    if one.kind == JSON:
        return Guide(JSON, "", one.param)
    if one.kind == JSON_SCHEMA:
        return Guide(JSON_SCHEMA, _checked_schema(one.value, one.param), one.param)
    if one.kind == REGEX:
        return Guide(REGEX, _checked_regex(one.value, one.param), one.param)
    if one.kind == "choice":
        return Guide(REGEX, choice_regex(one.value, one.param), one.param)
    if not one.value.strip():
        raise OpenAIError(400, f"{one.param}: the grammar must not be empty.", param=one.param)
    return Guide(EBNF_GRAMMAR, one.value, one.param)


def guide_param(request: StructuredOutputFields | None) -> str | None:
    """The request field that set the guide (for a 400 about the guide's contract inputs)."""
    asked = _asked(request) if request is not None else []
    return asked[0].param if asked else None


def _asked(request: StructuredOutputFields) -> list[_Asked]:
    """Every constraint the request sets, in field order."""
    given: list[tuple[str, str, Any]] = []  # (field, kind, value or None when not set)
    if (response_format := request.response_format) is not None and response_format.type != "text":
        schema = response_format.json_schema.schema_ if response_format.json_schema is not None else None
        kind, value = (JSON, True) if schema is None else (JSON_SCHEMA, schema)
        given.append(("response_format", kind, value))
    if (options := request.structured_outputs) is not None:
        field = "structured_outputs"
        given += [(field, JSON_SCHEMA, options.json_), (field, REGEX, options.regex), (field, "choice", options.choice)]
        given += [(field, EBNF_GRAMMAR, options.grammar), (field, JSON, True if options.json_object else None)]
    given += [
        ("guided_json", JSON_SCHEMA, request.guided_json),
        ("guided_regex", REGEX, request.guided_regex),
        ("guided_choice", "choice", request.guided_choice),
        ("guided_grammar", EBNF_GRAMMAR, request.guided_grammar),
    ]
    return [_Asked(field, kind, value) for field, kind, value in given if value is not None]


def _checked_schema(schema: dict[str, Any] | str, param: str) -> str:
    """The schema as JSON text, once it is a valid JSON Schema (checked against its dialect's metaschema)."""
    if isinstance(schema, str):
        try:
            schema = json.loads(schema)
        except ValueError as exc:
            raise OpenAIError(400, f"{param}: the schema is not valid JSON: {exc}.", param=param) from None
    if not isinstance(schema, dict):
        raise OpenAIError(400, f"{param}: the schema must be a JSON object.", param=param)
    if not isinstance(schema.get("$schema", ""), str):
        raise OpenAIError(400, f"{param}: the schema's `$schema` must be a string (a dialect's URI).", param=param)
    validator = jsonschema.validators.validator_for(schema, default=jsonschema.Draft202012Validator)
    try:
        validator.check_schema(schema)
    except RecursionError:
        raise OpenAIError(400, f"{param}: the schema is nested too deeply.", param=param) from None
    except SchemaError as exc:
        where = "".join(f"[{p!r}]" for p in exc.path)
        raise OpenAIError(
            400,
            f"{param}: the schema is not a valid JSON Schema: {exc.message}{' at ' + where if where else ''}.",
            param=param,
        ) from None
    return json.dumps(schema, ensure_ascii=False)


def _checked_regex(pattern: str, param: str) -> str:
    if not pattern:
        raise OpenAIError(400, f"{param}: the regex must not be empty.", param=param)
    try:
        re.compile(pattern)
    except re.error as exc:
        raise OpenAIError(400, f"{param}: the regex is not valid: {exc}.", param=param) from None
    except (RecursionError, OverflowError):
        raise OpenAIError(400, f"{param}: the regex is too complex.", param=param) from None
    return pattern


def choice_regex(choices: list[str], param: str = "choice") -> str:
    """A regex that matches exactly one of `choices` (each taken literally)."""
    if not choices:
        raise OpenAIError(400, f"{param}: give at least one choice.", param=param)
    if any(choice == "" for choice in choices):
        raise OpenAIError(400, f"{param}: a choice must not be an empty string.", param=param)
    return "(" + "|".join(_literal(choice) for choice in choices) + ")"


def _literal(text: str) -> str:
    out = []
    for char in text:
        if char in _REGEX_SYNTAX:
            out.append("\\" + char)
        elif char in _CONTROL_ESCAPES:
            out.append(_CONTROL_ESCAPES[char])
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return "".join(out)
