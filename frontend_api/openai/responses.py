"""POST /v1/responses by way of chat completions: the input items (after the stored chain of previous_response_id)
become chat messages, the chat path generates (with its limits, metrics, cancellation and usage), and its answer
becomes a Response, stored unless `store` is false. Streaming: responses_stream.py."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from frontend_api.errors import OpenAIError, describe_validation_errors
from frontend_api.openai.chat import OpenAIServingChat
from frontend_api.openai.engine_stream import EventStream
from frontend_api.openai.protocol import ChatCompletionRequest
from frontend_api.openai.response_objects import ChatCompletion
from frontend_api.openai.responses_items import chat_fields, chat_messages, normalized, output_items, responses_error
from frontend_api.openai.responses_objects import InputItemList, Response, ResponseDeleted, finished, new_item_id
from frontend_api.openai.responses_protocol import NamedFunction, ResponsesRequest, parse_input_items
from frontend_api.openai.responses_stream import ResponseEvents
from frontend_api.openai.session_turns import run_shielded
from frontend_api.storage.database import DatabaseUnavailable
from frontend_api.storage.models import StoredResponse
from frontend_api.storage.responses import BrokenChain, ResponseStore


def response_not_found(response_id: str) -> OpenAIError:
    return OpenAIError(404, f"Response with id '{response_id}' not found.", param="response_id")


def storage_unavailable() -> OpenAIError:
    return OpenAIError(
        503,
        "The response cannot be stored: the database is unavailable. Retry shortly, or send store: false.",
        param="store",
        code="database_unavailable",
        headers={"Retry-After": "5"},
    )


@dataclass
class Translated:
    """A Responses request ready for the chat path: the chat request, and the input items it stores."""

    request: ResponsesRequest
    chat: ChatCompletionRequest
    input_items: list[dict[str, Any]]


class OpenAIServingResponses:
    def __init__(self, chat: OpenAIServingChat, store: ResponseStore):
        self.chat = chat
        self.store = store

    @property
    def owner(self) -> int | None:
        return self.chat.principal.key_id

    async def history(self, previous_response_id: str | None) -> list[dict[str, Any]]:
        """The items of the stored chain: each earlier response's input items, then its output items."""
        if previous_response_id is None:
            return []
        try:
            chain = await self.store.chain(self.owner, previous_response_id)
        except BrokenChain as exc:
            raise OpenAIError(
                400,
                f"Previous response with id '{previous_response_id}' follows response '{exc.missing_id}', "
                "which has been deleted: the conversation cannot be rebuilt.",
                param="previous_response_id",
                code="previous_response_not_found",
            ) from exc
        if chain is None:  # OpenAI's answer: a 400 naming the field (another key's reads as not found)
            raise OpenAIError(
                400,
                f"Previous response with id '{previous_response_id}' not found.",
                param="previous_response_id",
                code="previous_response_not_found",
            )
        return [item for record in chain for item in (*record.input_items, *record.output_items)]

    async def translate(self, request: ResponsesRequest) -> Translated:
        input_items = [normalized(item) for item in parse_input_items(request.input)]
        history = await self.history(request.previous_response_id)
        messages = chat_messages(request.instructions, history + input_items)
        if not any(m["role"] != "system" for m in messages):
            raise OpenAIError(400, "input: at least one message is needed.", param="input")
        body: dict[str, Any] = {
            "model": request.model,
            "messages": messages,
            "stream": bool(request.stream),
            "max_completion_tokens": request.max_output_tokens,
            "temperature": request.temperature,
            "top_p": request.top_p,
            "user": request.user,
            **chat_fields(request),
        }
        if request.stream:
            body["stream_options"] = {"include_usage": True}
        try:
            chat = ChatCompletionRequest.model_validate(body)
        except ValidationError as exc:  # what the chat path refuses of the translated request
            message, param = describe_validation_errors(exc.errors())
            raise responses_error(OpenAIError(400, message, param)) from exc
        return Translated(request, chat, input_items)

    def new_response(self, request: ResponsesRequest) -> Response:
        """The Response in progress, echoing the request's settings."""
        choice = request.tool_choice
        text_format = request.text_config.format.model_dump(by_alias=True, exclude_none=True)
        return Response(
            id=new_item_id("resp"),
            created_at=int(time.time()),
            status="in_progress",
            model=request.model,
            instructions=request.instructions,
            max_output_tokens=request.max_output_tokens,
            metadata=request.metadata or {},
            parallel_tool_calls=request.parallel_tool_calls is not False,
            previous_response_id=request.previous_response_id,
            store=request.stored,
            temperature=request.temperature,
            top_p=request.top_p,
            text={"format": text_format},
            tool_choice=choice.model_dump() if isinstance(choice, NamedFunction) else (choice or "auto"),
            tools=[tool.model_dump() for tool in request.function_tools],
            user=request.user,
        )

    async def create(self, request: ResponsesRequest) -> Response | AsyncIterator[str | bytes]:
        if request.stored and not self.store.db.migrated:  # known before generating: it could not be stored
            raise storage_unavailable()
        translated = await self.translate(request)
        response = self.new_response(request)
        try:
            result = await self.chat.create_chat_completion(translated.chat)
        except OpenAIError as exc:
            raise responses_error(exc) from exc
        if isinstance(result, ChatCompletion):
            choice = result.choices[0].model_dump()
            message = choice["message"]
            incomplete = choice["finish_reason"] == "length"
            response.output = output_items(message.get("content"), message.get("tool_calls"), incomplete)
            finished(response, choice["finish_reason"], result.usage)
            await self.save(translated, response)
            return response
        assert isinstance(result, EventStream)
        events = ResponseEvents(response, lambda done: self.save(translated, done))
        return EventStream(events.events(result), result)

    async def save(self, translated: Translated, response: Response) -> None:
        if not translated.request.stored:
            return
        record = StoredResponse(
            id=response.id,
            owner_key_id=self.owner,
            model=response.model,
            previous_response_id=response.previous_response_id,
            instructions=translated.request.instructions,
            input_items=translated.input_items,
            output_items=[item.model_dump() for item in response.output],
            response=response.model_dump(mode="json"),
            created_at=response.created_at,
        )
        try:
            await run_shielded(self.store.save(record))  # stored even if the client leaves at this moment
        except DatabaseUnavailable as exc:
            raise storage_unavailable() from exc


