"""Slow and idle clients cannot hold the front-end's connections (frontend_api/server/protocol.py): 1,000 connections
that trickle their headers and 1,000 idle keep-alive connections are closed within the configured times while a
normal request keeps working, the server's file descriptors come back to where they were, and a connection over
max_connections gets a clean 503. The server runs in this process (a thread), so /proc/self/fd counts its
descriptors and the clients' together: the clients' are counted apart."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
import uvicorn
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from frontend_api.server.app import create_app
from frontend_api.server.protocol import GuardedH11Protocol, guarded_protocol, uvicorn_options
from frontend_api.settings import Settings

from fake_engine import MODEL, REPLY_WORDS, FakeEngine
from helpers import receive, until_done
from stack import free_port

SLACK_S = 3.0  # a loaded CI host: timers fire late, 2,000 sockets take a while to open


class Guarded:
    """The app served as `llmserve serve` serves it: uvicorn with the options of uvicorn_options()."""

    def __init__(self, settings: Settings, engine: FakeEngine, protocol: type | None = None):
        self.port = free_port()
        options = uvicorn_options(settings)
        if protocol is not None:
            options["http"] = guarded_protocol(settings, protocol)
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings, engine=engine),
            host="127.0.0.1",
            port=self.port,
            log_config=None,
            log_level="warning",
            timeout_graceful_shutdown=2,
            backlog=4096,
            **options,
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "the server did not start"
            time.sleep(0.01)

    @property
    def open_connections(self) -> int:
        return len(self.server.server_state.connections)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        if self.thread.is_alive():
            self.server.force_exit = True
            self.thread.join(10)


@pytest.fixture
def guarded(checkpoint_dir: Path, tmp_path: Path) -> Iterator[Callable[..., Guarded]]:
    started: list[Guarded] = []

    def start(
        token_delay_s: float = 0.0, reply_words: int = REPLY_WORDS, protocol: type | None = None, **fields
    ) -> Guarded:
        defaults = {
            "home": tmp_path,
            "database_url": f"sqlite:///{tmp_path / f'db-{len(started)}.db'}",
            "log_level": "warning",
            "log_format": "text",
        }
        started.append(
            Guarded(Settings(**(defaults | fields)), FakeEngine(checkpoint_dir, token_delay_s, reply_words), protocol)
        )
        return started[-1]

    yield start
    for server in started:
        server.stop()


def fds(pid: str | int = "self") -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


SERVER_SCRIPT = """
import json, sys
import uvicorn
from frontend_api.server.app import create_app
from frontend_api.server.protocol import GuardedH11Protocol, guarded_protocol, uvicorn_options
from frontend_api.settings import Settings
from fake_engine import FakeEngine
fields, port, checkpoint = json.loads(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
settings = Settings(**fields)
app = create_app(settings, engine=FakeEngine(checkpoint))
uvicorn.run(app, host="127.0.0.1", port=port, log_config=None, log_level="warning", backlog=4096,
            **uvicorn_options(settings))
"""


@pytest.fixture
def guarded_process(checkpoint_dir: Path, tmp_path: Path) -> Iterator[Callable[..., tuple[subprocess.Popen, str]]]:
    """The app with FakeEngine in a process of its own (its descriptors counted alone in /proc/<pid>/fd, and the
    clients' load in this process does not slow it down): (process, base URL)."""
    started: list[subprocess.Popen] = []
    tests = Path(__file__).resolve().parents[1]
    paths = [os.environ.get("PYTHONPATH", ""), str(tests), str(tests.parent / "model_repository" / "llm" / "1")]

    def start(**fields) -> tuple[subprocess.Popen, str]:
        port = free_port()
        defaults = {"home": str(tmp_path), "database_url": f"sqlite:///{tmp_path / 'sub.db'}", "log_level": "warning"}
        command = [sys.executable, "-c", SERVER_SCRIPT, json.dumps(defaults | fields), str(port), str(checkpoint_dir)]
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in paths if p))
        started.append(subprocess.Popen(command, env=env))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert started[-1].poll() is None and time.monotonic() < deadline, "the server process did not start"
            try:
                if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                    return started[-1], url
            except httpx.HTTPError:
                time.sleep(0.2)

    yield start
    for process in started:
        process.terminate()
        try:
            process.wait(20)
        except subprocess.TimeoutExpired:
            process.kill()


async def read_until_closed(reader: asyncio.StreamReader, limit_s: float) -> bytes:
    data = b""
    async with asyncio.timeout(limit_s):
        while chunk := await reader.read(65536):
            data += chunk
    return data


async def slow_headers(port: int, limit_s: float) -> tuple[float, bytes]:
    """Start a request, send one more header line after a while (a byte must not reset the deadline), then hang."""
    started = time.monotonic()  # the server's clock starts when it accepts, after this
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
        await asyncio.sleep(0.5)
        writer.write(b"X-Slow: 1\r\n")
        data = await read_until_closed(reader, limit_s)
        return time.monotonic() - started, data
    finally:
        writer.close()


