"""Pieces of build_engines and the launcher that need no running server."""

import json
import shutil
import sys
from pathlib import Path

import pytest

from build_engines.checkpoints import CONVERSION_RECORD, CheckpointError, ModelSpec, _is_current, smollm2_gguf
from llmserve.triton import TritonError, TritonProcess, find_triton


def test_model_specs():
    assert ModelSpec.parse("builtin:smollm2") == ModelSpec("SmolLM2-135M-Instruct", "builtin:smollm2")
    assert ModelSpec.parse("mine=/models/x").id == "mine"
    assert ModelSpec.parse("/models/llama-3").id == "llama-3"
    with pytest.raises(CheckpointError, match="must be letters"):
        ModelSpec.parse("bad id=/models/x")


def test_cached_conversion_is_reused_only_while_it_verifies(checkpoint_dir, tmp_path):
    gguf = smollm2_gguf()
    assert _is_current(checkpoint_dir, gguf)
    copy = tmp_path / "copy"
    shutil.copytree(checkpoint_dir, copy, ignore=shutil.ignore_patterns("*.safetensors"))
    (copy / "model.safetensors").write_bytes(b"truncated")  # a damaged weights file
    assert not _is_current(copy, gguf)
    record = json.loads((checkpoint_dir / CONVERSION_RECORD).read_text())
    record["source"]["sha256_head"] = "0" * 64  # a different GGUF than the one installed
    (copy / CONVERSION_RECORD).write_text(json.dumps(record))
    assert not _is_current(copy, gguf)


def test_tritonserver_from_the_environment(tmp_path, monkeypatch, home):
    binary = tmp_path / "tritonserver"
    binary.write_text("#!/bin/sh\n")
    monkeypatch.setenv("TRITONSERVER", str(binary))
    install = find_triton(home)
    assert install.binary == binary and install.backend_dir is None  # its own backends
    monkeypatch.setenv("TRITONSERVER", str(tmp_path / "missing"))
    with pytest.raises(TritonError, match="does not exist"):
        find_triton(home)


def test_bundled_tritonserver_gets_a_stub_for_this_python(monkeypatch, tmp_path):
    monkeypatch.delenv("TRITONSERVER", raising=False)
    install = find_triton(tmp_path)
    assert install.binary != Path("/opt/tritonserver/bin/tritonserver"), "expects the nvidia-pytriton server"
    stub = install.backend_dir / "python" / "triton_python_backend_stub"
    assert stub.is_file() and (install.backend_dir / "python" / "libtriton_python.so").is_file()
    libdir = install.library_path[0]
    assert (Path(libdir) / f"libpython{sys.version_info.major}.{sys.version_info.minor}.so.1.0").exists()
    command = TritonProcess(install, tmp_path, 1, 2, 3).command()
    assert f"--backend-directory={install.backend_dir}" in command
    assert "--grpc-address=127.0.0.1" in command and "--http-address=127.0.0.1" in command


def test_triton_output_on_a_cpu_host_hides_only_the_no_gpu_notices():
    import io

    from llmserve.triton import _pass_output

    lines = [
        b'W1201 pinned_memory_manager.cc:273] "Unable to allocate pinned system memory, pinned memory pool will not be '
        b'available: CUDA driver version is insufficient for CUDA runtime version"\n',
        b'E1201 server.cc:241] "CudaDriverHelper has not been initialized."\n',
        b"Error: Failed to initialize NVML\n",
        b'W1201 metrics.cc:798] "DCGM unable to start: DCGM initialization error"\n',
        b"E1201 model_lifecycle.cc:641] \"failed to load 'llm' version 1: Internal: ImportError\"\n",
        b'I1201 grpc_server.cc:2558] "Started GRPCInferenceService at 127.0.0.1:8101"\n',
    ]
    sink = io.BytesIO()
    _pass_output(io.BytesIO(b"".join(lines)), sink)
    assert sink.getvalue() == lines[4] + lines[5]  # a real error still shows
