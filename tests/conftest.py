"""Shared fixtures. The real default model is converted once (cached in ~/.cache/llmserve) and reused."""

from __future__ import annotations

import os
import sys
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENGINE_DIR = REPO / "model_repository" / "llm" / "1"
ARTIFACTS = REPO / "test-artifacts"
POSTGRES_ADMIN_URL = os.environ.get("LLMSERVE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_database():
    """A factory of fresh PostgreSQL databases (context managers yielding a URL; dropped on exit). The local
    server (127.0.0.1:5432, trust auth) is required: unreachable is a failure, not a skip."""
    import psycopg

    try:
        admin = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is needed by these tests ({POSTGRES_ADMIN_URL}; set LLMSERVE_TEST_POSTGRES "
                    f"to another server): {exc}")  # fmt: skip

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
def tokenizer(checkpoint_dir: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(checkpoint_dir, local_files_only=True)


@pytest.fixture(scope="session")
def engine_modules():
    """The Triton model's own modules (they import as top-level names inside Triton)."""
    sys.path.insert(0, str(ENGINE_DIR))
    yield
    sys.path.remove(str(ENGINE_DIR))
