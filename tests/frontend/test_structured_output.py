"""Structured output in the front-end: OpenAI's `response_format`, vLLM's `structured_outputs` and its older
`guided_*` fields reach the engine as the guide the contract carries (SamplingParams.guide_type / guide, which the
fake engine records), and bad input is a 400 naming the field before the engine is called. The engine's own
refusal of a guide, capabilities and the SDK: test_structured_output_engine.py. Real output: the integration test
test_structured_output_clients.py."""

from __future__ import annotations

import json
import re

import pytest
import xgrammar
from xgrammar.testing import _is_grammar_accept_string

from frontend_api.openai.structured_output import choice_regex

from fake_engine import MODEL

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
COMPLETION = {"model": MODEL, "prompt": "Hi", "max_tokens": 4}
ROUTES = {"chat/completions": CHAT, "completions": COMPLETION}

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
GRAMMAR = 'root ::= "yes" | "no"'


def json_schema_format(schema=PERSON, **fields):
    return {"type": "json_schema", "json_schema": {"name": "person", "schema": schema, **fields}}


# (request fields, the guide type the engine gets, its guide: a JSON value for the schema types, else the text)
MAPPED = [
    ({"response_format": {"type": "json_object"}}, "json", ""),
    ({"response_format": json_schema_format(strict=True)}, "json_schema", PERSON),
    ({"response_format": json_schema_format(strict=False, description="A person.")}, "json_schema", PERSON),
    ({"response_format": json_schema_format()}, "json_schema", PERSON),  # strict absent: constrained all the same
    ({"response_format": {"type": "json_schema", "json_schema": {"name": "any"}}}, "json", ""),  # no schema
    ({"structured_outputs": {"json": PERSON}}, "json_schema", PERSON),
    ({"structured_outputs": {"json": json.dumps(PERSON)}}, "json_schema", PERSON),  # vLLM takes the text too
    ({"structured_outputs": {"regex": r"\d{3}-\d{4}"}}, "regex", r"\d{3}-\d{4}"),
    ({"structured_outputs": {"choice": ["yes", "no"]}}, "regex", "(yes|no)"),
    ({"structured_outputs": {"grammar": GRAMMAR}}, "ebnf_grammar", GRAMMAR),
    ({"structured_outputs": {"json_object": True}}, "json", ""),
    ({"guided_json": PERSON}, "json_schema", PERSON),
    ({"guided_json": json.dumps(PERSON)}, "json_schema", PERSON),
    ({"guided_regex": "[a-z]+"}, "regex", "[a-z]+"),
    ({"guided_choice": ["a.b", "c"]}, "regex", r"(a\.b|c)"),
    ({"guided_grammar": GRAMMAR}, "ebnf_grammar", GRAMMAR),
]
UNCONSTRAINED = [
    {},
    {"response_format": {"type": "text"}},
    {"response_format": None},
    {"structured_outputs": {}},
    {"structured_outputs": {"json_object": False, "disable_fallback": False, "whitespace_pattern": None}},
    {"guided_json": None, "guided_decoding_backend": "auto"},
]


# One app per route runs every case (starting an app per case would be slow); a failure lists every case that failed.


@pytest.mark.parametrize("route", ROUTES)
def test_the_engine_gets_the_guide_the_request_asks(http, app, route):
    wrong = []
    for fields, guide_type, guide in MAPPED:
        response = http.post(f"/{route}", json=ROUTES[route] | fields)
        if response.status_code != 200:
            wrong.append((fields, response.text))
            continue
        params = app.engine.requests[-1].params
        sent = json.loads(params.guide) if params.guide_type == "json_schema" else params.guide
        if (params.guide_type, sent) != (guide_type, guide):
            wrong.append((fields, params.guide_type, params.guide))
    assert wrong == []


@pytest.mark.parametrize("route", ROUTES)
def test_no_constraint_sends_no_guide(http, app, route):
    for fields in UNCONSTRAINED:
        response = http.post(f"/{route}", json=ROUTES[route] | fields)
        assert response.status_code == 200, (fields, response.text)
        params = app.engine.requests[-1].params
        assert (params.guide_type, params.guide) == (None, ""), fields


def test_a_streamed_request_is_constrained_too(http, app):
    with http.stream("POST", "/chat/completions", json=CHAT | {"stream": True, "guided_regex": "[a-z ]+"}) as events:
        assert events.status_code == 200
        assert list(events.iter_lines())[-2:] == ["data: [DONE]", ""]
    assert (app.engine.requests[-1].params.guide_type, app.engine.requests[-1].params.guide) == ("regex", "[a-z ]+")


