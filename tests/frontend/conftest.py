"""The fast tier: the real front-end app (frontend_api.server.app.create_app) against FakeEngine (tests/fake_engine.py),
served by a real uvicorn server in a thread of the test process on a free port. Real HTTP, SSE and WebSocket; the
app's lifespan runs (database migration, limiter); storage is SQLite in the test's tmp_path. No Triton, no model
weights: only the real SmolLM2 tokenizer (the `checkpoint_dir` fixture converts the checkpoint once)."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import uvicorn
from openai import AsyncOpenAI, OpenAI

from frontend_api.server.app import create_app
from frontend_api.settings import Settings

from fake_engine import ALL_INPUTS, REPLY_WORDS, FakeEngine
from stack import LocalUrls, free_port


@dataclass
class LiveApp(LocalUrls):
    """One app served on 127.0.0.1:port from a thread of this process; the same URLs as stack.Server."""

    engine: FakeEngine
    settings: Settings
    port: int
    server: uvicorn.Server
    thread: threading.Thread

    @property
    def database_url(self) -> str:
        assert self.settings.database_url is not None
        return self.settings.database_url

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        if self.thread.is_alive():  # a connection a test left open: do not wait for it
            self.server.force_exit = True
            self.thread.join(10)
        assert not self.thread.is_alive(), "the in-process server did not stop"


def serve(engine: FakeEngine, settings: Settings, timeout_s: float = 30) -> LiveApp:
    """Start uvicorn on a free port in a daemon thread; return once it listens (the lifespan has run)."""
    port = free_port()
    config = uvicorn.Config(
        create_app(settings, engine=engine),
        host="127.0.0.1",
        port=port,
        lifespan="on",
        log_config=None,
        log_level="warning",
        timeout_graceful_shutdown=2,
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, name=f"uvicorn-{port}", daemon=True)
    thread.start()
    deadline = time.monotonic() + timeout_s
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            server.should_exit = True
            raise RuntimeError(f"the in-process server on port {port} did not start")
        time.sleep(0.01)
    return LiveApp(engine, settings, port, server, thread)


@pytest.fixture
def start_app(checkpoint_dir: Path, tmp_path: Path) -> Iterator[Callable[..., LiveApp]]:
    """start_app(token_delay_s=0.0, reply_words=REPLY_WORDS, capabilities=ALL_INPUTS, declare_capabilities=True,
    engine_step_s=None, **settings): the app with a fresh FakeEngine (those five are its arguments), settings given as Settings fields
    over test defaults (SQLite in tmp_path); every app started is stopped after the test."""
    started: list[LiveApp] = []
    # create_app() configures the root logger for a server process; the tests that run after these must find it
    # as it was (its level, and no handler bound to this test's captured stderr).
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)

    def start(
        token_delay_s: float = 0.0,
        reply_words: int = REPLY_WORDS,
        capabilities=ALL_INPUTS,
        declare_capabilities: bool = True,
        engine_step_s: float | None = None,
        **fields,
    ) -> LiveApp:
        folder = tmp_path / f"app-{len(started)}"
        folder.mkdir()
        defaults = {
            "home": folder,
            "database_url": f"sqlite:///{folder / 'llmserve.db'}",
            "log_level": "warning",
            "log_format": "text",
            "ws_keepalive_s": 0.3,
            "ws_auth_timeout_s": 1,
        }
        settings = Settings(**(defaults | fields))
        engine = FakeEngine(
            checkpoint_dir, token_delay_s, reply_words, capabilities, declare_capabilities, engine_step_s
        )
        started.append(serve(engine, settings))
        return started[-1]

    yield start
    for app in started:
        app.stop()
    root.setLevel(level)
    for handler in [h for h in root.handlers if h not in handlers]:
        root.removeHandler(handler)


@pytest.fixture
def app(start_app) -> LiveApp:
    """The app with default settings (auth off), its words paced a little so a stream can be caught mid-way."""
    return start_app(token_delay_s=0.002)


@pytest.fixture
def http(app: LiveApp) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=app.api_url, timeout=30) as client:
        yield client


@pytest.fixture
def client(app: LiveApp) -> OpenAI:
    return OpenAI(base_url=app.api_url, api_key="unused", max_retries=0, timeout=30)


@pytest.fixture
def aclient(app: LiveApp) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=app.api_url, api_key="unused", max_retries=0, timeout=30)
