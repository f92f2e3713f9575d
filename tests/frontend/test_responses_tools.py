"""The Responses API's structured output (`text.format`) and function tools, translated onto chat's
`response_format` and `tools` (the structured and tools branches): what the engine gets, what comes back, and the
400s, named in the Responses API's terms."""

from __future__ import annotations

import asyncio
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


# ---------------------------------------------------------------------------------------------- function tools

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"],
}
WEATHER = {"type": "function", "name": "get_weather", "description": "Weather now.", "parameters": WEATHER_PARAMETERS}
CHAT_WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather now.", "parameters": WEATHER_PARAMETERS},
}
CALL_TEXT = 'Checking. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'
ASK = "Weather in Paris?"


def chat_request_of_the_engine(http, app, **chat) -> tuple[str, object]:
    """The prompt and sampling parameters the chat path sends the engine for this chat request (the reference)."""
    app.engine.scripted.append(CALL_TEXT)
    response = http.post("/chat/completions", json={"model": MODEL, **chat})
    assert response.status_code == 200, response.text
    return app.engine.requests[-1].prompt, app.engine.requests[-1].params


def test_a_tool_call_comes_back_as_a_function_call_item(client, http, app):
    app.engine.scripted.append(CALL_TEXT)
    response = client.responses.create(model=MODEL, input=ASK, tools=[WEATHER])
    prompt, params = app.engine.requests[-1].prompt, app.engine.requests[-1].params
    assert (prompt, params) == chat_request_of_the_engine(
        http, app, messages=[{"role": "user", "content": ASK}], tools=[CHAT_WEATHER]
    )
    message, call = response.output
    assert message.type == "message" and message.content[0].text == "Checking."
    assert call.type == "function_call" and call.id.startswith("fc_") and call.call_id.startswith("call_")
    assert call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris", "unit": "c"}
    assert call.status == "completed" and response.status == "completed"
    assert response.tools[0].name == "get_weather" and response.tool_choice == "auto"


def test_a_streamed_tool_call_sends_the_function_call_events(client, app):
    app.engine.scripted.append(CALL_TEXT)
    with client.responses.stream(model=MODEL, input=ASK, tools=[WEATHER]) as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    first_call = kinds.index("response.function_call_arguments.delta")
    assert kinds[first_call - 1] == "response.output_item.added" and events[first_call - 1].item.type == "function_call"
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    done = next(e for e in events if e.type == "response.function_call_arguments.done")
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")
    assert json.loads(done.arguments) == json.loads(deltas) == {"city": "Paris", "unit": "c"}
    assert [item.type for item in final.output] == ["message", "function_call"]
    assert final.output[1].name == "get_weather" and final.output[1].arguments == done.arguments
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_function_call_items_and_their_outputs_become_tool_calls_and_tool_messages(client, http, app):
    arguments = json.dumps({"city": "Paris"})
    items = [
        {"role": "user", "content": ASK},
        {"type": "function_call", "call_id": "call_1", "name": "get_weather", "arguments": arguments, "id": "fc_1"},
        {"type": "function_call_output", "call_id": "call_1", "output": "Sunny, 21 C."},
    ]
    app.engine.scripted.append("It is sunny.")
    response = client.responses.create(model=MODEL, input=items, tools=[WEATHER])
    assert response.output_text == "It is sunny."
    chat_messages = [
        {"role": "user", "content": ASK},
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "Sunny, 21 C."},
    ]
    prompt = app.engine.requests[-1].prompt
    assert prompt == chat_request_of_the_engine(http, app, messages=chat_messages, tools=[CHAT_WEATHER])[0]
    listed = client.responses.input_items.list(response.id, order="asc").data
    assert [item.type for item in listed] == ["message", "function_call", "function_call_output"]
    assert listed[1].id == "fc_1" and listed[2].output == "Sunny, 21 C."


