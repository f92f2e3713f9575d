"""Bad input against the real stack: out-of-range and non-finite numbers, bodies that are not UTF-8 JSON, huge or
deeply nested bodies, wrong content types, long stop lists, malformed WebSocket frames. Each gets a 4xx
OpenAI error naming the field (WebSocket: an `error` frame), never a 500 and never a hang.

Covered elsewhere: unknown fields and unsupported options (test_openai_api.py), binary / non-JSON / unknown
frames (test_websocket.py), the body size limit with Content-Length (test_openai_api.py)."""

from __future__ import annotations

import asyncio
import json
import socket

import httpx
import pytest
from websockets.asyncio.client import connect

from stack import MODEL

CHAT = f'"model": "{MODEL}", "messages": [{{"role": "user", "content": "hi"}}]'
COMPLETION = f'"model": "{MODEL}", "prompt": "hi"'


def post_raw(stack, route: str, body: bytes | str, content_type: str | None = "application/json") -> httpx.Response:
    headers = {"content-type": content_type} if content_type else {}
    return httpx.post(f"{stack.api_url}/{route}", content=body, headers=headers, timeout=60)


def assert_400_naming(response: httpx.Response, param: str | None, words: str = "") -> dict:
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == param, error
    assert words.lower() in error["message"].lower(), error
    return error


# Raw JSON text, so that NaN / Infinity literals and numbers past float and int64 reach the server as sent.
@pytest.mark.parametrize(
    ("route", "fields", "param"),
    [
        ("chat/completions", '"temperature": NaN', "temperature"),
        ("chat/completions", '"temperature": Infinity', "temperature"),
        ("chat/completions", '"top_p": -Infinity', "top_p"),
        ("chat/completions", '"temperature": 1e400', "temperature"),  # overflows a double: inf
        ("chat/completions", '"temperature": -0.5', "temperature"),
        ("chat/completions", '"repetition_penalty": 1e309', "repetition_penalty"),
        ("chat/completions", '"presence_penalty": NaN', "presence_penalty"),
        ("chat/completions", '"max_tokens": 2147483648', "max_tokens"),  # past the engine's int32
        ("chat/completions", '"max_tokens": 18446744073709551616', "max_tokens"),  # past uint64
        ("chat/completions", '"max_tokens": 1e100', "max_tokens"),
        ("chat/completions", '"max_tokens": 4.5', "max_tokens"),
        ("chat/completions", '"max_tokens": -1', "max_tokens"),
        ("chat/completions", '"max_completion_tokens": 99999999999999999999999', "max_completion_tokens"),
        ("chat/completions", '"seed": 18446744073709551616', "seed"),  # past uint64
        ("chat/completions", '"seed": -1', "seed"),
        ("chat/completions", '"min_tokens": 2147483648', "min_tokens"),
        ("chat/completions", '"top_k": 1e10', "top_k"),
        ("chat/completions", '"top_k": -2', "top_k"),
        ("completions", '"max_tokens": 18446744073709551616', "max_tokens"),
        ("completions", '"temperature": NaN', "temperature"),
        ("completions", '"seed": 1e30', "seed"),
    ],
)
def test_bad_numbers_are_400_naming_the_field(stack, route, fields, param):
    base = CHAT if route == "chat/completions" else COMPLETION
    max_tokens = "" if "max_tokens" in fields else ', "max_tokens": 2'
    assert_400_naming(post_raw(stack, route, "{" + base + ", " + fields + max_tokens + "}"), param)


def test_a_top_k_past_the_vocabulary_samples_from_every_token(stack):
    # Found by schemathesis: the engine indexed its logits with top_k (a 500).
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 2,
        "temperature": 1,
        "top_k": 3_990_535,
    }
    response = httpx.post(f"{stack.api_url}/chat/completions", json=body, timeout=60)
    assert response.status_code == 200, response.text


@pytest.mark.parametrize(
    ("stop", "words"),
    [(["x" * 1001], "at most 1000 characters"), (["a"] * 10_000, "at most 16 sequences"), ([""], "empty"), (5, "")],
)
def test_long_or_many_stop_sequences_are_400(stack, stop, words):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stop": stop}
    assert_400_naming(httpx.post(f"{stack.api_url}/chat/completions", json=body, timeout=60), "stop", words)


def test_a_stop_string_at_the_limit_is_served(stack):
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2, "stop": ["x" * 1000]}
    assert httpx.post(f"{stack.api_url}/chat/completions", json=body, timeout=60).status_code == 200


