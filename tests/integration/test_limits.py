"""Limits and backpressure against the real stack: extra front-end processes (uvicorn) on the session's Triton,
each configured by environment, limits kept in memory or in the real local Redis.

With auth off the budget is per client address, so tests call from distinct loopback addresses (127.0.0.x)."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager

import httpx
import openai
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from helpers import create_key_with_cli
from stack import MODEL, Server, TcpProxy, free_port

HI = [{"role": "user", "content": "Hi"}]
LONG = {"max_tokens": 2000, "min_tokens": 2000}  # a generation that outlives the test unless cancelled
SHORT = {"max_tokens": 1, "min_tokens": None}
REDIS_URL = "redis://127.0.0.1:6379/0"


def client_from(address: str) -> httpx.Client:
    return httpx.Client(transport=httpx.HTTPTransport(local_address=address), timeout=120)


def chat(http: httpx.Client, server: Server, headers: dict[str, str] | None = None, **body) -> httpx.Response:
    payload = {"model": MODEL, "messages": HI, "max_tokens": 1} | body
    return http.post(f"{server.api_url}/chat/completions", json=payload, headers=headers)


@contextmanager
def open_stream(http: httpx.Client, server: Server, headers: dict[str, str] | None = None) -> Iterator[None]:
    """A streamed chat held open (first event received) until the block ends; leaving closes the connection."""
    payload = {"model": MODEL, "messages": HI, "stream": True, **LONG}
    with http.stream("POST", f"{server.api_url}/chat/completions", json=payload, headers=headers) as response:
        assert response.status_code == 200, response.read()
        lines = response.iter_lines()  # kept: dropping a half-read iterator closes the connection
        next(lines)
        yield


def error_of(response: httpx.Response, status: int, code: str) -> dict:
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code, error
    types = {401: "authentication_error", 429: "rate_limit_error", 503: "server_error"}
    assert error["type"] == types.get(status, "invalid_request_error"), error
    return error


def retry_after(response: httpx.Response, most: int = 60) -> int:
    seconds = int(response.headers["retry-after"])
    assert 1 <= seconds <= most, seconds
    return seconds


def eventually_admitted(send: Callable[[], httpx.Response], within_s: float = 10) -> httpx.Response:
    """The slot of a closed generation is freed when the server sees the disconnect: allow it a moment."""
    deadline = time.monotonic() + within_s
    while True:
        response = send()
        if response.status_code not in (429, 503) or time.monotonic() > deadline:
            return response
        time.sleep(0.1)


@pytest.fixture(scope="module")
def redis_prefix() -> Iterator[str]:
    prefix = f"llmserve-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.Redis.from_url(REDIS_URL)
    keys = list(client.scan_iter(match=f"{prefix}:*"))
    if keys:
        client.delete(*keys)
    client.close()


# --- CORS ---


def preflight(server: Server, origin: str) -> httpx.Response:
    return httpx.options(
        f"{server.api_url}/chat/completions",
        timeout=10,
        headers={
            "Origin": origin,
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization, content-type",
        },
    )


def test_cors_is_closed_by_default(stack):
    assert "access-control-allow-origin" not in preflight(stack, "https://app.example").headers
    response = httpx.get(f"{stack.api_url}/models", headers={"Origin": "https://app.example"}, timeout=10)
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


@pytest.fixture(scope="module")
def shaped(start_frontend_with) -> Server:
    return start_frontend_with(
        {
            "LLMSERVE_CORS_ORIGINS": '["https://app.example"]',
            "LLMSERVE_MAX_PROMPT_TOKENS": "64",
            "LLMSERVE_MAX_TOKENS_LIMIT": "8",
        }
    )


def test_cors_allows_a_configured_origin_only(shaped):
    allowed = preflight(shaped, "https://app.example")
    assert allowed.status_code == 200
    assert allowed.headers["access-control-allow-origin"] == "https://app.example"
    assert "authorization" in allowed.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-origin" not in preflight(shaped, "https://evil.example").headers
    response = httpx.get(f"{shaped.api_url}/models", headers={"Origin": "https://app.example"}, timeout=10)
    assert response.headers["access-control-allow-origin"] == "https://app.example"
    assert "retry-after" in response.headers["access-control-expose-headers"].lower()


# --- prompt length and max_tokens ---


@pytest.mark.parametrize(
    "route, body, param, code",
    [
        ("chat/completions", {"messages": [{"role": "user", "content": "word " * 80}]}, "messages", "prompt_too_long"),
        ("completions", {"prompt": "word " * 80}, "prompt", "prompt_too_long"),
        ("chat/completions", {"messages": HI, "max_tokens": 9}, "max_tokens", "max_tokens_exceeded"),
        (
            "chat/completions",
            {"messages": HI, "max_completion_tokens": 9},
            "max_completion_tokens",
            "max_tokens_exceeded",
        ),
        ("completions", {"prompt": "Hello", "max_tokens": 9}, "max_tokens", "max_tokens_exceeded"),
    ],
)
def test_prompt_and_max_tokens_limits_give_400_naming_the_field(shaped, route, body, param, code):
    response = httpx.post(f"{shaped.api_url}/{route}", json={"model": MODEL, **body}, timeout=60)
    error = error_of(response, 400, code)
    assert error["param"] == param and param in error["message"]
    assert ("64" if code == "prompt_too_long" else "8") in error["message"]


def test_requests_at_the_limits_are_served_and_max_tokens_defaults_to_the_limit(shaped):
    story = [{"role": "user", "content": "Tell me a story."}]
    served = httpx.post(
        f"{shaped.api_url}/chat/completions", timeout=120, json={"model": MODEL, "messages": story, "min_tokens": 8}
    )
    assert served.status_code == 200, served.text
    assert served.json()["usage"]["completion_tokens"] == 8  # no max_tokens: the limit, not the rest of the context


# --- requests and tokens per minute (memory) ---


@pytest.fixture(scope="module")
def rpm3(start_frontend_with) -> Server:
    return start_frontend_with({"LLMSERVE_RATE_LIMIT_RPM": "3"})


@pytest.mark.rate_window(20)
def test_rpm_refuses_the_request_past_the_limit_with_retry_after(rpm3):
    http = client_from("127.0.0.2")
    for _ in range(3):
        assert chat(http, rpm3).status_code == 200
    refused = chat(http, rpm3)
    error = error_of(refused, 429, "rate_limit_exceeded")
    assert "3 requests per minute" in error["message"]
    retry_after(refused)
    sdk = openai.OpenAI(base_url=rpm3.api_url, api_key="unused", max_retries=0, http_client=client_from("127.0.0.2"))
    with pytest.raises(openai.RateLimitError) as caught:
        sdk.chat.completions.create(model=MODEL, messages=HI, max_tokens=1)
    assert caught.value.code == "rate_limit_exceeded"
    assert chat(client_from("127.0.0.3"), rpm3).status_code == 200  # another client address has its own budget
    assert rate_limited(rpm3, "rpm") == 2  # both refusals counted on /metrics


def rate_limited(server: Server, limit: str) -> float:
    text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "llmserve_rate_limited_total" and sample.labels["limit"] == limit
    )


TPM_PROMPT = "The quick brown fox."


@pytest.fixture(scope="module")
def tpm_case(start_frontend_with, tokenizer) -> tuple[Server, int, int]:
    """A tokens-per-minute budget that three prompts fit, but not two prompts with their completions and a third.
    The prompt is short so that the completions weigh most: the limiter's sliding window counter discounts a
    minute's spending as the next minute goes on, and on a slow machine the three requests may straddle two."""
    prompt = TPM_PROMPT
    prompt_tokens, completion_tokens = len(tokenizer(prompt)["input_ids"]), 10
    tpm = 3 * prompt_tokens + completion_tokens
    server = start_frontend_with({"LLMSERVE_RATE_LIMIT_TPM": str(tpm)})
    return server, prompt_tokens, tpm


