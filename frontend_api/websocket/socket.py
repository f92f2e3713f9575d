"""One WebSocket chat connection (protocol in frontend_api/websocket/frames.py): authenticate, then read frames
while at most one generation runs; `stop` cancels it, which closes the engine stream and frees the slot.

An open socket keeps being checked (docs/KEYS_AND_LIMITS.md "Revocation"): its key on every chat frame and every
keepalive tick (through KeyChecks, a verdict at most key_cache_ttl_s old), and at once when a revocation is heard
on Redis. A revoked key gets an `invalid_api_key` error frame and close code 1008; a reply being generated then
finishes first (it was admitted while the key was valid), and the close follows its `done` frame. A socket on
which the client sends nothing for ws_idle_timeout_s (no reply being generated) gets an `idle_timeout` error frame
and close code 4408."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from contextlib import aclosing
from typing import Any

from pydantic import ValidationError
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from frontend_api.engine.protocol import EngineError, EngineUnavailable
from frontend_api.errors import SHUTTING_DOWN, OpenAIError, describe_validation_errors, session_not_found
from frontend_api.openai.chat import ChatRun, OpenAIServingChat
from frontend_api.openai.protocol import ChatCompletionRequest
from frontend_api.policy.auth import Principal, anonymous, bearer_token, principal_for_key
from frontend_api.settings import Settings
from frontend_api.storage.database import DatabaseUnavailable
from frontend_api.websocket.frames import PROTOCOL_VERSION, AuthFrame, ChatFrame, ClientFrame, error_frame

POLICY_VIOLATION = 1008  # WebSocket close code for failed authentication, and for a key revoked meanwhile
TRY_AGAIN_LATER = 1013  # the key could not be checked (database down): the key may well be valid
IDLE_TIMEOUT = 4408  # no frame from the client for ws_idle_timeout_s (4000-4999: application codes; 408 as in HTTP)
REVOKED = "This API key was revoked; the connection is closed."


async def authenticate_socket(websocket: WebSocket, settings: Settings) -> Principal | None:
    """The caller, from the Authorization header or (browsers cannot set headers) a first `auth` frame; the key
    never goes in the URL. None after telling the client why and closing."""
    if not settings.auth:
        return anonymous(websocket, settings)
    token = bearer_token(websocket)
    close_code = POLICY_VIOLATION
    try:
        if token is None:
            text = await asyncio.wait_for(websocket.receive_text(), settings.ws_auth_timeout_s)
            token = AuthFrame.model_validate_json(text).api_key
        return await principal_for_key(websocket.app.state.database, settings, token)
    except WebSocketDisconnect:
        return None
    except TimeoutError:
        failure = error_frame(
            "auth_timeout",
            f'Authenticate within {settings.ws_auth_timeout_s:g} s: send {{"type": "auth", "api_key": "..."}} first.',
        )
    except (ValidationError, KeyError):  # KeyError: a binary frame
        failure = error_frame(
            "missing_api_key",
            'The first frame must be {"type": "auth", "api_key": "..."} (or send an Authorization: Bearer header).',
        )
    except OpenAIError as exc:
        failure = error_frame(exc.code or "invalid_api_key", exc.message)
    except DatabaseUnavailable:
        failure = error_frame("database_unavailable", "The key store is unavailable; retry shortly.")
        close_code = TRY_AGAIN_LATER
    with contextlib.suppress(WebSocketDisconnect, RuntimeError):
        await websocket.send_json(failure)
        await websocket.close(close_code)
    return None


def _uncancel() -> None:
    """A `stop` cancelled the generation task: it handles that itself and ends normally."""
    task = asyncio.current_task()
    assert task is not None
    task.uncancel()


class ChatSocket:
    def __init__(self, websocket: WebSocket, principal: Principal, serving: Callable[[], OpenAIServingChat]):
        """`serving` makes the caller's chat serving object (the same factory as HTTP chat's), once per chat: the
        engine may come and go while the connection stays open."""
        self.websocket = websocket
        self.principal = principal
        self.settings: Settings = websocket.app.state.settings
        self.make_serving = serving
        self.generation: asyncio.Task[None] | None = None
        self._send_lock = asyncio.Lock()
        self.last_activity = time.monotonic()  # the last client frame, or the end of the last reply
        self.closing = False
        self._revoked = False
        self._closer: asyncio.Task[None] | None = None  # the close a revocation heard on Redis started

    async def send(self, frame: dict[str, Any]) -> None:
        if self.websocket.application_state != WebSocketState.CONNECTED:
            return
        async with self._send_lock:
            with contextlib.suppress(WebSocketDisconnect, RuntimeError):  # the client is gone: nothing to tell
                await self.websocket.send_json(frame)

    async def run(self) -> None:
        await self.send({"type": "ready", "protocol": PROTOCOL_VERSION})
        watchers = [asyncio.create_task(self._keepalive()), asyncio.create_task(self._idle_watch())]
        checks = self.websocket.app.state.key_checks
        if self.principal.key_id is not None:
            checks.on_revoked(self._heard_revoked)
        try:
            while not self.closing:
                message = await self.websocket.receive()
                if message["type"] == "websocket.disconnect":
                    return
                self.last_activity = time.monotonic()
                await self._handle(message.get("text"))
        except (WebSocketDisconnect, RuntimeError):  # RuntimeError: receive() after our own close
            return
        finally:
            if self.principal.key_id is not None:
                checks.off_revoked(self._heard_revoked)
            for watcher in watchers:
                watcher.cancel()
            if self.generation is not None:
                self.generation.cancel()
                await asyncio.gather(self.generation, return_exceptions=True)

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(self.settings.ws_keepalive_s)
            await self.send({"type": "ping"})
            with contextlib.suppress(DatabaseUnavailable):  # the store is down: the next chat frame finds out
                if not await self._key_active():
                    await self._close_revoked()

    async def _idle_watch(self) -> None:
        idle = self.settings.ws_idle_timeout_s
        while True:
            remaining = self.last_activity + idle - time.monotonic()
            if remaining > 0:
                await asyncio.sleep(remaining)
            elif self.generating:  # a long reply is no idleness; the clock starts again at its end
                await asyncio.sleep(min(idle, 1.0))
            else:
                if not self.closing:
                    self.closing = True
                    await self.send(
                        error_frame("idle_timeout", f"No frame for {idle:g} s; the connection is closed. Reconnect.")
                    )
                    await self._close(IDLE_TIMEOUT)
                return

    async def _key_active(self) -> bool:
        if self.principal.key_id is None:  # auth off
            return True
        app_state = self.websocket.app.state
        return bool(await app_state.key_checks.active(app_state.database, self.principal.key_id))

    def _heard_revoked(self, key_id: int) -> None:
        if key_id == self.principal.key_id and self._closer is None:
            self._closer = asyncio.get_running_loop().create_task(self._close_revoked())  # kept: not collected

    async def _close_revoked(self, now: bool = False) -> None:
        """The key was revoked: say so and close. A reply being generated finishes first: then `_chat` calls this
        again with `now`."""
        self._revoked = True
        if self.closing or (self.generating and not now):
            return
        self.closing = True
        await self.send(error_frame("invalid_api_key", REVOKED))
        await self._close(POLICY_VIOLATION)

    async def _close(self, code: int) -> None:
        self.closing = True  # frames that still arrive are ignored
        if self.websocket.application_state == WebSocketState.CONNECTED:
            async with self._send_lock:
                with contextlib.suppress(WebSocketDisconnect, RuntimeError):
                    await self.websocket.close(code)

    @property
    def generating(self) -> bool:
        return self.generation is not None and not self.generation.done()

    async def _handle(self, text: str | None) -> None:
        if self.closing:
            return
        if text is None:
            await self.send(error_frame("invalid_message", "Send JSON text frames; binary frames are not supported."))
            return
        try:
            frame = ClientFrame.validate_json(text)
        except ValidationError as exc:
            message, param = describe_validation_errors(exc.errors(), subject="A frame")
            await self.send(error_frame("invalid_message", message, param))
            return
        if frame.type == "ping":
            await self.send({"type": "pong"})
        elif frame.type == "stop":
            if self.generation is not None and not self.generation.done():
                self.generation.cancel()
        elif frame.type == "auth":
            await self.send(error_frame("invalid_message", "Already authenticated.", "type"))
        elif self.websocket.app.state.drain.draining:
            await self.send(error_frame("server_shutting_down", SHUTTING_DOWN))
        elif self.generating:
            await self.send(error_frame("busy", 'A reply is being generated; wait for it or send {"type": "stop"}.'))
        elif not await self._still_authorised():
            return
        else:
            self.generation = asyncio.create_task(self._chat(frame))
            self.websocket.app.state.drain.track(self.generation)

    async def _still_authorised(self) -> bool:
        """Every chat frame re-checks the key: False (and the socket closing) if it was revoked meanwhile."""
        try:
            if not self._revoked and await self._key_active():
                return True
        except DatabaseUnavailable:
            await self.send(error_frame("database_unavailable", "The key store is unavailable; retry shortly."))
            return False
        await self._close_revoked(now=True)
        return False

    async def _chat(self, frame: ChatFrame) -> None:
        try:
            await self._chat_once(frame)
        finally:
            self.last_activity = time.monotonic()
            if self._revoked:  # revoked while this reply was generated: it has finished; now the close
                await self._close_revoked(now=True)

    async def _chat_once(self, frame: ChatFrame) -> None:
        arrived = time.perf_counter()
        try:
            serving = self.make_serving()
            run = await serving.start_chat(await self._request(serving, frame), arrived)
            await self._stream(run)
        except OpenAIError as exc:
            await self.send(error_frame(exc.code or exc.type, exc.message, exc.param))
        except EngineUnavailable as exc:
            await self.send(error_frame("engine_unavailable", exc.message))
        except EngineError as exc:
            await self.send(error_frame("engine_error", exc.message, exc.param))
        except DatabaseUnavailable:
            await self.send(error_frame("database_unavailable", "The session store is unavailable; retry shortly."))
        except asyncio.CancelledError:  # stopped before the engine answered; nothing was generated
            _uncancel()
            await self.send(
                {
                    "type": "done",
                    "finish_reason": "cancelled",
                    "usage": None,
                    "session_id": frame.session_id,
                    "stats": None,
                }
            )

    async def _request(self, serving: OpenAIServingChat, frame: ChatFrame) -> ChatCompletionRequest:
        settings = frame.settings
        tools = frame.model_dump(include={"tools", "tool_choice"}, exclude_none=True)
        if tools:  # checked before a new session is made for the frame
            _chat_request({"model": "-", "messages": [{"role": "user", "content": "-"}], **tools})
        if frame.session_id is not None:
            session = await serving.sessions.get(self.principal.key_id, frame.session_id)
            if session is None:
                raise session_not_found(frame.session_id)
        else:
            session = await serving.sessions.create(
                self.principal.key_id,
                title=frame.content[:60],
                model=settings.model,
                system_prompt=settings.system_prompt,
            )
        model = settings.model or session.model or await self._default_model(serving)
        messages = [{"role": "user", "content": frame.content}]
        if settings.system_prompt and frame.session_id is not None:  # a new session stores it as its prompt
            messages.insert(0, {"role": "system", "content": settings.system_prompt})
        sampling = settings.model_dump(exclude_none=True, exclude={"model", "system_prompt"})
        return _chat_request(
            {"model": model, "messages": messages, "stream": True, "session_id": session.id, **sampling, **tools}
        )

    @staticmethod
    async def _default_model(serving: OpenAIServingChat) -> str:
        models = await serving.engine.list_models()
        if not models:
            raise EngineUnavailable("No model is being served yet.")
        return models[0].id

    async def _stream(self, run: ChatRun) -> None:
        finish_reason = "cancelled"
        try:
            async with aclosing(run.deltas()) as deltas:
                async for text in deltas:
                    await self.send({"type": "delta", "content": text})
            for index, call in enumerate(run.outputs.output(0).tool_calls if run.outputs.parsing else ()):
                tool_call = {"index": index, "id": run.outputs.call_id(0, index), "name": call.name}
                await self.send({"type": "tool_call", **tool_call, "arguments": call.arguments})
            finish_reason = run.finish_reason or "stop"
        except asyncio.CancelledError:  # {"type": "stop"}: deltas() closed the engine stream and stored the turn
            _uncancel()
        tally = run.tally
        completion = run.usage.completion_tokens if run.usage else (tally.num_output_tokens or 0)
        usage = (
            run.usage.model_dump()
            if run.usage
            else {
                "prompt_tokens": run.prepared.prompt_tokens,
                "completion_tokens": completion,
                "total_tokens": run.prepared.prompt_tokens + completion,
            }
        )
        # The same timer, and so the same TTFT, as the HTTP chat's usage.stats (from the frame's arrival here).
        timed = run.prepared.timer.stats(completion) if run.prepared.timer else None
        stats = {
            "ttft_ms": timed.ttft_ms if timed else None,
            "tokens_per_second": timed.tokens_per_second if timed else None,
        }
        await self.send(
            {
                "type": "done",
                "finish_reason": finish_reason,
                "usage": usage,
                "session_id": run.session_id,
                "stats": stats,
            }
        )


def _chat_request(body: dict[str, Any]) -> ChatCompletionRequest:
    try:
        return ChatCompletionRequest.model_validate(body)
    except ValidationError as exc:  # e.g. a tool_choice naming no tool of the frame's
        message, param = describe_validation_errors(exc.errors(), subject="A frame")
        raise OpenAIError(400, message, param) from None
