"""Sampling and outputs against the fake engine: n choices, logprobs in OpenAI's shapes (parsed by the real `openai`
SDK's types), completions' list and token-id prompts and echo, streams interleaving n choices with usage, the
per-model capabilities refused before the engine is called, and every bad input a 400 naming its field."""

from __future__ import annotations

import json
from collections import defaultdict

import httpx
import openai
import pytest
from openai.types import Completion
from openai.types.chat import ChatCompletion
from websockets.asyncio.client import connect

from fake_engine import ALL_INPUTS, MODEL, REPLY_WORDS, fake_logprob, reply_words
from helpers import receive, until_done

HI = [{"role": "user", "content": "Say something."}]
VOCAB = 49152  # SmolLM2's tokenizer


def chat_prompt(tokenizer, messages=HI) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


# ------------------------------------------------------------------------------------------------------ chat


def test_chat_n_with_logprobs_and_top_logprobs_parses_into_the_sdk_types(client, app, tokenizer):
    reply = client.chat.completions.create(model=MODEL, messages=HI, logprobs=True, top_logprobs=3, n=2, max_tokens=5)
    assert isinstance(reply, ChatCompletion)
    assert [c.index for c in reply.choices] == [0, 1]
    prompt = chat_prompt(tokenizer)
    assert reply.choices[0].message.content == " ".join(reply_words(prompt, 5))
    assert reply.choices[1].message.content != reply.choices[0].message.content  # another sequence
    assert reply.usage.completion_tokens == 2 * 5  # every choice's tokens
    assert reply.usage.prompt_tokens == len(tokenizer(prompt)["input_ids"])  # the prompt once
    for choice in reply.choices:
        assert choice.finish_reason == "length"
        content = choice.logprobs.content
        assert "".join(t.token for t in content) == choice.message.content
        ids = tokenizer(choice.message.content, add_special_tokens=False)["input_ids"]
        assert [t.logprob for t in content] == pytest.approx([fake_logprob(i) for i in ids])
        for token in content:
            assert bytes(token.bytes) == token.token.encode()
            assert len(token.top_logprobs) == 3
            assert token.top_logprobs[0].token == token.token  # the fake's chosen token is its likeliest
            assert [t.logprob for t in token.top_logprobs] == sorted(
                (t.logprob for t in token.top_logprobs), reverse=True
            )
    request = app.engine.requests[-1].params
    assert (request.n, request.logprobs, request.top_logprobs) == (2, True, 3)


def test_chat_logprobs_without_top_logprobs_and_none_unless_asked(client):
    reply = client.chat.completions.create(model=MODEL, messages=HI, logprobs=True, max_tokens=3)
    assert all(t.top_logprobs == [] for t in reply.choices[0].logprobs.content)
    assert len(reply.choices[0].logprobs.content) >= 3
    assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=3).choices[0].logprobs is None


def test_a_streamed_chat_interleaves_n_choices_each_with_its_finish_and_usage_counts_all(client):
    whole = client.chat.completions.create(model=MODEL, messages=HI, n=3, max_tokens=4)
    chunks = list(
        client.chat.completions.create(
            model=MODEL,
            messages=HI,
            n=3,
            max_tokens=4,
            stream=True,
            stream_options={"include_usage": True},
            logprobs=True,
            top_logprobs=2,
        )
    )
    texts, reasons, roles, logprob_tokens = defaultdict(str), defaultdict(list), defaultdict(list), defaultdict(str)
    order = []
    for chunk in chunks[:-1]:
        assert len(chunk.choices) == 1 and chunk.usage is None
        choice = chunk.choices[0]
        order.append(choice.index)
        texts[choice.index] += choice.delta.content or ""
        roles[choice.index] += [choice.delta.role] if choice.delta.role else []
        reasons[choice.index] += [choice.finish_reason] if choice.finish_reason else []
        if choice.logprobs:
            logprob_tokens[choice.index] += "".join(t.token for t in choice.logprobs.content)
            assert all(len(t.top_logprobs) == 2 for t in choice.logprobs.content)
    assert dict(texts) == {c.index: c.message.content for c in whole.choices}
    assert dict(logprob_tokens) == dict(texts)
    assert dict(roles) == {0: ["assistant"], 1: ["assistant"], 2: ["assistant"]}
    assert dict(reasons) == {0: ["length"], 1: ["length"], 2: ["length"]}
    # The choices' deltas interleave as the engine sends them: choice 1 starts before choice 0 is over (tokens
    # that arrived together while the consumer was busy are one event per choice, so not always 0, 1, 0, 1).
    content_order = [i for i in order[3:] if i in (0, 1)]
    assert content_order.index(1) < len(content_order) - 1 - content_order[::-1].index(0), content_order
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 3 * 4
    assert chunks[-1].usage.completion_tokens == whole.usage.completion_tokens


