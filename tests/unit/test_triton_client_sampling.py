"""The Triton client's half of the sampling and output tensors, in process: what a request sends, which inputs
it needs of its model, how a response's outputs read back (top-k flattened [token][rank]), the capabilities of a
model config, and the token pieces logprobs show."""

from __future__ import annotations

import numpy as np
import pytest

import engine_contract as contract
from frontend_api.engine.protocol import GenerationRequest, SamplingParams
from frontend_api.engine.triton import engine_model_from_config, infer_error, input_values, needed_inputs, parse_outputs


def request(prompt_ids=None, **params) -> GenerationRequest:
    return GenerationRequest("r", "llm", "Hi", SamplingParams(max_tokens=4, **params), prompt_token_ids=prompt_ids)


def sent(req: GenerationRequest) -> dict:
    return {spec.name: value for spec, value in input_values(req)}


def test_a_plain_request_sends_the_text_and_needs_no_sampling_input():
    values = sent(request())
    assert values["text_input"] == "Hi" and "input_ids" not in values
    for name in ("num_return_sequences", "return_log_probs", "num_top_log_probs", "embedding_bias_token_ids"):
        assert name not in values
    assert needed_inputs(request()) == ["text_input", "max_tokens"]


def test_the_sampling_and_output_inputs():
    req = request(
        prompt_ids=(1, 2, 3),
        n=3,
        logprobs=True,
        top_logprobs=5,
        prompt_logprobs=True,
        logit_bias=((7, -100.0), (9, 2.5)),
        stop_token_ids=(4,),
        bad_words=("no",),
    )
    values = sent(req)
    assert "text_input" not in values and values["input_ids"] == (1, 2, 3)
    assert values["num_return_sequences"] == 3 and values["return_log_probs"] is True
    assert values["num_top_log_probs"] == 5 and values["return_prompt_log_probs"] is True
    assert values["embedding_bias_token_ids"] == [7, 9] and values["embedding_bias_weights"] == [-100.0, 2.5]
    assert values["stop_token_ids"] == (4,) and values["bad_words"] == ("no",)
    assert set(needed_inputs(req)) == {
        "input_ids",
        "max_tokens",
        "num_return_sequences",
        "return_log_probs",
        "num_top_log_probs",
        "return_prompt_log_probs",
        "embedding_bias_token_ids",
        "embedding_bias_weights",
        "stop_token_ids",
        "bad_words",
    }
    # every tensor encodes as its spec says
    for spec, value in input_values(req):
        assert spec.array(value).dtype == spec.numpy_dtype


def test_a_guide_is_sent_as_the_guided_decoding_inputs():
    schema = '{"type": "object"}'
    values = sent(request(guide_type="json_schema", guide=schema))
    assert values["guided_decoding_guide_type"] == "json_schema" and values["guided_decoding_guide"] == schema
    assert {"guided_decoding_guide_type", "guided_decoding_guide"} <= set(
        needed_inputs(request(guide_type="regex", guide="a+"))
    )
    any_object = sent(request(guide_type="json"))  # the guide of "json" is empty: not sent
    assert any_object["guided_decoding_guide_type"] == "json" and "guided_decoding_guide" not in any_object
    assert "guided_decoding_guide_type" not in sent(request())


def test_top_logprobs_alone_asks_for_the_log_probs_too():
    values = sent(request(top_logprobs=2))
    assert values["return_log_probs"] is True and values["num_top_log_probs"] == 2


def test_a_response_reads_back_with_its_top_k_per_token():
    k = 2
    arrays = {
        "text_output": contract.TEXT_OUTPUT.array(["ab"]),
        "num_input_tokens": contract.NUM_INPUT_TOKENS.array(3),
        "num_output_tokens": contract.NUM_OUTPUT_TOKENS.array(2),
        "finish_reason": contract.FINISH_REASON.array("stop"),
        "sequence_index": contract.SEQUENCE_INDEX.array(1),
        "output_ids": contract.OUTPUT_IDS.array([10, 11]),
        "output_log_probs": contract.OUTPUT_LOG_PROBS.array([-0.5, -1.0]),
        "cum_log_probs": contract.CUM_LOG_PROBS.array(-1.5),
        "top_log_probs": contract.TOP_LOG_PROBS.array([-0.5, -2.0, -1.0, -1.5]),
        "top_log_prob_ids": contract.TOP_LOG_PROB_IDS.array([10, 20, 11, 21]),
        "prompt_log_probs": contract.PROMPT_LOG_PROBS.array([-3.0, -4.0]),
        "prompt_top_log_probs": contract.PROMPT_TOP_LOG_PROBS.array([-1.0, -3.0, -2.0, -4.0]),
        "prompt_top_log_prob_ids": contract.PROMPT_TOP_LOG_PROB_IDS.array([5, 6, 7, 8]),
    }
    chunk = parse_outputs(arrays.get, k)
    assert (chunk.text, chunk.finish_reason, chunk.index) == ("ab", "stop", 1)
    assert chunk.token_ids == (10, 11) and chunk.logprobs == (-0.5, -1.0) and chunk.cum_logprob == -1.5
    assert chunk.top_logprobs == (((10, -0.5), (20, -2.0)), ((11, -1.0), (21, -1.5)))
    assert chunk.prompt_logprobs == (-3.0, -4.0)
    assert chunk.prompt_top_logprobs == (((5, -1.0), (6, -3.0)), ((7, -2.0), (8, -4.0)))


def test_a_response_of_an_engine_without_the_new_outputs_reads_as_before():
    arrays = {"text_output": np.array([[b"hi"]], dtype=np.object_)}
    chunk = parse_outputs(arrays.get, 0)
    assert chunk.text == "hi" and chunk.index == 0 and chunk.token_ids == () and chunk.logprobs == ()
    assert chunk.prompt_logprobs is None and chunk.top_logprobs == ()


