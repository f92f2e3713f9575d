"""Graceful shutdown on SIGTERM: drain, then exit.

uvicorn's own graceful shutdown closes the listening socket at once, so new clients would see "connection
refused" rather than an answer. Instead, SIGTERM starts draining here while the server keeps listening:
- `/ready` answers 503 (load balancers stop sending traffic), new HTTP requests and WebSocket handshakes get
  503 `server_shutting_down` with `Retry-After`, a new chat on an open WebSocket gets an error frame;
- generations in flight go on for up to `drain_timeout_s`; those still running then are ended with an error
  (SSE error event, WebSocket error frame);
- then the signal goes on to the server's own handler (uvicorn's graceful shutdown) and the process exits.
A second SIGTERM ends the drain at once. Each worker process (`--workers N`) drains itself: uvicorn's
supervisor passes SIGTERM on to every worker and waits for them.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time

from fastapi import FastAPI
from starlette.types import ASGIApp, Receive, Scope, Send

from frontend_api.errors import SHUTTING_DOWN, error_response
from frontend_api.server.middleware import refuse

logger = logging.getLogger(__name__)

ALWAYS_ANSWERED = ("/health", "/ready", "/metrics")  # /ready itself says 503 while draining
POLL_S = 0.05
ABORT_GRACE_S = 5.0  # after the drain timeout, time for aborted WebSocket generations to send their error frame


class Drain:
    """One per app (`app.state.drain`)."""

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self.draining = False
        self._task: asyncio.Task[None] | None = None
        self._done = asyncio.Event()
        self._tracked: set[asyncio.Task[None]] = set()  # WebSocket generations, up to their final frame

    def track(self, task: asyncio.Task[None]) -> None:
        """Wait for this task too before exiting: a WebSocket generation's final frame (done or error) goes out
        after its engine stream has closed, and uvicorn's shutdown closes WebSockets at once (1012)."""
        self._tracked.add(task)
        task.add_done_callback(self._tracked.discard)

    def install(self, app: FastAPI) -> None:
        """Take over SIGTERM (called in the lifespan, after uvicorn installed its handlers). Only the main thread
        can receive signals: elsewhere (an app run in a test client's thread) nothing is installed."""
        if threading.current_thread() is not threading.main_thread():
            return
        loop = asyncio.get_running_loop()
        server_handler = signal.getsignal(signal.SIGTERM)

        def on_sigterm(signum, frame) -> None:
            loop.call_soon_threadsafe(self._on_sigterm, app, server_handler)

        signal.signal(signal.SIGTERM, on_sigterm)

    def _on_sigterm(self, app: FastAPI, server_handler) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._drain(app, server_handler))
        else:  # a second SIGTERM: stop waiting
            logger.warning("second SIGTERM: ending the drain now")
            self._done.set()

    async def _drain(self, app: FastAPI, server_handler) -> None:
        self.draining = True
        limiter = app.state.limiter
        logger.warning(
            "SIGTERM: draining; %d generations in flight get up to %g s to finish, new requests get 503",
            limiter.in_flight,
            self.timeout_s,
        )
        started = time.monotonic()
        while (limiter.in_flight > 0 or self._tracked) and time.monotonic() - started < self.timeout_s:
            if self._done.is_set():
                break
            await asyncio.sleep(POLL_S)
        if limiter.in_flight > 0 or self._tracked:
            logger.warning("drain timeout: ending %d generations still in flight with an error", limiter.in_flight)
            if app.state.engine is not None:
                app.state.engine.abort(SHUTTING_DOWN)
            if self._tracked:  # let them send their error frames
                await asyncio.wait(set(self._tracked), timeout=ABORT_GRACE_S)
        else:
            logger.info("drained in %.1f s", time.monotonic() - started)
        # On to the server's graceful shutdown (uvicorn's handler), or the default action if there is none.
        signal.signal(signal.SIGTERM, server_handler if server_handler is not None else signal.SIG_DFL)
        signal.raise_signal(signal.SIGTERM)


class DrainMiddleware:
    """While draining, answer new requests with 503 (pure ASGI: streams already running are not touched)."""

    def __init__(self, app: ASGIApp, drain: Drain):
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if not self.drain.draining or scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        if scope["type"] == "http":
            send = _closing_connection(send)
        if scope["path"] in ALWAYS_ANSWERED:
            await self.app(scope, receive, send)
            return
        refusal = error_response(503, SHUTTING_DOWN, code="server_shutting_down", headers={"Retry-After": "5"})
        await refuse(scope, receive, send, refusal, 1013, "server shutting down")


def _closing_connection(send: Send) -> Send:
    """While draining, every HTTP answer says `Connection: close`: a client then opens a new connection for its
    next request (which reaches a process still listening) instead of reusing one this process is about to close."""

    async def send_closing(message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), (b"connection", b"close")]}
        await send(message)

    return send_closing
