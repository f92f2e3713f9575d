"""/v1/chat/ws against the real stack: streaming, stop, sessions, bad frames."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from helpers import receive, until_done
from stack import MODEL


def ws_url(stack) -> str:
    return stack.base_url.replace("http://", "ws://") + "/v1/chat/ws"


async def active_requests_drop_to_zero(stack, within: float) -> float:
    started = time.monotonic()
    while stack.triton_metric("llm_engine_active_requests") > 0:
        assert time.monotonic() - started < within, "the engine still holds the stopped request"
        await asyncio.sleep(0.05)
    return time.monotonic() - started


async def test_chat_streams_deltas_then_done_and_stores_the_turn(stack):
    async with connect(ws_url(stack)) as ws:
        assert await receive(ws) == {"type": "ready", "protocol": 1}
        await ws.send(
            json.dumps({"type": "chat", "content": "Say hi.", "settings": {"max_tokens": 5, "temperature": 0}})
        )
        text, done = await until_done(ws)
    assert done["type"] == "done" and done["finish_reason"] in ("stop", "length")
    assert done["usage"]["completion_tokens"] >= 1 and done["usage"]["prompt_tokens"] > 0
    assert done["stats"]["ttft_ms"] > 0
    assert done["stats"]["tokens_per_second"] is None or done["stats"]["tokens_per_second"] > 0
    stored = httpx.get(f"{stack.api_url}/sessions/{done['session_id']}/messages").json()["data"]
    assert [(m["role"], m["content"]) for m in stored] == [("user", "Say hi."), ("assistant", text)]
    session = httpx.get(f"{stack.api_url}/sessions/{done['session_id']}").json()
    assert session["title"] == "Say hi." and session["model"] is None


async def test_stop_cancels_the_generation_and_frees_the_engine(stack):
    async with connect(ws_url(stack)) as ws:
        await receive(ws)
        await ws.send(
            json.dumps(
                {"type": "chat", "content": "Write a very long story.", "settings": {"max_tokens": 400, "model": MODEL}}
            )
        )
        assert (await receive(ws))["type"] == "delta"
        await ws.send(json.dumps({"type": "stop"}))
        stopped = time.monotonic()
        _, done = await until_done(ws)
        assert done["finish_reason"] == "cancelled" and time.monotonic() - stopped < 2
        freed_in = await active_requests_drop_to_zero(stack, within=2)
        # The connection goes on: the session continues with the next message.
        await ws.send(
            json.dumps(
                {
                    "type": "chat",
                    "content": "Shorter, please.",
                    "session_id": done["session_id"],
                    "settings": {"max_tokens": 3},
                }
            )
        )
        _, again = await until_done(ws)
    assert again["finish_reason"] == "length" and again["session_id"] == done["session_id"]
    stored = httpx.get(f"{stack.api_url}/sessions/{done['session_id']}/messages").json()["data"]
    assert [m["finish_reason"] for m in stored] == [None, "cancelled", None, "length"]
    print(f"engine freed {freed_in * 1000:.0f} ms after the done frame")


async def test_a_second_chat_while_generating_is_refused(stack):
    async with connect(ws_url(stack)) as ws:
        await receive(ws)
        chat = {"type": "chat", "content": "Tell me about tea.", "settings": {"max_tokens": 40}}
        await ws.send(json.dumps(chat))
        await ws.send(json.dumps(chat))
        frames = []
        while (frame := await receive(ws))["type"] != "done":
            frames.append(frame)
    assert [f["code"] for f in frames if f["type"] == "error"] == ["busy"]


@pytest.mark.parametrize(
    ("frame", "code", "param"),
    [
        ("not json", "invalid_message", None),
        (json.dumps({"type": "dance"}), "invalid_message", "type"),
        (json.dumps({"type": "chat"}), "invalid_message", "chat.content"),
        (json.dumps({"type": "chat", "content": ""}), "invalid_message", "chat.content"),
        (
            json.dumps({"type": "chat", "content": "x", "settings": {"temperature": 9}}),
            "invalid_message",
            "chat.settings.temperature",
        ),
        (
            json.dumps({"type": "chat", "content": "x", "settings": {"max_tokens": 10**9}}),
            "context_length_exceeded",
            "max_tokens",
        ),
        (json.dumps({"type": "chat", "content": "x", "settings": {"model": "nope"}}), "model_not_found", "model"),
        (json.dumps({"type": "chat", "content": "x", "session_id": "sess_missing"}), "session_not_found", "session_id"),
        (b"\x00binary", "invalid_message", None),
    ],
)
async def test_bad_frames_get_an_error_and_the_connection_stays_open(stack, frame, code, param):
    async with connect(ws_url(stack)) as ws:
        await receive(ws)
        await ws.send(frame)
        error = await receive(ws)
        assert error["type"] == "error" and error["code"] == code and error.get("param") == param, error
        await ws.send(json.dumps({"type": "ping"}))
        assert await receive(ws) == {"type": "pong"}


async def test_cross_site_origin_is_refused(stack):
    # A page of another site may not open a chat in a visitor's browser (CORS does not cover WebSockets).
    with pytest.raises(Exception, match="403"):
        async with connect(ws_url(stack), origin="https://evil.example"):
            pass
    async with connect(ws_url(stack), origin=stack.base_url) as ws:  # the page's own origin is fine
        assert (await receive(ws))["type"] == "ready"


def websocket_gauge(stack) -> float:
    text = httpx.get(f"{stack.base_url}/metrics", timeout=10).text
    return next(
        s.value
        for f in text_string_to_metric_families(text)
        for s in f.samples
        if s.name == "llmserve_websocket_connections"
    )


async def test_open_connections_are_counted(stack):
    before = websocket_gauge(stack)
    async with connect(ws_url(stack)) as ws:
        await receive(ws)
        assert websocket_gauge(stack) == before + 1
    deadline = time.monotonic() + 5
    while websocket_gauge(stack) != before:
        assert time.monotonic() < deadline, "the gauge did not come down after the close"
        await asyncio.sleep(0.05)
