"""The TensorRT-LLM repository served for real, as far as it runs here.

`llmserve build --engine trtllm --dry-run` renders the repository; its `tensorrt_llm` model (C++ backend, cannot
load here) is swapped for the STAND-IN of tests/trtllm_standin.py; preprocessing, postprocessing, the ensemble
and tensorrt_llm_bls are the real rendered models, on the real Triton, with the real SmolLM2 behind the stand-in,
and the front-end serves them from configuration alone (`llmserve serve --model-repository`).
"""

from __future__ import annotations

import signal

import numpy as np
import openai
import pytest
import tritonclient.grpc as grpcclient
from openai import OpenAI
from trtllm_standin import start_trtllm_stack

from frontend_api.engine.protocol import EngineError, GenerationRequest, SamplingParams
from frontend_api.engine.triton import TritonEngine

from stack import MODEL

pytestmark = pytest.mark.integration
WAVE = "🌊"  # three byte-level tokens, none a whole character on its own
MAX_INPUT_LEN = 512
EMOJI_PROMPT = [{"role": "user", "content": f"Write three emoji about the sea {WAVE}"}]


@pytest.fixture(scope="module")
def trtllm_stack(checkpoint_dir, tmp_path_factory):
    stack = start_trtllm_stack(checkpoint_dir, tmp_path_factory.mktemp("trtllm"), "ensemble", MAX_INPUT_LEN)
    yield stack
    code = stack.stop(signal.SIGTERM)
    assert code == 0, f"llmserve serve exited with {code}:\n{stack.log()[-3000:]}"


@pytest.fixture(scope="module")
def client(trtllm_stack) -> OpenAI:
    return OpenAI(base_url=trtllm_stack.api_url, api_key="unused", max_retries=0, timeout=120)


@pytest.fixture(scope="module")
def triton(trtllm_stack):
    with grpcclient.InferenceServerClient(f"127.0.0.1:{trtllm_stack.triton_grpc_port}") as client:
        yield client


@pytest.fixture(scope="module")
def greedy_reference(checkpoint_dir, tokenizer):
    """What SmolLM2 generates greedily, straight from transformers."""
    import torch
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32).eval()

    def generate(prompt: str, max_new_tokens: int) -> str:
        ids = tokenizer(prompt, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            out = model.generate(ids, max_new_tokens=max_new_tokens, do_sample=False)
        return tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True)

    return generate


def test_the_front_end_serves_the_entry_model_only(client):
    assert [m.id for m in client.models.list().data] == [MODEL]


def test_completion_through_the_ensemble_equals_greedy_transformers(client, greedy_reference, tokenizer):
    prompt = "The capital of France is"
    reply = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=12)
    assert reply.choices[0].text == greedy_reference(prompt, 12)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert reply.usage.completion_tokens == 12


