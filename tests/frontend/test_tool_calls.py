"""Tool calling through the real app and the `openai` SDK against FakeEngine's scripted replies: the prompt (the
Hermes tool prompt, SmolLM2's template having no tools, checked against transformers' rendering), the parsed
answer, the streamed chunks (their exact shape, and the SDK's own accumulation of them), the guide of a named
function and of "required", and tool calls in a session. The 400s: test_tool_calls_requests.py."""

from __future__ import annotations

import json

import httpx
import pytest
from openai.lib.streaming.chat import ChatCompletionStreamState

from frontend_api.openai.tool_calls import required_schema
from frontend_api.openai.tool_parsers import HermesToolParser
from frontend_api.openai.tool_protocol import ToolDefinition

from fake_engine import MODEL
from helpers import new_session, session_messages

WEATHER_PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}, "unit": {"type": "string", "enum": ["c", "f"]}},
    "required": ["city"],
}
WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "description": "Weather now.", "parameters": WEATHER_PARAMETERS},
}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}}}
ASK = [{"role": "user", "content": "Weather in Paris?"}]
CALL_TEXT = 'Checking. <tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}\n</tool_call>'


def hermes_prompt(tokenizer, messages, tools) -> str:
    """The prompt we promise for a template without tools: the Hermes system block first, rendered by
    transformers' apply_chat_template."""
    block = HermesToolParser().system_prompt(tools)
    if messages and messages[0]["role"] == "system":
        messages = [{"role": "system", "content": messages[0]["content"] + "\n\n" + block}, *messages[1:]]
    else:
        messages = [{"role": "system", "content": block}, *messages]
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_auto_offers_the_tools_and_parses_the_call(client, app, tokenizer):
    app.engine.scripted.append(CALL_TEXT)
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME])
    assert app.engine.requests[-1].prompt == hermes_prompt(tokenizer, ASK, [WEATHER, TIME])
    assert app.engine.requests[-1].params.guide_type is None  # auto: free text, parsed
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Checking."
    (call,) = choice.message.tool_calls
    assert call.id.startswith("call_") and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris", "unit": "c"}


def test_auto_without_a_call_is_a_plain_answer(client, app):
    app.engine.scripted.append("It is sunny in Paris.")
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER])
    choice = reply.choices[0]
    assert (choice.message.content, choice.message.tool_calls, choice.finish_reason) == (
        "It is sunny in Paris.",
        None,
        "stop",
    )


def test_only_calls_give_null_content_and_parallel_false_keeps_the_first(client, app):
    two = '<tool_call>{"name": "get_time", "arguments": {}}</tool_call>\n' + CALL_TEXT.split(" ", 1)[1]
    app.engine.scripted += [two, two]
    both = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME]).choices[0].message
    assert both.content is None and [c.function.name for c in both.tool_calls] == ["get_time", "get_weather"]
    assert len({c.id for c in both.tool_calls}) == 2
    one = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], parallel_tool_calls=False)
    assert [c.function.name for c in one.choices[0].message.tool_calls] == ["get_time"]


def sse_payloads(app, body) -> list[dict]:
    with httpx.stream("POST", f"{app.api_url}/chat/completions", json=body, timeout=30) as response:
        assert response.status_code == 200, response.read()
        lines = [line for line in response.iter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def test_streamed_tool_call_chunks_have_openai_shape(app):
    app.engine.scripted.append(CALL_TEXT)
    payloads = sse_payloads(app, {"model": MODEL, "messages": ASK, "tools": [WEATHER], "stream": True})
    deltas = [p["choices"][0]["delta"] for p in payloads]
    assert deltas[0] == {"role": "assistant", "content": ""}
    content = [d["content"] for d in deltas if "content" in d][1:]
    assert "".join(content) == "Checking." and not any("<" in piece for piece in content)  # the tag never shows
    calls = [d["tool_calls"] for d in deltas if "tool_calls" in d]
    assert all(
        len(c) == 1 and set(d) == {"tool_calls"}
        for c, d in zip(calls, [d for d in deltas if "tool_calls" in d], strict=True)
    )
    first, *rest = [c[0] for c in calls]
    assert set(first) == {"index", "id", "type", "function"} and first["id"].startswith("call_")
    assert (first["index"], first["type"], first["function"]) == (
        0,
        "function",
        {"name": "get_weather", "arguments": ""},
    )
    assert len(rest) > 1 and all(set(piece) == {"index", "function"} and piece["index"] == 0 for piece in rest)
    assert all(set(piece["function"]) == {"arguments"} for piece in rest)
    assert json.loads("".join(piece["function"]["arguments"] for piece in rest)) == {"city": "Paris", "unit": "c"}
    assert [p["choices"][0]["finish_reason"] for p in payloads][-1] == "tool_calls"
    assert all(p["choices"][0]["finish_reason"] is None for p in payloads[:-1])


def test_the_sdk_accumulates_the_stream_into_the_non_streamed_answer(client, app):
    app.engine.scripted += [CALL_TEXT, CALL_TEXT]
    whole = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER]).choices[0]
    state = ChatCompletionStreamState()
    for chunk in client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], stream=True):
        state.handle_chunk(chunk)
    streamed = state.get_final_completion().choices[0]
    assert streamed.finish_reason == whole.finish_reason == "tool_calls"
    assert streamed.message.content == whole.message.content
    assert [(c.function.name, c.function.arguments) for c in streamed.message.tool_calls] == [
        (c.function.name, c.function.arguments) for c in whole.message.tool_calls
    ]


