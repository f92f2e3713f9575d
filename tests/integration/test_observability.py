"""Observability against the real stack: /metrics moving with real generations, usage.stats, X-Request-ID,
JSON access lines, /v1/system, and (on a second front-end with auth on, against PostgreSQL through a TCP proxy
we can cut) metrics and logs by key name without the key, stored sessions, and /ready when the database goes."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import Callable

import httpx
import psutil
import psycopg
import pytest
from prometheus_client.parser import text_string_to_metric_families

from helpers import create_key_in_database
from stack import MODEL, TcpProxy

CHAT = "/v1/chat/completions"


def scrape(base_url: str) -> dict[tuple[str, frozenset], float]:
    text = httpx.get(f"{base_url}/metrics", timeout=10).text
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def value(samples: dict, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels`."""
    wanted = set(labels.items())
    return sum(v for (n, ls), v in samples.items() if n == name and wanted <= ls)


def delta(before: dict, after: dict, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def access_line(log: Callable[[], str], request_id: str, timeout: float = 10) -> dict:
    """The JSON access line of a request (written once its response is over)."""
    deadline = time.monotonic() + timeout
    while True:
        for line in log().splitlines():
            if line.startswith("{") and f'"{request_id}"' in line:
                record = json.loads(line)
                if record.get("logger") == "llmserve.access" and record.get("request_id") == request_id:
                    return record
        if time.monotonic() > deadline:
            raise AssertionError(f"no access line for {request_id}:\n{log()[-3000:]}")
        time.sleep(0.1)


def chat_body(**extra) -> dict:
    return {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Count from one to ten."}],
        "temperature": 0,
        "max_tokens": 12,
        **extra,
    }


def assert_stats(usage: dict) -> dict:
    stats = usage["stats"]
    assert 0 < stats["prefill_ms"] <= stats["ttft_ms"] <= stats["e2e_ms"]
    assert stats["e2e_ms"] == pytest.approx(stats["ttft_ms"] + stats["decode_ms"], abs=0.01)
    assert stats["decode_ms"] > 0 and stats["tokens_per_second"] > 0
    # decode throughput as defined in docs/METRICS_AND_LOGS.md: the tokens after the first over the decode time
    rate = (usage["completion_tokens"] - 1) / (stats["decode_ms"] / 1000)
    assert stats["tokens_per_second"] == pytest.approx(rate, rel=0.01, abs=0.006)  # reported to 0.01
    return stats


def test_a_chat_moves_the_metrics_and_writes_one_access_line(stack, client):
    before = scrape(stack.base_url)
    request_id = f"obs-{uuid.uuid4().hex[:8]}"
    raw = client.chat.completions.with_raw_response.create(**chat_body(), extra_headers={"X-Request-ID": request_id})
    reply = raw.parse()
    after = scrape(stack.base_url)
    assert raw.headers["x-request-id"] == request_id

    usage = reply.usage
    stats = assert_stats(usage.model_dump())
    assert usage.model_extra["stats"]["ttft_ms"] == stats["ttft_ms"]  # the SDK keeps the extension
    mine = {"model": MODEL, "key_name": "anonymous"}
    assert delta(before, after, "llmserve_http_requests_total", method="POST", route=CHAT, status="200") == 1
    assert delta(before, after, "llmserve_http_request_duration_seconds_count", route=CHAT) == 1
    assert delta(before, after, "llmserve_generations_total", finish_reason=reply.choices[0].finish_reason, **mine) == 1
    assert delta(before, after, "llmserve_prompt_tokens_total", **mine) == usage.prompt_tokens
    assert delta(before, after, "llmserve_completion_tokens_total", **mine) == usage.completion_tokens
    assert delta(before, after, "llmserve_time_to_first_token_seconds_count", model=MODEL) == 1
    assert delta(before, after, "llmserve_time_to_first_token_seconds_sum", model=MODEL) == pytest.approx(
        stats["ttft_ms"] / 1000, abs=0.002
    )
    assert delta(before, after, "llmserve_e2e_request_latency_seconds_count", model=MODEL) == 1
    # one observation per token after the first (the engine sends one token per response here)
    assert (
        delta(before, after, "llmserve_inter_token_latency_seconds_count", model=MODEL) == usage.completion_tokens - 1
    )
    assert value(after, "llmserve_generations_in_flight") == 0

    line = access_line(stack.log, request_id)
    assert line["method"] == "POST" and line["route"] == CHAT and line["path"] == CHAT and line["status"] == 200
    assert (
        line["key_name"] == "anonymous"
        and line["model"] == MODEL
        and line["finish_reason"] == reply.choices[0].finish_reason
    )
    assert line["prompt_tokens"] == usage.prompt_tokens and line["completion_tokens"] == usage.completion_tokens
    assert line["latency_ms"] >= stats["e2e_ms"] * 0.99 and line["client"].startswith("127.0.0.1:")
    assert line["level"] == "INFO" and line["time"].endswith("+00:00")


@pytest.mark.parametrize("route", ["chat", "completions"])
def test_usage_stats_on_streams_and_plain_completions(stack, client, route):
    if route == "chat":
        stream = client.chat.completions.create(**chat_body(), stream=True, stream_options={"include_usage": True})
    else:
        stream = client.completions.create(
            model=MODEL,
            prompt="One, two, three,",
            max_tokens=10,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        )
        plain = client.completions.create(model=MODEL, prompt="One, two, three,", max_tokens=10, temperature=0)
        assert_stats(plain.usage.model_dump())
    chunks = list(stream)
    assert chunks[-1].usage is not None and not chunks[-1].choices
    assert_stats(chunks[-1].usage.model_dump())
    assert all(c.usage is None for c in chunks[:-1])


def test_route_labels_are_templates_and_request_ids_are_made_or_refused(stack):
    before = scrape(stack.base_url)
    missing_model = httpx.get(f"{stack.api_url}/models/no-such-model-{uuid.uuid4().hex}")
    nowhere = httpx.get(f"{stack.base_url}/nowhere/{uuid.uuid4().hex}", headers={"X-Request-ID": "bad id; drop"})
    invalid = httpx.post(f"{stack.api_url}/chat/completions", json={"model": MODEL}, headers={"X-Request-ID": "v-1"})
    after = scrape(stack.base_url)
    assert missing_model.status_code == 404 and nowhere.status_code == 404 and invalid.status_code == 400
    assert delta(before, after, "llmserve_http_requests_total", route="/v1/models/{model_id}", status="404") == 1
    assert delta(before, after, "llmserve_http_requests_total", route="unmatched", status="404") == 1
    assert not any("no-such-model" in dict(labels).get("route", "") for _, labels in after)
    assert invalid.headers["x-request-id"] == "v-1"  # errors carry it too
    for reply in (missing_model, nowhere):  # none given, or not sane: a fresh one
        assert len(reply.headers["x-request-id"]) == 32 and int(reply.headers["x-request-id"], 16) >= 0
    assert access_line(stack.log, "v-1")["status"] == 400


def test_a_client_that_goes_away_counts_as_cancelled(stack):
    before = scrape(stack.base_url)
    body = chat_body(
        max_tokens=400, messages=[{"role": "user", "content": "Write a long story about a dragon."}], stream=True
    )
    with httpx.stream(
        "POST", f"{stack.api_url}/chat/completions", json=body, timeout=60, headers={"X-Request-ID": "gone-1"}
    ) as response:
        assert response.headers["x-request-id"] == "gone-1"  # on the event stream too
        events = 0
        for line in response.iter_lines():
            events += line.startswith("data: ")
            if events == 4:
                break
    deadline = time.monotonic() + 15
    while True:
        after = scrape(stack.base_url)
        cancelled = delta(before, after, "llmserve_generations_total", finish_reason="cancelled", model=MODEL)
        if (cancelled == 1 and value(after, "llmserve_generations_in_flight") == 0) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert cancelled == 1 and value(after, "llmserve_generations_in_flight") == 0
    assert 3 <= delta(before, after, "llmserve_completion_tokens_total", model=MODEL) < 400
    assert delta(before, after, "llmserve_e2e_request_latency_seconds_count") == 0  # finished generations only
    line = access_line(stack.log, "gone-1")
    assert line["finish_reason"] == "cancelled" and line["status"] == 200  # the stream had begun


def test_system_reports_cpu_memory_and_gpus(stack):
    body = httpx.get(f"{stack.api_url}/system", timeout=10).json()
    assert body["object"] == "system" and body["version"] == "0.1.0" and body["uptime_s"] >= 0
    assert body["cpu"]["count"] == psutil.cpu_count() and len(body["cpu"]["load_average"]) == 3
    assert 0 < body["cpu"]["percent"] <= 100  # since start-up: the generations of the tests before
    assert body["cpu"]["process_percent"] > 0
    assert body["memory"]["total_bytes"] == psutil.virtual_memory().total
    assert 0 < body["memory"]["process_rss_bytes"] < body["memory"]["total_bytes"]
    if body["gpus"]:  # a host with an NVIDIA driver
        assert body["gpu_error"] is None and {"name", "memory_total_bytes", "utilization_percent"} <= set(
            body["gpus"][0]
        )
    else:  # these machines: no NVML library
        assert "NVML" in body["gpu_error"]


# ------------------------------------------------------------- a second front-end: auth on, PostgreSQL via a proxy


@pytest.fixture(scope="module")
def proxied_frontend(start_frontend_with, postgres_database):
    """A front-end with auth on, against the session's Triton and a fresh PostgreSQL database reached through a
    TCP proxy that the tests can cut."""
    with postgres_database() as database_url:
        target = httpx.URL(database_url)
        proxy = TcpProxy(target.host, target.port or 5432)
        proxy.restore()
        env = {
            "LLMSERVE_AUTH": "true",
            "LLMSERVE_DATABASE_URL": "",
            "LLMSERVE_LOG_LEVEL": "info",
            "DATABASE_URL": str(target.copy_with(port=proxy.port)),
        }
        frontend = start_frontend_with(env)
        try:
            yield frontend.base_url, proxy, frontend.log, database_url
        finally:
            frontend.stop()
            proxy.cut()


def test_metrics_and_logs_name_the_key_never_show_it(proxied_frontend):
    base_url, _, log, database_url = proxied_frontend
    name = f"obs-{uuid.uuid4().hex[:8]}"
    key = asyncio.run(create_key_in_database(database_url, name))
    before = scrape(base_url)
    reply = httpx.post(
        f"{base_url}{CHAT}",
        json=chat_body(max_tokens=4),
        timeout=60,
        headers={"Authorization": f"Bearer {key}", "X-Request-ID": f"{name}-ok"},
    )
    refused = httpx.post(
        f"{base_url}{CHAT}",
        json=chat_body(max_tokens=4),
        timeout=60,
        headers={"Authorization": f"Bearer {key}x", "X-Request-ID": f"{name}-bad"},
    )
    system = httpx.get(f"{base_url}/v1/system", timeout=10)
    after = scrape(base_url)
    assert reply.status_code == 200 and refused.status_code == 401 and system.status_code == 401
    usage = reply.json()["usage"]
    assert delta(before, after, "llmserve_prompt_tokens_total", key_name=name, model=MODEL) == usage["prompt_tokens"]
    assert delta(before, after, "llmserve_completion_tokens_total", key_name=name) == usage["completion_tokens"]
    assert delta(before, after, "llmserve_http_requests_total", route=CHAT, status="401") == 1
    assert access_line(log, f"{name}-ok")["key_name"] == name
    assert access_line(log, f"{name}-bad")["key_name"] is None  # refused: no principal
    assert key not in log() and key[8:] not in log()


def test_stored_sessions_gauge_and_ready_without_the_database(proxied_frontend):
    base_url, proxy, _, database_url = proxied_frontend
    session_id = f"sess_obs{uuid.uuid4().hex[:24]}"
    with psycopg.connect(database_url, autocommit=True) as connection:
        connection.execute(
            "INSERT INTO sessions (id, title, settings, created_at, updated_at) "
            "VALUES (%s, 'observability test', '{}', 0, 0)",
            (session_id,),
        )
        try:
            gauge = value(scrape(base_url), "llmserve_sessions_stored")
            stored = connection.execute("SELECT count(*) FROM sessions").fetchone()[0]
        finally:
            connection.execute("DELETE FROM sessions WHERE id = %s", (session_id,))
    assert gauge == stored >= 1

    assert httpx.get(f"{base_url}/ready", timeout=10).json() == {
        "status": "ready",
        "engine": "ready",
        "database": "ready",
    }
    proxy.cut()
    try:
        ready = httpx.get(f"{base_url}/ready", timeout=30)
        assert ready.status_code == 503, ready.text
        assert ready.json()["error"]["message"] == "Not ready: the database does not answer."
        assert ready.json()["error"]["code"] == "not_ready"
        assert httpx.get(f"{base_url}/health", timeout=10).status_code == 200
        assert httpx.get(f"{base_url}/metrics", timeout=30).status_code == 200  # the sessions gauge keeps its value
    finally:
        proxy.restore()
    deadline = time.monotonic() + 20
    while httpx.get(f"{base_url}/ready", timeout=30).status_code != 200:  # the pool reconnects
        assert time.monotonic() < deadline, "not ready again after the database came back"
        time.sleep(0.3)
