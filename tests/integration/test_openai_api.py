"""The OpenAI API through the official `openai` SDK, against the real stack (Triton + SmolLM2 on CPU)."""

from __future__ import annotations

import asyncio
import time

import httpx
import openai
import pytest

import engine_contract

from stack import MODEL

FRANCE = [{"role": "user", "content": "What is the capital of France?"}]


def chat_prompt_tokens(tokenizer, messages) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text)["input_ids"])


def collect(stream):
    chunks = list(stream)
    content = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    return chunks, content


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_names_paris_with_usage_from_the_tokenizer(client, tokenizer):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=20)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-")
    assert reply.model == MODEL and reply.created > 0
    choice = reply.choices[0]
    assert "Paris" in choice.message.content and choice.message.role == "assistant"
    assert choice.finish_reason == "stop"
    assert reply.usage.prompt_tokens == chat_prompt_tokens(tokenizer, FRANCE)
    # the engine counts the end-of-sequence token it generated, as vLLM does
    text_tokens = len(tokenizer(choice.message.content)["input_ids"])
    assert reply.usage.completion_tokens == text_tokens + 1
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_streamed_chat_equals_non_streamed_at_temperature_zero(client):
    messages = [{"role": "user", "content": "Name three colours of the rainbow."}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=24)
    stream = client.chat.completions.create(
        model=MODEL,
        messages=messages,
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks, content = collect(stream)
    assert content == whole.choices[0].message.content
    assert chunks[0].choices[0].delta.role == "assistant"
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) > 3, "tokens must arrive one by one"
    finals = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finals == [whole.choices[0].finish_reason]
    tokens = ("prompt_tokens", "completion_tokens", "total_tokens")  # usage.stats (timings) differ between runs
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump(include=set(tokens)) == whole.usage.model_dump(
        include=set(tokens)
    )
    assert len({c.id for c in chunks}) == 1


def test_max_tokens_one_finishes_with_length(client):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=1)
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 1


def test_seed_makes_sampling_reproducible(stack, client):
    """The default core samples with a generator of the request's own: the same seed and request, run alone, give
    the same text (batched with others, the floating-point results may differ: docs/ENGINE_CONTRACT.md)."""

    def sample(seed):
        deadline = time.monotonic() + 60
        while stack.triton_metric("llm_engine_active_requests") > 0:  # alone: earlier tests' requests are gone
            assert time.monotonic() < deadline, "the engine did not become idle"
            time.sleep(0.1)
        reply = client.chat.completions.create(model=MODEL, messages=FRANCE, max_tokens=16, temperature=1.0, seed=seed)
        return reply.choices[0].message.content

    first = sample(11)
    assert sample(11) == first
    assert {sample(12), sample(13)} != {first}


def test_stop_string_trims_the_reply(client):
    reply = client.chat.completions.create(model=MODEL, messages=FRANCE, temperature=0, max_tokens=20, stop=["Paris"])
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content.startswith("The capital of France is")
    assert "Paris" not in reply.choices[0].message.content


def test_completions_stream_and_non_stream(client, tokenizer):
    prompt = "The three primary colours are"
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    assert whole.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert whole.usage.completion_tokens == 12
    chunks = list(client.completions.create(model=MODEL, prompt=prompt, max_tokens=12, temperature=0, stream=True))
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length"


def test_unicode_round_trip(client, tokenizer):
    messages = [{"role": "user", "content": "请把这句话重复一遍：我爱北京 🎉👍🏽"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=40)
    chunks, content = collect(
        client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=40, stream=True)
    )
    assert whole.usage.prompt_tokens == chat_prompt_tokens(tokenizer, messages)  # the prompt arrived intact
    assert content == whole.choices[0].message.content
    assert any(ord(ch) > 0x2E80 for ch in content), f"expected CJK or emoji in the reply, got {content!r}"
    for chunk in chunks:
        if chunk.choices and chunk.choices[0].delta.content:
            assert "\ufffd" not in chunk.choices[0].delta.content


