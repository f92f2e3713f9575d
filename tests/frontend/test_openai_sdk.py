"""Chat, completions and models through the official `openai` SDK, and the raw SSE framing through httpx, against
the real app and FakeEngine. tests/integration/test_openai_api.py asks the same of the real stack."""

from __future__ import annotations

import asyncio
import json

import httpx

from fake_engine import MAX_MODEL_LEN, MODEL, REPLY_WORDS, reply_words

HI = [{"role": "user", "content": "Say something."}]


def chat_prompt_tokens(tokenizer, messages) -> int:
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    return len(tokenizer(text)["input_ids"])


def test_health_and_ready(app):
    assert httpx.get(f"{app.base_url}/health").json() == {"status": "ok"}
    assert httpx.get(f"{app.base_url}/ready").status_code == 200


def test_models_lists_the_served_model(client):
    models = client.models.list().data
    assert [m.id for m in models] == [MODEL]
    assert models[0].model_extra["max_model_len"] == MAX_MODEL_LEN
    assert client.models.retrieve(MODEL).id == MODEL


def test_chat_renders_the_template_and_counts_tokens_like_transformers(client, app, tokenizer):
    reply = client.chat.completions.create(model=MODEL, messages=HI)
    assert reply.object == "chat.completion" and reply.id.startswith("chatcmpl-") and reply.model == MODEL
    prompt = app.engine.requests[-1].prompt
    assert prompt == tokenizer.apply_chat_template(HI, tokenize=False, add_generation_prompt=True)
    choice = reply.choices[0]
    assert choice.message.role == "assistant" and choice.finish_reason == "stop"
    assert choice.message.content == " ".join(reply_words(prompt, REPLY_WORDS))
    assert reply.usage.prompt_tokens == chat_prompt_tokens(tokenizer, HI)
    assert reply.usage.completion_tokens == REPLY_WORDS + 1  # the end-of-sequence token counts
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_max_tokens_finishes_with_length(client, app):
    reply = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3)
    assert reply.choices[0].finish_reason == "length" and reply.usage.completion_tokens == 3
    assert len(reply.choices[0].message.content.split()) == 3
    assert app.engine.requests[-1].params.max_tokens == 3


def test_a_stop_string_trims_the_reply(client):
    words = client.chat.completions.create(model=MODEL, messages=HI).choices[0].message.content.split()
    reply = client.chat.completions.create(model=MODEL, messages=HI, stop=[words[3]])
    assert reply.choices[0].finish_reason == "stop"
    assert reply.choices[0].message.content == " ".join(words[:3]) + " "


def test_a_streamed_stop_string_never_shows_even_in_part(client):
    words = client.chat.completions.create(model=MODEL, messages=HI).choices[0].message.content.split()
    stop = f"{words[2]} {words[3][:2]}"  # spans two tokens: the first must be held back until the second arrives
    chunks = list(client.chat.completions.create(model=MODEL, messages=HI, stop=[stop], stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == " ".join(words[:2]) + " "
    assert chunks[-1].choices[0].finish_reason == "stop"


def test_streamed_chat_equals_non_streamed_with_usage_last(client):
    whole = client.chat.completions.create(model=MODEL, messages=HI, max_tokens=5)
    chunks = list(
        client.chat.completions.create(
            model=MODEL, messages=HI, max_tokens=5, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == whole.choices[0].message.content
    assert sum(1 for c in chunks if c.choices and c.choices[0].delta.content) == 5, "one chunk per token"
    assert [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason] == ["length"]
    tokens = {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert chunks[-1].choices == [] and chunks[-1].usage.model_dump(include=tokens) == whole.usage.model_dump(
        include=tokens
    )
    assert all(c.usage is None for c in chunks[:-1])
    assert len({c.id for c in chunks}) == 1 and all(c.object == "chat.completion.chunk" for c in chunks)


def test_sse_framing_ends_with_done(http):
    body = {"model": MODEL, "messages": HI, "max_tokens": 2, "stream": True}
    with http.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        events = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in events), events
    assert events[-1] == "data: [DONE]"
    payloads = [json.loads(line[6:]) for line in events[:-1]]
    assert [p["choices"][0]["finish_reason"] for p in payloads] == [None, None, None, "length"]
    assert all("usage" not in p or p["usage"] is None for p in payloads)  # not asked for: no usage chunk


def test_completions_stream_and_non_stream(client, tokenizer):
    prompt = "The three primary colours are"
    whole = client.completions.create(model=MODEL, prompt=prompt, max_tokens=4)
    assert whole.object == "text_completion" and whole.choices[0].finish_reason == "length"
    assert whole.choices[0].text == " ".join(reply_words(prompt, 4))  # no chat template around a completion
    assert whole.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])
    assert whole.usage.completion_tokens == 4
    chunks = list(
        client.completions.create(
            model=MODEL, prompt=prompt, max_tokens=4, stream=True, stream_options={"include_usage": True}
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == whole.choices[0].text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 4


async def test_concurrent_streams_all_complete(aclient, app):
    async def one(i: int) -> tuple[str, list[str]]:
        stream = await aclient.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": f"Count from {i}."}], max_tokens=6, stream=True
        )
        text, reasons = "", []
        async for chunk in stream:
            if chunk.choices:
                text += chunk.choices[0].delta.content or ""
                reasons += [chunk.choices[0].finish_reason] if chunk.choices[0].finish_reason else []
        return text, reasons

    results = await asyncio.gather(*(one(i) for i in range(8)))
    assert all(len(text.split()) == 6 and reasons == ["length"] for text, reasons in results), results
    assert app.engine.active == set() and app.engine.cancelled == []
