"""uvicorn's HTTP protocol with the limits uvicorn lacks: a deadline for a request's headers and one for its body,
and a cap on the connections one process holds open.

uvicorn's only connection timer, `timeout_keep_alive`, runs between requests and is reset by every byte received:
a client trickling a header a byte at a time, or one that connects and never sends a byte, holds its socket (a
file descriptor) for ever, and ASGI middleware cannot help because it only runs once the headers are complete.
So the protocol class itself (what uvicorn's `http=` option takes) keeps one timer per connection:

- headers: armed when the connection opens and at the first byte of each later request; the complete headers
  must arrive within `http_header_timeout_s`. A connection that sent nothing is closed silently (as an idle
  keep-alive connection is); one that sent part of a request gets 408 with an OpenAI error body, then is closed.
- body: armed when the headers are complete; the whole body must arrive within `http_body_timeout_s`, else 408
  and close (the route sees a disconnect).
- none while the response is written: a long SSE stream is never cut. A WebSocket upgrade disarms the timer
  (WebSockets have their own ping and idle timeouts).
Between requests uvicorn's own `timeout_keep_alive` (our `http_keepalive_timeout_s`) closes an idle connection.

Connections beyond `max_connections` (HTTP and WebSocket, in this process) are answered 503
`too_many_connections` (OpenAI error body, `Retry-After`, `Connection: close`) at their first request and closed;
a WebSocket handshake gets the same 503 instead of the upgrade. They too get `http_header_timeout_s` at most.

`guarded_protocol(settings)` binds the limits for a server in this process; the module-level classes read them
from `get_settings()` (the settings a launcher hands its worker processes), for `http="module:Class"` strings.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

from frontend_api.errors import error_body, error_response
from frontend_api.settings import Settings, get_settings

try:
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
except ImportError:  # pragma: no cover - httptools missing (uvicorn without [standard])
    HttpToolsProtocol = None  # type: ignore[assignment,misc]

logger = logging.getLogger(__name__)

TOO_MANY_CONNECTIONS = "This server holds as many connections as it may; retry shortly or on another replica."


@dataclass(frozen=True)
class ConnectionLimits:
    header_timeout_s: float
    body_timeout_s: float
    max_connections: int

    @classmethod
    def of(cls, settings: Settings) -> ConnectionLimits:
        return cls(settings.http_header_timeout_s, settings.http_body_timeout_s, settings.max_connections)


_from_settings: ConnectionLimits | None = None


def _default_limits() -> ConnectionLimits:
    global _from_settings
    if _from_settings is None:
        _from_settings = ConnectionLimits.of(get_settings())
    return _from_settings


def _raw_response(status: int, reason: str, body: dict[str, Any], extra: tuple[tuple[str, str], ...] = ()) -> bytes:
    payload = json.dumps(body).encode()
    lines = [f"HTTP/1.1 {status} {reason}", "content-type: application/json", f"content-length: {len(payload)}"]
    lines += [f"{name}: {value}" for name, value in extra]
    lines.append("connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + payload


async def refuse_connection(scope, receive, send) -> None:
    """The app a connection over the cap is served by: 503 and close."""
    response = error_response(
        503, TOO_MANY_CONNECTIONS, code="too_many_connections", headers={"Retry-After": "1", "Connection": "close"}
    )
    await response(scope, receive, send)


LOG_EVERY_S = 10.0
_log_counts: dict[str, int] = {}
_log_last: dict[str, float] = {}


def _log_throttled(event: str) -> None:
    """One warning per kind of event and LOG_EVERY_S, with how many happened: a flood of slow clients must not
    flood the log too."""
    _log_counts[event] = _log_counts.get(event, 0) + 1
    now = time.monotonic()
    if now - _log_last.get(event, -LOG_EVERY_S) >= LOG_EVERY_S:
        logger.warning("%s (%d connections since the last such line)", event, _log_counts.pop(event))
        _log_last[event] = now


class _Guard:
    """Mixed into uvicorn's protocol classes (httptools, h11); the subclasses below call these hooks around
    uvicorn's own methods."""

    limits: ClassVar[ConnectionLimits | None] = None
    # the attributes of uvicorn's classes this mixin relies on
    transport: asyncio.Transport
    loop: asyncio.AbstractEventLoop
    connections: set[Any]
    cycle: Any
    app: Any

    def _guard_init(self) -> None:
        self._limits = type(self).limits or _default_limits()
        self._deadline: asyncio.TimerHandle | None = None
        self._phase = ""  # "headers", "body" or "" (no deadline)
        self._got_bytes = False
        self._refused = False

    # the timer
    def _arm(self, phase: str) -> None:
        self._disarm()
        seconds = self._limits.header_timeout_s if phase == "headers" else self._limits.body_timeout_s
        self._phase = phase
        self._deadline = self.loop.call_later(seconds, self._expired)

    def _disarm(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
        self._deadline = None
        self._phase = ""

    def _idle(self) -> bool:
        return self.cycle is None or self.cycle.response_complete

    def _expired(self) -> None:
        phase, self._deadline, self._phase = self._phase, None, ""
        if self.transport.is_closing():
            return
        if phase == "headers" and not self._got_bytes:  # an idle connection: close it as keep-alive would
            self.transport.close()
            return
        seconds = self._limits.header_timeout_s if phase == "headers" else self._limits.body_timeout_s
        _log_throttled(f"request {phase} slower than {seconds:g} s: answered 408 and closed")
        if phase == "body" and self.cycle is not None:
            if self.cycle.response_started:  # the route answered without reading it all: just close
                self.transport.close()
                return
            self.cycle.disconnected = True  # the route's receive() now says http.disconnect; its sends are dropped
            self.cycle.message_event.set()
        message = f"The request's {phase} did not arrive within {seconds:g} s."
        self.transport.write(_raw_response(408, "Request Timeout", error_body(408, message, code="request_timeout")))
        self.transport.close()

    # the hooks
    def _on_connection_made(self) -> None:
        if len(self.connections) > self._limits.max_connections:
            self._refused = True
            self.app = refuse_connection  # read when the request's headers are complete
            _log_throttled(f"over max_connections ({self._limits.max_connections}): refused with 503")
        self._arm("headers")

    def _on_data(self, data: bytes) -> None:
        if self._deadline is None and self._idle() and data:
            self._got_bytes = False
            self._arm("headers")
        if self._phase == "headers" and data.strip():
            self._got_bytes = True

    def _on_headers_complete(self) -> None:
        self._arm("body")

    def _on_upgrade(self) -> bool:
        """False: refused (over the cap), the 503 is written and the connection closed."""
        self._disarm()
        if self._refused:
            body = error_body(503, TOO_MANY_CONNECTIONS, code="too_many_connections")
            self.transport.write(_raw_response(503, "Service Unavailable", body, (("retry-after", "1"),)))
            self.transport.close()
            return False
        return True


if HttpToolsProtocol is not None:

    class GuardedHttpToolsProtocol(_Guard, HttpToolsProtocol):
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self._guard_init()

        def connection_made(self, transport):
            super().connection_made(transport)
            self._on_connection_made()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def data_received(self, data: bytes) -> None:
            self._on_data(data)
            super().data_received(data)

        def on_headers_complete(self) -> None:
            self._on_headers_complete()
            super().on_headers_complete()

        def on_message_complete(self) -> None:
            if self._phase == "body":
                self._disarm()
            super().on_message_complete()

        def handle_websocket_upgrade(self) -> None:
            if self._on_upgrade():
                super().handle_websocket_upgrade()


class GuardedH11Protocol(_Guard, H11Protocol):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._guard_init()

    def connection_made(self, transport):
        super().connection_made(transport)
        self._on_connection_made()

    def connection_lost(self, exc):
        self._disarm()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self._on_data(data)
        super().data_received(data)

    def handle_events(self) -> None:
        super().handle_events()
        import h11

        state = self.conn.their_state
        if state is h11.SEND_BODY and self._phase == "headers":
            self._on_headers_complete()
        elif state in (h11.DONE, h11.MUST_CLOSE, h11.CLOSED) and self._phase:
            self._disarm()

    def handle_websocket_upgrade(self, event):
        if self._on_upgrade():
            super().handle_websocket_upgrade(event)


DefaultProtocol: type[_Guard] = GuardedHttpToolsProtocol if HttpToolsProtocol is not None else GuardedH11Protocol


def guarded_protocol(settings: Settings, base: type[_Guard] | None = None) -> type[_Guard]:
    """The protocol class for a server in this process, with `settings`' limits bound."""
    base = base or DefaultProtocol
    return type(base.__name__, (base,), {"limits": ConnectionLimits.of(settings)})


def uvicorn_options(settings: Settings, workers: bool = False) -> dict[str, Any]:
    """The uvicorn.Config arguments that carry these settings. `workers`: for worker processes, which get the
    module-level class (picklable; it reads the settings handed down to them)."""
    return {
        "http": DefaultProtocol if workers else guarded_protocol(settings),
        "timeout_keep_alive": settings.http_keepalive_timeout_s,
        "ws_ping_interval": settings.ws_keepalive_s,
        "ws_ping_timeout": settings.ws_ping_timeout_s,
    }


FD_RESERVE = 256  # files besides client connections: the database pool, Redis, gRPC, tokenizers, logs


def raise_fd_limit(max_connections: int) -> None:
    """Raise this process's soft limit of open files (often 1024) towards the hard limit, so that
    `max_connections` sockets fit; warn if they cannot."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max_connections + FD_RESERVE
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < wanted:
        logger.warning(
            "the open-files limit (%d) is below max_connections (%d) + %d; lower max_connections or raise "
            "`ulimit -n`, else accept() fails before the cap refuses anyone",
            soft,
            max_connections,
            FD_RESERVE,
        )
