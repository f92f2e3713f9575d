"""Swap the rendered `tensorrt_llm` model (C++ backend, cannot load here) for the STAND-IN in
tests/standin_tensorrt_llm/: same name, same tensor interface (the rendered config, backend switched to python),
the real SmolLM2 behind it. Everything else in the repository stays as rendered."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from stack import BIN, Stack, start_stack

STANDIN = Path(__file__).resolve().parent / "standin_tensorrt_llm" / "model.py"


def install_standin(repository: Path, checkpoint_dir: Path) -> Path:
    model_dir = repository / "tensorrt_llm"
    config = text_format.Parse((model_dir / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    assert config.backend == "tensorrtllm", "expected the rendered C++ tensorrt_llm model"
    config.backend = "python"
    config.ClearField("parameters")
    config.parameters["checkpoint_dir"].string_value = str(checkpoint_dir)
    shutil.rmtree(model_dir)
    (model_dir / "1").mkdir(parents=True)
    shutil.copy2(STANDIN, model_dir / "1" / "model.py")
    (model_dir / "config.pbtxt").write_text(
        "# STAND-IN for tests: see tests/trtllm_standin.py\n" + text_format.MessageToString(config)
    )
    return repository


def start_trtllm_stack(checkpoint_dir: Path, out: Path, entry: str, max_input_len: int) -> Stack:
    """`llmserve build --dry-run` (the real rendering), the stand-in swapped in, then `llmserve serve` on it."""
    subprocess.run(
        [
            str(BIN / "llmserve"),
            "build",
            "--engine",
            "trtllm",
            "--model",
            str(checkpoint_dir),
            "--output",
            str(out),
            "--dry-run",
            "--max-batch-size",
            "8",
            "--max-input-len",
            str(max_input_len),
            "--entry",
            entry,
        ],
        check=True,
    )
    repository = install_standin(out / "model_repository", checkpoint_dir)
    return start_stack(repository, out / "llmserve.log")
