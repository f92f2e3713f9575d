"""Structured output through real clients against the real stack (Triton + SmolLM2 on the default openvino_paged
core, which constrains with xgrammar): the OpenAI SDK's `chat.completions.parse` with a pydantic model, a strict
`json_schema` whose output validates (jsonschema is the reference), JSON mode, vLLM's `structured_outputs` and
older `guided_*` fields via `extra_body`, and LangChain's `with_structured_output` in both its JSON methods.
A 135M model may say odd things, but whatever ends with finish_reason "stop" must parse and validate. A guide the
engine cannot compile, and an engine core without guided decoding (OpenVINO GenAI), are 400s naming the field."""

from __future__ import annotations

import json
import re

import jsonschema
import openai
import pytest
from langchain_openai import ChatOpenAI
from pydantic import BaseModel, Field

from stack import MODEL

ROOM = 160  # max_tokens: room for a small object, so that the answer ends with "stop"


class City(BaseModel):
    name: str = Field(max_length=40)
    country: str = Field(max_length=40)
    population_millions: float


class Pet(BaseModel):
    kind: str = Field(max_length=20)
    legs: int


class Household(BaseModel):  # nested models and lists: $defs and $ref in the SDK's strict schema
    city: City
    pets: list[Pet] = Field(max_length=3)


ASK_CITY = [{"role": "user", "content": "Describe Paris as JSON: its name, country and population in millions."}]
PERSON_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 30},
        "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "languages": {"type": "array", "items": {"enum": ["French", "English", "German"]}, "maxItems": 3},
    },
    "required": ["name", "age", "languages"],
    "additionalProperties": False,
}
ASK_PERSON = [{"role": "user", "content": "Invent a person who speaks French. Answer in JSON."}]


