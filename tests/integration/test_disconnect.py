"""A client that goes away frees the engine: after an SSE connection is closed, a WebSocket `stop`, or a WebSocket
closed mid-reply, the engine's `llm_engine_active_requests` returns to 0. Measured on both engine cores; the
figures (printed, `pytest -s`) are in docs/RELIABILITY.md. The assertion bound is generous on purpose: these
machines are shared and timings are noisy; the issue's target is 1 s."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from websockets.asyncio.client import connect

from stack import MODEL

BOUND_S = 5.0  # correctness, not performance
LONG = {"max_tokens": 2000, "min_tokens": 2000}  # never finishes on its own during a test


async def engine_freed_after(stack, since: float) -> float:
    """Seconds from `since` until the engine holds no request (polled every 20 ms)."""
    while stack.triton_metric("llm_engine_active_requests") > 0:
        assert time.monotonic() - since < BOUND_S, "the engine still holds the abandoned request"
        await asyncio.sleep(0.02)
    return time.monotonic() - since


async def until_generating(stack) -> None:
    while stack.triton_metric("llm_engine_active_requests") < 1:
        await asyncio.sleep(0.02)


async def test_closing_an_sse_stream_frees_the_engine(engine_stack):
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Tell me a very long story."}],
        "stream": True,
        **LONG,
    }
    async with httpx.AsyncClient(timeout=60) as http:
        async with http.stream("POST", f"{engine_stack.api_url}/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = 0
            async for line in response.aiter_lines():
                lines += line.startswith("data: ")
                if lines == 4:
                    break
            await until_generating(engine_stack)
        closed = time.monotonic()  # leaving the block closed the connection
    freed = await engine_freed_after(engine_stack, closed)
    print(f"\nSSE close -> engine active requests 0 in {freed * 1000:.0f} ms")


@pytest.mark.parametrize("how", ["stop", "close"])
async def test_a_websocket_stop_or_close_frees_the_engine(engine_stack, how):
    chat = {"type": "chat", "content": "Write a very long story.", "settings": {"max_tokens": 2000, "model": MODEL}}
    async with connect(engine_stack.ws_url) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps(chat))
        while json.loads(await ws.recv())["type"] != "delta":
            pass
        await until_generating(engine_stack)
        ended = time.monotonic()
        await ws.send(json.dumps({"type": "stop"})) if how == "stop" else await ws.close()
    freed = await engine_freed_after(engine_stack, ended)
    print(f"\nWebSocket {how} -> engine active requests 0 in {freed * 1000:.0f} ms")
