"""Translation between the Responses API and chat completions, in OpenAI's shapes on both sides:
input items -> chat messages, `tools` / `tool_choice` / `text.format` -> chat's `tools` / `tool_choice` /
`response_format`, and a chat message's `content` and `tool_calls` -> output items.

Items are kept (stored, listed by /input_items, replayed by previous_response_id) in one normalized shape, each
with an id: messages with a list of content parts, function_call and function_call_output items.
"""

from __future__ import annotations

import re
from typing import Any

from frontend_api.errors import OpenAIError
from frontend_api.openai.responses_objects import FunctionCall, OutputMessage, OutputTextPart, new_item_id
from frontend_api.openai.responses_protocol import (
    FunctionCallItem,
    InputItem,
    InputMessage,
    NamedFunction,
    ResponsesRequest,
    TextFormatJsonObject,
    TextFormatJsonSchema,
)


def normalized(item: InputItem) -> dict[str, Any]:
    """An input item as it is stored and listed (OpenAI's ResponseItem shapes), with an id."""
    if isinstance(item, InputMessage):
        part = "output_text" if item.role == "assistant" else "input_text"
        if isinstance(item.content, str):
            parts: list[dict[str, Any]] = [{"type": part, "text": item.content}]
        else:
            parts = [{"type": p.type, "text": p.text} for p in item.content]
        for p in parts:
            if p["type"] == "output_text":
                p["annotations"] = []
        return {
            "id": item.id or new_item_id("msg"),
            "type": "message",
            "role": item.role,
            "status": item.status or "completed",
            "content": parts,
        }
    if isinstance(item, FunctionCallItem):
        return {
            "id": item.id or new_item_id("fc"),
            "type": "function_call",
            "status": item.status or "completed",
            "call_id": item.call_id,
            "name": item.name,
            "arguments": item.arguments,
        }
    return {
        "id": item.id or new_item_id("fco"),
        "type": "function_call_output",
        "status": item.status or "completed",
        "call_id": item.call_id,
        "output": item.output if isinstance(item.output, str) else [p.model_dump() for p in item.output],
    }


def _message_text(item: dict[str, Any]) -> str:
    return "\n".join(part.get("text", "") for part in item["content"])


def _output_text(item: dict[str, Any]) -> str:
    output = item["output"]
    return output if isinstance(output, str) else "".join(part.get("text", "") for part in output)


def chat_messages(instructions: str | None, items: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The chat conversation of normalized items (the earlier responses' inputs and outputs, then this request's
    input), `instructions` as the first, system, message. Function calls join the assistant message before them
    (the text of the same reply) or make one, several calls one message (parallel calls); a function's output is a
    `tool` message."""
    messages: list[dict[str, Any]] = []
    if instructions:
        messages.append({"role": "system", "content": instructions})
    for item in items:
        if item["type"] == "message":
            messages.append({"role": item["role"], "content": _message_text(item)})
        elif item["type"] == "function_call":
            call = {
                "id": item["call_id"],
                "type": "function",
                "function": {"name": item["name"], "arguments": item["arguments"]},
            }
            last = messages[-1] if messages else None
            if last is not None and last["role"] == "assistant":  # the calls of the reply whose text came first
                last.setdefault("tool_calls", []).append(call)
            else:
                messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif item["type"] == "function_call_output":
            messages.append({"role": "tool", "tool_call_id": item["call_id"], "content": _output_text(item)})
    return messages


def chat_fields(request: ResponsesRequest) -> dict[str, Any]:
    """The chat request fields of the tools, tool choice and text format (absent when they are the defaults)."""
    fields: dict[str, Any] = {}
    if request.function_tools:
        fields["tools"] = [
            {"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
            for tool in request.function_tools
        ]
        if request.parallel_tool_calls is not None:
            fields["parallel_tool_calls"] = request.parallel_tool_calls
    choice = request.tool_choice
    if isinstance(choice, NamedFunction):
        if choice.name not in {tool.name for tool in request.function_tools}:
            raise OpenAIError(
                400, f"tool_choice: no function named {choice.name!r} in tools.", param="tool_choice.name"
            )
        fields["tool_choice"] = {"type": "function", "function": {"name": choice.name}}
    elif choice is not None and (choice != "auto" or request.function_tools):
        if choice == "required" and not request.function_tools:
            raise OpenAIError(400, "tool_choice: 'required' needs at least one tool in tools.", param="tool_choice")
        fields["tool_choice"] = choice
    text_format = request.text_config.format
    if isinstance(text_format, TextFormatJsonObject):
        fields["response_format"] = {"type": "json_object"}
    elif isinstance(text_format, TextFormatJsonSchema):
        schema: dict[str, Any] = {"name": text_format.name, "schema": text_format.schema_}
        if text_format.description is not None:
            schema["description"] = text_format.description
        if text_format.strict is not None:
            schema["strict"] = text_format.strict
        fields["response_format"] = {"type": "json_schema", "json_schema": schema}
    return fields


# The chat path's names for the fields of the translated request -> the Responses API's, for its errors. A chat
# message's index is not the input item's (instructions and the chained history come first): "input" alone.
_CHAT_NAMES = [
    (re.compile(r"\bresponse_format\.json_schema\."), "text.format."),
    (re.compile(r"\bresponse_format\b"), "text.format"),
    (re.compile(r"\btools\.(\d+)\.function\."), r"tools.\1."),
    (re.compile(r"\btool_choice\.function\."), "tool_choice."),
    (re.compile(r"\bmax_(completion_)?tokens\b"), "max_output_tokens"),
    (re.compile(r"\bmessages(\.[\w.]+)?"), "input"),
]


def _responses_names(text: str) -> str:
    for pattern, name in _CHAT_NAMES:
        text = pattern.sub(name, text)
    return text


def responses_error(exc: OpenAIError) -> OpenAIError:
    """An error of the chat path, its field and wording in the Responses API's terms."""
    param = _responses_names(exc.param) if exc.param is not None else None
    return OpenAIError(exc.status, _responses_names(exc.message), param, exc.type, exc.code, exc.headers)


def output_items(content: str | None, tool_calls: list[dict[str, Any]] | None, incomplete: bool) -> list[Any]:
    """The output items of a chat reply: its text as a message (also when empty and there is nothing else),
    then one function_call item per tool call."""
    items: list[Any] = []
    status = "incomplete" if incomplete else "completed"
    if content or not tool_calls:
        items.append(OutputMessage(status=status, content=[OutputTextPart(text=content or "")]))
    for call in tool_calls or []:
        function = call.get("function") or {}
        items.append(
            FunctionCall(
                call_id=call.get("id") or new_item_id("call"),
                name=function.get("name", ""),
                arguments=function.get("arguments") or "",
                status=status,
            )
        )
    return items
