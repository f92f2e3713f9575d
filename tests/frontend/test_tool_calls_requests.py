"""Tool-calling input that is wrong is a 400 naming the field, and the engine is never asked; what is right passes."""

from __future__ import annotations

import pytest

from fake_engine import ALL_INPUTS, MODEL

ASK = [{"role": "user", "content": "Weather in Paris?"}]
TOOL = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
CALL = {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}

BAD = [
    ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "has space"}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "function", "function": {"name": "x" * 65}}]}, "tools.0.function.name"),
    ({"tools": [{"type": "custom", "function": {"name": "f"}}]}, "tools.0.type"),
    ({"tools": [{"type": "function"}]}, "tools.0.function"),
    ({"tools": [{"type": "function", "function": {"name": "f", "colour": 1}}]}, "tools.0.function.colour"),
    (
        {"tools": [{"type": "function", "function": {"name": "f", "parameters": {"type": 5}}}]},
        "tools.0.function.parameters",
    ),
    ({"tools": [TOOL, TOOL]}, "tools"),
    ({"tools": [TOOL], "tool_choice": {"type": "function", "function": {"name": "absent"}}}, "tool_choice"),
    ({"tools": [TOOL], "tool_choice": "sometimes"}, "tool_choice"),
    ({"tool_choice": "required"}, "tool_choice"),
    ({"tool_choice": "auto"}, "tool_choice"),
    ({"tools": [], "tool_choice": {"type": "function", "function": {"name": "get_weather"}}}, "tool_choice"),
    ({"tools": [TOOL], "parallel_tool_calls": "yes"}, "parallel_tool_calls"),
    ({"messages": [*ASK, {"role": "tool", "content": "18 C"}]}, "messages.1.tool_call_id"),
    ({"messages": [*ASK, {"role": "user", "content": "x", "tool_call_id": "call_1"}]}, "messages.1.tool_call_id"),
    ({"messages": [{"role": "assistant", "content": None}, *ASK]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": None}]}, "messages.0.content"),
    ({"messages": [{"role": "user", "content": "x", "tool_calls": [CALL]}]}, "messages.0.tool_calls"),
    (
        {
            "messages": [
                *ASK,
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [CALL | {"function": {"name": "f", "arguments": "{not"}}],
                },
            ]
        },
        "messages.1.tool_calls.0.function.arguments",
    ),
    (
        {"messages": [*ASK, {"role": "assistant", "content": None, "tool_calls": [CALL | {"id": ""}]}]},
        "messages.1.tool_calls.0.id",
    ),
    ({"functions": [{"name": "f"}]}, "functions"),
]


@pytest.mark.parametrize(("fields", "param"), BAD, ids=lambda v: v if isinstance(v, str) else "")
def test_bad_tool_input_is_400_naming_the_field(http, app, fields, param):
    response = http.post("/chat/completions", json={"model": MODEL, "messages": ASK} | fields)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert param in error["message"], error
    assert app.engine.requests == []


GOOD = [
    {"tools": [TOOL]},
    {"tools": [TOOL], "tool_choice": "auto", "parallel_tool_calls": False},
    {"tools": [TOOL], "tool_choice": "none"},
    {"tool_choice": "none"},
    {"tools": []},
    {"tools": [{"type": "function", "function": {"name": "no-params_1", "strict": True}}], "tool_choice": "required"},
    {
        "messages": [
            *ASK,
            {"role": "assistant", "content": "", "tool_calls": [CALL]},
            {"role": "tool", "tool_call_id": "call_1", "content": [{"type": "text", "text": "ok"}]},
        ]
    },
]


@pytest.mark.parametrize("fields", GOOD)
def test_good_tool_input_is_served(http, fields):
    response = http.post("/chat/completions", json={"model": MODEL, "messages": ASK, "max_tokens": 3} | fields)
    assert response.status_code == 200, response.text


def test_an_engine_without_guided_decoding_refuses_a_named_choice_naming_tool_choice(start_app):
    guided = {name for name in ALL_INPUTS if name.startswith("guided_decoding")}
    assert guided, "the engine contract has guided-decoding inputs"
    app = start_app(capabilities=ALL_INPUTS - guided)
    import httpx

    body = {
        "model": MODEL,
        "messages": ASK,
        "tools": [TOOL],
        "tool_choice": {"type": "function", "function": {"name": "get_weather"}},
    }
    response = httpx.post(f"{app.api_url}/chat/completions", json=body, timeout=30)
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == "tool_choice"
    assert (
        httpx.post(f"{app.api_url}/chat/completions", json=body | {"tool_choice": "auto"}, timeout=30).status_code
        == 200
    )