def test_a_named_function_is_guided_by_its_parameters(client, app):
    app.engine.scripted.append('{"city": "Oslo"}')
    choice = {"type": "function", "function": {"name": "get_weather"}}
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice=choice)
    params = app.engine.requests[-1].params
    assert params.guide_type == "json_schema" and json.loads(params.guide) == WEATHER_PARAMETERS
    (call,) = reply.choices[0].message.tool_calls
    assert (call.function.name, call.function.arguments) == ("get_weather", '{"city": "Oslo"}')
    assert reply.choices[0].message.content is None
    assert reply.choices[0].finish_reason == "stop"  # OpenAI's and vLLM's for a named function


@pytest.mark.parametrize("parallel", [True, False])
def test_required_is_guided_by_an_array_of_the_tools_calls(client, app, parallel):
    app.engine.scripted.append(
        '[{"name": "get_time", "parameters": {}}, {"name": "get_weather", "parameters": {"city": "Rome"}}]'
    )
    reply = client.chat.completions.create(
        model=MODEL, messages=ASK, tools=[WEATHER, TIME], tool_choice="required", parallel_tool_calls=parallel
    )
    params = app.engine.requests[-1].params
    tools = [ToolDefinition.model_validate(t) for t in (WEATHER, TIME)]
    assert params.guide_type == "json_schema" and json.loads(params.guide) == required_schema(tools, parallel)
    assert ("maxItems" in json.loads(params.guide)) is not parallel
    calls = reply.choices[0].message.tool_calls
    assert [(c.function.name, json.loads(c.function.arguments)) for c in calls] == [
        ("get_time", {}),
        ("get_weather", {"city": "Rome"}),
    ]
    assert reply.choices[0].finish_reason == "tool_calls"


def test_none_offers_no_tools_and_reads_no_calls(client, app, tokenizer):
    app.engine.scripted.append(CALL_TEXT)
    reply = client.chat.completions.create(model=MODEL, messages=ASK, tools=[WEATHER], tool_choice="none")
    assert app.engine.requests[-1].prompt == tokenizer.apply_chat_template(
        ASK, tokenize=False, add_generation_prompt=True
    )
    assert reply.choices[0].message.content == CALL_TEXT and reply.choices[0].message.tool_calls is None


def test_tool_calls_and_results_in_the_history_are_written_in_the_parser_format(client, app, tokenizer):
    history = [
        {"role": "system", "content": "Be brief."},
        *ASK,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                },
                {"id": "call_2", "type": "function", "function": {"name": "get_time", "arguments": "{}"}},
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "18 C"},
        {"role": "tool", "tool_call_id": "call_2", "content": "noon"},
    ]
    reply = client.chat.completions.create(model=MODEL, messages=history, tools=[WEATHER, TIME])
    assert reply.choices[0].message.tool_calls is None
    calls = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool_call>'
    expected = [
        history[0],
        history[1],
        {"role": "assistant", "content": calls},
        {"role": "user", "content": "<tool_response>\n18 C\n</tool_response>\n<tool_response>\nnoon\n</tool_response>"},
    ]
    assert app.engine.requests[-1].prompt == hermes_prompt(tokenizer, expected, [WEATHER, TIME])


def test_a_session_stores_the_calls_and_the_results_and_replays_them(http, app):
    session = new_session(http, title="tools")
    app.engine.scripted.append(CALL_TEXT)
    body = {"model": MODEL, "session_id": session["id"], "messages": ASK, "tools": [WEATHER]}
    first = http.post("/chat/completions", json=body).json()["choices"][0]
    (call,) = first["message"]["tool_calls"]
    result = {"role": "tool", "tool_call_id": call["id"], "content": "18 C"}
    second = http.post("/chat/completions", json=body | {"messages": [result]})
    assert second.status_code == 200, second.text
    prompt = app.engine.requests[-1].prompt
    assert prompt.index("Weather in Paris?") < prompt.index(
        '{"name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}'
    )
    assert prompt.index("Checking.") < prompt.index("<tool_response>\n18 C\n</tool_response>")
    stored = session_messages(http, session["id"])
    assert [(m["role"], m["finish_reason"]) for m in stored] == [
        ("user", None),
        ("assistant", "tool_calls"),
        ("tool", None),
        ("assistant", "stop"),
    ]
    assert stored[1]["content"] == "Checking." and stored[1]["tool_calls"] == [call]
    assert stored[2]["tool_call_id"] == call["id"] and stored[2]["content"] == "18 C"


async def test_the_websocket_chat_sends_tool_calls_as_frames_and_stores_them(app):
    from websockets.asyncio.client import connect

    from helpers import receive

    app.engine.scripted.append(CALL_TEXT)
    async with connect(app.ws_url) as ws:
        assert (await receive(ws))["type"] == "ready"
        await ws.send(json.dumps({"type": "chat", "content": ASK[0]["content"], "tools": [WEATHER]}))
        frames = [await receive(ws)]
        while frames[-1]["type"] not in ("done", "error"):
            frames.append(await receive(ws))
        await ws.send(
            json.dumps({"type": "chat", "content": "x", "tool_choice": {"type": "function", "function": {"name": "f"}}})
        )
        refused = await receive(ws)
    text = "".join(f["content"] for f in frames if f["type"] == "delta")
    (call,) = [f for f in frames if f["type"] == "tool_call"]
    assert text == "Checking." and frames[-1]["type"] == "done" and frames[-1]["finish_reason"] == "tool_calls"
    assert call["index"] == 0 and call["id"].startswith("call_") and call["name"] == "get_weather"
    assert json.loads(call["arguments"]) == {"city": "Paris", "unit": "c"}
    stored = httpx.get(f"{app.api_url}/sessions/{frames[-1]['session_id']}/messages").json()["data"]
    assert stored[1]["tool_calls"] == [
        {"id": call["id"], "type": "function", "function": {"name": "get_weather", "arguments": call["arguments"]}}
    ]
    assert refused["type"] == "error" and refused["param"] == "tool_choice", refused
