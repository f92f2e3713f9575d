"""Tool calling between a chat request and the engine (docs/API.md "Tool calling"), as vLLM's OpenAI server:

- the prompt: `tools` and the tool calls / results of the history go to the model's chat template as Hugging
  Face's apply_chat_template passes them (tools=, assistant `tool_calls` with arguments as objects, `tool`
  messages); a template that knows no tools gets its model's parser format instead (tool_parsers.py): a system
  block listing the functions, calls and results written as that format's text;
- tool_choice "none" offers no tools (as vLLM's --exclude-tools-when-tool-choice-none: a small model shown tools
  calls them, and "none" must not call); "auto" parses the output with the model's parser; a named function and
  "required" constrain the output with a JSON schema (the engine's guided decoding): the named function's
  parameters (the output is the arguments), or an array of {"name", "parameters"} items, one schema per tool.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Sequence
from typing import Any

from frontend_api.engine.protocol import EngineModel
from frontend_api.errors import OpenAIError
from frontend_api.openai.protocol import ChatCompletionRequest, ChatMessage
from frontend_api.openai.tool_parsers import (
    TOOL_PARSERS,
    ArgumentsStreamer,
    CallArrayStreamer,
    ParsedDelta,
    ParsedOutput,
    ToolCallStreamer,
    ToolParser,
    accumulate,
    tool_parser,
)
from frontend_api.openai.tool_protocol import NamedToolChoice, ToolDefinition

TOOL_PARSER_PARAMETER = "tool_parser"  # the Triton model config parameter naming a model's parser


def new_call_id() -> str:
    return f"call_{uuid.uuid4().hex[:24]}"


def parser_of(model: EngineModel) -> ToolParser:
    name = model.metadata.get(TOOL_PARSER_PARAMETER)
    try:
        return tool_parser(name)
    except KeyError:
        known = ", ".join(sorted(TOOL_PARSERS))
        raise OpenAIError(
            500, f"Model '{model.id}' is configured with tool_parser {name!r}, which is not one of: {known}."
        ) from None


def offered_tools(request: ChatCompletionRequest) -> list[dict[str, Any]] | None:
    """The tools shown to the model, as the chat template gets them (None: none)."""
    if not request.tools or request.tool_choice == "none":
        return None
    return [tool.model_dump(exclude_none=True) for tool in request.tools]


def template_messages(
    messages: Sequence[ChatMessage], tools: list[dict[str, Any]] | None, parser: ToolParser, native: bool
) -> list[dict[str, Any]]:
    """The messages as the chat template gets them. `native`: the template renders tools itself; else tool calls,
    results and the tool list are written in the parser's format (results as user turns, Qwen 2.5's way)."""
    rendered: list[dict[str, Any]] = []
    for message in messages:
        role = "system" if message.role == "developer" else message.role  # OpenAI's new name of "system"
        content = message.content or ""
        calls = [(call.function.name, call.function.arguments_object) for call in message.tool_calls or ()]
        if native:
            entry: dict[str, Any] = {"role": role, "content": content}
            if message.tool_calls:
                entry["tool_calls"] = [
                    {"id": call.id, "type": "function", "function": {"name": name, "arguments": arguments}}
                    for call, (name, arguments) in zip(message.tool_calls, calls, strict=True)
                ]
            if message.tool_call_id is not None:
                entry["tool_call_id"] = message.tool_call_id
            rendered.append(entry)
        elif role == "tool":
            result = parser.render_tool_result(content)
            if rendered and rendered[-1].get("tool_results"):  # the results of one turn's calls: one user turn
                rendered[-1]["content"] += "\n" + result
            else:
                rendered.append({"role": "user", "content": result, "tool_results": True})
        elif calls:
            rendered.append({"role": role, "content": parser.render_tool_calls(message.content, calls)})
        else:
            rendered.append({"role": role, "content": content})
    for entry in rendered:
        entry.pop("tool_results", None)
    if tools and not native:
        block = parser.system_prompt(tools)
        if rendered and rendered[0]["role"] == "system":
            rendered[0]["content"] = f"{rendered[0]['content']}\n\n{block}" if rendered[0]["content"] else block
        else:
            rendered.insert(0, {"role": "system", "content": block})
    return rendered


def tool_schema(tool: ToolDefinition) -> dict[str, Any]:
    """One item of "required"'s array: this tool's name and its arguments."""
    return {
        "type": "object",
        "properties": {
            "name": {"type": "string", "enum": [tool.function.name]},
            "parameters": tool.function.parameters_schema,
        },
        "required": ["name", "parameters"],
        "additionalProperties": False,
    }


def required_schema(tools: Sequence[ToolDefinition], parallel: bool) -> dict[str, Any]:
    """tool_choice "required": an array of calls, each one of the tools (vLLM's schema); parallel_tool_calls
    false: exactly one. Each tool's $defs are hoisted to the top, where its $refs ("#/$defs/...") point."""
    defs: dict[str, Any] = {}
    items = []
    for tool in tools:
        item = tool_schema(tool)
        parameters = dict(item["properties"]["parameters"])
        for name, definition in parameters.pop("$defs", {}).items():
            if name in defs and defs[name] != definition:
                raise OpenAIError(
                    400,
                    f'tools: the $defs entry {name!r} differs between tools; with tool_choice "required" the '
                    "tools' $defs must agree.",
                    param="tools",
                )
            defs[name] = definition
        item["properties"]["parameters"] = parameters
        items.append(item)
    schema: dict[str, Any] = {"type": "array", "minItems": 1, "items": {"anyOf": items}}
    if not parallel:
        schema["maxItems"] = 1
    if defs:
        schema["$defs"] = defs
    return schema


def guide_of(request: ChatCompletionRequest) -> str | None:
    """The JSON schema (as text) the output must follow, for a named function or "required"; else None."""
    choice, tools = request.tool_choice, request.tools or []
    if isinstance(choice, NamedToolChoice):
        tool = next(t for t in tools if t.function.name == choice.function.name)
        return json.dumps(tool.function.parameters_schema)
    if choice == "required":
        return json.dumps(required_schema(tools, request.allows_parallel_tool_calls))
    return None


def output_streamer(request: ChatCompletionRequest, parser: ToolParser) -> ToolCallStreamer | None:
    """How the output is read: None as plain text (no tools, or "none")."""
    choice = request.tool_choice
    if isinstance(choice, NamedToolChoice):
        return ArgumentsStreamer(choice.function.name)
    if choice == "required":
        return CallArrayStreamer()
    if choice == "auto" and request.tools:
        return parser.streamer()
    return None


def tool_finish_reason(request: ChatCompletionRequest, reason: str, called: bool) -> str:
    """OpenAI's and vLLM's: "tool_calls" when the model chose to call ("auto" or "required") and was not cut
    short; a named function's call ends with "stop"."""
    if called and reason == "stop" and not isinstance(request.tool_choice, NamedToolChoice):
        return "tool_calls"
    return reason


class ToolOutputs:
    """The n choices' outputs read as the request's tool choice says (plain text without tools): `feed` each
    engine delta, `finish` a choice once (its held-back rest; later calls give nothing), `output` the whole."""

    def __init__(self, request: ChatCompletionRequest, parser: ToolParser, n: int):
        self.request = request
        self.one_call = request.tool_choice == "auto" and not request.allows_parallel_tool_calls
        self.streamers = {i: output_streamer(request, parser) for i in range(n)}
        self.deltas: dict[int, list[ParsedDelta]] = {i: [] for i in range(n)}
        self.final: dict[int, ParsedDelta] = {}
        self.handed_out: set[int] = set()
        self.ids: dict[tuple[int, int], str] = {}

    @property
    def parsing(self) -> bool:
        return any(streamer is not None for streamer in self.streamers.values())

    def _kept(self, index: int, delta: ParsedDelta) -> ParsedDelta:
        if self.one_call:  # parallel_tool_calls false: the first call only
            delta.tool_calls = [call for call in delta.tool_calls if call.index == 0]
        for call in delta.tool_calls:
            if call.name is not None:
                self.ids[(index, call.index)] = new_call_id()
        self.deltas.setdefault(index, []).append(delta)
        return delta

    def feed(self, index: int, text: str) -> ParsedDelta:
        streamer = self.streamers.get(index)
        if streamer is None:
            return self._kept(index, ParsedDelta(content=text))
        return self._kept(index, streamer.feed(text) if text else ParsedDelta())

    def _finished(self, index: int) -> ParsedDelta:
        if index not in self.final:
            streamer = self.streamers.get(index)
            self.final[index] = self._kept(index, streamer.finish() if streamer else ParsedDelta())
        return self.final[index]

    def finish(self, index: int) -> ParsedDelta:
        final = self._finished(index)
        if index in self.handed_out:
            return ParsedDelta()
        self.handed_out.add(index)
        return final

    def output(self, index: int) -> ParsedOutput:
        self._finished(index)
        return accumulate(self.deltas.get(index, []), text_is_content=self.streamers.get(index) is None)

    def call_id(self, index: int, call_index: int) -> str:
        return self.ids[(index, call_index)]

    def called(self, index: int) -> bool:
        return any(call for delta in self.deltas.get(index, []) for call in delta.tool_calls)

    def finish_reason(self, index: int, reason: str) -> str:
        return tool_finish_reason(self.request, reason, self.called(index))
