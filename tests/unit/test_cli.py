"""The `llmserve` command line: help, configuration errors, refusing an unauthenticated public bind."""

import os
import subprocess
import sys
from pathlib import Path

LLMSERVE = str(Path(sys.executable).parent / "llmserve")


def run(*args, env=None, timeout=60):
    return subprocess.run(
        [LLMSERVE, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})}
    )


def test_help_lists_the_subcommands():
    result = run("--help")
    assert result.returncode == 0
    assert "prepare" in result.stdout and "serve" in result.stdout and "bench" in result.stdout
    serve_help = run("serve", "--help")
    assert serve_help.returncode == 0 and "--port" in serve_help.stdout and "--model" in serve_help.stdout


def test_invalid_environment_value_names_the_setting():
    result = run("serve", env={"LLMSERVE_PORT": "eighty"})
    assert result.returncode == 2
    assert "port" in result.stderr and "LLMSERVE_PORT" in result.stderr


def test_invalid_flag_value_names_the_setting():
    result = run("serve", "--max-num-seqs", "0")
    assert result.returncode == 2 and "max_num_seqs" in result.stderr


def test_engine_core_is_checked_as_flag_and_as_variable():
    flag = run("prepare", "--engine-core", "turbo")
    assert flag.returncode == 2 and "--engine-core" in flag.stderr and "fast" in flag.stderr
    variable = run("prepare", env={"LLMSERVE_ENGINE_CORE": "turbo"})
    assert variable.returncode == 2 and "LLMSERVE_ENGINE_CORE" in variable.stderr


def test_the_openvino_core_on_cuda_is_refused_naming_the_way_out():
    result = run("prepare", "--device", "cuda", "--engine-core", "openvino")
    assert result.returncode == 2 and "engine_core fast" in result.stderr


def test_prefix_caching_is_on_by_default_with_the_fast_core_only_and_either_way_when_asked():
    from llmserve.cli import MODEL_FLAGS, build_parser, settings_from

    def prefix_caching(*flags: str) -> bool:
        return settings_from(build_parser().parse_args(["prepare", *flags]), MODEL_FLAGS).prefix_caching

    assert prefix_caching("--device", "cuda") and not prefix_caching("--device", "cpu")
    assert not prefix_caching("--device", "cuda", "--no-prefix-caching")
    assert prefix_caching("--engine-core", "openvino_paged", "--prefix-caching")
    shown = run("config", "show", env={"LLMSERVE_DEVICE": "cuda", "LLMSERVE_PREFIX_CACHING": "false"})
    assert shown.returncode == 0 and "prefix_caching = false" in shown.stdout


def test_public_bind_without_auth_is_refused():
    result = run("serve", "--host", "0.0.0.0")
    assert result.returncode == 2
    assert "refusing" in result.stdout and "--allow-unauthenticated-public-bind" in result.stdout


def test_unknown_builtin_model_is_a_clear_error(tmp_path):
    result = run("prepare", "--model", "builtin:gpt5", "--output", str(tmp_path))
    assert result.returncode != 0
    assert "unknown builtin model" in (result.stdout + result.stderr)


def test_cuda_without_a_cuda_torch_is_refused_before_triton_starts(tmp_path):
    # Hide any GPU, so the check is exercised on every machine.
    result = run("prepare", "--device", "cuda", "--output", str(tmp_path), env={"CUDA_VISIBLE_DEVICES": ""})
    assert result.returncode != 0
    assert "sees no CUDA GPU" in result.stderr + result.stdout and "--device cpu" in result.stderr + result.stdout