def test_n_in_a_session_chat_is_refused(http):
    session = http.post("/sessions", json={}).json()
    body = {"model": MODEL, "messages": HI, "session_id": session["id"], "n": 2}
    error = http.post("/chat/completions", json=body).json()["error"]
    assert error["param"] == "n" and "one reply" in error["message"], error


# ------------------------------------------------------------------------------------------------ completions


def test_completions_list_prompts_times_n_are_indexed_as_openai(client, app):
    prompts = ["The sky is", "Grass is"]
    reply = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=3)
    assert isinstance(reply, Completion)
    assert [c.index for c in reply.choices] == [0, 1, 2, 3]
    assert reply.choices[0].text == " ".join(reply_words(prompts[0], 3))
    assert reply.choices[2].text == " ".join(reply_words(prompts[1], 3))
    assert reply.choices[1].text != reply.choices[0].text
    assert reply.usage.completion_tokens == 4 * 3
    assert len(app.engine.requests) == 2 and all(r.params.n == 2 for r in app.engine.requests)


def test_completions_token_id_prompts(client, app, tokenizer):
    ids = tokenizer("The sky is", add_special_tokens=False)["input_ids"]
    reply = client.completions.create(model=MODEL, prompt=ids, max_tokens=3)
    assert reply.choices[0].text == " ".join(reply_words("The sky is", 3))
    assert app.engine.requests[-1].prompt_token_ids == tuple(ids)
    assert reply.usage.prompt_tokens == len(ids)
    other = tokenizer("Grass is", add_special_tokens=False)["input_ids"]
    reply = client.completions.create(model=MODEL, prompt=[ids, other], max_tokens=2, echo=True)
    assert [c.text for c in reply.choices] == [
        "The sky is" + " ".join(reply_words("The sky is", 2)),
        "Grass is" + " ".join(reply_words("Grass is", 2)),
    ]


def test_completions_echo_with_logprobs(client, tokenizer):
    prompt = "The sky is"
    reply = client.completions.create(model=MODEL, prompt=prompt, echo=True, logprobs=2, max_tokens=3)
    choice = reply.choices[0]
    completion = " ".join(reply_words(prompt, 3))
    assert choice.text == prompt + completion
    logprobs = choice.logprobs
    prompt_ids = tokenizer(prompt)["input_ids"]
    output_ids = tokenizer(completion, add_special_tokens=False)["input_ids"]
    assert "".join(logprobs.tokens) == choice.text
    assert len(logprobs.tokens) == len(prompt_ids) + len(output_ids)
    assert logprobs.token_logprobs[0] is None and logprobs.top_logprobs[0] is None  # the first prompt token
    assert logprobs.token_logprobs[1:] == pytest.approx([fake_logprob(i) for i in [*prompt_ids[1:], *output_ids]])
    assert all(1 <= len(top) <= 3 for top in logprobs.top_logprobs[1:])  # logprobs + 1 at most: the token itself
    assert all(token in top for token, top in zip(logprobs.tokens[1:], logprobs.top_logprobs[1:], strict=True))
    offsets = [0]
    for token in logprobs.tokens[:-1]:
        offsets.append(offsets[-1] + len(token))
    assert logprobs.text_offset == offsets


