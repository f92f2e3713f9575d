"""The rendered TensorRT-LLM repository: every config is a valid Triton ModelConfig, the ensemble's wiring is
consistent, and the ensemble and BLS models expose the engine contract the front-end sends."""

import dataclasses

import pytest
from google.protobuf import json_format, text_format
from test_render import declared
from tritonclient.grpc import model_config_pb2

import engine_contract
from build_engines.render import TemplateError, render_model
from build_engines.trtllm_repository import (
    MODELS,
    TEMPLATES,
    RepositoryOptions,
    model_values,
    render_trtllm_repository,
)
from frontend_api.engine.protocol import GenerationRequest, SamplingParams
from frontend_api.engine.triton import build_inputs, engine_model_from_config

DataType = model_config_pb2.DataType
# tritonclient's wire datatype -> the config's type
WIRE_TYPES = {spec.wire_type: spec.triton_type for spec in engine_contract.INPUTS}
# The contract's tensors the TensorRT-LLM path honours: its entry models (ensemble, BLS) declare exactly these.
TRTLLM_INPUTS = declared(engine_contract.honoured(engine_contract.TENSORRT_LLM))
TRTLLM_OUTPUTS = declared(engine_contract.honoured(engine_contract.TENSORRT_LLM, engine_contract.OUTPUTS))


def options(tmp_path, **changes) -> RepositoryOptions:
    base = RepositoryOptions(
        served_model_name="smol",
        tokenizer_dir=tmp_path / "tok",
        engine_dir=tmp_path / "eng",
        max_model_len=2048,
        max_batch_size=16,
        max_input_len=1024,
    )
    return dataclasses.replace(base, **changes)


def load(repository, model) -> model_config_pb2.ModelConfig:
    return text_format.Parse((repository / model / "config.pbtxt").read_text(), model_config_pb2.ModelConfig())


@pytest.fixture
def repository(tmp_path):
    return render_trtllm_repository(tmp_path / "repo", options(tmp_path))


def tensors(items) -> dict[str, tuple[str, list[int]]]:
    return {t.name: (DataType.Name(t.data_type), list(t.dims)) for t in items}


def test_all_five_models_render_into_valid_configs(repository):
    assert sorted(p.name for p in repository.iterdir()) == sorted(MODELS)
    for model in MODELS:
        config = load(repository, model)
        assert config.name == model
        assert (repository / model / "1").is_dir()  # Triton needs a version folder
        assert "${" not in (repository / model / "config.pbtxt").read_text()
    for model in ("postprocessing", "tensorrt_llm_bls"):  # the shared detokenizer is copied in
        assert (repository / model / "1" / "text_stream.py").is_file()


def test_tensorrt_llm_model_is_the_cpp_inflight_batcher(repository, tmp_path):
    config = load(repository, "tensorrt_llm")
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert config.backend == "tensorrtllm"
    assert config.model_transaction_policy.decoupled
    assert params["gpt_model_type"] == "inflight_fused_batching"
    assert params["gpt_model_path"] == str(tmp_path / "eng")
    assert params["enable_kv_cache_reuse"] == "true" and params["enable_chunked_context"] == "true"
    assert params["batch_scheduler_policy"] == "guaranteed_no_evict"
    assert float(params["kv_cache_free_gpu_mem_fraction"]) == 0.9
    assert int(params["cancellation_check_period_ms"]) == 100
    assert config.max_batch_size == 16


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_entry_models_implement_the_engine_contract(repository, model):
    config = load(repository, model)
    assert config.max_batch_size > 0
    assert tensors(config.input) == TRTLLM_INPUTS
    assert tensors(config.output) == TRTLLM_OUTPUTS
    assert {i.name for i in config.input if not i.optional} == {"max_tokens"}  # + text_input or input_ids
    capabilities = config.parameters["capabilities"].string_value
    assert engine_contract.parse_capabilities(capabilities) == set(TRTLLM_INPUTS)


@pytest.mark.parametrize("model", ["ensemble", "tensorrt_llm_bls"])
def test_what_the_front_end_sends_matches_the_entry_inputs(repository, model):
    params = SamplingParams(
        max_tokens=5,
        temperature=0.5,
        top_p=0.9,
        top_k=3,
        seed=7,
        min_tokens=1,
        repetition_penalty=1.1,
        presence_penalty=0.2,
        frequency_penalty=0.3,
        stop=("x",),
    )
    sent = build_inputs(GenerationRequest("id", model, "hi", params))
    declared = tensors(load(repository, model).input)
    assert len(sent) == 15
    for tensor in sent:
        assert tensor.name() in declared, tensor.name()
        data_type, dims = declared[tensor.name()]
        assert WIRE_TYPES[tensor.datatype()] == data_type, tensor.name()
        assert tensor.shape()[0] == 1 and (dims == [-1] or tensor.shape()[1:] == dims), tensor.name()


