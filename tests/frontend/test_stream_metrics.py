"""What an SSE stream leaves behind, over the fake engine: the generation's metrics (TTFT, inter-token latency,
token counters, outcome, in-flight gauge) and its access line, for a stream read to the end and for one the client
leaves mid-way. The stream's engine chunks feed the timer as they are received (EngineStream), so these counts are
the ones a per-token wrapper around the engine's iterator gave."""

from __future__ import annotations

import json
import logging

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from fake_engine import MODEL, wait_until

ROUTES = [
    ("/chat/completions", {"messages": [{"role": "user", "content": "Count for me."}]}),
    ("/completions", {"prompt": "Count for me."}),
]


def samples(app) -> dict[tuple[str, frozenset], float]:
    """Every sample of the app's /metrics: (name, labels) -> value."""
    text = httpx.get(f"{app.base_url}/metrics", timeout=10).text
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(found: dict, name: str, **labels: str) -> float:
    """The sum of `name` over the samples whose labels include `labels` (0 when there are none)."""
    wanted = set(labels.items())
    return sum(v for (n, sample_labels), v in found.items() if n == name and wanted <= sample_labels)


def stream(app, route: str, body: dict) -> tuple[list[dict], str]:
    """POST a streamed request; the JSON events and the response's request id."""
    payload = {"model": MODEL, "stream": True, "stream_options": {"include_usage": True}, **body}
    with httpx.stream("POST", f"{app.api_url}{route}", json=payload, timeout=30) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
        request_id = response.headers["x-request-id"]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]], request_id


@pytest.mark.parametrize("route, body", ROUTES)
def test_a_finished_stream_counts_each_token_once(start_app, route, body, caplog):
    app = start_app(log_level="info")
    with caplog.at_level(logging.INFO, logger="llmserve.access"):
        events, request_id = stream(app, route, {**body, "max_tokens": 6, "min_tokens": 6})
    usage = events[-1]["usage"]
    assert usage["completion_tokens"] == 6
    found = samples(app)
    assert value(found, "llmserve_time_to_first_token_seconds_count", model=MODEL) == 1
    assert value(found, "llmserve_inter_token_latency_seconds_count", model=MODEL) == 5  # tokens 2 to 6
    assert value(found, "llmserve_e2e_request_latency_seconds_count", model=MODEL) == 1
    assert value(found, "llmserve_completion_tokens_total", model=MODEL) == 6
    assert value(found, "llmserve_prompt_tokens_total", model=MODEL) == usage["prompt_tokens"]
    assert value(found, "llmserve_generations_total", model=MODEL, finish_reason="length") == 1
    assert value(found, "llmserve_generations_total", model=MODEL) == 1
    assert value(found, "llmserve_generations_in_flight", model=MODEL) == 0
    assert value(found, "llmserve_http_requests_total", route=f"/v1{route}", status="200") == 1
    [line] = [r for r in caplog.records if getattr(r, "request_id", None) == request_id and r.name.endswith("access")]
    assert (line.status, line.model, line.finish_reason) == (200, MODEL, "length")
    assert (line.prompt_tokens, line.completion_tokens) == (usage["prompt_tokens"], 6)


@pytest.mark.parametrize("route, body", ROUTES)
def test_a_stream_the_client_leaves_is_counted_cancelled(start_app, route, body):
    app = start_app(token_delay_s=0.01, reply_words=2000)
    payload = {"model": MODEL, "stream": True, "max_tokens": 2000, "min_tokens": 2000, **body}
    with httpx.stream("POST", f"{app.api_url}{route}", json=payload, timeout=30) as response:
        for count, _ in enumerate(response.iter_lines()):
            if count == 6:
                break
    wait_until(lambda: app.engine.cancelled, what="the engine request cancelled")
    wait_until(
        lambda: value(samples(app), "llmserve_generations_total", finish_reason="cancelled") == 1,
        what="the generation counted as cancelled",
    )
    found = samples(app)
    assert value(found, "llmserve_generations_in_flight", model=MODEL) == 0
    assert value(found, "llmserve_time_to_first_token_seconds_count", model=MODEL) == 1
    assert value(found, "llmserve_completion_tokens_total", model=MODEL) >= 2
