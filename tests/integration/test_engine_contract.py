"""The `llm` Triton model, driven directly over gRPC with the engine contract's tensors (no front-end)."""

from __future__ import annotations

import asyncio
import time

import pytest
import tritonclient.grpc as grpcclient
import tritonclient.grpc.aio as aiogrpc

import engine_contract as contract

from stack import MODEL

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


def tensor(name, value):
    spec = contract.INPUTS_BY_NAME[name]
    array = spec.array(value)
    t = grpcclient.InferInput(name, list(array.shape), spec.wire_type)
    t.set_data_from_numpy(array)
    return t


def inputs(prompt=PROMPT, max_tokens=8, **extra):
    extra = {"stream": True, **extra}
    values = {"text_input": prompt, "max_tokens": max_tokens, **extra}
    return [tensor(name, value) for name, value in values.items() if value is not None]


async def run(stack, tensors, stop_after=None):
    """Send one request; return (responses, error). Close the stream after `stop_after` responses."""
    client = aiogrpc.InferenceServerClient(f"127.0.0.1:{stack.triton_grpc_port}")

    async def requests():
        yield {"model_name": MODEL, "inputs": tensors}

    responses, failure = [], None
    try:
        stream = client.stream_infer(requests())
        # Read until Triton ends the stream (it does after the final response, since we half-closed).
        async for result, error in stream:
            if error is not None:  # the final response; keep reading until Triton ends the stream
                failure = error
                continue
            responses.append(result)
            if stop_after and len(responses) >= stop_after:
                stream.cancel()
                break
    finally:
        await client.close()
    return responses, failure


def text(responses):
    return "".join("".join(contract.TEXT_OUTPUT.read(r.as_numpy("text_output"))) for r in responses)


def final(responses, name):
    return contract.OUTPUTS_BY_NAME[name].read(responses[-1].as_numpy(name))


async def test_greedy_stream_names_paris_and_reports_counts(engine_stack, tokenizer):
    responses, error = await run(engine_stack, inputs(max_tokens=12, temperature=0.0))
    assert error is None
    assert "Paris" in text(responses)
    assert len(responses) > 2, "streaming must send several responses"
    assert final(responses, "finish_reason") == "stop"
    assert final(responses, "num_input_tokens") == len(tokenizer(PROMPT)["input_ids"])


async def test_non_streaming_sends_one_response_with_the_prompt_when_not_excluded(engine_stack):
    responses, error = await run(
        engine_stack, inputs(max_tokens=4, temperature=0.0, stream=False, exclude_input_in_output=False)
    )
    assert error is None and len(responses) == 1
    assert text(responses).startswith(PROMPT)
    assert final(responses, "finish_reason") == "length"
    assert final(responses, "num_output_tokens") == 4


async def test_stop_words_trim_the_output(engine_stack):
    responses, error = await run(engine_stack, inputs(max_tokens=12, temperature=0.0, stop_words=["Paris"]))
    assert error is None
    assert "Paris" not in text(responses)
    assert text(responses).startswith("The capital of France is")
    assert final(responses, "finish_reason") == "stop"


async def test_min_tokens_equal_to_max_tokens_generates_exactly_max_tokens(engine_stack):
    responses, error = await run(engine_stack, inputs(max_tokens=20, min_tokens=20, temperature=0.0))
    assert error is None
    assert final(responses, "num_output_tokens") == 20
    assert final(responses, "finish_reason") == "length"


@pytest.mark.parametrize(
    "extra, named",
    [
        ({"top_p": 1.5}, "top_p"),
        ({"num_top_log_probs": 21}, "num_top_log_probs"),
        ({"num_return_sequences": 17}, "num_return_sequences"),
        ({"input_ids": [49152]}, "input_ids"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 9000}, "context"),
    ],
)
async def test_inputs_the_engine_cannot_honour_are_rejected(engine_stack, extra, named):
    extra = dict(extra)  # the parameter dict is shared by both engine cores' runs
    max_tokens = extra.pop("max_tokens", 8)
    prompt = {"prompt": None} if "input_ids" in extra else {}
    responses, error = await run(engine_stack, inputs(max_tokens=max_tokens, **prompt, **extra))
    assert error is not None and not responses
    assert "invalid request" in error.message() and named in error.message()