@pytest.mark.rate_window(20)
def test_tpm_counts_prompt_and_completion_tokens(tpm_case):
    server, prompt_tokens, tpm = tpm_case
    http = client_from("127.0.0.2")
    body = {"model": MODEL, "prompt": TPM_PROMPT, "max_tokens": 10, "min_tokens": 10}
    for _ in range(2):
        reply = http.post(f"{server.api_url}/completions", json=body)
        assert reply.status_code == 200 and reply.json()["usage"]["total_tokens"] == prompt_tokens + 10
    refused = http.post(f"{server.api_url}/completions", json=body)
    error = error_of(refused, 429, "rate_limit_exceeded")
    assert f"{tpm} tokens per minute" in error["message"] and f"needs {prompt_tokens}" in error["message"]
    retry_after(refused, most=120)  # completion tokens may overspend a budget: it then takes longer to recover
    too_large = http.post(f"{server.api_url}/completions", json=body | {"prompt": "word " * (tpm + 1)})
    assert "Request too large" in error_of(too_large, 429, "rate_limit_exceeded")["message"]


# --- concurrent generations ---


@pytest.fixture(scope="module")
def capped(start_frontend_with) -> Server:
    return start_frontend_with({"LLMSERVE_MAX_STREAMS_PER_KEY": "1", "LLMSERVE_MAX_IN_FLIGHT": "2"})


