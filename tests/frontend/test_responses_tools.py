"""The Responses API's structured output (`text.format`) and function tools, translated onto chat's
`response_format` and `tools` (the structured and tools branches): what the engine gets, what comes back, and the
400s, named in the Responses API's terms."""

from __future__ import annotations

import json

import pytest

from fake_engine import MODEL

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}


@pytest.mark.parametrize(
    ("text_format", "guide_type", "guide"),
    [
        ({"type": "json_schema", "name": "person", "schema": PERSON, "strict": True}, "json_schema", PERSON),
        (
            {"type": "json_schema", "name": "person", "schema": PERSON, "description": "A person."},
            "json_schema",
            PERSON,
        ),
        ({"type": "json_object"}, "json", ""),
        ({"type": "text"}, None, ""),
    ],
)
def test_text_format_reaches_the_engine_as_its_guide(client, app, text_format, guide_type, guide):
    response = client.responses.create(model=MODEL, input="Who?", text={"format": text_format}, max_output_tokens=4)
    params = app.engine.requests[-1].params
    sent = json.loads(params.guide) if params.guide_type == "json_schema" else params.guide
    assert (params.guide_type, sent) == (guide_type, guide)
    assert response.text.format.type == text_format["type"]
    if text_format["type"] == "json_schema":
        assert response.text.format.name == "person" and response.text.format.schema_ == PERSON


def test_a_streamed_response_is_constrained_too(client, app):
    text = {"format": {"type": "json_schema", "name": "person", "schema": PERSON}}
    with client.responses.stream(model=MODEL, input="Who?", text=text, max_output_tokens=4) as stream:
        stream.until_done()
    assert app.engine.requests[-1].params.guide_type == "json_schema"


@pytest.mark.parametrize(
    ("text_format", "param"),
    [
        ({"type": "json_schema", "name": "p", "schema": {"type": 5}}, "text.format"),  # checked by chat
        ({"type": "json_schema", "schema": PERSON}, "text.format.json_schema.name"),
        ({"type": "json_schema", "name": "a person", "schema": PERSON}, "text.format.json_schema.name"),
        ({"type": "json_object", "schema": PERSON}, "text.format.json_object.schema"),
    ],
)
def test_a_bad_text_format_is_a_400_naming_it(http, app, text_format, param):
    response = http.post("/responses", json={"model": MODEL, "input": "Hi", "text": {"format": text_format}})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param
    assert app.engine.requests == []