@pytest.mark.parametrize(
    ("body", "words"),
    [
        (b'{"model": "\xff\xfe", "prompt": "hi"}', "not valid UTF-8"),
        ('{"model": "m", "prompt": "hi", "max_tokens": ' + "9" * 5000 + "}", "too many digits"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"model": "m", "prompt": "hi"', "not valid JSON"),
        (b"", "missing"),
        (b"null", "must be a JSON object"),
        (b'["a"]', "must be a JSON object"),
    ],
)
def test_bodies_that_are_not_a_json_object_are_400(stack, body, words):
    assert_400_naming(post_raw(stack, "completions", body), None, words)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_json_without_a_json_content_type_is_400_naming_the_header(stack, content_type):
    body = "{" + COMPLETION + ', "max_tokens": 2}'
    assert_400_naming(post_raw(stack, "completions", body, content_type), None, "Content-Type: application/json")


def test_a_chunked_body_past_the_limit_is_413(stack):
    def body():  # no Content-Length: the limit is enforced while the body arrives
        yield b'{"model": "m", "prompt": "'
        for _ in range(1100):
            yield b"x" * 1000

    response = httpx.post(
        f"{stack.api_url}/completions", content=body(), timeout=60, headers={"content-type": "application/json"}
    )
    assert response.status_code == 413 and "limit" in response.json()["error"]["message"]


def test_an_invalid_content_length_is_400(stack):
    request = (
        b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
        b"Content-Length: 12abc\r\nConnection: close\r\n\r\n{}"
    )
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as sock:
        sock.sendall(request)
        status_line = sock.recv(4096).split(b"\r\n", 1)[0]
    assert status_line.split()[1] == b"400", status_line


@pytest.mark.parametrize(
    ("query", "param"),
    [
        ("offset=9223372036854775808", "offset"),
        ("offset=99999999999999999999", "offset"),
        ("limit=0", "limit"),
        ("limit=1e3", "limit"),
        ("offset=NaN", "offset"),
    ],
)
def test_session_list_paging_out_of_range_is_400(stack, query, param):
    assert_400_naming(httpx.get(f"{stack.api_url}/sessions?{query}", timeout=10), param)


def test_session_numbers_out_of_range_are_400(stack):
    session = httpx.post(f"{stack.api_url}/sessions", json={"title": "bad numbers"}, timeout=10).json()
    messages = httpx.get(f"{stack.api_url}/sessions/{session['id']}/messages?after=18446744073709551616", timeout=10)
    assert_400_naming(messages, "after")
    for settings, param in [
        ('{"temperature": NaN}', "settings.temperature"),
        ('{"max_tokens": 2147483648}', "settings.max_tokens"),
        ('{"top_k": 1e400}', "settings.top_k"),
    ]:
        assert_400_naming(post_raw(stack, "sessions", '{"settings": ' + settings + "}"), param)
        patched = httpx.patch(
            f"{stack.api_url}/sessions/{session['id']}",
            content='{"settings": ' + settings + "}",
            headers={"content-type": "application/json"},
            timeout=10,
        )
        assert_400_naming(patched, param)
    assert_400_naming(httpx.patch(f"{stack.api_url}/sessions/{session['id']}", json={"title": None}), "title")


# --- WebSocket frames ---


async def first_frame(ws) -> dict:
    while (frame := json.loads(await asyncio.wait_for(ws.recv(), 60)))["type"] == "ping":
        pass
    return frame


@pytest.mark.parametrize(
    ("frame", "param", "words"),
    [
        ('{"type": "chat", "content": 5}', "chat.content", "valid string"),
        ('{"type": 5}', "type", "does not match"),
        ("{}", "type", ""),
        ("[1, 2]", None, "a frame must be a json object"),
        ("null", None, "a frame must be a json object"),
        ('{"type": "chat", "content": "x", "settings": "hot"}', "chat.settings", ""),
        ('{"type": "chat", "content": "x", "settings": {"temperature": NaN}}', "chat.settings.temperature", "finite"),
        ('{"type": "chat", "content": "x", "settings": {"max_tokens": 2147483648}}', "chat.settings.max_tokens", ""),
        ('{"type": "chat", "content": "x", "settings": {"max_tokens": 1e400}}', "chat.settings.max_tokens", ""),
        ('{"type": "chat", "content": "x", "settings": {"top_p": -1}}', "chat.settings.top_p", ""),
        ('{"type": "chat", "content": "x", "session_id": "' + "s" * 100 + '"}', "chat.session_id", ""),
        ('{"type": "chat", "content": "x", "extra": 1}', "chat.extra", ""),
        ('{"type": "chat", "content": "' + "x" * 300_000 + '"}', "chat.content", "200000 characters"),
        ('{"type": "chat", "content": "x", "settings": {"top_k": ' + "9" * 5000 + "}}", None, "not valid JSON"),
        ("[" * 100_000 + "]" * 100_000, None, "not valid JSON"),
    ],
)
async def test_malformed_frames_get_an_error_frame_naming_the_field(stack, frame, param, words):
    async with connect(stack.ws_url, max_size=None) as ws:
        await first_frame(ws)
        await ws.send(frame)
        error = await first_frame(ws)
        assert error["type"] == "error" and error["code"] == "invalid_message", error
        assert error.get("param") == param and words.lower() in error["message"].lower(), error
        await ws.send(json.dumps({"type": "ping"}))  # the connection stays usable
        assert await first_frame(ws) == {"type": "pong"}


async def test_a_frame_past_the_websocket_size_limit_closes_with_1009(stack):
    async with connect(stack.ws_url, max_size=None) as ws:
        await first_frame(ws)
        await ws.send('{"type": "chat", "content": "' + "x" * (17 * 2**20) + '"}')  # uvicorn's limit: 16 MiB
        await asyncio.wait_for(ws.wait_closed(), 30)
        assert ws.close_code == 1009  # RFC 6455 "message too big"
    async with connect(stack.ws_url) as ws:  # the server goes on
        assert (await first_frame(ws))["type"] == "ready"
