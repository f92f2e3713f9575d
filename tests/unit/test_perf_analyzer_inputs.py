"""bench/nvidia_tools/perf_analyzer_inputs.json, perf_analyzer's requests for the `llm` model, speaks the engine
contract: every input is a contract input with its dtype and shape, the required ones are there, and it asks for
a fixed length (min_tokens = max_tokens). It is also exactly what its script writes, so neither drifts."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest

import engine_contract as contract

FOLDER = Path(__file__).resolve().parents[2] / "bench" / "nvidia_tools"
INPUTS_JSON = FOLDER / "perf_analyzer_inputs.json"

# The JSON values perf_analyzer reads for each wire datatype (it writes BOOL from true/false, BYTES from strings).
JSON_TYPES = {"BYTES": (str,), "BOOL": (bool,), "INT32": (int,), "UINT64": (int,), "FP32": (int, float)}
INT_RANGES = {"INT32": (-(2**31), 2**31 - 1), "UINT64": (0, 2**64 - 1)}


@pytest.fixture(scope="module")
def script():
    spec = importlib.util.spec_from_file_location("perf_analyzer_inputs", FOLDER / "perf_analyzer_inputs.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def entries() -> list[dict]:
    data = json.loads(INPUTS_JSON.read_text())
    assert set(data) == {"data"} and data["data"], "perf_analyzer's format: {'data': [request, ...]}"
    return data["data"]


def test_every_input_is_a_contract_input_with_its_dtype_and_shape(entries):
    for entry in entries:
        for name, values in entry.items():
            spec = contract.INPUTS_BY_NAME.get(name)
            assert spec is not None, f"{name} is not an input of the engine contract"
            assert isinstance(values, list), f"{name}: perf_analyzer wants a flat list of the tensor's elements"
            if not spec.is_list:  # fixed dims (the batch dimension is perf_analyzer's own)
                assert len(values) == math.prod(spec.dims), f"{name}: {len(values)} elements, dims {spec.dims}"
            for value in values:
                ok = isinstance(value, JSON_TYPES[spec.wire_type]) and (
                    spec.wire_type == "BOOL" or not isinstance(value, bool)  # true is not an INT32
                )
                assert ok, f"{name}: {value!r} is not {spec.wire_type}"
                if spec.wire_type in INT_RANGES:
                    low, high = INT_RANGES[spec.wire_type]
                    assert low <= value <= high, f"{name}: {value} out of {spec.wire_type}'s range"


def test_the_required_inputs_are_there_and_every_engine_honours_the_rest(entries):
    required = {spec.name for spec in contract.INPUTS if not spec.optional}
    for entry in entries:
        assert required <= set(entry), f"missing {sorted(required - set(entry))}"
        assert (contract.TEXT_INPUT.name in entry) != (contract.INPUT_IDS.name in entry), "one prompt: text or ids"
        for name in entry:  # nothing a core would refuse (the fast core on the GPU, openvino_paged here)
            assert contract.INPUTS_BY_NAME[name].honoured_by == frozenset(contract.ENGINES), name


def test_fixed_length_streamed_requests(entries):
    for entry in entries:
        assert entry["min_tokens"] == entry["max_tokens"] == [128], "end-of-sequence ignored: exactly 128 tokens"
        assert entry["stream"] == [True], "the llm model is decoupled: perf_analyzer runs with --streaming"
    prompts = [entry["text_input"][0] for entry in entries]
    assert len(set(prompts)) == len(prompts), "distinct prompts: no shared prefix between requests"


def test_the_file_is_what_the_script_writes(script, tmp_path):
    out = tmp_path / "inputs.json"
    script.main(["--out", str(out)])
    assert out.read_text() == INPUTS_JSON.read_text(), "rerun bench/nvidia_tools/perf_analyzer_inputs.py"


def test_token_metrics_come_from_the_profile_export():
    """perf_analyzer counts responses; bench/nvidia_tools/compare.py turns its per-response timestamps into tokens:
    a request's tokens are its last response's num_output_tokens, however many responses carried them."""
    spec = importlib.util.spec_from_file_location("compare", FOLDER / "compare.py")
    assert spec is not None and spec.loader is not None
    compare = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(compare)
    ms = 1_000_000  # ns
    requests = [  # sent at 0 and 100 ms; first response 50 ms later; 4 responses carrying 128 tokens
        {
            "timestamp": start,
            "response_timestamps": [start + 50 * ms, start + 100 * ms, start + 150 * ms, start + 177 * ms],
            "response_outputs": [{"num_output_tokens": n} for n in (1, 40, 90, 128)],
        }
        for start in (0, 100 * ms)
    ]
    export = {"experiments": [{"experiment": {"mode": "concurrency", "value": 2}, "requests": requests}]}
    metrics = compare.parse_perf_analyzer_export(export, output_tokens=128)
    assert metrics["output_tokens"] == 256 and metrics["seconds"] == 0.277
    assert metrics["output_tokens_per_s"] == round(256 / 0.277, 1)
    assert metrics["ttft_p50_ms"] == 50.0 and metrics["itl_p50_ms"] == 1.0  # (177 - 50) ms / 127 tokens
    assert metrics["responses_per_request"] == 4.0 and metrics["failed"] == 0
