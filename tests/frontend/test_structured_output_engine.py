"""Structured output between the front-end and the engine: a guide the engine refuses (xgrammar cannot compile a
regex or schema that passed the front-end's checks) is a 400 naming the request field that set it, a model whose
engine does not honour the guide inputs is a 400 naming the field before the engine is called, and the OpenAI
SDK's own structured-output calls reach the engine as the guide. Against the fake engine (tests/fake_engine.py)."""

from __future__ import annotations

import json

import httpx
import openai
import pydantic
import pytest

import engine_contract as contract
from frontend_api.engine.triton import infer_error

from fake_engine import ALL_INPUTS, MODEL

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
COMPLETION = {"model": MODEL, "prompt": "Hi", "max_tokens": 4}
ROUTES = {"chat/completions": CHAT, "completions": COMPLETION}
GUIDE_INPUTS = {contract.GUIDED_DECODING_GUIDE_TYPE.name, contract.GUIDED_DECODING_GUIDE.name}
# One request per way of asking for a constraint: (fields, the `param` a refusal names)
ASKED = [
    ({"response_format": {"type": "json_object"}}, "response_format"),
    (
        {"response_format": {"type": "json_schema", "json_schema": {"name": "n", "schema": {"type": "object"}}}},
        "response_format",
    ),
    ({"structured_outputs": {"regex": "[a-z]+"}}, "structured_outputs"),
    ({"structured_outputs": {"json_object": True}}, "structured_outputs"),
    ({"guided_json": {"type": "object"}}, "guided_json"),
    ({"guided_regex": "[a-z]+"}, "guided_regex"),
    ({"guided_choice": ["yes", "no"]}, "guided_choice"),
    ({"guided_grammar": 'root ::= "a"'}, "guided_grammar"),
]


def refuse_guides(app, input_name: str = contract.GUIDED_DECODING_GUIDE.name) -> None:
    """Make the fake engine refuse every guided request in-band, as the `llm` model answers a guide xgrammar
    cannot compile ("invalid request: <input> ..."), through the Triton client's own error mapping."""
    check = app.engine._reject_what_the_engine_cannot_honour

    def refusing(request):
        values = check(request)
        if request.params.guide_type is not None:
            raise infer_error(f"invalid request: {input_name}: xgrammar could not compile the guide")
        return values

    app.engine._reject_what_the_engine_cannot_honour = refusing


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("stream", [False, True])
def test_a_guide_the_engine_refuses_is_400_naming_the_field(http, app, route, stream):
    refuse_guides(app)
    for fields, param in ASKED:
        response = http.post(f"/{route}", json=ROUTES[route] | fields | {"stream": stream})
        assert response.status_code == 400, (fields, response.text)
        assert response.json()["error"] == {
            "message": f"{param}: xgrammar could not compile the guide",  # the field's name, not the input's
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }, fields
    assert len(app.engine.requests) == len(ASKED)  # each reached the engine, which refused it


def test_a_refused_guide_type_names_the_field_too(http, app):
    refuse_guides(app, contract.GUIDED_DECODING_GUIDE_TYPE.name)
    response = http.post("/chat/completions", json=CHAT | {"guided_regex": "a+"})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == "guided_regex" and error["message"].startswith("guided_regex: "), error


def test_an_unconstrained_request_is_not_refused(http, app):
    refuse_guides(app)
    assert http.post("/chat/completions", json=CHAT).status_code == 200


@pytest.mark.parametrize("route", ROUTES)
def test_a_model_without_guided_decoding_is_400_naming_the_field(start_app, route):
    app = start_app(capabilities=ALL_INPUTS - GUIDE_INPUTS)
    with httpx.Client(base_url=app.api_url, timeout=30) as http:
        for fields, param in ASKED:
            response = http.post(f"/{route}", json=ROUTES[route] | fields)
            assert response.status_code == 400, (fields, response.text)
            assert response.json()["error"] == {
                "message": f"`{param}` is not supported by model '{MODEL}'",
                "type": "invalid_request_error",
                "param": param,
                "code": None,
            }, fields
        assert http.post(f"/{route}", json=ROUTES[route] | {"response_format": {"type": "text"}}).status_code == 200
    assert len(app.engine.requests) == 1  # only the unconstrained one


class Person(pydantic.BaseModel):
    name: str
    age: int
    pets: list[str]


def test_the_sdk_parse_sends_its_strict_schema(client, app):
    """`chat.completions.parse(response_format=Model)` sends the model's strict schema (additionalProperties
    false, every property required); the fake's words are no JSON, so the SDK's own parsing fails afterwards."""
    with pytest.raises(pydantic.ValidationError):
        client.chat.completions.parse(model=MODEL, messages=CHAT["messages"], response_format=Person, max_tokens=64)
    params = app.engine.requests[-1].params
    schema = json.loads(params.guide)
    assert params.guide_type == "json_schema"
    assert schema["additionalProperties"] is False and set(schema["required"]) == {"name", "age", "pets"}
    assert schema["properties"]["pets"] == {"items": {"type": "string"}, "title": "Pets", "type": "array"}


def test_the_sdk_sends_vllm_fields_in_extra_body(client, app):
    client.completions.create(model=MODEL, prompt="Hi", max_tokens=4, extra_body={"guided_choice": ["a", "b"]})
    assert (app.engine.requests[-1].params.guide_type, app.engine.requests[-1].params.guide) == ("regex", "(a|b)")
    client.chat.completions.create(
        model=MODEL, messages=CHAT["messages"], max_tokens=4, extra_body={"structured_outputs": {"regex": "[0-9]+"}}
    )
    assert (app.engine.requests[-1].params.guide_type, app.engine.requests[-1].params.guide) == ("regex", "[0-9]+")
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(
            model=MODEL,
            messages=CHAT["messages"],
            response_format={"type": "json_schema", "json_schema": {"name": "bad name!", "schema": {}}},
        )
    assert caught.value.body["param"] == "response_format.json_schema.name"
