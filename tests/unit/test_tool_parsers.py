"""The tool-call parsers (frontend_api/openai/tool_parsers.py): what a model's text reads as, whole and streamed in
every split, and the schemas and prompt of tool_calls.py."""

from __future__ import annotations

import json

import jsonschema
import pytest

from frontend_api.openai.tool_calls import required_schema
from frontend_api.openai.tool_parsers import (
    ArgumentsStreamer,
    CallArrayStreamer,
    HermesToolParser,
    ParsedOutput,
    ParsedToolCall,
    accumulate,
    tool_parser,
)
from frontend_api.openai.tool_protocol import ToolDefinition

WEATHER = '{"name": "get_weather", "arguments": {"city": "Paris", "days": [1, {"x": "}]\\"<"}]}}'

CASES = [
    # (model output, content, [(name, arguments)])
    ("Hello there.", "Hello there.", []),
    ("plain text ends in spaces  \n", "plain text ends in spaces  \n", []),
    ("almost a <tool_ tag", "almost a <tool_ tag", []),
    (
        f"<tool_call>\n{WEATHER}\n</tool_call>",
        None,
        [("get_weather", '{"city": "Paris", "days": [1, {"x": "}]\\"<"}]}')],
    ),
    (
        f'Let me check. <tool_call>{WEATHER}</tool_call>\n<tool_call>{{"name": "b", "arguments": {{}}}}</tool_call>\n',
        "Let me check.",
        [("get_weather", '{"city": "Paris", "days": [1, {"x": "}]\\"<"}]}'), ("b", "{}")],
    ),
    ('<tool_call>{"arguments": {"q": 1}, "name": "late"}</tool_call>', None, [("late", '{"q": 1}')]),
    ('<tool_call>{"name": "noargs"}</tool_call>', None, [("noargs", "{}")]),
    ('<tool_call>{"name": "s", "arguments": "{\\"a\\": 2}"}</tool_call>', None, [("s", '{"a": 2}')]),
    ('<tool_call>{"name": "n", "id": 7, "arguments": {"a": true}}</tool_call>', None, [("n", '{"a": true}')]),
    ("<tool_call>not json</tool_call> after", "<tool_call>not json</tool_call> after", []),
    ('<tool_call>{"arguments": {}}</tool_call>', '<tool_call>{"arguments": {}}</tool_call>', []),
    ('before <tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call> after', "before after", [("f", '{"a": 1}')]),
    ('<tool_call>{"name": "cut", "arguments": {"a": [1, 2', None, [("cut", '{"a": [1, 2')]),  # cut by max_tokens
    ("<tool_call>", "<tool_call>", []),
]


def streamed(text: str, cuts: list[int]) -> ParsedOutput:
    streamer = HermesToolParser().streamer()
    bounds = [0, *cuts, len(text)]
    deltas = [streamer.feed(text[a:b]) for a, b in zip(bounds, bounds[1:], strict=False)]
    return accumulate([*deltas, streamer.finish()])


@pytest.mark.parametrize(("text", "content", "calls"), CASES)
def test_hermes_whole_and_every_two_way_split(text, content, calls):
    expected = ParsedOutput(content, [ParsedToolCall(name, arguments) for name, arguments in calls])
    assert HermesToolParser().parse(text) == expected
    for cut in range(1, len(text)):
        assert streamed(text, [cut]) == expected, f"split at {cut}: {text[:cut]!r} | {text[cut:]!r}"
    assert streamed(text, list(range(1, len(text)))) == expected, "one character at a time"


def test_hermes_streams_content_at_once_but_holds_back_a_possible_tag():
    streamer = HermesToolParser().streamer()
    assert streamer.feed("Sure, ").content == "Sure,"  # the space waits: it is content only if text follows
    assert streamer.feed("<tool").content == ""
    piece = streamer.feed('_call>{"name": "f", "arguments": {"a"')
    assert piece.content == ""
    assert [(c.index, c.name, c.arguments) for c in piece.tool_calls] == [(0, "f", ""), (0, None, '{"a"')]
    rest = streamer.feed(": 1}}</tool_call>")
    assert [(c.name, c.arguments) for c in rest.tool_calls] == [(None, ": 1}")]
    assert streamer.finish().content == ""