def test_stream_caps_answer_at_once_and_free_on_disconnect(capped):
    one, two, three = (client_from(f"127.0.0.{i}") for i in (2, 3, 4))
    with ExitStack() as held:
        held.enter_context(open_stream(one, capped))
        started = time.monotonic()
        error = error_of(chat(one, capped), 429, "too_many_streams")
        assert time.monotonic() - started < 5, "refusals must not wait in a queue"
        assert "1 at a time" in error["message"]
        held.enter_context(open_stream(two, capped))  # the cap is per client address
        started = time.monotonic()
        overloaded = chat(three, capped)
        assert time.monotonic() - started < 5, "refusals must not wait in a queue"
        error_of(overloaded, 503, "server_overloaded")
        assert overloaded.headers["retry-after"] == "1"
    # both streams were closed by the client: their slots come back
    assert eventually_admitted(lambda: chat(one, capped)).status_code == 200
    assert eventually_admitted(lambda: chat(two, capped)).status_code == 200


def test_engine_rejections_free_their_slot(capped):
    http = client_from("127.0.0.5")
    # A bad word of more tokens than the engine bans (the front-end cannot know): refused by the engine, after
    # admission; with a cap of 1 a leaked slot would turn the next into a 429.
    long_word = "antidisestablishmentarianism supercalifragilisticexpialidocious"
    for _ in range(3):
        response = chat(http, capped, bad_words=[long_word])
        assert response.status_code == 400 and response.json()["error"]["param"] == "bad_words", response.text


async def test_an_abandoned_non_streaming_request_frees_its_slot(capped):
    transport = httpx.AsyncHTTPTransport(local_address="127.0.0.6")
    async with httpx.AsyncClient(transport=transport, timeout=120) as http:
        payload = {"model": MODEL, "messages": HI, **LONG}
        abandoned = asyncio.create_task(http.post(f"{capped.api_url}/chat/completions", json=payload))
        await asyncio.sleep(1)  # let it be admitted first
        probe = await http.post(f"{capped.api_url}/chat/completions", json={**payload, **SHORT})
        assert not abandoned.done(), abandoned.result().text
        assert probe.status_code == 429 and probe.json()["error"]["code"] == "too_many_streams"
        abandoned.cancel()  # closes the connection: the server cancels the handler and the engine request
        await asyncio.gather(abandoned, return_exceptions=True)
    http = client_from("127.0.0.6")
    assert eventually_admitted(lambda: chat(http, capped)).status_code == 200


# --- Redis: one budget for several front-end processes ---


@pytest.mark.rate_window(20)
def test_two_front_ends_share_one_redis_budget(start_frontend_with, redis_prefix):
    env = {"REDIS_URL": REDIS_URL, "LLMSERVE_REDIS_KEY_PREFIX": redis_prefix, "LLMSERVE_RATE_LIMIT_RPM": "4"}
    first, second = start_frontend_with(env), start_frontend_with(env)
    http = client_from("127.0.0.2")
    for server in (first, second, first, second):
        assert chat(http, server).status_code == 200
    for server in (first, second):
        refused = chat(http, server)
        assert "4 requests per minute" in error_of(refused, 429, "rate_limit_exceeded")["message"]
        retry_after(refused)
    assert redis.Redis.from_url(REDIS_URL).keys(f"{redis_prefix}:*"), "the counters must live in Redis"