# (request fields, the `param` of the 400, a part of its message)
BAD = [
    ({"response_format": {"type": "json_schema"}}, "response_format", "requires the `json_schema` object"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"schema": PERSON}}},
        "response_format.json_schema.name",
        "required",
    ),
    (
        {"response_format": json_schema_format() | {"json_schema": {"name": "a person", "schema": PERSON}}},
        "response_format.json_schema.name",
        "pattern",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "x" * 65}}},
        "response_format.json_schema.name",
        "pattern",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": "{}"}}},
        "response_format.json_schema.schema",
        "dictionary",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "strict": "maybe"}}},
        "response_format.json_schema.strict",
        "boolean",
    ),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "p", "foo": 1}}},
        "response_format.json_schema.foo",
        "Unrecognized",
    ),
    (
        {"response_format": {"type": "json_object", "json_schema": {"name": "p"}}},
        "response_format.json_schema",
        "only allowed with",
    ),
    ({"response_format": {"type": "xml"}}, "response_format.type", "'text', 'json_object' or 'json_schema'"),
    ({"response_format": {"type": "structural_tag", "format": {}}}, "response_format.type", "'json_schema'"),
    ({"response_format": "json"}, "response_format", "valid dictionary"),
    ({"response_format": json_schema_format({"type": "nope"})}, "response_format", "not a valid JSON Schema"),
    (
        {"response_format": json_schema_format({"type": "object", "required": "name"})},
        "response_format",
        "not a valid JSON Schema",
    ),
    (
        {"response_format": json_schema_format({"type": "string", "pattern": "("})},
        "response_format",
        "not a valid JSON Schema",
    ),
    ({"response_format": json_schema_format({"$schema": 4})}, "response_format", "`$schema`"),
    ({"guided_json": {"properties": []}}, "guided_json", "not a valid JSON Schema"),
    ({"guided_json": "{not json"}, "guided_json", "not valid JSON"),
    ({"guided_json": "[1]"}, "guided_json", "must be a JSON object"),
    ({"guided_json": 5}, "guided_json", "must be a JSON Schema"),
    ({"guided_regex": "(ab"}, "guided_regex", "the regex is not valid"),
    ({"guided_regex": ""}, "guided_regex", "must not be empty"),
    ({"guided_choice": []}, "guided_choice", "at least one choice"),
    ({"guided_choice": ["a", ""]}, "guided_choice", "empty string"),
    ({"guided_choice": "yes"}, "guided_choice", "valid list"),
    ({"guided_grammar": "  "}, "guided_grammar", "must not be empty"),
    ({"structured_outputs": {"json": {"type": 5}}}, "structured_outputs", "not a valid JSON Schema"),
    ({"structured_outputs": {"regex": "[a-"}}, "structured_outputs", "the regex is not valid"),
    ({"structured_outputs": {"choice": []}}, "structured_outputs", "at least one choice"),
    ({"structured_outputs": {"foo": 1}}, "structured_outputs.foo", "Unrecognized"),
    (
        {"structured_outputs": {"whitespace_pattern": r"\s*", "json_object": True}},
        "structured_outputs.whitespace_pattern",
        "not supported",
    ),
    (
        {"structured_outputs": {"disable_any_whitespace": True, "json_object": True}},
        "structured_outputs.disable_any_whitespace",
        "not supported",
    ),
    ({"structured_outputs": {"structural_tag": "{}"}}, "structured_outputs.structural_tag", "not supported"),
    ({"guided_whitespace_pattern": r"\s*", "guided_json": PERSON}, "guided_whitespace_pattern", "not supported"),
    ({"guided_decoding_backend": "outlines", "guided_regex": "a"}, "guided_decoding_backend", "backend"),
    ({"structural_tag": "{}"}, "structural_tag", "not supported"),
    # at most one constraint: the second one is named
    (
        {"response_format": {"type": "json_object"}, "guided_json": PERSON},
        "guided_json",
        "only one structured-output constraint",
    ),
    (
        {"response_format": {"type": "json_object"}, "structured_outputs": {"regex": "a"}},
        "structured_outputs",
        "`response_format` and `structured_outputs`",
    ),
    (
        {"structured_outputs": {"regex": "a", "choice": ["b"]}},
        "structured_outputs",
        "more than one constraint in `structured_outputs`",
    ),
    ({"structured_outputs": {"json": PERSON, "json_object": True}}, "structured_outputs", "only one"),
    ({"guided_regex": "a", "guided_choice": ["b"]}, "guided_choice", "`guided_regex` and `guided_choice`"),
    ({"structured_outputs": {"grammar": GRAMMAR}, "guided_grammar": GRAMMAR}, "guided_grammar", "only one"),
]


@pytest.mark.parametrize("route", ROUTES)
def test_bad_structured_output_is_400_naming_the_field(http, app, route):
    wrong = []
    for fields, param, words in BAD:
        response = http.post(f"/{route}", json=ROUTES[route] | fields)
        error = response.json().get("error") or {}
        prefix = "Unrecognized request argument supplied: " if words == "Unrecognized" else f"{param}: "
        if not (
            response.status_code == 400
            and set(error) == {"message", "type", "param", "code"}
            and (error["param"], error["type"]) == (param, "invalid_request_error")
            and words in error["message"]
            and error["message"].startswith(prefix)
        ):
            wrong.append((fields, response.status_code, error))
    assert wrong == []
    assert app.engine.requests == []


def test_two_constraints_in_one_streamed_request_are_a_400_too(http, app):
    body = CHAT | {"stream": True, "guided_regex": "a", "response_format": {"type": "json_object"}}
    response = http.post("/chat/completions", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == "guided_regex", response.text
    assert app.engine.requests == []


CHOICES = [
    ["yes", "no"],
    ["a.b", "a*b", "(x)", "[y]", "{z}", "p|q", "^s$", "back\\slash", "slash/", "plus+", "what?"],
    ["two words", "tab\there", "new\nline", "bell\x07", "naïve", "日本", '"quoted"', "#hash", "-dash", "&amp;~"],
]


@pytest.mark.parametrize("choices", CHOICES, ids=lambda c: c[0])
def test_a_choice_regex_matches_exactly_its_choices(choices):
    """The regex a choice becomes matches each alternative literally, and nothing else, in Python's dialect and
    in xgrammar's (the CPU engine's): the reference is the list itself."""
    pattern = choice_regex(choices)
    grammar = xgrammar.Grammar.from_regex(pattern)
    near_misses = [c + "x" for c in choices] + [c[:-1] for c in choices if len(c) > 1] + ["".join(choices[:2])]
    for text in choices:
        assert re.fullmatch(pattern, text), (pattern, text)
        assert _is_grammar_accept_string(grammar, text), (pattern, text)
    for text in (t for t in near_misses if t not in choices):
        assert not re.fullmatch(pattern, text), (pattern, text)
        assert not _is_grammar_accept_string(grammar, text), (pattern, text)