def test_a_name_is_sent_before_any_arguments_even_when_they_come_first():
    streamer = HermesToolParser().streamer()
    assert streamer.feed('<tool_call>{"arguments": {"q": 1}, ').tool_calls == []
    pieces = streamer.feed('"name": "late"}').tool_calls
    assert [(c.name, c.arguments) for c in pieces] == [("late", ""), (None, '{"q": 1}')]


def test_required_array_streams_each_call():
    text = ' [{"name": "a", "parameters": {"q": "x,}]"}}, {"name": "b", "parameters": {}}]'
    for step in (1, 3, len(text)):
        streamer = CallArrayStreamer()
        deltas = [streamer.feed(text[i : i + step]) for i in range(0, len(text), step)]
        assert accumulate([*deltas, streamer.finish()]) == ParsedOutput(
            None, [ParsedToolCall("a", '{"q": "x,}]"}'), ParsedToolCall("b", "{}")]
        )


def test_named_function_output_is_the_arguments():
    streamer = ArgumentsStreamer("f")
    deltas = [streamer.feed('{"a": '), streamer.feed("1}"), streamer.finish()]
    assert accumulate(deltas) == ParsedOutput(None, [ParsedToolCall("f", '{"a": 1}')])
    assert [c.name for d in deltas for c in d.tool_calls] == ["f", None, None]


def test_registry_default_is_hermes_and_unknown_names_raise():
    assert isinstance(tool_parser(None), HermesToolParser)
    assert isinstance(tool_parser("hermes"), HermesToolParser)
    with pytest.raises(KeyError):
        tool_parser("nope")


def test_hermes_prompt_and_history_format_round_trip():
    parser = HermesToolParser()
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    prompt = parser.system_prompt(tools)
    assert json.dumps(tools[0]) in prompt and "<tool_call>" in prompt and "</tools>" in prompt
    written = parser.render_tool_calls("Checking.", [("f", {"a": 1}), ("g", {})])
    assert parser.parse(written) == ParsedOutput(
        "Checking.", [ParsedToolCall("f", '{"a": 1}'), ParsedToolCall("g", "{}")]
    )
    assert parser.render_tool_result("42") == "<tool_response>\n42\n</tool_response>"


def _tool(name: str, parameters: dict) -> ToolDefinition:
    return ToolDefinition.model_validate({"type": "function", "function": {"name": name, "parameters": parameters}})


def test_required_schema_accepts_calls_of_the_tools_only():
    point = {"type": "object", "properties": {"x": {"type": "number"}}, "required": ["x"]}
    tools = [
        _tool("move", {"type": "object", "properties": {"to": {"$ref": "#/$defs/point"}}, "$defs": {"point": point}}),
        _tool("stop", {"type": "object", "properties": {}}),
    ]
    schema = required_schema(tools, parallel=True)
    jsonschema.Draft202012Validator.check_schema(schema)
    valid = [{"name": "move", "parameters": {"to": {"x": 1}}}, {"name": "stop", "parameters": {}}]
    jsonschema.validate(valid, schema)
    for invalid in (
        [],
        [{"name": "jump", "parameters": {}}],
        [{"name": "move", "parameters": {"to": {"x": "far"}}}],
        [{"name": "stop"}],
    ):
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(invalid, schema)
    one = required_schema(tools, parallel=False)
    jsonschema.validate(valid[:1], one)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(valid, one)


def test_a_model_config_names_its_parser_and_an_unknown_one_is_refused():
    from frontend_api.engine.triton import engine_model_from_config
    from frontend_api.errors import OpenAIError
    from frontend_api.openai.tool_calls import parser_of

    def model(tool_parser: str | None):
        values = {"served_model_name": "m", "tokenizer_dir": "/t", "max_model_len": "64"}
        if tool_parser is not None:
            values["tool_parser"] = tool_parser
        config = {"parameters": {key: {"string_value": value} for key, value in values.items()}}
        return engine_model_from_config("m", config)

    assert isinstance(parser_of(model("hermes")), HermesToolParser)
    assert isinstance(parser_of(model(None)), HermesToolParser)  # the default
    with pytest.raises(OpenAIError) as caught:
        parser_of(model("mistral"))
    assert caught.value.status == 500 and "mistral" in caught.value.message
