"""A streamed Response: the chat path's SSE chunks (OpenAI's chat.completion.chunk shapes) turned into the
Responses API's events, as OpenAI sends them (`event: <type>` and `data: {..., "type", "sequence_number"}`):

response.created, response.in_progress; per output item response.output_item.added, then for a message
response.content_part.added, response.output_text.delta..., response.output_text.done, response.content_part.done,
or for a function call response.function_call_arguments.delta..., response.function_call_arguments.done; then
response.output_item.done; last response.completed (response.incomplete when max_output_tokens ended it). A
failure after the stream started: an `error` event, then response.failed.
"""

from __future__ import annotations

import json
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any

from frontend_api.errors import OpenAIError
from frontend_api.openai.response_objects import Usage
from frontend_api.openai.responses_objects import (
    FunctionCall,
    OutputMessage,
    OutputTextPart,
    Response,
    ResponseError,
    finished,
    new_item_id,
)


def chat_chunks(line: str | bytes) -> dict[str, Any] | None:
    """The JSON of one chat SSE event (`data: {...}`, as the chat stream's bytes); None for `data: [DONE]`."""
    data = (line.decode() if isinstance(line, bytes) else line).strip().removeprefix("data:").strip()
    return None if data == "[DONE]" else json.loads(data)


class ResponseEvents:
    """The events of one streamed response; `save` stores the finished response (unless store is false)."""

    def __init__(self, response: Response, save: Callable[[Response], Awaitable[None]]):
        self.response = response
        self.save = save
        self.sequence = 0
        self.open: OutputMessage | FunctionCall | None = None  # the item being streamed
        self.calls: dict[int, FunctionCall] = {}  # chat's tool-call index -> its item

    def event(self, kind: str, **payload: Any) -> str:
        data = {"type": kind, "sequence_number": self.sequence, **payload}
        self.sequence += 1
        return f"event: {kind}\ndata: {json.dumps(data, ensure_ascii=False)}\n\n"

    def snapshot(self) -> dict[str, Any]:
        return self.response.model_dump(mode="json")

    @property
    def output_index(self) -> int:
        return len(self.response.output) - 1

    def _add(self, item: OutputMessage | FunctionCall) -> list[str]:
        events = self._close()
        self.response.output.append(item)
        self.open = item
        events.append(self.event("response.output_item.added", output_index=self.output_index, item=item.model_dump()))
        if isinstance(item, OutputMessage):
            part = OutputTextPart(text="").model_dump()
            events.append(
                self.event(
                    "response.content_part.added",
                    item_id=item.id,
                    output_index=self.output_index,
                    content_index=0,
                    part=part,
                )
            )
        return events

    def _close(self, status: str = "completed") -> list[str]:
        item, self.open = self.open, None
        if item is None:
            return []
        index = self.response.output.index(item)
        events = []
        item.status = status  # type: ignore[assignment]
        if isinstance(item, OutputMessage):
            text = "".join(part.text for part in item.content)
            item.content = [OutputTextPart(text=text)]
            common = {"item_id": item.id, "output_index": index, "content_index": 0}
            events.append(self.event("response.output_text.done", **common, text=text, logprobs=[]))
            events.append(self.event("response.content_part.done", **common, part=item.content[0].model_dump()))
        else:
            events.append(
                self.event(
                    "response.function_call_arguments.done",
                    item_id=item.id,
                    output_index=index,
                    name=item.name,
                    arguments=item.arguments,
                )
            )
        events.append(self.event("response.output_item.done", output_index=index, item=item.model_dump()))
        return events

    def _text(self, delta: str) -> list[str]:
        events = [] if isinstance(self.open, OutputMessage) else self._add(OutputMessage(status="in_progress"))
        assert isinstance(self.open, OutputMessage)
        self.open.content.append(OutputTextPart(text=delta))
        common = {"item_id": self.open.id, "output_index": self.output_index, "content_index": 0}
        events.append(self.event("response.output_text.delta", **common, delta=delta, logprobs=[]))
        return events

    def _tool_call(self, call: dict[str, Any]) -> list[str]:
        function = call.get("function") or {}
        index = call.get("index", 0)
        events: list[str] = []
        item = self.calls.get(index)
        if item is None:
            item = self.calls[index] = FunctionCall(
                call_id=call.get("id") or new_item_id("call"), name=function.get("name") or "", status="in_progress"
            )
            events += self._add(item)
        if arguments := function.get("arguments"):
            item.arguments += arguments
            output_index = self.response.output.index(item)
            events.append(
                self.event(
                    "response.function_call_arguments.delta",
                    item_id=item.id,
                    output_index=output_index,
                    delta=arguments,
                )
            )
        return events

    async def events(self, chat_stream: AsyncIterator[str | bytes]) -> AsyncGenerator[str, None]:
        yield self.event("response.created", response=self.snapshot())
        yield self.event("response.in_progress", response=self.snapshot())
        finish_reason: str | None = None
        usage: Usage | None = None
        async for line in chat_stream:
            chunk = chat_chunks(line)
            if chunk is None:
                break
            if "error" in chunk:
                for event in self._failed(chunk["error"]):
                    yield event
                return
            if chunk.get("usage"):
                usage = Usage.model_validate(chunk["usage"])
            for choice in chunk.get("choices") or []:
                delta = choice.get("delta") or {}
                if delta.get("content"):
                    for event in self._text(delta["content"]):
                        yield event
                for call in delta.get("tool_calls") or []:
                    for event in self._tool_call(call):
                        yield event
                finish_reason = choice.get("finish_reason") or finish_reason
        if not self.response.output:  # an empty reply is still one (empty) message, as OpenAI's
            for event in self._add(OutputMessage(status="in_progress")):
                yield event
        for event in self._close("incomplete" if finish_reason == "length" else "completed"):
            yield event
        finished(self.response, finish_reason, usage)
        try:
            await self.save(self.response)
        except OpenAIError as exc:  # the database went away meanwhile
            for event in self._failed({"message": exc.message, "param": exc.param}, code=exc.code):
                yield event
            return
        kind = "response.incomplete" if self.response.status == "incomplete" else "response.completed"
        yield self.event(kind, response=self.snapshot())

    def _failed(self, error: dict[str, Any], code: str | None = None) -> list[str]:
        message = str(error.get("message") or "The generation failed.")
        events = [
            self.event("error", code=code or error.get("code"), message=message, param=error.get("param")),
        ]
        self.response.status = "failed"
        self.response.error = ResponseError(code="server_error", message=message)
        events.append(self.event("response.failed", response=self.snapshot()))
        return events
