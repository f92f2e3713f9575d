"""One real stack per test session: `llmserve serve` with the real Triton and the real SmolLM2 model."""

from __future__ import annotations

import signal
from collections.abc import Callable, Mapping

import pytest
from openai import AsyncOpenAI, OpenAI

from stack import Server, prepare_repository, start_frontend, start_stack


@pytest.fixture(scope="session")
def repository(checkpoint_dir, tmp_path_factory):
    return prepare_repository(tmp_path_factory.mktemp("build"), "--max-num-seqs", "16")


@pytest.fixture(scope="session")
def stack(repository, tmp_path_factory):
    stack = start_stack(repository, tmp_path_factory.mktemp("logs") / "llmserve.log")
    yield stack
    code = stack.stop(signal.SIGTERM)
    assert code == 0, f"llmserve serve exited with {code} on SIGTERM:\n{stack.log()[-3000:]}"
    assert "stopped (tritonserver exit code 0)" in stack.log(), f"Triton did not stop cleanly:\n{stack.log()[-3000:]}"


@pytest.fixture(scope="session")
def fast_stack(checkpoint_dir, tmp_path_factory):
    """The same stack with our engine core (fast_core.py) instead of transformers continuous batching."""
    repository = prepare_repository(tmp_path_factory.mktemp("build-fast"), "--max-num-seqs", "8", "--engine-core", "fast")
    stack = start_stack(repository, tmp_path_factory.mktemp("logs-fast") / "llmserve.log")
    yield stack
    assert stack.stop(signal.SIGTERM) == 0, f"llmserve serve (fast core) did not stop cleanly:\n{stack.log()[-3000:]}"


@pytest.fixture(scope="session")
def client(stack) -> OpenAI:
    return OpenAI(base_url=stack.api_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def aclient(stack) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=stack.api_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def start_frontend_with(stack, tmp_path_factory) -> Callable[[Mapping[str, str]], Server]:
    """Start extra front-end processes against the session's Triton, configured by environment overrides
    (LLMSERVE_HOME defaults to one fresh directory per test module); all stopped, and checked to stop cleanly,
    at the end of the module."""
    folder = tmp_path_factory.mktemp("frontends")
    started: list[Server] = []

    def start(env: Mapping[str, str]) -> Server:
        env = {"LLMSERVE_HOME": str(folder / "home"), **env}
        started.append(start_frontend(stack.triton_grpc_port, folder / f"frontend-{len(started)}.log", env))
        return started[-1]

    yield start
    for server in started:
        code = server.stop(signal.SIGTERM, timeout=30)  # uvicorn re-raises the signal after a clean shutdown
        assert code in (0, -signal.SIGTERM) and "Traceback" not in server.log(), f"exit {code}:\n{server.log()[-3000:]}"
