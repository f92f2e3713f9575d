"""The same rendered repository with `--entry tensorrt_llm_bls`: the front-end serves the BLS model instead of
the ensemble from configuration alone (tensorrt_llm is the test STAND-IN, see tests/trtllm_standin.py)."""

from __future__ import annotations

import signal

import pytest
from openai import OpenAI
from trtllm_standin import start_trtllm_stack

from stack import MODEL

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def client(checkpoint_dir, tmp_path_factory):
    stack = start_trtllm_stack(checkpoint_dir, tmp_path_factory.mktemp("trtllm-bls"), "tensorrt_llm_bls", 1024)
    yield OpenAI(base_url=stack.api_url, api_key="unused", max_retries=0, timeout=120)
    code = stack.stop(signal.SIGTERM)
    assert code == 0, f"llmserve serve exited with {code}:\n{stack.log()[-3000:]}"


def test_the_bls_model_is_served_under_the_model_id(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]


def test_streamed_chat_equals_the_whole_reply_with_exact_finish_reason(client):
    messages = [{"role": "user", "content": "Write three emoji about the sea 🌊"}]
    whole = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16)
    assert whole.choices[0].finish_reason == "length" and whole.usage.completion_tokens == 16
    stream = client.chat.completions.create(model=MODEL, messages=messages, temperature=0, max_tokens=16, stream=True)
    deltas = [c.choices[0].delta.content or "" for c in stream if c.choices]
    assert "".join(deltas) == whole.choices[0].message.content
    assert all("\ufffd" not in d for d in deltas)


def test_a_stop_string_is_trimmed(client):
    prompt = "The capital of France is"
    full = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=12).choices[0].text
    stop = full.split()[1]
    reply = client.completions.create(model=MODEL, prompt=prompt, temperature=0, max_tokens=12, stop=[stop])
    assert reply.choices[0].text == full[: full.index(stop)]
    assert reply.choices[0].finish_reason == "stop"
