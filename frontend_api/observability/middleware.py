"""Request ids, HTTP metrics and the access log, as pure ASGI middleware (BaseHTTPMiddleware would buffer
streams and hide client disconnects).

For every HTTP request and WebSocket connection: take the client's sane `X-Request-ID` or make one, return it on
the response (errors and event streams included), count the request by route template and status, time it to
the end of its body, and write one access line when it is over.
"""

from __future__ import annotations

import json
import logging
import time

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from frontend_api.errors import error_body
from frontend_api.observability.context import REQUEST_ID_HEADER, RequestContext, request_id_from, set_current_request
from frontend_api.observability.logging import ACCESS_LOGGER
from frontend_api.observability.metrics import Metrics

access_logger = logging.getLogger(ACCESS_LOGGER)
PROBE_ROUTES = ("/health", "/ready", "/metrics")  # polled every few seconds: their access lines are DEBUG
UNMATCHED = "unmatched"  # route label of requests no route matched (404): raw paths would explode the labels


def _with_request_id(message: Message, request_id: str) -> None:
    headers = [(k, v) for k, v in message.get("headers", []) if k.lower() != REQUEST_ID_HEADER.encode()]
    message["headers"] = [*headers, (REQUEST_ID_HEADER.encode(), request_id.encode())]


class ObservabilityMiddleware:
    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        context = RequestContext(request_id_from(scope["headers"]), time.perf_counter(), scope["type"], self.metrics)
        set_current_request(context)
        status: int | None = None
        accepted = False

        async def observed_send(message: Message) -> None:
            nonlocal status, accepted
            if message["type"] == "http.response.start":
                status = message["status"]
                _with_request_id(message, context.request_id)
            elif message["type"] == "websocket.accept":
                accepted, status = True, 101
                _with_request_id(message, context.request_id)
                self.metrics.websocket_connections.inc()
            await send(message)

        try:
            await self.app(scope, receive, observed_send)
        except Exception:
            if status is None and scope["type"] == "http":  # a bug: answer a plain 500 that still has the id
                status = 500
                await _internal_error(context.request_id, send)
            raise  # uvicorn logs the traceback (with the request id, see context.py)
        finally:
            if accepted:
                self.metrics.websocket_connections.dec()
            self._record(scope, context, status)

    def _record(self, scope: Scope, context: RequestContext, status: int | None) -> None:
        elapsed = time.perf_counter() - context.started
        route = scope.get("route")
        template = getattr(route, "path_format", None) or UNMATCHED  # "/v1/models/{model_id}", without ":path"
        method = scope.get("method", "WEBSOCKET")
        if status is None:  # a WebSocket closed before it was accepted: uvicorn answers 403
            status = 403
        self.metrics.http_requests.labels(method, template, str(status)).inc()
        if scope["type"] == "http":
            self.metrics.http_duration.labels(method, template).observe(elapsed)
        principal = scope.get("state", {}).get("principal")
        client = scope.get("client")
        fields = {
            "request_id": context.request_id,
            "method": method,
            "path": scope["path"],
            "route": template,
            "status": status,
            "latency_ms": round(elapsed * 1000, 1),
            "key_name": principal.name if principal else None,
            "client": f"{client[0]}:{client[1]}" if client else None,
            **context.fields,
        }
        level = logging.DEBUG if template in PROBE_ROUTES and status < 400 else logging.INFO
        access_logger.log(level, "%s %s %s %.1f ms", method, scope["path"], status, fields["latency_ms"], extra=fields)


async def _internal_error(request_id: str, send: Send) -> None:
    body = json.dumps(error_body(500, f"Internal server error (request id {request_id}).")).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 500,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
                (REQUEST_ID_HEADER.encode(), request_id.encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})
