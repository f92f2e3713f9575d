"""Every request field is honoured or refused with a 400 naming it: a field OpenAI or vLLM defines that we cannot
honour is accepted only with its default (frontend_api/openai/request_fields.py), a field neither defines is
unrecognized (OpenAI's answer to a typo), and vLLM's ignore_eos is honoured. The sampling and output fields
(n, logprobs, logit_bias, echo, ...) are tested in test_sampling_outputs.py, the structured-output fields
(response_format, structured_outputs, guided_*) in test_structured_output.py."""

from __future__ import annotations

import openai
import pytest
from openai.types import completion_create_params
from openai.types.chat import completion_create_params as chat_create_params

from frontend_api.openai.protocol import ChatCompletionRequest, CompletionRequest

from fake_engine import MODEL, REPLY_WORDS

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
COMPLETION = {"model": MODEL, "prompt": "Hi", "max_tokens": 4}
ROUTES = {"chat/completions": CHAT, "completions": COMPLETION}

# (route, field, a value we cannot honour, a value that changes nothing: the default SDKs and frameworks send)
REFUSED = [
    ("chat/completions", "best_of", 2, 1),
    ("chat/completions", "prompt_logprobs", 1, None),
    ("chat/completions", "functions", [{"name": "f"}], []),  # deprecated; tools are honoured (test_tool_calls*)
    ("chat/completions", "function_call", {"name": "f"}, "none"),
    ("chat/completions", "store", True, False),
    ("chat/completions", "reasoning_effort", "low", None),
    ("chat/completions", "modalities", ["text", "audio"], ["text"]),
    ("chat/completions", "service_tier", "flex", "auto"),
    ("chat/completions", "min_p", 0.1, 0.0),
    ("chat/completions", "skip_special_tokens", False, True),
    ("chat/completions", "guided_decoding_backend", "outlines", "auto"),
    ("chat/completions", "guided_whitespace_pattern", r"\s*", None),
    ("completions", "structural_tag", "{}", None),
    ("chat/completions", "chat_template_kwargs", {"enable_thinking": True}, {}),
    ("completions", "best_of", 2, 1),  # best_of > n
    ("completions", "suffix", "!", None),
    ("completions", "prompt_logprobs", 1, None),
    ("completions", "use_beam_search", True, False),
]


@pytest.mark.parametrize("route, field, value, default", REFUSED, ids=lambda v: v if isinstance(v, str) else "")
def test_a_known_field_we_cannot_honour_is_400_naming_it(http, app, route, field, value, default):
    response = http.post(f"/{route}", json=ROUTES[route] | {field: value})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == field and error["type"] == "invalid_request_error", error
    assert error["message"].startswith(f"{field}: "), error
    assert app.engine.requests == []


@pytest.mark.parametrize("route", ROUTES)
def test_the_defaults_of_known_fields_are_accepted(http, app, route):
    defaults = {field: default for where, field, _, default in REFUSED if where == route}
    response = http.post(f"/{route}", json=ROUTES[route] | defaults | {"user": "u", "stream": False})
    assert response.status_code == 200, response.text
    assert len(app.engine.requests) == 1


@pytest.mark.parametrize("route", ROUTES)
@pytest.mark.parametrize("field", ["foo_bar", "Temperature", "max_token"])
def test_an_unknown_field_is_unrecognized(http, app, route, field):
    response = http.post(f"/{route}", json=ROUTES[route] | {field: 1})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error == {
        "message": f"Unrecognized request argument supplied: {field}",
        "type": "invalid_request_error",
        "param": field,
        "code": None,
    }
    assert app.engine.requests == []


def test_a_field_of_the_other_route_is_unrecognized(http):
    for route, field in [("completions", "top_logprobs"), ("chat/completions", "suffix")]:
        error = http.post(f"/{route}", json=ROUTES[route] | {field: 0}).json()["error"]
        assert error["param"] == field and "Unrecognized" in error["message"], error


@pytest.mark.parametrize("route", ROUTES)
def test_ignore_eos_generates_exactly_max_tokens(http, app, route):
    max_tokens = REPLY_WORDS + 4  # past the natural end of the fake engine's reply
    response = http.post(f"/{route}", json=ROUTES[route] | {"max_tokens": max_tokens, "ignore_eos": True})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["usage"]["completion_tokens"] == max_tokens and body["choices"][0]["finish_reason"] == "length"
    assert app.engine.requests[-1].params.min_tokens == max_tokens
    assert http.post(f"/{route}", json=ROUTES[route] | {"ignore_eos": False}).status_code == 200
    assert app.engine.requests[-1].params.min_tokens is None


@pytest.mark.parametrize("value", [123, "maybe", [], None])
def test_ignore_eos_must_be_a_boolean(http, value):
    error = http.post("/chat/completions", json=CHAT | {"ignore_eos": value}).json()["error"]
    assert error["param"] == "ignore_eos" and error["type"] == "invalid_request_error", error


def test_the_sdk_sends_defaults_and_extra_body(client):
    reply = client.chat.completions.create(
        model=MODEL,
        messages=CHAT["messages"],
        n=1,
        logprobs=False,
        store=False,
        parallel_tool_calls=True,
        prompt_cache_key="k",
        safety_identifier="s",
        extra_body={"top_k": 40, "ignore_eos": False, "skip_special_tokens": True},
    )
    assert reply.choices[0].finish_reason == "stop"
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=MODEL, messages=CHAT["messages"], extra_body={"foo_bar": 1})
    assert caught.value.body["param"] == "foo_bar"
    with pytest.raises(openai.BadRequestError) as caught:
        client.completions.create(model=MODEL, prompt="Hi", suffix="!")
    assert caught.value.body["param"] == "suffix"


def test_every_field_of_the_sdk_requests_is_known():
    """A field the installed `openai` SDK sends is declared (honoured or refused), never unrecognized."""
    for params, model in [(chat_create_params, ChatCompletionRequest), (completion_create_params, CompletionRequest)]:
        sent = set(params.CompletionCreateParamsBase.__annotations__) | {"stream"}
        assert sent <= set(model.model_fields), sent - set(model.model_fields)