@pytest.mark.parametrize(
    "body, param",
    [
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"n": 0}, "n"),
        ({"n": 17}, "n"),
        ({"seed": -1}, "seed"),
        ({"top_logprobs": 21, "logprobs": True}, "top_logprobs"),
        ({"logit_bias": {"49152": 1}}, "logit_bias"),
        ({"logit_bias": {"1": 101}}, "logit_bias"),
        ({"stop": [""]}, "stop"),
        ({"stop": [str(i) for i in range(17)]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"max_tokens": 9000}, "max_tokens"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"top_k": 2**40}, "top_k"),
        ({"logprobs": "maybe"}, "logprobs"),
        ({"tools": [{"type": "function", "function": {"description": "no name"}}]}, "tools"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),
        ({"messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}]}, "messages"),
    ],
)
def test_invalid_chat_fields_give_400_naming_the_field(stack, body, param):
    payload = {"model": MODEL, "messages": FRANCE, "max_tokens": 4} | body
    response = httpx.post(f"{stack.api_url}/chat/completions", json=payload, timeout=60)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] and error["param"].startswith(param), error
    assert param in error["message"] or error["param"] == param
    assert error["type"] == "invalid_request_error"


def test_malformed_json_gives_400(stack):
    response = httpx.post(
        f"{stack.api_url}/chat/completions",
        content=b"{not json",
        timeout=10,
        headers={"content-type": "application/json"},
    )
    assert response.status_code == 400
    assert "error" in response.json()


def test_unknown_model_gives_404(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=FRANCE)
    assert caught.value.body["param"] == "model"


def test_oversized_body_gives_413(stack):
    huge = "x" * 1_100_000
    response = httpx.post(f"{stack.api_url}/completions", json={"model": MODEL, "prompt": huge}, timeout=30)
    assert response.status_code == 413
    assert response.json()["error"]["message"]


def test_health_and_ready(stack):
    assert httpx.get(f"{stack.base_url}/health").status_code == 200
    assert httpx.get(f"{stack.base_url}/ready").status_code == 200


async def test_eight_concurrent_streams_all_complete(aclient):
    async def one(i):
        stream = await aclient.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Count from {i} to {i + 5}."}],
            max_tokens=16,
            stream=True,
        )
        reasons, text = [], ""
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                reasons.append(chunk.choices[0].finish_reason)
        return text, [r for r in reasons if r]

    results = await asyncio.gather(*(one(i) for i in range(8)))
    assert all(text for text, _ in results)
    assert all(reasons in (["stop"], ["length"]) for _, reasons in results)


async def test_client_disconnect_frees_the_engine(stack, aclient):
    cancelled_before = stack.triton_metric("llm_engine_requests_finished_total", reason="cancelled")
    stream = await aclient.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Tell me a very long story."}],
        max_tokens=2000,
        extra_body={"min_tokens": 2000},
        stream=True,
    )
    received = 0
    async for _ in stream:
        received += 1
        if received == 4:
            break
    await stream.close()
    for _ in range(40):  # the engine polls cancellation every 50 ms
        if stack.triton_metric("llm_engine_requests_finished_total", reason="cancelled") > cancelled_before:
            break
        await asyncio.sleep(0.05)
    assert stack.triton_metric("llm_engine_requests_finished_total", reason="cancelled") == cancelled_before + 1
    assert stack.triton_metric("llm_engine_active_requests") == 0


def served_capabilities(stack) -> frozenset[str]:
    """The `capabilities` parameter of the served model's Triton config."""
    import tritonclient.grpc as grpcclient

    with grpcclient.InferenceServerClient(f"127.0.0.1:{stack.triton_grpc_port}") as triton:
        config = triton.get_model_config(MODEL, as_json=True)["config"]
    return engine_contract.parse_capabilities(config["parameters"]["capabilities"]["string_value"])


# An OpenAI field that needs a contract input some engine does not honour, with that input's name.
NEEDS = {
    "top_logprobs": ({"logprobs": True, "top_logprobs": 3}, "num_top_log_probs"),
    "logit_bias": ({"logit_bias": {"504": -100}}, "embedding_bias_token_ids"),
    "bad_words": ({"bad_words": ["Paris"]}, "bad_words"),
}


@pytest.mark.parametrize("field", sorted(NEEDS))
def test_a_field_the_models_engine_cannot_honour_is_a_400_naming_it_and_the_model(stack, field):
    """Served models declare their capabilities (config parameter); a request needing more is refused by name."""
    body, needed = NEEDS[field]
    payload = {"model": MODEL, "messages": FRANCE, "max_tokens": 4} | body
    response = httpx.post(f"{stack.api_url}/chat/completions", json=payload, timeout=60)
    if needed in served_capabilities(stack):
        assert response.status_code == 200, response.text
    else:
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["param"] == field and MODEL in error["message"], error
