"""A client that goes away cancels its generation: the engine's iterator is closed (FakeEngine records it) and the
slot is freed. tests/integration/test_disconnect.py measures the same on both real engine cores."""

from __future__ import annotations

import json

import httpx
import pytest
from websockets.asyncio.client import connect

from fake_engine import MODEL, wait_until

LONG = {"max_tokens": 2000, "min_tokens": 2000}  # 20 s at 10 ms a word: outlives the test unless cancelled


@pytest.fixture
def slow_app(start_app):
    return start_app(token_delay_s=0.01, reply_words=2000)


@pytest.mark.parametrize(
    "route, body",
    [
        ("/chat/completions", {"messages": [{"role": "user", "content": "Tell me a very long story."}]}),
        ("/completions", {"prompt": "Once upon a time"}),
    ],
)
async def test_closing_an_sse_stream_cancels_the_generation(slow_app, route, body):
    async with httpx.AsyncClient(timeout=30) as http:
        payload = {"model": MODEL, "stream": True, **LONG, **body}
        async with http.stream("POST", f"{slow_app.api_url}{route}", json=payload) as response:
            assert response.status_code == 200
            events = 0
            async for line in response.aiter_lines():
                events += line.startswith("data: ")
                if events == 4:
                    break
            assert slow_app.engine.active  # still generating when the client leaves
    wait_until(
        lambda: slow_app.engine.cancelled == [slow_app.engine.requests[0].request_id],
        what="the engine request cancelled",
    )
    assert slow_app.engine.active == set()


async def test_closing_a_websocket_mid_reply_cancels_the_generation(slow_app):
    async with connect(slow_app.ws_url) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "chat", "content": "Write a very long story.", "settings": {"model": MODEL}}))
        while json.loads(await ws.recv())["type"] != "delta":
            pass
    wait_until(
        lambda: slow_app.engine.cancelled == [slow_app.engine.requests[0].request_id],
        what="the engine request cancelled",
    )
    assert slow_app.engine.active == set()


@pytest.mark.parametrize(
    "route, body",
    [
        ("/chat/completions", {"messages": [{"role": "user", "content": "Tell me two long stories."}], "n": 2}),
        ("/completions", {"prompt": ["Once upon a time", "Long ago"], "n": 2}),
    ],
)
async def test_closing_a_stream_of_several_choices_cancels_every_engine_request(slow_app, route, body):
    async with httpx.AsyncClient(timeout=30) as http:
        payload = {"model": MODEL, "stream": True, **LONG, **body}
        async with http.stream("POST", f"{slow_app.api_url}{route}", json=payload) as response:
            assert response.status_code == 200
            indices = set()
            async for line in response.aiter_lines():
                if line.startswith("data: {"):
                    indices |= {c["index"] for c in json.loads(line[6:])["choices"]}
                if len(indices) == (4 if route == "/completions" else 2):
                    break
            assert slow_app.engine.active  # still generating when the client leaves
    ids = sorted(r.request_id for r in slow_app.engine.requests)
    wait_until(lambda: sorted(slow_app.engine.cancelled) == ids, what="every engine request cancelled")
    assert slow_app.engine.active == set()
