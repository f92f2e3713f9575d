"""Limits crossed are a 429 with Retry-After; a closed stream frees its slot. tests/integration/test_limits.py asks
the same (and Redis, and many processes) of the real stack."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from fake_engine import MODEL, wait_until
from helpers import create_key_in_database

HI = [{"role": "user", "content": "Hi"}]


def chat(app, headers: dict[str, str] | None = None, **body) -> httpx.Response:
    payload = {"model": MODEL, "messages": HI, "max_tokens": 1} | body
    return httpx.post(f"{app.api_url}/chat/completions", json=payload, headers=headers, timeout=30)


def refused(response: httpx.Response, code: str) -> dict:
    assert response.status_code == 429, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["type"] == "rate_limit_error", error
    assert 1 <= int(response.headers["retry-after"]) <= 60, response.headers
    return error


@pytest.mark.rate_window(5)
def test_requests_past_rate_limit_rpm_are_429_with_retry_after(start_app):
    app = start_app(rate_limit_rpm=2)
    assert [chat(app).status_code for _ in range(2)] == [200, 200]
    error = refused(chat(app), "rate_limit_exceeded")
    assert "2 requests per minute" in error["message"]
    assert len(app.engine.requests) == 2  # the refused one never reached the engine


@pytest.mark.rate_window(5)
def test_a_keys_own_limit_applies_to_that_key_only(start_app):
    app = start_app(auth=True)
    limited = asyncio.run(create_key_in_database(app.database_url, "limited", rpm=1))
    roomy = asyncio.run(create_key_in_database(app.database_url, "roomy"))
    as_limited, as_roomy = ({"Authorization": f"Bearer {key}"} for key in (limited, roomy))
    assert chat(app, as_limited).status_code == 200
    assert "for API key 'limited'" in refused(chat(app, as_limited), "rate_limit_exceeded")["message"]
    assert chat(app, as_roomy).status_code == 200


def test_a_stream_holds_its_slot_until_it_is_closed(start_app):
    app = start_app(token_delay_s=0.01, max_streams_per_key=1)
    body = {"model": MODEL, "messages": HI, "stream": True, "max_tokens": 2000, "min_tokens": 2000}
    with httpx.Client(timeout=30) as http:
        with http.stream("POST", f"{app.api_url}/chat/completions", json=body) as response:
            assert response.status_code == 200
            lines = response.iter_lines()  # kept: dropping a half-read iterator closes the connection
            assert json.loads(next(lines)[6:])["object"] == "chat.completion.chunk"
            assert app.engine.active == {app.engine.requests[-1].request_id}
            refused(chat(app), "too_many_streams")
    wait_until(lambda: app.engine.active == set(), what="the closed stream's engine request ended")
    wait_until(lambda: chat(app).status_code == 200, what="the freed slot admitting a new request")