def test_misshapen_top_k_is_dropped_not_a_crash():
    arrays = {
        "output_ids": contract.OUTPUT_IDS.array([1, 2]),
        "top_log_probs": contract.TOP_LOG_PROBS.array([-1.0, -2.0, -3.0]),  # not 2 x 2
        "top_log_prob_ids": contract.TOP_LOG_PROB_IDS.array([1, 2, 3]),
    }
    assert parse_outputs(arrays.get, 2).top_logprobs == ()


def config(**parameters) -> dict:
    base = {"served_model_name": "m", "tokenizer_dir": "/t", "max_model_len": "64"}
    return {"parameters": {key: {"string_value": value} for key, value in (base | parameters).items()}}


def test_a_model_config_declares_its_capabilities():
    model = engine_model_from_config("llm", config(capabilities=contract.capabilities(contract.TENSORRT_LLM)))
    assert model is not None and model.capabilities == contract.parse_capabilities(
        contract.capabilities(contract.TENSORRT_LLM)
    )
    assert "capabilities" not in model.metadata
    undeclared = engine_model_from_config("llm", config())
    assert undeclared is not None and undeclared.capabilities is None  # unknown: the engine refuses by itself
    nothing = engine_model_from_config("llm", config(capabilities=""))
    assert nothing is not None and nothing.capabilities == frozenset()


@pytest.mark.parametrize(
    "message, param, name",
    [
        (
            "invalid request: num_top_log_probs is not supported by the llm engine core 'openvino'",
            "top_logprobs",
            "num_top_log_probs",
        ),
        ("invalid request: num_return_sequences must be from 1 to 16", "n", "num_return_sequences"),
        ("invalid request: embedding_bias_token_ids must be token ids", "logit_bias", "embedding_bias_token_ids"),
        ("unexpected inference input 'return_log_probs' for model 'x'", "logprobs", "return_log_probs"),
        (
            "invalid request: guided_decoding_guide: the JSON schema is not valid",
            "response_format",
            "guided_decoding_guide",
        ),
    ],
)
def test_an_engine_refusal_names_the_field_and_the_input(message, param, name):
    error = infer_error(message)
    assert (error.status, error.param, error.input_name) == (400, param, name)


def test_token_pieces_of_partial_utf8_keep_their_raw_bytes(checkpoint_dir):
    from frontend_api.openai.tokenization import load_model_tokenizer

    tokenizer = load_model_tokenizer(checkpoint_dir)
    text = "héllo → wörld 😀"
    pieces = [tokenizer.piece(i) for i in tokenizer.encode(text, add_special_tokens=False)]
    assert bytes(b for piece in pieces for b in piece.bytes).decode("utf-8") == text
    assert any("\ufffd" in piece.text for piece in pieces), "the emoji spans two byte-level pieces"
    assert all(piece.bytes == list(piece.text.encode()) for piece in pieces if "\ufffd" not in piece.text)
    assert tokenizer.vocab_size == 49152


class _Result:
    """A stand-in for tritonclient's InferResult: the output arrays, and the final flag."""

    def __init__(self, final: bool = False, **arrays):
        self.arrays = arrays
        self.final = final

    def as_numpy(self, name):
        return self.arrays.get(name)

    def get_response(self):
        flag = type("Param", (), {"bool_param": self.final})()
        return type("Response", (), {"parameters": {"triton_final_response": flag}})()


class _Call:
    """A stand-in for the stream_infer call: its responses, then the end of the stream."""

    def __init__(self, results):
        self.results = list(results)
        self.read = 0
        self.cancelled = False

    async def __anext__(self):
        if self.read == len(self.results):
            raise StopAsyncIteration
        self.read += 1
        return self.results[self.read - 1], None

    def cancel(self):
        self.cancelled = True


def response(index: int, text: str, finish: str | None = None, final: bool = False) -> _Result:
    arrays = {
        "text_output": contract.TEXT_OUTPUT.array([text]),
        "sequence_index": contract.SEQUENCE_INDEX.array(index),
        "num_output_tokens": contract.NUM_OUTPUT_TOKENS.array(1),
    }
    if finish:
        arrays["finish_reason"] = contract.FINISH_REASON.array(finish)
    return _Result(final, **arrays)


async def chunks_of(results, n: int) -> tuple[list, _Call]:
    from frontend_api.engine.triton import TritonEngine

    engine = TritonEngine("127.0.0.1:1")
    call = _Call(results)
    engine._client.stream_infer = lambda inputs_iterator: call  # type: ignore[method-assign]
    try:
        got = [chunk async for chunk in engine.generate(request(n=n))]
    finally:
        await engine.close()
    return got, call


async def test_n_sequences_end_on_the_final_flag_not_the_first_finish_reason():
    results = [
        response(0, "a"),
        response(1, "b"),
        response(0, "c", "stop"),  # sequence 0 ends; sequence 1 goes on
        response(1, "d"),
        response(1, "e", "length", final=True),
        response(0, "not a chunk: after the final flag"),
    ]
    got, call = await chunks_of(results, n=2)
    assert [(c.index, c.text, c.finish_reason) for c in got] == [
        (0, "a", None),
        (1, "b", None),
        (0, "c", "stop"),
        (1, "d", None),
        (1, "e", "length"),
    ]


async def test_an_engine_without_the_flag_ends_when_every_sequence_finished():
    got, _ = await chunks_of([response(0, "a", "stop"), response(1, "b"), response(1, "c", "stop")], n=2)
    assert [c.text for c in got] == ["a", "b", "c"]
    got, _ = await chunks_of([response(0, "a", "stop"), response(0, "after")], n=1)
    assert [c.text for c in got] == ["a"]