def test_completions_logprobs_zero_gives_the_chosen_tokens_only(client):
    reply = client.completions.create(model=MODEL, prompt="Hi", logprobs=0, max_tokens=3)
    logprobs = reply.choices[0].logprobs
    assert "".join(logprobs.tokens) == reply.choices[0].text
    assert all(
        top == {token: lp}
        for token, lp, top in zip(logprobs.tokens, logprobs.token_logprobs, logprobs.top_logprobs, strict=True)
    )
    assert client.completions.create(model=MODEL, prompt="Hi", max_tokens=3).choices[0].logprobs is None


def test_a_streamed_completion_of_list_prompts_n_echo_logprobs_and_usage(client):
    prompts = ["The sky is", "Grass is"]
    whole = client.completions.create(model=MODEL, prompt=prompts, n=2, max_tokens=3, echo=True)
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=prompts,
            n=2,
            max_tokens=3,
            echo=True,
            logprobs=1,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts, reasons, tokens = defaultdict(str), defaultdict(list), defaultdict(str)
    for chunk in chunks[:-1]:
        assert len(chunk.choices) == 1 and chunk.usage is None
        choice = chunk.choices[0]
        texts[choice.index] += choice.text
        reasons[choice.index] += [choice.finish_reason] if choice.finish_reason else []
        if choice.logprobs:
            tokens[choice.index] += "".join(choice.logprobs.tokens)
    assert dict(texts) == {c.index: c.text for c in whole.choices}
    assert dict(tokens) == dict(texts)
    assert dict(reasons) == {i: ["length"] for i in range(4)}
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4 * 3
    assert chunks[-1].usage.prompt_tokens == whole.usage.prompt_tokens


def test_best_of_equal_to_n_is_accepted(http):
    response = http.post("/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2, "n": 2, "best_of": 2})
    assert response.status_code == 200, response.text
    assert len(response.json()["choices"]) == 2


# ----------------------------------------------------------------------------------------------- capabilities


@pytest.mark.parametrize("declared", [True, False], ids=["declared", "engine-refuses"])
def test_a_model_without_top_log_probs_refuses_them_naming_the_field(start_app, declared):
    app = start_app(capabilities=ALL_INPUTS - {"num_top_log_probs"}, declare_capabilities=declared)
    client = openai.OpenAI(base_url=app.api_url, api_key="unused", max_retries=0)
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=HI, logprobs=True, top_logprobs=3)
    assert caught.value.body["param"] == "top_logprobs"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="Hi", logprobs=2)
    assert caught.value.body["param"] == "logprobs"
    if declared:  # refused before the engine is called, naming the model
        assert caught.value.body["message"] == f"`logprobs` is not supported by model '{MODEL}'"
        assert app.engine.requests == []
    # what it honours still works
    reply = client.chat.completions.create(model=MODEL, messages=HI, logprobs=True, max_tokens=2)
    assert len(reply.choices[0].logprobs.content) >= 2


def test_a_model_without_n_or_logit_bias_refuses_them(start_app):
    app = start_app(capabilities=ALL_INPUTS - {"num_return_sequences", "embedding_bias_token_ids", "input_ids"})
    with httpx.Client(base_url=app.api_url) as http:
        for route, body, param in [
            ("chat/completions", {"messages": HI, "n": 2}, "n"),
            ("chat/completions", {"messages": HI, "logit_bias": {"5": 1}}, "logit_bias"),
            ("completions", {"prompt": [1, 2, 3]}, "prompt"),
        ]:
            response = http.post(f"/{route}", json={"model": MODEL} | body)
            assert response.status_code == 400, response.text
            error = response.json()["error"]
            assert error == {
                "message": f"`{param}` is not supported by model '{MODEL}'",
                "type": "invalid_request_error",
                "param": param,
                "code": None,
            }
        assert http.post("/chat/completions", json={"model": MODEL, "messages": HI, "n": 1}).status_code == 200
    assert len(app.engine.requests) == 1


# -------------------------------------------------------------------------------------------------- bad input

