"""HTTP glue shared by the routers: serving results -> responses, and cancellation on client disconnect."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from pydantic import BaseModel
from starlette.types import Receive, Scope, Send

CLIENT_CLOSED_REQUEST = 499  # nginx's code; nobody reads it, the client is gone, but logs show why


_SSE_HEADERS = [  # what Starlette's StreamingResponse sent for text/event-stream, and no buffering in proxies
    (b"content-type", b"text/event-stream; charset=utf-8"),
    (b"cache-control", b"no-cache"),
    (b"x-accel-buffering", b"no"),
]


class EventStreamResponse(Response):
    """Server-sent events as a plain ASGI response: each event goes to `send` as it comes, as bytes, with no
    iterator adapter or task group per event (Starlette's StreamingResponse costs a few of those per event). One
    task streams while the request's own task waits for the client's disconnect; whichever ends first ends the
    other. The events are closed however the response ends, so the engine request is cancelled at once when the
    client goes away rather than when the generator is garbage-collected."""

    media_type = "text/event-stream"

    def __init__(self, events: AsyncIterator[str | bytes]):  # no Response.__init__: there is no body to render
        self.events = events
        self.status_code = 200
        self.background = None  # FastAPI puts the route's background tasks here
        self.raw_headers = list(_SSE_HEADERS)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        streaming = asyncio.ensure_future(self._stream(send))
        disconnect = asyncio.ensure_future(_disconnect(receive))
        try:
            await asyncio.wait((streaming, disconnect), return_when=asyncio.FIRST_COMPLETED)
        finally:  # the client left, the stream ended, or this task was cancelled (shutdown): end both
            for task in (disconnect, streaming):
                task.cancel()
            await asyncio.gather(disconnect, streaming, return_exceptions=True)
            await _close(self.events)  # idempotent: also when the stream never started
        if streaming.done() and not streaming.cancelled() and (error := streaming.exception()) is not None:
            raise error  # a bug in the stream: the server logs it (the response has started: no error body)
        if self.background is not None:
            await self.background()

    async def _stream(self, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        async for event in self.events:
            body = event if isinstance(event, bytes) else event.encode()
            await send({"type": "http.response.body", "body": body, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})


async def _disconnect(receive: Receive) -> None:
    # The body was read before the handler ran, so the next ASGI message is the disconnect.
    while (await receive())["type"] != "http.disconnect":
        pass


async def _close(events: AsyncIterator[str | bytes]) -> None:
    aclose = getattr(events, "aclose", None)
    if aclose is not None:
        await aclose()


def to_response(result: BaseModel | AsyncIterator[str | bytes]) -> Response:
    if isinstance(result, BaseModel):
        return Response(content=result.model_dump_json(), media_type="application/json")
    return EventStreamResponse(result)


async def _wait_for_disconnect(request: Request) -> None:
    # The body was read before the handler ran, so the next ASGI message is the disconnect.
    while (await request.receive())["type"] != "http.disconnect":
        pass


def with_cancellation(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """Race the handler against the client disconnecting (vLLM's helper): an abandoned non-streaming request
    cancels the handler, whose engine stream is then closed and the request cancelled in Triton.
    The handler must take the starlette request as the keyword argument `raw_request`."""

    @functools.wraps(handler)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        handler_task: asyncio.Task[Any] = asyncio.ensure_future(handler(*args, **kwargs))
        disconnect_task = asyncio.create_task(_wait_for_disconnect(kwargs["raw_request"]))
        try:
            done, _ = await asyncio.wait({handler_task, disconnect_task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            disconnect_task.cancel()
            if not handler_task.done():
                handler_task.cancel()
                await asyncio.gather(handler_task, return_exceptions=True)  # let its cleanup finish
        if handler_task in done:
            return handler_task.result()
        return Response(status_code=CLIENT_CLOSED_REQUEST)

    return wrapper
