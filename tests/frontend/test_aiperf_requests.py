"""The requests NVIDIA's aiperf (0.13) sends are served as it means them: its fixed-length loads generate exactly
the requested tokens. aiperf puts --extra-inputs at the top level of the body (its endpoints' format_payload:
`payload.update(extra)`), so `--extra-inputs ignore_eos:true min_tokens:N` arrives as vLLM's top-level fields,
which we honour; it asks max_tokens on completions and max_completion_tokens on chat, and always
stream_options.include_usage. It sends no `nvext` object (NIM's extension), which stays unrecognized.
The bodies below are aiperf's, recorded from a run against `llmserve serve` (the prompts shortened)."""

from __future__ import annotations

import json

import pytest

from fake_engine import MODEL, REPLY_WORDS

MAX_TOKENS = REPLY_WORDS + 4  # past the natural end of the fake engine's reply: only ignore_eos gets there
AIPERF_EXTRA_INPUTS = {"ignore_eos": True, "min_tokens": MAX_TOKENS, "temperature": 0}  # docs/PERFORMANCE.md's
AIPERF_BODIES = {
    "completions": {
        "prompt": " the night Have you not spoken gainst the Duke of Cornwall",
        "model": MODEL,
        "stream": True,
        "max_tokens": MAX_TOKENS,
    },
    "chat/completions": {
        "messages": [{"role": "user", "content": " did LEAR Did I not fellow I have seen the day"}],
        "model": MODEL,
        "stream": True,
        "max_completion_tokens": MAX_TOKENS,
    },
}
STREAM_OPTIONS = {"stream_options": {"include_usage": True}}  # aiperf adds it last, to every streamed request


def streamed(http, route: str, body: dict) -> list[dict]:
    with http.stream("POST", f"/{route}", json=body) as response:
        assert response.status_code == 200, response.read()
        events = [line for line in response.iter_lines() if line]
    assert events[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in events[:-1]]


@pytest.mark.parametrize("extra", [{"ignore_eos": True}, AIPERF_EXTRA_INPUTS], ids=["ignore_eos", "recipe"])
@pytest.mark.parametrize("route", AIPERF_BODIES)
def test_aiperf_fixed_length_requests_generate_exactly_the_requested_tokens(http, app, route, extra):
    chunks = streamed(http, route, AIPERF_BODIES[route] | extra | STREAM_OPTIONS)
    assert chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS  # aiperf --use-server-token-count reads this
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "length"
    assert app.engine.requests[-1].params.min_tokens == MAX_TOKENS  # the engine ignores end-of-sequence


def test_without_ignore_eos_the_reply_ends_by_itself(http, app):
    chunks = streamed(http, "completions", AIPERF_BODIES["completions"] | STREAM_OPTIONS)
    assert chunks[-1]["usage"]["completion_tokens"] < MAX_TOKENS  # what aiperf's OSL-mismatch check flags
    assert [c["choices"][0]["finish_reason"] for c in chunks if c["choices"]][-1] == "stop"
    assert app.engine.requests[-1].params.min_tokens is None


@pytest.mark.parametrize("route", AIPERF_BODIES)
def test_nims_nvext_is_still_unrecognized(http, app, route):
    body = AIPERF_BODIES[route] | {"nvext": {"ignore_eos": True}}
    error = http.post(f"/{route}", json=body).json()["error"]
    assert error["param"] == "nvext" and error["message"] == "Unrecognized request argument supplied: nvext"
    assert app.engine.requests == []
