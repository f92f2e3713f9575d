"""Shared fixtures. The real default model is converted once (cached in ~/.cache/llmserve) and reused."""

from __future__ import annotations

import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path

import pytest

from stack import Server, prepare_repository, running_stack, start_frontend

REPO = Path(__file__).resolve().parent.parent
ARTIFACTS = REPO / "test-artifacts"
POSTGRES_ADMIN_URL = os.environ.get("LLMSERVE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(autouse=True)
def _inside_one_rate_window(request):
    """Rate limits count per wall-clock minute (limits' sliding window counter: windows are time.time() // 60, and
    the previous window's decaying count is floored), so requests that straddle a minute boundary can all pass a
    limit they should cross. A test marked `rate_window(seconds)` starts with at least that long left in the
    current minute (waiting for the next one if need be)."""
    marker = request.node.get_closest_marker("rate_window")
    if marker is not None:
        needed = marker.args[0] if marker.args else 5
        left = 60 - time.time() % 60
        if left < needed:
            time.sleep(left + 0.05)


@pytest.fixture(scope="session")
def postgres_database():
    """A factory of fresh PostgreSQL databases (context managers yielding a URL; dropped on exit). The local
    server (127.0.0.1:5432, trust auth) is required: unreachable is a failure, not a skip."""
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(
            f"PostgreSQL is needed by these tests ({POSTGRES_ADMIN_URL}; set LLMSERVE_TEST_POSTGRES "
            f"to another server): {exc}"
        )

    @contextmanager
    def fresh() -> Iterator[str]:
        name = f"llmserve_test_{uuid.uuid4().hex[:12]}"
        admin.execute(f'CREATE DATABASE "{name}"')
        try:
            yield f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}"
        finally:
            admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

    with admin:
        yield fresh


@pytest.fixture(scope="session")
def home() -> Path:
    from frontend_api.settings import default_home

    return Path(os.environ.get("LLMSERVE_HOME") or default_home())


@pytest.fixture(scope="session")
def checkpoint_dir(home: Path) -> Path:
    from build_engines.checkpoints import ensure_smollm2

    return ensure_smollm2(home / "models" / "SmolLM2-135M-Instruct")


@pytest.fixture(scope="session")
def openvino_checkpoint(checkpoint_dir: Path, home: Path) -> Path:
    """The default model exported for the openvino core (int8 weights), as `llmserve prepare` exports it."""
    from build_engines.openvino import ensure_openvino_ir

    return ensure_openvino_ir(checkpoint_dir, home)


@pytest.fixture(scope="session")
def core_checkpoint(checkpoint_dir: Path, request) -> Callable[[str], Path]:
    """The checkpoint each engine core loads: its own export (openvino) or the Hugging Face checkpoint."""

    def for_core(core: str) -> Path:
        return (
            request.getfixturevalue("openvino_checkpoint") if core in ("openvino", "openvino_paged") else checkpoint_dir
        )

    return for_core


@pytest.fixture(scope="session")
def tokenizer(checkpoint_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint_dir, local_files_only=True)


# One real stack per test session (`llmserve serve`: the real Triton and SmolLM2), shared by tests/integration
# and tests/browser.


@pytest.fixture(scope="session")
def repository(checkpoint_dir, tmp_path_factory):
    return prepare_repository(tmp_path_factory.mktemp("build"), "--max-num-seqs", "16")


@pytest.fixture(scope="session")
def stack(repository, tmp_path_factory):
    with running_stack(repository, tmp_path_factory.mktemp("logs") / "llmserve.log") as stack:
        yield stack


@pytest.fixture(scope="module")
def start_frontend_with(stack, tmp_path_factory) -> Callable[..., Server]:
    """Start extra front-end processes against the session's Triton, configured by environment overrides
    (LLMSERVE_HOME defaults to one fresh directory per test module); all stopped, and checked to stop cleanly,
    at the end of the module."""
    folder = tmp_path_factory.mktemp("frontends")
    started: list[Server] = []

    def start(env: Mapping[str, str], wait_for: str = "/ready") -> Server:
        env = {"LLMSERVE_HOME": str(folder / "home"), **env}
        log = folder / f"frontend-{len(started)}.log"
        started.append(start_frontend(stack.triton_grpc_port, log, env, wait_for=wait_for))
        return started[-1]

    yield start
    for server in started:
        code = server.stop(signal.SIGTERM, timeout=30)  # uvicorn re-raises the signal after a clean shutdown
        assert code in (0, -signal.SIGTERM) and "Traceback" not in server.log(), f"exit {code}:\n{server.log()[-3000:]}"
