"""`llmserve build --engine trtllm`: the dry run prints the exact commands and renders the repository; without
TensorRT-LLM (always, here) a real run stops at once and says how to run it in the NGC container."""

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from build_engines.trtllm import NGC_IMAGE

LLMSERVE = str(Path(sys.executable).parent / "llmserve")


def build(*args, timeout=60):
    return subprocess.run(
        [LLMSERVE, "build", "--engine", "trtllm", *args], capture_output=True, text=True, timeout=timeout
    )


@pytest.mark.parametrize(
    ("quantization", "expected"),
    [
        ("none", ["models/core/llama/convert_checkpoint.py", "--dtype bfloat16", "--tp_size 2"]),
        ("fp8", ["quantization/quantize.py", "--qformat fp8", "--kv_cache_dtype fp8", "--tp_size 2"]),
        ("int4_awq", ["quantization/quantize.py", "--qformat int4_awq", "--calib_size 512"]),
    ],
)
def test_dry_run_prints_the_commands_and_renders_the_repository(checkpoint_dir, tmp_path, quantization, expected):
    out = tmp_path / "out"
    result = build(
        "--model",
        str(checkpoint_dir),
        "--output",
        str(out),
        "--dry-run",
        "--tp",
        "2",
        "--quantization",
        quantization,
        "--max-seq-len",
        "4096",
        "--max-input-len",
        "1024",
        "--trtllm-examples",
        str(tmp_path),
    )
    assert result.returncode == 0, result.stderr
    convert, trtllm_build = [line for line in result.stdout.splitlines() if line.startswith("  $ ")]
    for fragment in expected:
        assert fragment in convert
    assert str(tmp_path) in convert and f"--output_dir {out}/checkpoint" in convert
    for flag in (
        "--checkpoint_dir",
        f"--output_dir {out}/engines",
        "--max_seq_len 4096",
        "--max_input_len 1024",
        "--kv_cache_type paged",
        "--use_paged_context_fmha enable",
        "--max_batch_size 64",
    ):
        assert flag in trtllm_build
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["dry_run"] is True and manifest["quantization"] == quantization and manifest["tp"] == 2
    assert manifest["commands"] == [convert[4:], trtllm_build[4:]]
    assert manifest["engine_files"] == {} and manifest["container_image"] == NGC_IMAGE
    assert {"tensorrt_llm", "tensorrt", "torch", "transformers"} <= manifest["tools"].keys()
    assert (out / "model_repository" / "ensemble" / "config.pbtxt").is_file()
    assert (out / "tokenizer" / "tokenizer.json").is_file() and not list((out / "tokenizer").glob("*.safetensors"))


def test_a_real_run_without_tensorrt_llm_stops_at_once_saying_what_to_do(checkpoint_dir, tmp_path):
    started = time.monotonic()
    result = build("--model", str(checkpoint_dir), "--output", str(tmp_path / "out"))
    assert time.monotonic() - started < 30
    assert result.returncode == 2
    assert "TensorRT-LLM is not installed" in result.stderr
    assert "docker run --rm --gpus all" in result.stderr and NGC_IMAGE in result.stderr
    assert "--dry-run" in result.stderr
    assert not (tmp_path / "out").exists()  # nothing half-built


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--max-input-len", "4096", "--max-seq-len", "4096"], "--max-input-len must be smaller"),
        (["--tp", "0"], "--tp must be at least 1"),
    ],
)
def test_invalid_build_flags_are_named(checkpoint_dir, tmp_path, args, message):
    result = build("--model", str(checkpoint_dir), "--output", str(tmp_path / "out"), "--dry-run", *args)
    assert result.returncode == 2 and message in result.stderr


def test_an_unsupported_architecture_is_named(checkpoint_dir, tmp_path):
    model = tmp_path / "model"
    model.mkdir()
    for name in ("tokenizer_config.json", "tokenizer.json"):
        (model / name).write_bytes((checkpoint_dir / name).read_bytes())
    (model / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    (model / "model.safetensors").write_bytes(b"")
    result = build("--model", str(model), "--output", str(tmp_path / "out"), "--dry-run")
    assert result.returncode == 2 and "GPT2LMHeadModel" in result.stderr


def test_a_directory_that_is_not_a_checkpoint_is_refused(tmp_path):
    result = build("--model", str(tmp_path), "--output", str(tmp_path / "out"), "--dry-run")
    assert result.returncode == 2 and "config.json" in result.stderr