async def idle_keep_alive(port: int, limit_s: float) -> tuple[float, float, bytes]:
    """One complete request, then nothing: the connection stays open for the next one, as keep-alive lets it.
    Returns the seconds from sending the request to the close (the server's idle clock cannot start before it:
    the lower bound) and from reading the answer to the close (a busy client reads late: the upper bound)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
        sent = time.monotonic()
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(
            next(line for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")).split(b":")[1]
        )
        await reader.readexactly(length)
        answered = time.monotonic()
        rest = await read_until_closed(reader, limit_s)
        closed = time.monotonic()
        return closed - sent, closed - answered, head + rest
    finally:
        writer.close()


async def silent(port: int, limit_s: float) -> tuple[float, bytes]:
    """Connect and send nothing at all."""
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        data = await read_until_closed(reader, limit_s)
        return time.monotonic() - started, data
    finally:
        writer.close()


async def meanwhile(url: str, stop: asyncio.Event) -> list[float]:
    """Normal requests while the slow clients hang on: a chat completion streamed, again and again."""
    latencies = []
    async with httpx.AsyncClient(base_url=url, timeout=10) as client:
        while not stop.is_set():
            started = time.monotonic()
            response = await client.post(
                "/v1/chat/completions",
                json={"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4},
            )
            assert response.status_code == 200, response.text
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.2)
    return latencies


async def test_slow_headers_and_idle_keep_alive_connections_are_closed_in_time(guarded_process):
    header_s, keepalive_s, count = 2.0, 1.0, 1000
    process, url = guarded_process(http_header_timeout_s=header_s, http_keepalive_timeout_s=keepalive_s)
    port = int(url.rsplit(":", 1)[1])
    async with httpx.AsyncClient(base_url=url) as client:  # warm up: the first requests open the server's files
        await asyncio.gather(*(client.get("/v1/models") for _ in range(20)))
    await asyncio.gather(*(slow_headers(port, 10) for _ in range(20)))
    baseline = fds(process.pid)
    stop = asyncio.Event()
    normal = asyncio.create_task(meanwhile(url, stop))
    limit = max(header_s, keepalive_s) + SLACK_S + 10
    slow = [asyncio.create_task(slow_headers(port, limit)) for _ in range(count)]
    idle = [asyncio.create_task(idle_keep_alive(port, limit)) for _ in range(count)]
    await asyncio.sleep(0.5)
    peak = fds(process.pid)
    slow_results = await asyncio.gather(*slow)
    idle_results = await asyncio.gather(*idle)
    stop.set()
    latencies = await normal

    slow_times = sorted(t for t, _ in slow_results)
    idle_times = sorted(t for _, t, _ in idle_results)  # from the answer read
    idle_since_sent = min(t for t, _, _ in idle_results)
    await asyncio.sleep(0.5)
    after = fds(process.pid)
    print(
        f"\nslow headers closed after {slow_times[0]:.2f}..{slow_times[-1]:.2f} s (deadline {header_s} s); idle "
        f"keep-alive after {idle_times[0]:.2f}..{idle_times[-1]:.2f} s ({keepalive_s} s); {len(latencies)} normal "
        f"requests meanwhile, slowest {max(latencies):.2f} s; server fds {baseline} -> {peak} -> {after}"
    )
    assert header_s - 0.2 <= slow_times[0] and slow_times[-1] <= header_s + SLACK_S
    assert keepalive_s - 0.2 <= idle_since_sent and idle_times[-1] <= keepalive_s + SLACK_S
    for _, data in slow_results:  # they had sent part of a request: told why
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.startswith(b"HTTP/1.1 408") and json.loads(body)["error"]["code"] == "request_timeout"
    assert all(data.startswith(b"HTTP/1.1 200") for _, _, data in idle_results)
    assert len(latencies) >= 2 and max(latencies) < 5
    assert peak > baseline + count  # the connections were there at once
    assert after <= baseline + 2, f"{after - baseline} descriptors more than before"


async def test_a_connection_that_sends_nothing_is_closed_silently(guarded):
    server = guarded(http_header_timeout_s=1.0)
    baseline = fds()
    results = await asyncio.gather(*(silent(server.port, 1.0 + SLACK_S + 5) for _ in range(200)))
    times = sorted(t for t, _ in results)
    assert 0.8 <= times[0] and times[-1] <= 1.0 + SLACK_S
    assert all(data == b"" for _, data in results)
    await asyncio.sleep(0.3)
    assert server.open_connections == 0 and fds() <= baseline + 5


async def test_a_slow_body_gets_408_and_a_stream_outlives_every_deadline(guarded):
    server = guarded(http_header_timeout_s=1.0, http_body_timeout_s=1.0, http_keepalive_timeout_s=1.0)
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n")
    writer.write(b"Content-Length: 1000\r\n\r\n{")
    started = time.monotonic()
    data = await read_until_closed(reader, 1.0 + SLACK_S + 5)
    writer.close()
    assert 0.8 <= time.monotonic() - started <= 1.0 + SLACK_S
    assert data.startswith(b"HTTP/1.1 408")

    server.stop()
    # A response streamed for longer than every deadline together is not cut: they cover receiving, not sending.
    paced = guarded(
        token_delay_s=0.1,
        reply_words=100,
        http_header_timeout_s=1.0,
        http_body_timeout_s=1.0,
        http_keepalive_timeout_s=1.0,
    )
    async with httpx.AsyncClient(base_url=paced.url, timeout=30) as client:
        started = time.monotonic()
        request = {"model": MODEL, "messages": [{"role": "user", "content": "a story"}], "max_tokens": 40}
        async with client.stream("POST", "/v1/chat/completions", json=request | {"stream": True}) as response:
            events = [line async for line in response.aiter_lines() if line.startswith("data: ")]
        assert response.status_code == 200 and events[-1] == "data: [DONE]"
        assert time.monotonic() - started > 3.0
        assert (await client.get("/v1/models")).status_code == 200  # the same connection, reused at once


async def test_connections_over_the_cap_get_503_and_the_cap_frees_up(guarded):
    cap = 20
    server = guarded(max_connections=cap, http_header_timeout_s=30)
    held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(cap)]
    await asyncio.sleep(0.2)
    assert server.open_connections == cap
    async with httpx.AsyncClient(base_url=server.url) as client:
        refused = await client.get("/v1/models")
    assert refused.status_code == 503 and refused.headers["retry-after"] == "1"
    assert refused.headers["connection"] == "close"
    assert refused.json()["error"]["code"] == "too_many_connections"
    with pytest.raises(InvalidStatus) as handshake:
        async with connect(server.url.replace("http", "ws") + "/v1/chat/ws"):
            pass
    assert handshake.value.response.status_code == 503
    assert json.loads(handshake.value.response.body)["error"]["code"] == "too_many_connections"
    for _, writer in held:
        writer.close()
    await asyncio.sleep(0.3)
    async with httpx.AsyncClient(base_url=server.url) as client:
        assert (await client.get("/v1/models")).status_code == 200


IDLE_TIMEOUT = 4408  # frontend_api/websocket/socket.py, docs/RELIABILITY.md


async def frames_until_closed(ws, limit_s: float) -> list[dict]:
    frames = []
    with contextlib.suppress(ConnectionClosed):
        async with asyncio.timeout(limit_s):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] != "ping":
                    frames.append(frame)
    return frames


async def test_an_idle_websocket_is_closed_with_4408_and_client_frames_or_a_reply_keep_it_open(start_app):
    app = start_app(token_delay_s=0.05, reply_words=200, ws_idle_timeout_s=1.0, ws_keepalive_s=0.3)
    async with connect(app.ws_url) as ws:
        assert await receive(ws) == {"type": "ready", "protocol": 1}
        for _ in range(6):  # 2.4 s of client pings: not idle (the server's own pings do not count)
            await ws.send(json.dumps({"type": "ping"}))
            assert await receive(ws) == {"type": "pong"}
            await asyncio.sleep(0.4)
        # a reply that takes ~3 s, three times the idle timeout, is not cut
        await ws.send(
            json.dumps({"type": "chat", "content": "a story", "settings": {"max_tokens": 60, "model": MODEL}})
        )
        _, done = await until_done(ws)
        assert done["finish_reason"] == "length" and done["usage"]["completion_tokens"] == 60
        finished = time.monotonic()
        frames = await frames_until_closed(ws, 1.0 + SLACK_S + 5)
        waited = time.monotonic() - finished
    assert frames == [frames[-1]] and frames[-1]["type"] == "error" and frames[-1]["code"] == "idle_timeout"
    assert ws.close_code == IDLE_TIMEOUT
    assert 0.8 <= waited <= 1.0 + SLACK_S


async def test_the_h11_implementation_is_guarded_the_same_way(guarded):
    """uvicorn without httptools falls back to h11: the same deadlines and cap (GuardedH11Protocol)."""
    server = guarded(protocol=GuardedH11Protocol, http_header_timeout_s=1.0, http_body_timeout_s=1.0, max_connections=5)
    (_, silent_data), (slow_s, slow_data) = await asyncio.gather(
        silent(server.port, 1.0 + SLACK_S + 5), slow_headers(server.port, 1.0 + SLACK_S + 5)
    )
    assert silent_data == b"" and slow_data.startswith(b"HTTP/1.1 408") and 0.8 <= slow_s <= 1.0 + SLACK_S
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    assert (await read_until_closed(reader, 1.0 + SLACK_S + 5)).startswith(b"HTTP/1.1 408")
    writer.close()
    async with httpx.AsyncClient(base_url=server.url, timeout=30) as client:
        request = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5, "stream": True}
        async with client.stream("POST", "/v1/chat/completions", json=request) as response:
            assert [line async for line in response.aiter_lines() if line.startswith("data: ")][-1] == "data: [DONE]"
        held = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(5)]
        await asyncio.sleep(0.2)
        async with httpx.AsyncClient(base_url=server.url) as other:
            refused = await other.get("/v1/models")
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "too_many_connections"
        for _, w in held:
            w.close()
