"""Tool calling on the real stack (Triton, SmolLM2-135M on the default openvino_paged core, whose guided decoding
constrains a named function's and "required"'s output), through the clients people use: the `openai` SDK and
LangChain's ChatOpenAI. What SmolLM2 does with "auto" is recorded, not judged: a 135M model rarely calls a tool by
itself; the test asserts only what greedy decoding makes deterministic."""

from __future__ import annotations

import json

import jsonschema
from langchain_core.tools import tool
from langchain_openai import ChatOpenAI
from openai.lib.streaming.chat import ChatCompletionStreamState
from pydantic import BaseModel, Field

from stack import MODEL

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {
        "city": {"type": "string", "description": "The city name."},
        "days": {"type": "integer", "minimum": 1, "maximum": 7},
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
    },
    "required": ["city", "days", "unit"],
    "additionalProperties": False,
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "The weather forecast.", "parameters": WEATHER_PARAMETERS},
}
TIME_PARAMETERS = {
    "type": "object",
    "properties": {"timezone": {"type": "string"}},
    "required": ["timezone"],
    "additionalProperties": False,
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "description": "The time now.", "parameters": TIME_PARAMETERS},
}
ASK = [{"role": "user", "content": "What will the weather be in Paris for the next 3 days?"}]
SCHEMAS = {"get_weather": WEATHER_PARAMETERS, "get_time": TIME_PARAMETERS}
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def test_sdk_named_function_arguments_follow_its_schema(client):
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice=NAMED, temperature=0, max_tokens=80
    )
    choice = reply.choices[0]
    assert choice.finish_reason == "stop", choice
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.function.name == "get_weather"
    jsonschema.validate(json.loads(call.function.arguments), WEATHER_PARAMETERS)


def test_sdk_named_function_streamed_accumulates_to_the_same_call(client):
    whole = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=NAMED, temperature=0, max_tokens=80
    )
    state = ChatCompletionStreamState()
    stream = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER], tool_choice=NAMED, temperature=0, max_tokens=80, stream=True
    )
    for chunk in stream:
        state.handle_chunk(chunk)
    streamed = state.get_final_completion().choices[0]
    assert (
        streamed.message.tool_calls[0].function.arguments == whole.choices[0].message.tool_calls[0].function.arguments
    )
    jsonschema.validate(json.loads(streamed.message.tool_calls[0].function.arguments), WEATHER_PARAMETERS)


def test_sdk_required_calls_only_the_tools_with_valid_arguments(client, capsys):
    # The guide lets JSON have any whitespace, and SmolLM2 indents it: room for that.
    for parallel in (False, True):
        reply = client.chat.completions.create(
            model=MODEL,
            messages=ASK,
            tools=[WEATHER, TIME],
            tool_choice="required",
            parallel_tool_calls=parallel,
            temperature=0,
            max_tokens=400,
        )
        choice = reply.choices[0]
        calls = choice.message.tool_calls
        with capsys.disabled():
            print(
                f"\nSmolLM2-135M, required, parallel {parallel}: {choice.finish_reason}: {choice.message.model_dump_json()}"
            )
        assert calls and choice.message.content is None
        if not parallel:
            assert choice.finish_reason == "tool_calls" and len(calls) == 1
        # With parallel calls allowed, a small model may repeat calls until max_tokens cuts the last one.
        complete = calls if choice.finish_reason == "tool_calls" else calls[:-1]
        assert choice.finish_reason == "tool_calls" or len(calls) > 1, choice
        for call in complete:
            jsonschema.validate(json.loads(call.function.arguments), SCHEMAS[call.function.name])


@tool
def get_weather(city: str, days: int) -> str:
    """The weather forecast of a city for a number of days."""
    return f"Sunny in {city} for {days} days."


def chat_model(stack) -> ChatOpenAI:
    return ChatOpenAI(model=MODEL, base_url=stack.api_url, api_key="unused", temperature=0, max_tokens=80)


def test_langchain_bind_tools_with_a_named_choice_returns_tool_calls(stack):
    message = chat_model(stack).bind_tools([get_weather], tool_choice="get_weather").invoke(ASK[0]["content"])
    (call,) = message.tool_calls
    assert call["name"] == "get_weather" and call["id"].startswith("call_")
    assert isinstance(call["args"]["city"], str) and isinstance(call["args"]["days"], int)
    assert get_weather.invoke(call["args"]).startswith("Sunny in ")


class CityFacts(BaseModel):
    """Facts about a city."""

    city: str = Field(description="The city's name.")
    country: str = Field(description="The country it is in.")
    population_millions: float


def test_langchain_structured_output_by_function_calling_returns_the_object(stack):
    structured = chat_model(stack).with_structured_output(CityFacts, method="function_calling")
    facts = structured.invoke("Tell me about Paris.")
    assert isinstance(facts, CityFacts) and facts.city and facts.country


def test_what_smollm2_does_with_auto_is_deterministic_and_well_formed(client, capsys):
    def ask():
        return client.chat.completions.create(
            model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="auto", temperature=0, max_tokens=80
        ).choices[0]

    def seen(choice):  # the call ids are random
        calls = [(c.function.name, c.function.arguments) for c in choice.message.tool_calls or ()]
        return choice.finish_reason, choice.message.content, calls

    first, second = ask(), ask()
    assert seen(first) == seen(second)
    if first.message.tool_calls:
        assert first.finish_reason in ("tool_calls", "length")
    else:
        assert first.finish_reason in ("stop", "length") and first.message.content
    with capsys.disabled():
        print(f"\nSmolLM2-135M with tool_choice auto: {first.finish_reason}: {first.message.model_dump_json()}")