def test_the_sdk_parse_returns_the_pydantic_object(client):
    reply = client.chat.completions.parse(
        model=MODEL, messages=ASK_CITY, response_format=City, temperature=0, max_tokens=ROOM
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(choice.message.parsed, City), choice.message.content
    assert City.model_validate_json(choice.message.content) == choice.message.parsed


def test_the_sdk_parse_compiles_nested_strict_schemas(client):
    messages = [{"role": "user", "content": "Describe a household in Lyon with its pets, as JSON."}]
    reply = client.chat.completions.parse(
        model=MODEL, messages=messages, response_format=Household, temperature=0, max_tokens=2 * ROOM
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    assert isinstance(choice.message.parsed, Household) and len(choice.message.parsed.pets) <= 3


@pytest.mark.parametrize("strict", [True, False, None])
def test_json_schema_output_validates(client, strict):
    """Strict or not, the schema is enforced (jsonschema checks the output against it)."""
    json_schema = {"name": "person", "schema": PERSON_SCHEMA} | ({} if strict is None else {"strict": strict})
    reply = client.chat.completions.create(
        model=MODEL,
        messages=ASK_PERSON,
        response_format={"type": "json_schema", "json_schema": json_schema},
        temperature=0.7,
        seed=7,
        max_tokens=ROOM,
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice.message.content
    jsonschema.validate(json.loads(choice.message.content), PERSON_SCHEMA)


def test_a_streamed_json_schema_answer_validates(client):
    stream = client.chat.completions.create(
        model=MODEL,
        messages=ASK_PERSON,
        response_format={"type": "json_schema", "json_schema": {"name": "person", "schema": PERSON_SCHEMA}},
        temperature=0,
        max_tokens=ROOM,
        stream=True,
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["stop"]
    jsonschema.validate(json.loads(text), PERSON_SCHEMA)


def test_json_mode_returns_json(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "List three colours as a JSON object."}],
        response_format={"type": "json_object"},
        temperature=0,
        max_tokens=ROOM,
    )
    assert reply.choices[0].finish_reason == "stop", reply.choices[0].message.content
    assert isinstance(json.loads(reply.choices[0].message.content), dict | list)


CHOICES = ["positive", "negative", "neutral"]
SENTIMENT = [{"role": "user", "content": "Classify the sentiment: 'vLLM is wonderful!'"}]


@pytest.mark.parametrize(
    "extra_body",
    [{"structured_outputs": {"choice": CHOICES}}, {"guided_choice": CHOICES}],
    ids=["structured_outputs", "guided_choice"],
)
@pytest.mark.parametrize("temperature", [0, 1.0])
def test_a_choice_returns_one_of_the_choices(client, extra_body, temperature):
    for seed in range(2):
        reply = client.chat.completions.create(
            model=MODEL, messages=SENTIMENT, temperature=temperature, seed=seed, max_tokens=16, extra_body=extra_body
        )
        assert reply.choices[0].message.content in CHOICES and reply.choices[0].finish_reason == "stop"


def test_completions_take_the_vllm_fields_and_response_format(client):
    reply = client.completions.create(
        model=MODEL,
        prompt="A phone number: ",
        max_tokens=24,
        temperature=1.0,
        seed=3,
        n=2,
        extra_body={"structured_outputs": {"regex": r"\d{3}-\d{4}"}},
    )
    assert [c.finish_reason for c in reply.choices] == ["stop", "stop"]
    assert all(re.fullmatch(r"\d{3}-\d{4}", c.text) for c in reply.choices), [c.text for c in reply.choices]
    reply = client.completions.create(
        model=MODEL,
        prompt="Is the sky blue? Answer: ",
        max_tokens=8,
        extra_body={"guided_grammar": 'root ::= "yes" | "no"'},
    )
    assert reply.choices[0].text in ("yes", "no")
    reply = client.completions.create(
        model=MODEL,
        prompt="A person as JSON: ",
        max_tokens=ROOM,
        temperature=0,
        extra_body={"response_format": {"type": "json_schema", "json_schema": {"name": "p", "schema": PERSON_SCHEMA}}},
    )
    assert reply.choices[0].finish_reason == "stop", reply.choices[0].text
    jsonschema.validate(json.loads(reply.choices[0].text), PERSON_SCHEMA)


@pytest.mark.parametrize(
    "extra_body, param",
    [
        ({"guided_regex": "(a)\\1"}, "guided_regex"),  # Python's re takes a backreference, xgrammar does not
        ({"structured_outputs": {"regex": "(?=a)a"}}, "structured_outputs"),  # nor a lookahead
        ({"structured_outputs": {"grammar": 'root ::= "a" |'}}, "structured_outputs"),  # not EBNF
        ({"guided_json": {"$ref": "#/$defs/missing"}}, "guided_json"),  # a valid schema xgrammar cannot resolve
    ],
)
def test_a_guide_the_engine_cannot_compile_is_400_naming_the_field(client, extra_body, param):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=SENTIMENT, max_tokens=8, extra_body=extra_body)
    assert caught.value.status_code == 400 and caught.value.body["param"] == param, caught.value.body
    assert caught.value.body["message"].startswith(f"{param}: not a valid "), caught.value.body  # xgrammar's reason
    assert client.chat.completions.create(model=MODEL, messages=SENTIMENT, max_tokens=2).choices  # still serving


def langchain_model(stack) -> ChatOpenAI:
    return ChatOpenAI(
        model=MODEL, base_url=stack.api_url, api_key="unused", temperature=0, max_tokens=ROOM, max_retries=0
    )


def test_langchain_with_structured_output_json_schema(stack):
    structured = langchain_model(stack).with_structured_output(City, method="json_schema", include_raw=True)
    result = structured.invoke("Describe Paris as JSON: its name, country and population in millions.")
    assert result["raw"].response_metadata["finish_reason"] == "stop", result["raw"].content
    assert result["parsing_error"] is None and isinstance(result["parsed"], City), result["raw"].content


def test_langchain_with_structured_output_json_mode(stack):
    """JSON mode constrains to JSON, not to the schema: the prompt names the keys, and LangChain validates."""
    structured = langchain_model(stack).with_structured_output(City, method="json_mode", include_raw=True)
    result = structured.invoke(
        'Describe Paris as a JSON object with the keys "name", "country" and "population_millions" (a number).'
    )
    raw = result["raw"]
    assert raw.response_metadata["finish_reason"] == "stop", raw.content
    json.loads(raw.content)  # JSON, whatever its keys
    assert result["parsing_error"] is None and isinstance(result["parsed"], City), raw.content


def test_the_fast_core_constrains_too(fast_stack):
    """The torch core (paged_fast_core.py) honours the guide as the default core does."""
    client = openai.OpenAI(base_url=fast_stack.api_url, api_key="unused", max_retries=0, timeout=120)
    reply = client.chat.completions.parse(
        model=MODEL, messages=ASK_CITY, response_format=City, temperature=0, max_tokens=ROOM
    )
    assert reply.choices[0].finish_reason == "stop" and isinstance(reply.choices[0].message.parsed, City)
    reply = client.chat.completions.create(
        model=MODEL, messages=SENTIMENT, temperature=1.0, n=3, max_tokens=16, extra_body={"guided_choice": CHOICES}
    )
    assert all(c.message.content in CHOICES and c.finish_reason == "stop" for c in reply.choices), reply.choices


def test_an_engine_without_guided_decoding_is_400_naming_the_field(genai_stack):
    """The OpenVINO GenAI core does not honour the guide inputs (its model's capabilities say so): refused before
    the engine is called, naming the field the request used."""
    client = openai.OpenAI(base_url=genai_stack.api_url, api_key="unused", max_retries=0, timeout=120)
    for extra_body, param in [
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"structured_outputs": {"choice": CHOICES}}, "structured_outputs"),
        ({"guided_regex": "[a-z]+"}, "guided_regex"),
    ]:
        with pytest.raises(openai.BadRequestError) as caught:
            client.chat.completions.create(model=MODEL, messages=SENTIMENT, max_tokens=8, extra_body=extra_body)
        assert caught.value.body == {
            "message": f"`{param}` is not supported by model '{MODEL}'",
            "type": "invalid_request_error",
            "param": param,
            "code": None,
        }
    assert client.chat.completions.create(model=MODEL, messages=SENTIMENT, max_tokens=2).choices
