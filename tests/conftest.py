"""Shared fixtures. The real default model is converted once (cached in ~/.cache/llmserve) and reused."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
ENGINE_DIR = REPO / "model_repository" / "llm" / "1"
ARTIFACTS = REPO / "test-artifacts"


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