CHAT = {"model": MODEL, "messages": HI, "max_tokens": 2}
COMPLETION = {"model": MODEL, "prompt": "Hi", "max_tokens": 2}
BAD = [
    ("chat/completions", {"seed": -1}, "seed"),
    ("chat/completions", {"seed": 2**64}, "seed"),
    ("chat/completions", {"logprobs": True, "top_logprobs": 21}, "top_logprobs"),
    ("chat/completions", {"top_logprobs": 2}, "top_logprobs"),  # without logprobs
    ("chat/completions", {"n": 0}, "n"),
    ("chat/completions", {"n": 17}, "n"),
    ("chat/completions", {"logit_bias": {str(VOCAB): 1}}, "logit_bias"),
    ("chat/completions", {"logit_bias": {"5": 101}}, "logit_bias"),
    ("chat/completions", {"logit_bias": {"five": 1}}, "logit_bias"),
    ("chat/completions", {"logit_bias": {"5": "much"}}, "logit_bias.5"),
    ("chat/completions", {"stop_token_ids": [VOCAB]}, "stop_token_ids"),
    ("chat/completions", {"stop_token_ids": [-1]}, "stop_token_ids.0"),
    ("chat/completions", {"bad_words": [""]}, "bad_words"),
    ("chat/completions", {"best_of": 2}, "best_of"),
    ("completions", {"prompt": [1, VOCAB]}, "prompt"),
    ("completions", {"prompt": [[1, 2], [VOCAB + 5]]}, "prompt"),
    ("completions", {"prompt": [-1]}, "prompt"),
    ("completions", {"prompt": [1, "a"]}, "prompt"),
    ("completions", {"prompt": [[]]}, "prompt"),
    ("completions", {"prompt": []}, "prompt"),
    ("completions", {"prompt": ["x"] * 17}, "prompt"),
    ("completions", {"logprobs": 21}, "logprobs"),
    ("completions", {"logprobs": -1}, "logprobs"),
    ("completions", {"n": 2, "best_of": 3}, "best_of"),
    ("completions", {"n": 17}, "n"),
    ("completions", {"logit_bias": {"5": -100.5}}, "logit_bias"),
    ("completions", {"echo": "loud"}, "echo"),
]


