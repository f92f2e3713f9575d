"""HTTP glue shared by the routers: serving results -> responses, and cancellation on client disconnect."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from fastapi import Request, Response
from pydantic import BaseModel
from starlette.responses import StreamingResponse
from starlette.types import Receive, Scope, Send

CLIENT_CLOSED_REQUEST = 499  # nginx's code; nobody reads it, the client is gone, but logs show why


class EventStreamResponse(StreamingResponse):
    """Server-sent events. The body iterator is closed however the response ends, so the engine request is
    cancelled at once when the client goes away rather than when the generator is garbage-collected."""

    media_type = "text/event-stream"

    def __init__(self, content: AsyncIterator[str]):
        super().__init__(content, headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            aclose = getattr(self.body_iterator, "aclose", None)
            if aclose is not None:
                await aclose()


def to_response(result: BaseModel | AsyncIterator[str]) -> Response:
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
