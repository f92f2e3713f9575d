"""Errors as OpenAI error bodies: a bad field is a 400 naming it (whether the protocol layer or the engine refuses
it), an unknown model a 404, a body past the limit a 413. tests/integration/test_openai_api.py and
test_bad_input.py ask the same of the real stack."""

from __future__ import annotations

import httpx
import openai
import pytest

from fake_engine import ALL_INPUTS, MODEL

HI = [{"role": "user", "content": "Hi"}]


@pytest.mark.parametrize(
    "body, param",
    [
        ({"temperature": 3}, "temperature"),
        ({"temperature": "hot"}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"n": 17}, "n"),
        ({"stop": [""]}, "stop"),
        ({"messages": []}, "messages"),
        ({"messages": [{"role": "wizard", "content": "hi"}]}, "messages"),
        ({"max_tokens": 9000}, "max_tokens"),  # past the context
        ({"logprobs": "maybe"}, "logprobs"),
        ({"stream_options": {"include_usage": True}}, "stream_options"),  # without stream
        ({"logit_bias": {"1": 200}}, "logit_bias"),
        ({"top_logprobs": 3}, "top_logprobs"),  # without logprobs
    ],
)
def test_a_bad_chat_field_is_400_naming_it(http, body, param):
    response = http.post("/chat/completions", json={"model": MODEL, "messages": HI, "max_tokens": 4} | body)
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] and error["param"].startswith(param), error
    assert param in error["message"] or error["param"] == param
    assert error["type"] == "invalid_request_error"


@pytest.mark.parametrize("field", ["presence_penalty", "frequency_penalty"])
def test_an_engine_refusal_is_a_400_before_any_stream_starts(start_app, field):
    # A model that declares no capabilities: its engine (here FakeEngine without the penalties) refuses in-band.
    app = start_app(capabilities=ALL_INPUTS - {field}, declare_capabilities=False)
    body = {"model": MODEL, "messages": HI, "stream": True, field: 0.5}
    response = httpx.post(f"{app.api_url}/chat/completions", json=body)
    assert response.status_code == 400 and response.json()["error"]["param"] == field
    assert getattr(app.engine.requests[-1].params, field) == 0.5  # it was the engine that refused it


def test_malformed_json_is_400(http):
    response = http.post("/chat/completions", content=b"{not json", headers={"content-type": "application/json"})
    assert response.status_code == 400 and response.json()["error"]["message"]


def test_an_unknown_model_is_404_naming_the_field(client):
    with pytest.raises(openai.NotFoundError) as caught:
        client.chat.completions.create(model="no-such-model", messages=HI)
    assert caught.value.body["param"] == "model"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_a_body_past_the_limit_is_413(start_app):
    app = start_app(max_request_bytes=4096)
    response = httpx.post(f"{app.api_url}/completions", json={"model": MODEL, "prompt": "x" * 5000})
    assert response.status_code == 413
    assert "4096 bytes" in response.json()["error"]["message"]
    assert app.engine.requests == []