def test_a_chained_tool_call_is_replayed_with_its_output(client, http, app):
    app.engine.scripted.append(CALL_TEXT)
    first = client.responses.create(model=MODEL, input=ASK, tools=[WEATHER])
    call = first.output[1]
    app.engine.scripted.append("Sunny.")
    output = {"type": "function_call_output", "call_id": call.call_id, "output": "Sunny."}
    client.responses.create(model=MODEL, input=[output], tools=[WEATHER], previous_response_id=first.id)
    chat_messages = [
        {"role": "user", "content": ASK},
        {  # the reply's text and its call: one assistant message, as chat answered it
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {"id": call.call_id, "type": "function", "function": {"name": call.name, "arguments": call.arguments}}
            ],
        },
        {"role": "tool", "tool_call_id": call.call_id, "content": "Sunny."},
    ]
    prompt = app.engine.requests[-1].prompt
    assert prompt == chat_request_of_the_engine(http, app, messages=chat_messages, tools=[CHAT_WEATHER])[0]


@pytest.mark.parametrize(
    ("tool_choice", "chat_choice", "output", "kinds"),
    [  # the engine's output under the guide chat sets: a named call's arguments, "required"'s array of calls
        (
            {"type": "function", "name": "get_weather"},
            {"type": "function", "function": {"name": "get_weather"}},
            '{"city": "Paris"}',
            ["function_call"],
        ),
        ("required", "required", '[{"name": "get_weather", "parameters": {"city": "Paris"}}]', ["function_call"]),
        ("none", "none", "No tools.", ["message"]),
    ],
)
def test_tool_choice_constrains_as_chat_does(client, http, app, tool_choice, chat_choice, output, kinds):
    app.engine.scripted.append(output)
    response = client.responses.create(model=MODEL, input=ASK, tools=[WEATHER], tool_choice=tool_choice)
    sent = app.engine.requests[-1]
    reference = chat_request_of_the_engine(
        http, app, messages=[{"role": "user", "content": ASK}], tools=[CHAT_WEATHER], tool_choice=chat_choice
    )
    assert (sent.prompt, sent.params.guide_type, sent.params.guide) == (
        reference[0],
        reference[1].guide_type,
        reference[1].guide,
    )
    assert [item.type for item in response.output] == kinds
    if kinds == ["function_call"]:
        assert response.output[0].name == "get_weather" and json.loads(response.output[0].arguments) == {
            "city": "Paris"
        }
    echoed = response.tool_choice if isinstance(response.tool_choice, str) else response.tool_choice.model_dump()
    assert echoed == tool_choice


@pytest.mark.parametrize(
    ("fields", "param"),
    [
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "nope"}}, "tool_choice.name"),
        ({"tools": [WEATHER | {"parameters": {"type": 5}}]}, "tools.0.parameters"),
        ({"tools": [WEATHER | {"colour": "red"}]}, "tools.0.colour"),
        ({"tools": [WEATHER, WEATHER]}, "tools"),
        ({"input": [{"type": "function_call", "call_id": "c", "name": "f", "arguments": "not json"}]}, "input"),
        ({"input": [{"type": "function_call_output", "output": "x"}]}, "input[0].call_id"),
    ],
)
def test_bad_tools_are_a_400_naming_the_field(http, app, fields, param):
    response = http.post("/responses", json={"model": MODEL, "input": ASK, **fields})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param, response.json()
    assert app.engine.requests == []


def test_the_agents_sdk_runs_a_tool_and_answers_with_its_result(app):
    """The Agents SDK's own input items (its function_call and function_call_output, sent back on the second turn)
    are accepted: the forced call runs the tool, the second response answers."""
    from agents import Agent, ModelSettings, OpenAIResponsesModel, Runner, function_tool, set_tracing_disabled
    from openai import AsyncOpenAI

    set_tracing_disabled(True)
    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return f"Sunny in {city}."

    app.engine.scripted += ['{"city": "Paris"}', "It is sunny in Paris."]  # a named call's output: its arguments
    client = AsyncOpenAI(base_url=app.api_url, api_key="unused", max_retries=0, timeout=30)
    agent = Agent(
        name="Weather",
        model=OpenAIResponsesModel(model=MODEL, openai_client=client),
        tools=[get_weather],
        model_settings=ModelSettings(tool_choice="get_weather"),
    )
    result = asyncio.run(Runner.run(agent, ASK, max_turns=3))
    assert cities == ["Paris"] and result.final_output == "It is sunny in Paris."
    second = app.engine.requests[-1].prompt
    assert "Sunny in Paris." in second and ASK in second  # the tool's output and the question, replayed