def test_ensemble_wiring_is_consistent(repository):
    """Every step input exists on its model with the type of what feeds it; every ensemble output is produced."""
    ensemble = load(repository, "ensemble")
    available = {name: data_type for name, (data_type, _) in tensors(ensemble.input).items()}
    for step in ensemble.ensemble_scheduling.step:
        model = load(repository, step.model_name)
        inputs, outputs = tensors(model.input), tensors(model.output)
        required = {i.name for i in model.input if not i.optional}
        assert required <= set(step.input_map), f"{step.model_name} misses {required - set(step.input_map)}"
        for key, source in step.input_map.items():
            assert key in inputs, f"{step.model_name} has no input {key}"
            assert available[source] == inputs[key][0], f"{step.model_name}.{key} fed {available[source]}"
        for key, target in step.output_map.items():
            assert key in outputs, f"{step.model_name} has no output {key}"
            available[target] = outputs[key][0]
    for name, (data_type, _) in tensors(ensemble.output).items():
        assert available.get(name) == data_type, name


def test_contract_names_map_to_the_backend_names(repository):
    step = {s.model_name: s for s in load(repository, "ensemble").ensemble_scheduling.step}["tensorrt_llm"]
    mapping = dict(step.input_map)
    assert mapping["runtime_top_k"] == "top_k" and mapping["runtime_top_p"] == "top_p"
    assert mapping["streaming"] == "stream" and mapping["min_tokens"] == "min_tokens" and mapping["seed"] == "seed"


@pytest.mark.parametrize("entry", ["ensemble", "tensorrt_llm_bls"])
def test_front_end_discovers_exactly_the_entry_model(tmp_path, entry):
    repository = render_trtllm_repository(tmp_path / "repo", options(tmp_path, entry=entry))
    served = {}
    for model in MODELS:
        as_json = json_format.MessageToDict(load(repository, model), preserving_proto_field_name=True)
        if (found := engine_model_from_config(model, as_json)) is not None:
            served[model] = found
    assert list(served) == [entry]
    assert served[entry].id == "smol" and served[entry].max_model_len == 2048
    assert served[entry].tokenizer_dir == str(tmp_path / "tok")


def test_an_unfilled_variable_is_an_error_that_names_it(tmp_path):
    values = model_values(options(tmp_path))["tensorrt_llm"]
    del values["engine_dir"]
    with pytest.raises(TemplateError, match=r"\$\{engine_dir\}"):
        render_model(TEMPLATES / "tensorrt_llm", tmp_path / "out", values)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"entry": "llm"}, "entry"),
        ({"kv_cache_free_gpu_mem_fraction": 1.5}, "kv_cache_free_gpu_mem_fraction"),
        ({"batch_scheduler_policy": "fifo"}, "batch_scheduler_policy"),
        ({"max_batch_size": 0}, "max_batch_size"),
        ({"max_input_len": 2048}, "max_input_len"),
    ],
)
def test_invalid_options_are_refused_by_name(tmp_path, change, message):
    with pytest.raises(ValueError, match=message):
        options(tmp_path, **change)


def test_the_cpp_guided_decoder_gets_xgrammar_and_the_vocabulary_of_the_tokenizer(repository, tmp_path, checkpoint_dir):
    import json

    import numpy as np
    import xgrammar as xgr

    from build_engines.trtllm import copy_tokenizer

    params = {k: v.string_value for k, v in load(repository, "tensorrt_llm").parameters.items()}
    assert params["guided_decoding_backend"] == "xgrammar"
    assert params["xgrammar_tokenizer_info_path"] == str(tmp_path / "tok" / "xgrammar_tokenizer_info.json")
    tokenizer_dir = copy_tokenizer(checkpoint_dir, tmp_path / "copied")
    info = json.loads((tokenizer_dir / "xgrammar_tokenizer_info.json").read_text())
    assert len(info["encoded_vocab"]) == 49152 and info["stop_token_ids"] == [2]  # SmolLM2's <|im_end|>
    # what the C++ backend builds from it (TokenizerInfo::FromVocabAndMetadata) masks as the HF tokenizer's does
    from transformers import AutoTokenizer

    metadata = xgr.TokenizerInfo._detect_metadata_from_hf(info["tokenizer_str"])  # as the C++ backend does
    ours = xgr.TokenizerInfo(info["encoded_vocab"], stop_token_ids=info["stop_token_ids"], **metadata)
    reference = xgr.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(checkpoint_dir, local_files_only=True))
    masks = []
    for tokenizer_info in (ours, reference):
        compiled = xgr.GrammarCompiler(tokenizer_info, max_threads=1).compile_regex("(yes|no) [0-9]+")
        bitmask = np.zeros(xgr.get_bitmask_shape(1, tokenizer_info.vocab_size), dtype=np.int32)
        xgr.GrammarMatcher(compiled).fill_next_token_bitmask(bitmask)
        masks.append(bitmask)
    assert ours.vocab_type == reference.vocab_type and np.array_equal(masks[0], masks[1])