class StoredResponses:
    """GET / DELETE of stored responses and their input items: the caller's own (the engine is not needed)."""

    def __init__(self, store: ResponseStore, owner: int | None):
        self.store = store
        self.owner = owner

    async def retrieve(self, response_id: str) -> dict[str, Any]:
        record = await self.store.get(self.owner, response_id)
        if record is None:
            raise response_not_found(response_id)
        return record.response

    async def delete(self, response_id: str) -> ResponseDeleted:
        if not await self.store.delete(self.owner, response_id):
            raise response_not_found(response_id)
        return ResponseDeleted(id=response_id)

    async def input_items(self, response_id: str, order: str, after: str | None, limit: int) -> InputItemList:
        """The response's own input items (not those of the responses it follows), as OpenAI lists them."""
        record = await self.store.get(self.owner, response_id)
        if record is None:
            raise response_not_found(response_id)
        items = list(record.input_items)
        if order == "desc":
            items.reverse()
        if after is not None:
            ids = [item["id"] for item in items]
            if after not in ids:
                raise OpenAIError(400, f"after: no input item with id '{after}' in this response.", param="after")
            items = items[ids.index(after) + 1 :]
        page = items[:limit]
        return InputItemList(
            data=page,
            first_id=page[0]["id"] if page else None,
            last_id=page[-1]["id"] if page else None,
            has_more=len(items) > limit,
        )