def test_an_unreachable_redis_fails_closed_with_503(start_frontend_with):
    server = start_frontend_with({"REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "LLMSERVE_RATE_LIMIT_RPM": "5"})
    refused = chat(httpx.Client(timeout=60), server)
    error_of(refused, 503, "rate_limiter_unavailable")
    assert refused.headers["retry-after"]


def test_an_unreachable_redis_fails_open_when_configured(start_frontend_with, redis_prefix):
    """rate_limit_fail_open: while Redis is cut (a TCP proxy in front of the real one) requests are served, logged
    and counted; once it is back the budget it kept applies again."""
    proxy = TcpProxy("127.0.0.1", 6379)
    proxy.restore()
    try:
        server = start_frontend_with(
            {
                "REDIS_URL": f"redis://127.0.0.1:{proxy.port}/0",
                "LLMSERVE_RATE_LIMIT_RPM": "2",
                "LLMSERVE_REDIS_KEY_PREFIX": redis_prefix,
                "LLMSERVE_RATE_LIMIT_FAIL_OPEN": "true",
                "LLMSERVE_LOG_LEVEL": "info",
            }
        )
        http = client_from("127.0.0.3")
        assert [chat(http, server).status_code for _ in range(2)] == [200, 200]
        error_of(chat(http, server), 429, "rate_limit_exceeded")  # the limit holds while Redis answers
        proxy.cut()
        started = time.monotonic()
        assert [chat(http, server).status_code for _ in range(4)] == [200] * 4
        elapsed = time.monotonic() - started
        text = httpx.get(f"{server.base_url}/metrics", timeout=10).text
        failed_open = sum(
            s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "llmserve_rate_limit_fail_open_total"
        )
        assert failed_open == 4
        # One warning per 10 s while it lasts, not one per request.
        assert 1 <= server.log().count("failing open") <= 1 + int(elapsed // 10)
        proxy.restore()
        error_of(chat(http, server), 429, "rate_limit_exceeded")  # Redis kept the budget: limited again
    finally:
        proxy.cut()


# --- per-key limits from `llmserve keys create` ---


@pytest.mark.rate_window(20)
def test_per_key_limits_from_keys_create(start_frontend_with, tmp_path):
    home = str(tmp_path / "home")
    env = {**os.environ, "LLMSERVE_HOME": home}
    limited = {
        "Authorization": f"Bearer {create_key_with_cli(env, '--name', 'limited', '--rpm', '2', '--max-streams', '1')}"
    }
    roomy = {"Authorization": f"Bearer {create_key_with_cli(env, '--name', 'roomy')}"}
    server = start_frontend_with({"LLMSERVE_AUTH": "true", "LLMSERVE_HOME": home})
    http = httpx.Client(timeout=120)
    with open_stream(http, server, limited):  # request 1 of 2
        error = error_of(chat(http, server, limited), 429, "too_many_streams")
        assert "'limited'" in error["message"]
        assert chat(http, server, roomy).status_code == 200  # same address, another key
    assert eventually_admitted(lambda: chat(http, server, limited)).status_code == 200  # request 2 of 2
    error = error_of(chat(http, server, limited), 429, "rate_limit_exceeded")
    assert "2 requests per minute for API key 'limited'" in error["message"]
    for _ in range(3):
        assert chat(http, server, roomy).status_code == 200  # no --rpm and no default: unlimited
    error_of(chat(http, server), 401, "missing_api_key")


@pytest.mark.rate_window(20)
async def test_websocket_chats_spend_the_same_budget(start_frontend_with):
    """The WebSocket chat goes through the same admission as HTTP: over the limit, an error frame, and the
    connection stays usable."""
    server = start_frontend_with({"LLMSERVE_RATE_LIMIT_RPM": "1"})
    async with connect(server.ws_url) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        frames = []
        for _ in range(2):
            await ws.send(json.dumps({"type": "chat", "content": "Hi", "settings": {"max_tokens": 1}}))
            while (frame := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] not in ("done", "error"):
                pass
            frames.append(frame)
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv()) == {"type": "pong"}
    assert frames[0]["type"] == "done"
    assert (frames[1]["type"], frames[1]["code"]) == ("error", "rate_limit_exceeded")
    assert "1 requests per minute" in frames[1]["message"]
