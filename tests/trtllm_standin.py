"""Swap the rendered `tensorrt_llm` model (C++ backend, cannot load here) for the STAND-IN in
tests/standin_tensorrt_llm/: same name, same tensor interface (the rendered config, backend switched to python),
the real SmolLM2 behind it. Everything else in the repository stays as rendered."""

from __future__ import annotations

import shutil
from pathlib import Path

from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

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
    (model_dir / "config.pbtxt").write_text("# STAND-IN for tests: see tests/trtllm_standin.py\n"
                                            + text_format.MessageToString(config))  # fmt: skip
    return repository