# A non-default value of each input some engine core may not honour.
NON_DEFAULT = {
    "repetition_penalty": 1.3,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "bad_words": ["Paris"],
    "embedding_bias_token_ids": [504],
    "num_return_sequences": 2,
    "return_log_probs": True,
    "num_top_log_probs": 3,
    "return_prompt_log_probs": True,
    "guided_decoding_guide_type": "json",
}


@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
async def test_each_input_is_honoured_or_refused_by_name_as_the_capabilities_say(engine_stack, engine_core, name):
    values = {name: NON_DEFAULT[name]}
    if name == "embedding_bias_token_ids":
        values["embedding_bias_weights"] = [-5.0]
    if name == "num_top_log_probs":
        values["return_log_probs"] = True
    responses, error = await run(engine_stack, inputs(max_tokens=4, temperature=0.0, **values))
    if engine_core in contract.INPUTS_BY_NAME[name].honoured_by:
        assert error is None and responses, error
    else:
        assert error is not None and name in error.message() and not responses


async def test_a_guide_constrains_the_output_or_is_refused_as_the_contract_says(engine_stack, engine_core):
    guide = {"guided_decoding_guide_type": "regex", "guided_decoding_guide": "(yes|no)"}
    responses, error = await run(engine_stack, inputs(max_tokens=8, temperature=0.0, **guide))
    if engine_core not in contract.GUIDED_DECODING_GUIDE_TYPE.honoured_by:
        assert error is not None and "guided_decoding_guide_type" in error.message() and not responses
        return
    assert error is None, error
    assert text(responses) in ("yes", "no") and final(responses, "finish_reason") == "stop"
    bad = {"guided_decoding_guide_type": "regex", "guided_decoding_guide": "(yes|no"}
    responses, error = await run(engine_stack, inputs(max_tokens=8, **bad))
    assert error is not None and not responses
    assert "invalid request: guided_decoding_guide:" in error.message()


async def test_seed_is_honoured_or_refused_as_the_contract_says(engine_stack, engine_core):
    sampled = {"max_tokens": 16, "temperature": 1.0}
    if engine_core not in contract.SEED.honoured_by:
        responses, error = await run(engine_stack, inputs(seed=7, **sampled))
        assert error is not None and "seed" in error.message() and not responses
        return
    texts = []
    for seed in (7, 7, 8, 9):
        responses, error = await run(engine_stack, inputs(seed=seed, **sampled))
        assert error is None, error
        texts.append(text(responses))
    assert texts[0] == texts[1], "the same seed must give the same text"
    assert len(set(texts[1:])) > 1, "different seeds should sample differently"


async def test_min_tokens_below_max_tokens_holds_back_the_end_of_sequence(engine_stack, engine_core):
    """The greedy answer ends after ~8 tokens; min_tokens 24 must keep it going (every core masks the end)."""
    responses, error = await run(engine_stack, inputs(max_tokens=40, min_tokens=24, temperature=0.0))
    assert error is None, error
    assert final(responses, "num_output_tokens") >= 24


async def test_cancelled_stream_frees_the_engine(engine_stack):
    finished_before = engine_stack.triton_metric("llm_engine_requests_finished_total", reason="cancelled")
    long_story = PROMPT.replace("What is the capital of France?", "Tell a very long story.")
    responses, error = await run(
        engine_stack, inputs(prompt=long_story, max_tokens=2000, min_tokens=2000), stop_after=3
    )
    assert error is None and len(responses) == 3
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        if engine_stack.triton_metric("llm_engine_requests_finished_total", reason="cancelled") > finished_before:
            break
        await asyncio.sleep(0.05)
    assert engine_stack.triton_metric("llm_engine_requests_finished_total", reason="cancelled") == finished_before + 1
    assert engine_stack.triton_metric("llm_engine_active_requests") == 0
