"""Clients of the session's stack (tests/conftest.py), and the same stack with the fast engine core."""

from __future__ import annotations

import pytest
from openai import AsyncOpenAI, OpenAI

import engine_contract

from stack import prepare_repository, running_stack

# The session's stack for each engine core of the `llm` model: the default (openvino_paged) serves `stack`.
STACK_OF_CORE = {
    engine_contract.OPENVINO_PAGED: "stack",
    engine_contract.OPENVINO: "genai_stack",
    engine_contract.FAST: "fast_stack",
}


@pytest.fixture(params=engine_contract.LLM_CORES)
def engine_core(request) -> str:
    """Each test using it runs once per engine core."""
    assert set(STACK_OF_CORE) == set(engine_contract.LLM_CORES), "a new core needs its stack here"
    return request.param


@pytest.fixture
def engine_stack(engine_core, request):
    """The real stack serving with `engine_core` (`--engine-core`)."""
    return request.getfixturevalue(STACK_OF_CORE[engine_core])


@pytest.fixture(scope="session")
def genai_stack(checkpoint_dir, tmp_path_factory):
    """The same stack with the OpenVINO GenAI core (openvino_core.py) instead of the default openvino_paged core."""
    repository = prepare_repository(
        tmp_path_factory.mktemp("build-genai"), "--max-num-seqs", "8", "--engine-core", "openvino"
    )
    with running_stack(repository, tmp_path_factory.mktemp("logs-genai") / "llmserve.log") as stack:
        yield stack


@pytest.fixture(scope="session")
def fast_stack(checkpoint_dir, tmp_path_factory):
    """The same stack with our torch engine core (paged_fast_core.py) instead of the default openvino_paged core."""
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
