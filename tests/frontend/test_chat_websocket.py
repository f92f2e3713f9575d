"""/v1/chat/ws: one chat streamed and stored, a stop that cancels the engine request, and the connection going on.
tests/integration/test_websocket.py asks the same of the real stack."""

from __future__ import annotations

import json

import httpx
from websockets.asyncio.client import connect

from fake_engine import MODEL, wait_until
from helpers import receive, until_done


def stored(app, session_id: str) -> list[dict]:
    return httpx.get(f"{app.api_url}/sessions/{session_id}/messages").json()["data"]


async def test_a_chat_streams_deltas_then_done_and_stores_the_turn(app):
    async with connect(app.ws_url) as ws:
        assert await receive(ws) == {"type": "ready", "protocol": 1}
        await ws.send(json.dumps({"type": "chat", "content": "Say hi.", "settings": {"max_tokens": 5}}))
        text, done = await until_done(ws)
    assert len(text.split()) == 5
    assert done["type"] == "done" and done["finish_reason"] == "length"
    assert done["usage"]["completion_tokens"] == 5 and done["usage"]["prompt_tokens"] > 0
    assert done["stats"]["ttft_ms"] > 0
    assert [(m["role"], m["content"]) for m in stored(app, done["session_id"])] == [
        ("user", "Say hi."),
        ("assistant", text),
    ]
    session = httpx.get(f"{app.api_url}/sessions/{done['session_id']}").json()
    assert session["title"] == "Say hi." and session["model"] is None


async def test_stop_cancels_the_generation_frees_the_engine_and_the_connection_goes_on(start_app):
    app = start_app(token_delay_s=0.01, reply_words=2000)  # a reply that outlives the test unless stopped
    async with connect(app.ws_url) as ws:
        await receive(ws)
        await ws.send(
            json.dumps(
                {
                    "type": "chat",
                    "content": "Write a very long story.",
                    "settings": {"max_tokens": 2000, "model": MODEL},
                }
            )
        )
        assert (await receive(ws))["type"] == "delta"
        await ws.send(json.dumps({"type": "stop"}))
        _, done = await until_done(ws)
        assert done["finish_reason"] == "cancelled"
        wait_until(lambda: app.engine.active == set(), what="the stopped request freed")
        assert app.engine.cancelled == [app.engine.requests[0].request_id]
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
    assert [m["finish_reason"] for m in stored(app, done["session_id"])] == [None, "cancelled", None, "length"]


async def test_a_bad_frame_gets_an_error_naming_the_field_and_the_connection_stays_open(app):
    async with connect(app.ws_url) as ws:
        await receive(ws)
        await ws.send(json.dumps({"type": "chat", "content": "hi", "settings": {"temperature": 9}}))
        error = await receive(ws)
        assert error["type"] == "error" and error["code"] == "invalid_message"
        assert error["param"] == "chat.settings.temperature"  # the frame type, then the path in it
        await ws.send(json.dumps({"type": "ping"}))
        assert await receive(ws) == {"type": "pong"}
