"""Tool-call parsers: a model's output text -> content and tool calls, whole or as it streams (as vLLM's
--tool-call-parser; our own code). A parser also knows its format's prompt for templates without tool support.

A model picks its parser by the `tool_parser` parameter of its Triton model config (EngineModel.metadata),
"hermes" by default. Registered: `hermes` (NousResearch Hermes 2 Pro / Qwen 2.5 format):

    <tool_call>
    {"name": "get_weather", "arguments": {"city": "Paris"}}
    </tool_call>

Streaming: text before a <tool_call> streams as content, a tail that may be the start of the tag is held back; a
call's name is sent once it is read, its arguments as they come (the JSON value, verbatim). A block that is not a
call object ({"name": <string>, "arguments": <object>}) is given back as content. Whitespace around calls is not
content. docs/API.md "Tool calling".
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class ToolCallDelta:
    """One streamed piece of tool call `index`: its name (the call's first piece), then arguments text."""

    index: int
    name: str | None = None
    arguments: str = ""


@dataclass
class ParsedDelta:
    content: str = ""
    tool_calls: list[ToolCallDelta] = field(default_factory=list)


@dataclass
class ParsedToolCall:
    name: str
    arguments: str  # JSON text


@dataclass
class ParsedOutput:
    content: str | None  # None when the output was only tool calls
    tool_calls: list[ParsedToolCall]


def accumulate(deltas: list[ParsedDelta], *, text_is_content: bool = True) -> ParsedOutput:
    """The whole output from its deltas (what a non-streamed response says: the same as the stream)."""
    content = "".join(d.content for d in deltas)
    calls: list[ParsedToolCall] = []
    for delta in (d for parsed in deltas for d in parsed.tool_calls):
        if delta.name is not None:
            calls.append(ParsedToolCall(delta.name, ""))
        calls[delta.index].arguments += delta.arguments
    if calls and not content.strip():
        return ParsedOutput(None, calls)
    return ParsedOutput(content if text_is_content or content else None, calls)


class ToolCallStreamer(Protocol):
    def feed(self, text: str) -> ParsedDelta: ...

    def finish(self) -> ParsedDelta:
        """The end of the output: whatever was held back."""
        ...


class CallObject:
    """Reads, a character at a time, one JSON object {"name": "...", <args_key>: {...}} as it streams, knowing
    where each top-level value ends without waiting for the whole object. `feed` consumes up to the closing brace
    and says how much it took; `take` hands out the name once its string closes, then the arguments from their
    `{` on, as they come (a call whose arguments precede its name gets them after it)."""

    def __init__(self, args_key: str, index: int):
        self.args_key = args_key
        self.index = index
        self.raw: list[str] = []
        self.depth = 0
        self.in_string = self.escape = False
        self.state = "open"  # open -> key -> colon -> value_start -> value -> comma -> key ... -> closed
        self.token: list[str] = []  # the key or the top-level value being read
        self.key: str | None = None
        self.name: str | None = None
        self.arguments: str | None = None  # the whole arguments value (JSON text) once read
        self.name_sent = False
        self.sent = 0  # characters of the arguments handed out; -1: all of them
        self.closed = self.invalid = False

    def feed(self, text: str) -> int:
        for i, char in enumerate(text):
            self._step(char)
            if self.closed or self.invalid:
                return i + 1
        return len(text)

    def _step(self, char: str) -> None:
        self.raw.append(char)
        if self.state == "value":
            self.token.append(char)
            if (after := self._value_ends(char)) is not None:
                self._value_done(after)
            return
        if char.isspace() and not self.in_string:
            return
        if self.state == "open":
            self.invalid = char != "{"
            self.depth, self.state = 1, "key"
        elif self.state == "key":
            if self.in_string:
                self.token.append(char)
                self._string_char(char)
                if not self.in_string:
                    self.key, self.token, self.state = json.loads("".join(self.token)), [], "colon"
            elif char == "}" and self.key is None:
                self.closed = True  # {}
            else:
                self.invalid = char != '"'
                self.token, self.in_string = [char], True
        elif self.state == "colon":
            self.invalid = char != ":"
            self.state = "value_start"
        elif self.state == "value_start":
            self.state, self.token = "value", [char]
            if char == '"':
                self.in_string = True
            elif char in "{[":
                self.depth += 1
            elif char in "}],:":
                self.invalid = True  # else a scalar: it ends at the next , or }
        elif self.state == "comma":
            if char == "}":
                self.closed = True
            else:
                self.invalid = char != ","
                self.state = "key"

    def _string_char(self, char: str) -> None:
        if self.escape:
            self.escape = False
        elif char == "\\":
            self.escape = True
        elif char == '"':
            self.in_string = False

    def _value_ends(self, char: str) -> str | None:
        """The state after the top-level value being read, if `char` (appended to the token) ends it."""
        if self.in_string:
            self._string_char(char)
            return "comma" if not self.in_string and self.depth == 1 else None
        if char == '"':
            self.in_string = True
        elif char in "{[":
            self.depth += 1
        elif char in "}]":
            self.depth -= 1
            if self.depth == 1:
                return "comma"
            if self.depth == 0:  # a scalar ended by the object's closing brace
                self.token.pop()
                return "closed"
        elif char == "," and self.depth == 1 and self.token[0] not in '"{[':
            self.token.pop()
            return "key"
        return None

    def _value_done(self, after: str) -> None:
        text = "".join(self.token).strip()
        self.state, self.closed = after, after == "closed"
        try:
            value: Any = json.loads(text)
        except json.JSONDecodeError:
            self.invalid = True
            return
        if self.key == "name":
            self.invalid = not isinstance(value, str) or self.name is not None
            self.name = value if isinstance(value, str) else None
        elif self.key == self.args_key:
            self.arguments = value if isinstance(value, str) else text  # arguments sent as a JSON string: its text

    def take(self) -> list[ToolCallDelta]:
        """What is new of this call: its name (first), then arguments text."""
        if self.name is None:
            return []
        out = []
        if not self.name_sent:
            out.append(ToolCallDelta(self.index, name=self.name))
            self.name_sent = True
        text = ""
        if self.sent >= 0:
            if self.arguments is not None:
                text, self.sent = self.arguments[self.sent :], -1
            elif self.state == "value" and self.key == self.args_key and self.token[:1] == ["{"]:
                text = "".join(self.token)[self.sent :]
                self.sent += len(text)
            elif self.closed:
                text, self.sent = "{}", -1  # a call without arguments
        if text:
            out.append(ToolCallDelta(self.index, arguments=text))
        return out

    @property
    def failed(self) -> bool:
        """Not a call object (nothing of it was handed out, or too late to take it back)."""
        return self.invalid or (self.closed and self.name is None)


def held_back(text: str, tag: str) -> int:
    """How many trailing characters of `text` could be the start of `tag`."""
    return max((n for n in range(1, len(tag)) if text.endswith(tag[:n])), default=0)


class HermesStreamer:
    START, END = "<tool_call>", "</tool_call>"

    def __init__(self) -> None:
        self.pending = ""  # text not handed out yet
        self.spaces = ""  # trailing whitespace held back: content only if more text follows
        self.strip_leading = False  # after a call: the whitespace that follows it is not content
        self.emitted = False  # content was handed out
        self.call: CallObject | None = None  # the block being read
        self.after_call = False  # its call object closed: skipping to the end tag
        self.calls = 0

    def _content(self, text: str, out: ParsedDelta) -> None:
        if self.strip_leading:
            text = text.lstrip()
            self.strip_leading = not text
        stripped = text.rstrip()
        if stripped:
            out.content += self.spaces + stripped
            self.spaces, self.emitted = "", True
        self.spaces += text[len(stripped) :]

    def feed(self, text: str) -> ParsedDelta:
        self.pending += text
        out = ParsedDelta()
        while self.pending:
            if self.after_call:
                end = self.pending.find(self.END)
                if end < 0:
                    self.pending = self.pending[-len(self.END) :]
                    break
                self.pending, self.after_call, self.strip_leading = self.pending[end + len(self.END) :], False, True
            elif self.call is None:
                start = self.pending.find(self.START)
                if start < 0:
                    ready = len(self.pending) - held_back(self.pending, self.START)
                    self._content(self.pending[:ready], out)
                    self.pending = self.pending[ready:]
                    break
                self._content(self.pending[:start], out)
                self.spaces = " " if self.emitted else ""  # text on both sides of a call stays apart
                self.pending = self.pending[start + len(self.START) :]
                self.call = CallObject("arguments", self.calls)
            else:
                self._read_call(self.call, out)
        return out

    def _read_call(self, call: CallObject, out: ParsedDelta) -> None:
        self.pending = self.pending[call.feed(self.pending) :]
        if call.failed and not call.name_sent:  # not a call: its text is content after all
            self._content(self.START, out)
            self.pending, self.call = "".join(call.raw) + self.pending, None
            return
        out.tool_calls += call.take()
        if call.closed or call.invalid:
            self.call, self.after_call = None, True
            self.calls += 1

    def finish(self) -> ParsedDelta:
        out = ParsedDelta()
        if self.call is not None:  # the output ended inside a block
            if self.call.name_sent:
                self.calls += 1
            else:
                self._content(self.START + "".join(self.call.raw), out)
            self.call = None
        elif not self.after_call:
            self._content(self.pending, out)
        if not self.calls:
            out.content += self.spaces  # plain text keeps its trailing whitespace
        self.pending = self.spaces = ""
        return out


class ArgumentsStreamer:
    """tool_choice naming a function: the output (constrained to its parameters' schema) is the arguments."""

    def __init__(self, name: str):
        self.name: str | None = name

    def feed(self, text: str) -> ParsedDelta:
        out = ParsedDelta()
        if self.name is not None:
            out.tool_calls.append(ToolCallDelta(0, name=self.name))
            self.name = None
        if text:
            out.tool_calls.append(ToolCallDelta(0, arguments=text))
        return out

    def finish(self) -> ParsedDelta:
        return self.feed("")


class CallArrayStreamer:
    """tool_choice "required": the output (constrained to the schema of tool_calls.required_schema) is a JSON array
    of {"name": ..., "parameters": {...}}, one item per call."""

    def __init__(self) -> None:
        self.call: CallObject | None = None
        self.calls = 0

    def feed(self, text: str) -> ParsedDelta:
        out = ParsedDelta()
        while text:
            if self.call is None:
                start = text.find("{")  # between items: [ , ] and whitespace
                if start < 0:
                    break
                text, self.call = text[start:], CallObject("parameters", self.calls)
            text = text[self.call.feed(text) :]
            out.tool_calls += self.call.take()
            if self.call.closed or self.call.invalid:
                self.calls += self.call.name_sent
                self.call = None
        return out

    def finish(self) -> ParsedDelta:
        return ParsedDelta()


class ToolParser:
    """A tool-call format: the streamer of its output, and its prompt where the chat template has no tools."""

    name = ""

    def streamer(self) -> ToolCallStreamer:
        raise NotImplementedError

    def parse(self, text: str) -> ParsedOutput:
        streamer = self.streamer()
        return accumulate([streamer.feed(text), streamer.finish()])

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        raise NotImplementedError

    def render_tool_calls(self, content: str | None, calls: list[tuple[str, dict[str, Any]]]) -> str:
        raise NotImplementedError

    def render_tool_result(self, content: str) -> str:
        raise NotImplementedError


class HermesToolParser(ToolParser):
    name = "hermes"

    def streamer(self) -> ToolCallStreamer:
        return HermesStreamer()

    def system_prompt(self, tools: list[dict[str, Any]]) -> str:
        # Qwen 2.5's wording of the Hermes tool prompt.
        listed = "\n".join(json.dumps(tool, ensure_ascii=False) for tool in tools)
        return (
            "# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            f"You are provided with function signatures within <tools></tools> XML tags:\n<tools>\n{listed}\n"
            "</tools>\n\nFor each function call, return a json object with function name and arguments within "
            "<tool_call></tool_call> XML tags:\n<tool_call>\n"
            '{"name": <function-name>, "arguments": <args-json-object>}\n</tool_call>'
        )

    def render_tool_calls(self, content: str | None, calls: list[tuple[str, dict[str, Any]]]) -> str:
        blocks = [
            f"<tool_call>\n{json.dumps({'name': name, 'arguments': arguments}, ensure_ascii=False)}\n</tool_call>"
            for name, arguments in calls
        ]
        return "\n".join([*([content] if content else []), *blocks])

    def render_tool_result(self, content: str) -> str:
        return f"<tool_response>\n{content}\n</tool_response>"


TOOL_PARSERS: dict[str, type[ToolParser]] = {HermesToolParser.name: HermesToolParser}
DEFAULT_TOOL_PARSER = HermesToolParser.name


def tool_parser(name: str | None) -> ToolParser:
    """The registered parser `name` (None: the default); KeyError for a name not registered."""
    return TOOL_PARSERS[name or DEFAULT_TOOL_PARSER]()