def test_streamed_chat_never_splits_a_character_and_equals_the_whole_reply(client):
    whole = client.chat.completions.create(model=MODEL, messages=EMOJI_PROMPT, temperature=0, max_tokens=24)
    text = whole.choices[0].message.content
    assert WAVE in text  # the reply has multi-token characters, so the check below means something
    stream = client.chat.completions.create(
        model=MODEL,
        messages=EMOJI_PROMPT,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    deltas, usage, reasons = [], None, []
    for chunk in stream:
        if chunk.choices:
            deltas.append(chunk.choices[0].delta.content or "")
            reasons.append(chunk.choices[0].finish_reason)
        usage = chunk.usage or usage
    assert all("\ufffd" not in delta for delta in deltas), deltas
    assert sum(delta.count(WAVE) for delta in deltas) == text.count(WAVE)
    assert "".join(deltas) == text
    assert reasons[-1] == whole.choices[0].finish_reason
    assert usage.completion_tokens == whole.usage.completion_tokens


def test_chat_ending_on_end_of_sequence_reports_stop(client):
    reply = client.chat.completions.create(
        model=MODEL,
        temperature=0,
        max_tokens=64,
        messages=[{"role": "user", "content": "What is the capital of France?"}],
    )
    assert "Paris" in reply.choices[0].message.content
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage.completion_tokens < 64


def test_a_prompt_over_the_engines_max_input_len_is_a_400(client, tokenizer):
    prompt = "word " * (MAX_INPUT_LEN + 10)
    assert len(tokenizer(prompt)["input_ids"]) > MAX_INPUT_LEN  # yet far below max_model_len (8192)
    with pytest.raises(openai.BadRequestError, match="max_input_len"):
        client.completions.create(model=MODEL, prompt=prompt, max_tokens=5)


def test_preprocessing_token_ids_equal_the_tokenizers(triton, tokenizer):
    text = "Héllo wörld 🌊, the capital of France is"
    inputs = [
        grpcclient.InferInput("QUERY", [1, 1], "BYTES"),
        grpcclient.InferInput("REQUEST_OUTPUT_LEN", [1, 1], "INT32"),
        grpcclient.InferInput("STOP_WORDS_DICT", [1, 2], "BYTES"),
    ]
    inputs[0].set_data_from_numpy(np.array([[text.encode()]], dtype=np.object_))
    inputs[1].set_data_from_numpy(np.array([[7]], dtype=np.int32))
    inputs[2].set_data_from_numpy(np.array([[b"Paris", b"\n\n"]], dtype=np.object_))
    result = triton.infer("preprocessing", inputs)
    expected = tokenizer(text)["input_ids"]
    assert result.as_numpy("INPUT_ID").tolist() == [expected]
    assert result.as_numpy("REQUEST_INPUT_LEN").tolist() == [[len(expected)]]
    assert result.as_numpy("REQUEST_OUTPUT_LEN").tolist() == [[7]]
    paris, blank = (tokenizer.encode(w, add_special_tokens=False) for w in ("Paris", "\n\n"))
    ids, offsets = result.as_numpy("STOP_WORDS_IDS")[0].tolist()
    assert ids == paris + blank
    assert offsets[:2] == [len(paris), len(paris) + len(blank)] and set(offsets[2:]) <= {-1}
    assert result.as_numpy("OUT_END_ID").tolist() == [[tokenizer.eos_token_id]]


def _postprocess(triton, tokens: list[int], request_id: str) -> tuple[str, str]:
    inputs = [
        grpcclient.InferInput("TOKENS_BATCH", [1, 1, len(tokens)], "INT32"),
        grpcclient.InferInput("SEQUENCE_LENGTH", [1, 1], "INT32"),
    ]
    inputs[0].set_data_from_numpy(np.array([[tokens]], dtype=np.int32))
    inputs[1].set_data_from_numpy(np.array([[len(tokens)]], dtype=np.int32))
    result = triton.infer("postprocessing", inputs, request_id=request_id)
    text, reason = (result.as_numpy(name).reshape(-1)[0].decode() for name in ("OUTPUT", "FINISH_REASON"))
    return text, reason


def test_postprocessing_holds_a_split_character_back_until_it_is_whole(triton, tokenizer):
    ids = tokenizer.encode(f" sea {WAVE}!", add_special_tokens=False)
    pieces = [_postprocess(triton, [token], "wave-stream")[0] for token in ids]
    assert all("\ufffd" not in piece for piece in pieces), pieces
    assert "".join(pieces) == f" sea {WAVE}!"
    assert any(piece == "" for piece in pieces)  # something was held back: the emoji spans tokens
    assert _postprocess(triton, [tokenizer.eos_token_id], "wave-stream") == ("", "stop")
    # A stream cut inside a character, then ended: its state is dropped, so the same id starts afresh.
    wave = tokenizer.encode(WAVE, add_special_tokens=False)
    assert _postprocess(triton, wave[:2], "cut-stream") == ("", "")
    assert _postprocess(triton, [tokenizer.eos_token_id], "cut-stream") == ("", "stop")
    sea = tokenizer.encode(" sea", add_special_tokens=False)
    assert _postprocess(triton, sea, "cut-stream")[0] == " sea"


async def _generate(port: int, model: str, prompt: str, params: SamplingParams):
    engine = TritonEngine(f"127.0.0.1:{port}")
    try:
        return [c async for c in engine.generate(GenerationRequest(f"{model}-test", model, prompt, params))]
    finally:
        await engine.close()


async def test_bls_model_speaks_the_same_contract_as_the_ensemble(trtllm_stack):
    """tensorrt_llm_bls is not the entry here, so it is driven with the front-end's own Triton engine code."""
    prompt = "<|im_start|>user\nWrite three emoji about the sea 🌊<|im_end|>\n<|im_start|>assistant\n"
    params = SamplingParams(max_tokens=20, temperature=0.0)
    port = trtllm_stack.triton_grpc_port
    bls = await _generate(port, "tensorrt_llm_bls", prompt, params)
    ensemble = await _generate(port, "ensemble", prompt, params)
    assert "".join(c.text for c in bls) == "".join(c.text for c in ensemble)
    assert WAVE in "".join(c.text for c in bls) and all("\ufffd" not in c.text for c in bls)
    assert bls[-1].finish_reason == "length" and bls[-1].num_output_tokens == 20
    assert bls[-1].num_input_tokens == ensemble[-1].num_input_tokens


async def test_bls_refuses_a_prompt_over_max_input_len_as_invalid(trtllm_stack):
    with pytest.raises(EngineError, match="max_input_len") as error:
        await _generate(
            trtllm_stack.triton_grpc_port,
            "tensorrt_llm_bls",
            "word " * (MAX_INPUT_LEN + 10),
            SamplingParams(max_tokens=5),
        )
    assert error.value.status == 400


async def test_bls_trims_a_stop_string_and_reports_stop(trtllm_stack):
    prompt = "The capital of France is"
    port = trtllm_stack.triton_grpc_port
    full = "".join(c.text for c in await _generate(port, "tensorrt_llm_bls", prompt, SamplingParams(max_tokens=12)))
    stop = full.split()[1]  # a word from the middle of the greedy continuation
    chunks = await _generate(port, "tensorrt_llm_bls", prompt, SamplingParams(max_tokens=12, stop=(stop,)))
    assert "".join(c.text for c in chunks) == full[: full.index(stop)]
    assert chunks[-1].finish_reason == "stop"


def _stream(port: int, model: str, values: dict) -> list[dict]:
    """Every response of one streamed request with the contract's `values`, each as {output name: value}."""
    import queue

    import engine_contract as contract

    inputs = []
    for name, value in values.items():
        spec = contract.INPUTS_BY_NAME[name]
        array = spec.array(value)
        tensor = grpcclient.InferInput(name, list(array.shape), spec.wire_type)
        tensor.set_data_from_numpy(array)
        inputs.append(tensor)
    results: queue.Queue = queue.Queue()
    with grpcclient.InferenceServerClient(f"127.0.0.1:{port}") as client:
        client.start_stream(callback=lambda result, error: results.put((result, error)))
        client.async_stream_infer(model, inputs, request_id=f"{model}-passthrough")
        responses = []
        while True:
            result, error = results.get(timeout=120)
            assert error is None, error
            response = result.get_response()
            if response.outputs:
                responses.append({spec.name: spec.read(result.as_numpy(spec.name)) for spec in contract.OUTPUTS
                                  if result.as_numpy(spec.name) is not None})  # fmt: skip
            final = response.parameters.get("triton_final_response")
            if final is not None and final.bool_param:
                break
        client.stop_stream()
    return responses


@pytest.mark.parametrize("entry", ["ensemble", "tensorrt_llm_bls"])
def test_sampling_tensors_pass_through_to_the_engine(trtllm_stack, tokenizer, checkpoint_dir, entry):
    """input_ids, num_return_sequences, return_log_probs and the logit bias reach tensorrt_llm (the stand-in) and
    its sequence_index, output_ids and log-probabilities come back in the contract's shapes."""
    import torch
    from transformers import AutoModelForCausalLM

    prompt = tokenizer("The capital of France is")["input_ids"]
    common = {"input_ids": prompt, "max_tokens": 4, "stream": True, "temperature": 0.0, "return_log_probs": True}
    plain = _stream(trtllm_stack.triton_grpc_port, entry, {**common, "num_return_sequences": 2})
    by_index: dict[int, list[int]] = {0: [], 1: []}
    log_probs: dict[int, list[float]] = {0: [], 1: []}
    for response in plain:
        by_index[response["sequence_index"]] += response["output_ids"]
        log_probs[response["sequence_index"]] += response["output_log_probs"]
    assert by_index[0] == by_index[1] and len(by_index[0]) == 4  # greedy twice
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32).eval()
    with torch.no_grad():
        logits = model(torch.tensor([prompt + by_index[0]])).logits[0, len(prompt) - 1 : -1]
    reference = torch.log_softmax(logits, -1).gather(1, torch.tensor(by_index[0])[:, None])[:, 0]
    assert np.allclose(log_probs[0], reference.numpy(), atol=1e-3)
    first = by_index[0][0]
    biased = _stream(
        trtllm_stack.triton_grpc_port,
        entry,
        {**common, "embedding_bias_token_ids": [first], "embedding_bias_weights": [-100.0], "stop_token_ids": [13]},
    )
    assert biased[0]["output_ids"][0] != first
