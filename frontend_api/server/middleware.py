"""Pure ASGI middleware (no BaseHTTPMiddleware: it would buffer streams and break disconnect detection)."""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frontend_api.errors import error_response
from frontend_api.settings import is_loopback


async def refuse(scope: Scope, receive: Receive, send: Send, response: Response, close_code: int, reason: str) -> None:
    """Answer an HTTP request, or refuse a WebSocket handshake, before any route sees it. A handshake gets the same
    HTTP answer where the server can send one (ASGI `websocket.http.response`), else a close with `close_code`."""
    if scope["type"] == "websocket":
        await receive()  # websocket.connect
        if "websocket.http.response" not in scope.get("extensions", {}):
            await send({"type": "websocket.close", "code": close_code, "reason": reason})
            return
    await response(scope, receive, send)


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


class LoopbackOnlyMiddleware:
    """With auth off, answer only requests that arrived on a loopback address. `llmserve serve` refuses to bind
    elsewhere; this covers the front-end started by other means (`uvicorn --factory ... --host 0.0.0.0`), where
    the app cannot see the bind, only the address each connection came in on (ASGI `server`)."""

    MESSAGE = (
        "Authentication is off, so this server answers on loopback addresses only. Turn auth on "
        "(LLMSERVE_AUTH=true) or set LLMSERVE_ALLOW_UNAUTHENTICATED_PUBLIC_BIND=true."
    )

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        server = scope.get("server")
        if (
            scope["type"] not in ("http", "websocket") or server is None or is_loopback(server[0])
        ):  # None: a unix socket
            await self.app(scope, receive, send)
        else:
            refusal = error_response(403, self.MESSAGE, code="public_bind_without_auth")
            await refuse(scope, receive, send, refusal, 1008, "auth is off: loopback only")
