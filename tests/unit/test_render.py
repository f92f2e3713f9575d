"""Rendering the model repository: placeholders must all be filled, and the result is a valid Triton config."""

from pathlib import Path

import pytest
from google.protobuf import text_format
from tritonclient.grpc import model_config_pb2

import engine_contract
from build_engines.prepare import EngineOptions, prepare
from build_engines.render import TemplateError, fill


def declared(specs) -> dict[str, tuple[str, list[int]]]:
    """name -> (Triton type, dims) of contract tensors, as a parsed config lists them (no batch dimension)."""
    return {spec.name: (spec.triton_type, list(spec.dims)) for spec in specs}


# Every tensor of the engine contract: the `llm` model declares them all (and refuses what its core cannot honour).
CONTRACT_INPUTS = declared(engine_contract.INPUTS)
CONTRACT_OUTPUTS = declared(engine_contract.OUTPUTS)


def test_unfilled_placeholder_is_named():
    with pytest.raises(TemplateError, match=r"\$\{device\}"):
        fill("a: ${model}\nb: ${device}\n", {"model": "x"}, "t.pbtxt")


def test_the_contract_placeholder_is_filled_from_the_contract_without_being_given():
    rendered = fill('name: "${model}"\n${engine_contract_tensors}\n', {"model": "x"}, "t.pbtxt")
    config = text_format.Parse(rendered, model_config_pb2.ModelConfig())
    assert [i.name for i in config.input] == [spec.name for spec in engine_contract.INPUTS]
    assert [o.name for o in config.output] == [spec.name for spec in engine_contract.OUTPUTS]


def test_value_for_an_unknown_placeholder_is_an_error():
    with pytest.raises(TemplateError, match="typo_name"):
        fill("a: ${model}\n", {"model": "x", "typo_name": 1}, "t.pbtxt")


@pytest.fixture(scope="module")
def rendered(checkpoint_dir, home, tmp_path_factory):
    out = tmp_path_factory.mktemp("build")
    repository = prepare(["builtin:smollm2", f"second={checkpoint_dir}"], home, out, EngineOptions(instance_count=2))
    return out, repository


def test_engine_core_is_rendered(checkpoint_dir, home, tmp_path):
    repository = prepare([f"m={checkpoint_dir}"], home, tmp_path, EngineOptions(engine_core="fast"))
    parameters = parse_config(repository / "m" / "config.pbtxt").parameters
    assert parameters["engine_core"].string_value == "fast" and parameters["prefix_caching"].string_value == "false"
    repository = prepare([f"m={checkpoint_dir}"], home, tmp_path, EngineOptions(prefix_caching=True))
    assert parse_config(repository / "m" / "config.pbtxt").parameters["prefix_caching"].string_value == "true"


def parse_config(path):
    return text_format.Parse(path.read_text(), model_config_pb2.ModelConfig())


def test_every_model_gets_a_valid_triton_config(rendered):
    _, repository = rendered
    names = sorted(p.name for p in repository.iterdir())
    assert names == ["SmolLM2-135M-Instruct", "second"]
    for name in names:
        config = parse_config(repository / name / "config.pbtxt")
        assert config.name == name
        assert config.backend == "python"
        assert config.model_transaction_policy.decoupled
        assert config.instance_group[0].count == 2
        assert config.parameters["served_model_name"].string_value == name
        assert int(config.parameters["max_model_len"].string_value) == 8192
        assert config.parameters["engine_core"].string_value == "openvino_paged"  # the default core on CPU
        engine_checkpoint = Path(config.parameters["checkpoint_dir"].string_value)
        assert (engine_checkpoint / "openvino_model.xml").is_file()  # the core's own export ...
        tokenizer_dir = Path(config.parameters["tokenizer_dir"].string_value)
        assert (tokenizer_dir / "config.json").is_file() and tokenizer_dir != engine_checkpoint  # ... not the HF one
        assert (repository / name / "1" / "model.py").is_file()


def test_rendered_config_implements_the_engine_contract(rendered):
    _, repository = rendered
    config = parse_config(repository / "SmolLM2-135M-Instruct" / "config.pbtxt")
    assert config.max_batch_size > 0
    inputs = {i.name: (model_config_pb2.DataType.Name(i.data_type), list(i.dims)) for i in config.input}
    outputs = {o.name: (model_config_pb2.DataType.Name(o.data_type), list(o.dims)) for o in config.output}
    assert inputs == CONTRACT_INPUTS
    assert outputs == CONTRACT_OUTPUTS
    required = {i.name for i in config.input if not i.optional}
    assert required == {"max_tokens"}  # and one of text_input / input_ids (the model checks it)
    capabilities = engine_contract.parse_capabilities(config.parameters["capabilities"].string_value)
    core = config.parameters["engine_core"].string_value
    assert capabilities == {spec.name for spec in engine_contract.honoured(core)}


def test_manifest_records_what_was_built(rendered):
    import json

    out, _ = rendered
    manifest = json.loads((out / "manifest.json").read_text())
    assert [m["id"] for m in manifest["models"]] == ["SmolLM2-135M-Instruct", "second"]
    assert manifest["tools"]["torch"].startswith("2.13.0")


def test_duplicate_model_ids_are_refused(home, tmp_path, checkpoint_dir):
    with pytest.raises(ValueError, match="unique"):
        prepare([f"x={checkpoint_dir}", f"x={checkpoint_dir}"], home, tmp_path, EngineOptions())


def test_a_directory_that_is_not_a_checkpoint_is_refused(home, tmp_path):
    from build_engines.checkpoints import CheckpointError

    with pytest.raises(CheckpointError, match="config.json"):
        prepare([str(tmp_path)], home, tmp_path / "out", EngineOptions())
