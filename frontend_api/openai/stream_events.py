"""The per-token SSE events without a pydantic model per token: the envelope of a stream's chunks (id, object,
created, model, usage, session_id) is rendered once by the pydantic model itself, and each event splices in its
choices as plain dicts serialized by orjson. The JSON is the models' own (tests/frontend/test_stream_events.py
compares them), with the same nulls: a chunk choice's `logprobs` and `finish_reason` are always present, a chat
delta carries only what it sets."""

from __future__ import annotations

from typing import Any

import orjson
from pydantic import BaseModel

_CHOICES = '"choices":[]'


class ChunkTemplate:
    """`data: {<envelope>, "choices": [<choices>], ...}` events of one stream; `envelope` is a chunk model of the
    stream with no choices (and no usage: the usage event is rare and goes through the model)."""

    def __init__(self, envelope: BaseModel):
        rendered = envelope.model_dump_json()
        # The key can only appear once unescaped: ids and model names are JSON strings, their quotes escaped.
        head, tail = rendered.split(_CHOICES, 1)
        self.head = f'data: {head}"choices":['.encode()
        self.tail = f"]{tail}\n\n".encode()

    def event(self, *choices: dict[str, Any]) -> bytes:
        """The event as the bytes that go on the wire (orjson writes UTF-8: nothing is decoded or encoded again)."""
        if len(choices) == 1:
            return self.head + orjson.dumps(choices[0]) + self.tail
        return self.head + b",".join(orjson.dumps(choice) for choice in choices) + self.tail


def completion_choice(
    index: int, text: str, logprobs: dict[str, Any] | None = None, finish_reason: str | None = None
) -> dict[str, Any]:
    """A CompletionChoice as its model dumps it."""
    return {"index": index, "text": text, "logprobs": logprobs, "finish_reason": finish_reason}


def chat_choice(
    index: int, delta: dict[str, Any], logprobs: dict[str, Any] | None = None, finish_reason: str | None = None
) -> dict[str, Any]:
    """A ChatCompletionChunkChoice as its model dumps it; `delta` holds only what it sets (DeltaMessage's rule)."""
    return {"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}


def tool_call_delta(index: int, arguments: str, call_id: str | None = None, name: str | None = None) -> dict[str, Any]:
    """A DeltaToolCall as its model dumps it: the first piece {index, id, type, function: {name, arguments}},
    then {index, function: {arguments}}."""
    if name is None:
        return {"index": index, "function": {"arguments": arguments}}
    return {"index": index, "id": call_id, "type": "function", "function": {"name": name, "arguments": arguments}}
