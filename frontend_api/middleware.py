"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams and break disconnect detection)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frontend_api.errors import error_response


def _too_large(limit: int) -> str:
    return f"The request body is larger than the limit of {limit} bytes."


class BodySizeLimitMiddleware:
    """Answer 413 when Content-Length exceeds the limit, or when a body without one (chunked) grows past it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            if length.isdigit():
                await error_response(413, _too_large(self.max_bytes))(scope, receive, send)
            else:
                await error_response(400, "Invalid Content-Length header.")(scope, receive, send)
            return

        received = 0

        async def limited_receive() -> Message:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    # Raised while the route reads its body: FastAPI re-raises HTTPException untouched, and the
                    # error handlers turn it into the OpenAI body.
                    raise HTTPException(413, _too_large(self.max_bytes))
            return message

        await self.app(scope, limited_receive, send)
