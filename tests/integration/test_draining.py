"""SIGTERM drains: /ready and new requests answer 503 while streams in flight finish, up to `drain_timeout_s`;
streams still running then end with an error; then the process exits (and `serve` stops Triton last)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import time

import httpx
import psutil
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from stack import MODEL, start_stack

STORY = [{"role": "user", "content": "Tell me a very long story."}]


async def open_stream(http: httpx.AsyncClient, server, tokens: int) -> tuple[httpx.Response, object]:
    request = http.build_request(
        "POST",
        f"{server.api_url}/chat/completions",
        json={"model": MODEL, "messages": STORY, "stream": True, "max_tokens": tokens, "min_tokens": tokens},
    )
    response = await http.send(request, stream=True)
    lines = response.aiter_lines()
    assert response.status_code == 200 and (await anext(lines)).startswith("data: ")
    return response, lines


async def events(lines) -> list[dict | str]:
    return [
        line[6:] if line == "data: [DONE]" else json.loads(line[6:])
        async for line in lines
        if line.startswith("data: ")
    ]


async def wait_draining(server) -> None:
    """Poll /ready the way a kubelet probe does, one connection per probe, a cut connection counting as a failed
    probe: with several workers, one that has nothing in flight exits at once, and a connection it had accepted
    is cut as it goes (answers during the drain say `Connection: close`, so no connection is kept to it)."""
    deadline = time.monotonic() + 10
    async with httpx.AsyncClient(timeout=10, limits=httpx.Limits(max_keepalive_connections=0)) as probe:
        while True:
            with contextlib.suppress(httpx.TransportError):
                if (await probe.get(f"{server.base_url}/ready")).status_code == 503:
                    return
            assert time.monotonic() < deadline, "/ready did not turn 503 after SIGTERM"
            await asyncio.sleep(0.05)


def live_workers(stack) -> int:
    """uvicorn worker processes of `llmserve serve --workers N` still running."""
    count = 0
    for child in psutil.Process(stack.process.pid).children():
        with contextlib.suppress(psutil.Error):
            count += child.status() != psutil.STATUS_ZOMBIE and "spawn_main" in " ".join(child.cmdline())
    return count


async def wait_for_the_idle_worker_to_exit(stack) -> None:
    deadline = time.monotonic() + 30
    while live_workers(stack) != 1:
        assert time.monotonic() < deadline, f"{live_workers(stack)} workers left; the idle one should have exited"
        await asyncio.sleep(0.05)


async def assert_new_requests_refused(http: httpx.AsyncClient, server) -> None:
    ready = (await http.get(f"{server.base_url}/ready")).json()["error"]
    assert ready["message"] == "Not ready: the server is shutting down." and ready["code"] == "not_ready"
    refused = await http.post(
        f"{server.api_url}/chat/completions", json={"model": MODEL, "messages": STORY, "max_tokens": 2}
    )
    assert refused.status_code == 503 and refused.headers["retry-after"] == "5", refused.text
    assert refused.headers["connection"] == "close"  # the client will not reuse a connection about to be closed
    assert refused.json()["error"]["code"] == "server_shutting_down"
    with pytest.raises(InvalidStatus) as handshake:
        async with connect(server.ws_url):
            pass
    assert handshake.value.response.status_code == 503
    assert (await http.get(f"{server.base_url}/health")).status_code == 200


@pytest.mark.parametrize("workers", ["1", "2"])
def test_sigterm_lets_a_stream_finish_refuses_new_requests_and_exits_0(repository, tmp_path, workers):
    stack = start_stack(
        repository, tmp_path / "llmserve.log", env={"LLMSERVE_DRAIN_TIMEOUT_S": "180", "LLMSERVE_WORKERS": workers}
    )

    async def scenario() -> list:
        async with httpx.AsyncClient(timeout=60) as http:
            response, lines = await open_stream(
                http, stack, tokens=400
            )  # 5-10 s on CPU: outlives the checks below, far less than the timeout
            assert live_workers(stack) == (2 if workers == "2" else 0)  # one worker runs in the serve process
            stack.process.send_signal(signal.SIGTERM)
            await wait_draining(stack)
            if workers == "2":  # the worker without the stream drains at once; what is left answers new requests
                await wait_for_the_idle_worker_to_exit(stack)
            await assert_new_requests_refused(http, stack)
            received = await events(lines)
            await response.aclose()
            return received

    try:
        signalled = time.monotonic()
        received = asyncio.run(scenario())
        code = stack.process.wait(timeout=240)
        print(f"\nSIGTERM -> exit ({workers} worker(s)) in {time.monotonic() - signalled:.1f} s")
    finally:
        stack.stop(signal.SIGKILL)
    assert received[-1] == "[DONE]" and not any("error" in e for e in received[:-1]), received[-3:]
    assert received[-2]["choices"][0]["finish_reason"] == "length"
    assert code == 0, stack.log()[-3000:]
    log = stack.log()
    assert log.index('"drained in') < log.index("stopping Triton") < log.index("stopped (tritonserver exit code 0)")


def test_a_stream_longer_than_the_drain_timeout_is_cut_with_an_error(start_frontend_with):
    server = start_frontend_with({"LLMSERVE_DRAIN_TIMEOUT_S": "2"})

    async def scenario() -> tuple[list, dict, float]:
        async with httpx.AsyncClient(timeout=60) as http, connect(server.ws_url) as ws:
            response, lines = await open_stream(http, server, tokens=2000)
            assert json.loads(await ws.recv())["type"] == "ready"
            await ws.send(
                json.dumps(  # min_tokens: the reply cannot end by itself before the drain cuts it (CI once saw 121 tokens in 2.0 s)
                    {
                        "type": "chat",
                        "content": "Write a very long story.",
                        "settings": {"max_tokens": 2000, "min_tokens": 2000},
                    }
                )
            )
            assert json.loads(await ws.recv())["type"] == "delta"
            server.process.send_signal(signal.SIGTERM)
            signalled = time.monotonic()
            await wait_draining(server)
            await ws.send(json.dumps({"type": "chat", "content": "Another one."}))  # refused: busy or shutting down
            received = await events(lines)
            cut_after = time.monotonic() - signalled
            while (frame := json.loads(await ws.recv()))["type"] in ("delta", "ping") or frame.get("code") in (
                "busy",
                "server_shutting_down",
            ):
                pass
            await response.aclose()
            return received, frame, cut_after

    received, frame, cut_after = asyncio.run(scenario())
    error = received[-2]["error"]
    assert received[-1] == "[DONE]" and error["code"] == "engine_unavailable" and "shutting down" in error["message"]
    assert frame["type"] == "error" and frame["code"] == "engine_unavailable", frame
    assert 2 <= cut_after < 10, cut_after
    code = server.process.wait(timeout=30)
    assert code in (0, -signal.SIGTERM), server.log()[-3000:]
    print(f"\nstream cut {cut_after:.1f} s after SIGTERM (drain timeout 2 s)")
