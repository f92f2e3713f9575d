"""The current request, as a context variable: its id (for every log line), arrival time (for time to first
token), the app's metrics, and the fields the serving layer adds to the access log line.

The middleware sets it for each HTTP request and WebSocket connection; tasks created while handling the request
copy the context and so share the same RequestContext object.
"""

from __future__ import annotations

import re
import uuid
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from frontend_api.observability.metrics import Metrics

REQUEST_ID_HEADER = "x-request-id"
# A client's id is kept when it is short and plain (it ends up in logs and headers); otherwise we make one.
_SANE_REQUEST_ID = re.compile(r"[A-Za-z0-9._:/+=-]{1,128}")


@dataclass
class RequestContext:
    request_id: str
    started: float  # time.perf_counter() at arrival
    kind: str  # "http" or "websocket"
    metrics: Metrics | None = None
    fields: dict[str, Any] = field(default_factory=dict)  # model, tokens, ...: added to the access log line

    def add_tokens(self, prompt_tokens: int, completion_tokens: int) -> None:
        """Sum over the generations of this request (a WebSocket connection can run several)."""
        self.fields["prompt_tokens"] = self.fields.get("prompt_tokens", 0) + prompt_tokens
        self.fields["completion_tokens"] = self.fields.get("completion_tokens", 0) + completion_tokens


_current: ContextVar[RequestContext | None] = ContextVar("llmserve_request", default=None)


def current_request() -> RequestContext | None:
    return _current.get()


def set_current_request(context: RequestContext) -> None:
    # Deliberately not reset when the request ends: uvicorn runs each request (connection, for WebSockets) in its
    # own task, and leaving it set lets uvicorn's own "Exception in ASGI application" log carry the request id.
    _current.set(context)


def request_id_from(headers: list[tuple[bytes, bytes]]) -> str:
    """The client's X-Request-ID when it is sane, else a new one."""
    for name, value in headers:
        if name.lower() == REQUEST_ID_HEADER.encode():
            candidate = value.decode("latin-1")
            if _SANE_REQUEST_ID.fullmatch(candidate):
                return candidate
            break
    return uuid.uuid4().hex
