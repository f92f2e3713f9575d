"""Clients of the session's stack (tests/conftest.py), and the same stack with the fast engine core."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI, OpenAI

from stack import prepare_repository, running_stack


@pytest.fixture(scope="session")
def fast_stack(checkpoint_dir, tmp_path_factory):
    """The same stack with our engine core (fast_core.py) instead of transformers continuous batching."""
    repository = prepare_repository(
        tmp_path_factory.mktemp("build-fast"), "--max-num-seqs", "8", "--engine-core", "fast"
    )
    with running_stack(repository, tmp_path_factory.mktemp("logs-fast") / "llmserve.log") as stack:
        yield stack


@pytest.fixture(scope="session")
def client(stack) -> OpenAI:
    return OpenAI(base_url=stack.api_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="session")
def aclient(stack) -> AsyncOpenAI:
    return AsyncOpenAI(base_url=stack.api_url, api_key="unused", max_retries=0, timeout=120)
