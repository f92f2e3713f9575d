"""The `engine_process` setting: its default per core, the flags, and the config parameter `llmserve prepare`
renders for model.py."""

from __future__ import annotations

import json

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

from build_engines.prepare import EngineOptions, prepare
from llmserve.cli import MODEL_FLAGS, build_parser, settings_from


def engine_process(*flags: str) -> bool:
    return settings_from(build_parser().parse_args(["prepare", *flags]), MODEL_FLAGS).engine_process


def test_on_by_default_with_the_fast_core_only_and_either_way_when_asked():
    assert engine_process("--device", "cuda") and engine_process("--engine-core", "fast")
    assert not engine_process() and not engine_process("--engine-core", "openvino")
    assert not engine_process("--engine-core", "fast", "--no-engine-process")
    assert engine_process("--engine-core", "openvino_paged", "--engine-process")


def rendered_parameter(repository, model: str = "m") -> str:
    config = text_format.Parse((repository / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())
    return config.parameters["engine_process"].string_value


@pytest.mark.parametrize(
    "options, expected",
    [
        (EngineOptions(engine_core="fast"), "true"),
        (EngineOptions(), "false"),
        (EngineOptions(engine_core="fast", engine_process=False), "false"),
        (EngineOptions(engine_process=True), "true"),
    ],
)
def test_prepare_renders_the_parameter_and_the_manifest_says_it(checkpoint_dir, home, tmp_path, options, expected):
    repository = prepare([f"m={checkpoint_dir}"], home, tmp_path, options)
    assert rendered_parameter(repository) == expected
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["models"][0]["engine_process"] is (expected == "true")