@pytest.mark.parametrize("route, fields, param", BAD, ids=lambda v: json.dumps(v)[:40] if isinstance(v, dict) else v)
def test_a_bad_value_is_400_naming_the_field(http, app, route, fields, param):
    body = (CHAT if route == "chat/completions" else COMPLETION) | fields
    response = http.post(f"/{route}", json=body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert app.engine.requests == []


def test_best_of_above_n_says_so(http):
    error = http.post("/completions", json=COMPLETION | {"best_of": 2}).json()["error"]
    assert "best_of > n is not supported" in error["message"], error


def test_the_sampling_fields_reach_the_engine(http, app):
    body = CHAT | {
        "seed": 7,
        "presence_penalty": 0.5,
        "frequency_penalty": -0.5,
        "logit_bias": {"5": -100, "17": 2.5},
        "stop_token_ids": [3, 4],
        "bad_words": "no",
        "stop": "zzz",
    }
    assert http.post("/chat/completions", json=body).status_code == 200
    params = app.engine.requests[-1].params
    assert params.seed == 7 and params.presence_penalty == 0.5 and params.frequency_penalty == -0.5
    assert params.logit_bias == ((5, -100.0), (17, 2.5))
    assert params.stop_token_ids == (3, 4) and params.bad_words == ("no",) and params.stop == ("zzz",)


# ------------------------------------------------------------------------------------- sessions and WebSocket

SAMPLING = {
    "seed": 3,
    "presence_penalty": 0.1,
    "frequency_penalty": 0.2,
    "repetition_penalty": 1.1,
    "min_tokens": 1,
    "logit_bias": {"5": -1.0},
    "stop": ["zzz"],
    "stop_token_ids": [7],
    "top_k": 20,
    "max_tokens": 3,
}


def test_session_settings_take_the_sampling_fields_and_apply_them(http, app):
    created = http.post("/sessions", json={"settings": SAMPLING})
    assert created.status_code == 201, created.text
    assert created.json()["settings"] == SAMPLING
    body = {"model": MODEL, "messages": HI, "session_id": created.json()["id"]}
    assert http.post("/chat/completions", json=body).status_code == 200
    params = app.engine.requests[-1].params
    assert params.seed == 3 and params.logit_bias == ((5, -1.0),) and params.stop_token_ids == (7,)
    assert params.max_tokens == 3 and params.top_k == 20 and params.stop == ("zzz",)


@pytest.mark.parametrize(
    "settings, param",
    [
        ({"n": 2}, "settings.n"),
        ({"logit_bias": {"5": 101}}, "settings.logit_bias"),
        ({"seed": -1}, "settings.seed"),
        ({"logprobs": True}, "settings.logprobs"),  # the sessions' protocols return no logprobs
    ],
)
def test_a_bad_session_setting_is_400_naming_it(http, settings, param):
    response = http.post("/sessions", json={"settings": settings})
    assert response.status_code == 400 and response.json()["error"]["param"] == param, response.text


async def test_a_websocket_chat_takes_the_sampling_settings_and_refuses_n(app):
    async with connect(app.ws_url) as ws:
        await receive(ws)
        await ws.send(json.dumps({"type": "chat", "content": "Hi", "settings": SAMPLING}))
        text, done = await until_done(ws)
        assert done["type"] == "done" and done["finish_reason"] == "length" and len(text.split()) == 3
        params = app.engine.requests[-1].params
        assert params.seed == 3 and params.logit_bias == ((5, -1.0),) and params.min_tokens == 1
        await ws.send(json.dumps({"type": "chat", "content": "Hi", "settings": {"n": 2}}))
        error = await receive(ws)
        # (the frame's union tag leads the path: socket.py's validation names it chat.settings.n)
        assert error["type"] == "error" and error["param"].endswith("settings.n"), error
        await ws.send(json.dumps({"type": "chat", "content": "Hi", "settings": {"logit_bias": {str(VOCAB): 1}}}))
        error = await receive(ws)
        assert error["type"] == "error" and error["param"] == "logit_bias", error
        await ws.send(json.dumps({"type": "chat", "content": "Hi", "settings": {"max_tokens": 2}}))
        _, done = await until_done(ws)
        assert done["finish_reason"] == "length"


def test_reply_words_is_what_n_1_returns(client, tokenizer):
    reply = client.chat.completions.create(model=MODEL, messages=HI)
    assert reply.choices[0].message.content == " ".join(reply_words(chat_prompt(tokenizer), REPLY_WORDS))


def test_the_raw_bodies_validate_against_the_sdk_types(http):
    """Strict pydantic validation of the JSON (the SDK's own parsing is lenient)."""
    from openai.types.chat import ChatCompletionChunk

    body = {"model": MODEL, "messages": HI, "max_tokens": 3, "n": 2, "logprobs": True, "top_logprobs": 2}
    whole = http.post("/chat/completions", json=body).json()
    ChatCompletion.model_validate(whole, strict=False)
    assert set(whole["choices"][0]["logprobs"]["content"][0]) == {"token", "logprob", "bytes", "top_logprobs"}
    assert set(whole["choices"][0]["logprobs"]["content"][0]["top_logprobs"][0]) == {"token", "logprob", "bytes"}
    with http.stream("POST", "/chat/completions", json=body | {"stream": True}) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                ChatCompletionChunk.model_validate(json.loads(line[6:]))
    # (without echo: the SDK types a token_logprobs entry as a float, while echo's first one is OpenAI's null)
    body = {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 3, "n": 2, "logprobs": 2}
    completion = http.post("/completions", json=body).json()
    Completion.model_validate(completion)
    assert set(completion["choices"][0]["logprobs"]) == {"tokens", "token_logprobs", "top_logprobs", "text_offset"}
    # (streamed completions are not validated so: the SDK types their finish_reason as never null, as OpenAI sends it)
