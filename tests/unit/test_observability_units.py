"""Pure parts of observability: request ids, the generation timer's arithmetic and outcomes, the middleware on
what the real stack cannot show (a WebSocket route, an unhandled bug), JSON log lines."""

from __future__ import annotations

import asyncio
import json
import logging

import pynvml
import pytest
from fastapi import FastAPI, WebSocket
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from frontend_api.engine.protocol import EngineError, GenerationChunk
from frontend_api.observability.context import RequestContext, request_id_from, set_current_request
from frontend_api.observability.logging import configure_logging
from frontend_api.observability.metrics import Metrics
from frontend_api.observability.middleware import ObservabilityMiddleware
from frontend_api.observability.system import SystemProbe
from frontend_api.openai.response_objects import Usage
from frontend_api.openai.timing import GenerationTimer


def sample(metrics: Metrics, name: str, **labels: str) -> float:
    return sum(
        s.value
        for f in text_string_to_metric_families(_exposition(metrics))
        for s in f.samples
        if s.name == name and all(s.labels.get(k) == v for k, v in labels.items())
    )


def _exposition(metrics: Metrics) -> str:
    from prometheus_client import generate_latest

    return generate_latest(metrics.registry).decode()


@pytest.mark.parametrize(
    "given, kept",
    [
        ("abc-123", True),
        ("a" * 128, True),
        ("a" * 129, False),
        ("has space", False),
        ("semi;colon", False),
        ("", False),
        ("\u00e9t\u00e9", False),
    ],
)
def test_a_sane_request_id_is_kept_else_one_is_made(given, kept):
    got = request_id_from([(b"x-request-id", given.encode("utf-8"))])
    assert (got == given) is kept
    if not kept:
        assert len(got) == 32 and got.isalnum()


def test_without_header_ids_are_fresh():
    assert request_id_from([]) != request_id_from([])


async def drive(chunks: list[tuple[float, GenerationChunk]], close_after: int | None = None, fail: bool = False):
    """Feed chunks (delay, chunk) through a timer inside a request context; return (timer, metrics, context)."""
    metrics = Metrics()
    context = RequestContext("rid", 0.0, "http", metrics)

    async def engine():
        for delay, chunk in chunks:
            await asyncio.sleep(delay)
            yield chunk
        if fail:
            raise EngineError("engine broke")

    async def run():
        set_current_request(context)
        context.started = __import__("time").perf_counter()
        timer = GenerationTimer("m", "alice", max_tokens=10, prompt_tokens=5)
        watched = timer.watch(engine())
        seen = 0
        try:
            async for _ in watched:
                seen += 1
                if close_after is not None and seen == close_after:
                    break
        except EngineError:
            pass
        finally:
            await watched.aclose()
        return timer

    timer = await asyncio.create_task(run())  # its own context, like a request's task
    return timer, metrics, context


async def test_timer_counts_tokens_gaps_and_the_finish():
    chunks = [
        (0.02, GenerationChunk("a", num_input_tokens=7, num_output_tokens=1)),
        (0.01, GenerationChunk("bc", num_output_tokens=3)),  # two tokens in one chunk: two gaps
        (0.01, GenerationChunk("", finish_reason="stop", num_output_tokens=4)),
    ]
    timer, metrics, context = await drive(chunks)
    assert timer.outcome == "stop"
    assert sample(metrics, "llmserve_time_to_first_token_seconds_count", model="m") == 1
    assert sample(metrics, "llmserve_time_to_first_token_seconds_sum") >= 0.02
    assert sample(metrics, "llmserve_inter_token_latency_seconds_count") == 3  # tokens 2, 3 and 4
    assert sample(metrics, "llmserve_e2e_request_latency_seconds_count") == 1
    assert sample(metrics, "llmserve_prompt_tokens_total", model="m", key_name="alice") == 7
    assert sample(metrics, "llmserve_completion_tokens_total", model="m", key_name="alice") == 4
    assert sample(metrics, "llmserve_generations_total", finish_reason="stop") == 1
    assert sample(metrics, "llmserve_generations_in_flight") == 0
    assert context.fields == {"model": "m", "finish_reason": "stop", "prompt_tokens": 7, "completion_tokens": 4}
    stats = timer.stats(4)
    assert stats.prefill_ms <= stats.ttft_ms <= stats.e2e_ms
    assert stats.decode_ms >= 20 and stats.e2e_ms == pytest.approx(stats.ttft_ms + stats.decode_ms, abs=0.01)
    assert stats.tokens_per_second == pytest.approx(3 / (stats.decode_ms / 1000), rel=0.01)
    assert timer.stats(1).tokens_per_second is None  # one token: no decode rate


async def test_closing_before_the_final_chunk_is_a_cancellation():
    chunks = [
        (0, GenerationChunk("a", num_output_tokens=1)),
        (0, GenerationChunk("b", num_output_tokens=2)),
        (0, GenerationChunk("", finish_reason="stop", num_output_tokens=3)),
    ]
    timer, metrics, _ = await drive(chunks, close_after=2)
    assert timer.outcome == "cancelled"
    assert sample(metrics, "llmserve_generations_total", finish_reason="cancelled") == 1
    assert sample(metrics, "llmserve_completion_tokens_total") == 2  # what was generated before the close
    assert sample(metrics, "llmserve_e2e_request_latency_seconds_count") == 0  # finished generations only
    assert sample(metrics, "llmserve_generations_in_flight") == 0


async def test_an_engine_error_is_an_error_and_a_missing_reason_is_derived():
    timer, metrics, _ = await drive([(0, GenerationChunk("a", num_output_tokens=1))], fail=True)
    assert timer.outcome == "error" and sample(metrics, "llmserve_generations_total", finish_reason="error") == 1
    # an engine without finish reasons (the TensorRT-LLM ensemble) and without counts: one token per text chunk
    chunks = [(0, GenerationChunk(str(i))) for i in range(10)]
    timer, metrics, _ = await drive(chunks)
    assert timer.outcome == "length" and sample(metrics, "llmserve_completion_tokens_total") == 10


def test_usage_without_stats_serializes_as_openai_usage():
    assert json.loads(Usage(prompt_tokens=1, completion_tokens=2, total_tokens=3).model_dump_json()) == {
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "total_tokens": 3,
    }


def small_app() -> tuple[FastAPI, Metrics]:
    app = FastAPI()
    metrics = Metrics()
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)

    @app.websocket("/ws/{room}")
    async def echo(websocket: WebSocket, room: str):
        await websocket.accept()
        await websocket.send_text(str(metrics.websocket_connections._value.get()))
        await websocket.receive_text()
        await websocket.close()

    @app.get("/bug")
    async def bug():
        raise RuntimeError("a bug")  # a fake fault: the real routes have none we could trigger on purpose

    return app, metrics


def test_websocket_connections_are_counted_while_open_and_by_route_template():
    app, metrics = small_app()
    with TestClient(app) as client, client.websocket_connect("/ws/one", headers={"X-Request-ID": "ws-1"}) as ws:
        assert ws.receive_text() == "1.0"
        ws.send_text("bye")
    assert sample(metrics, "llmserve_websocket_connections") == 0
    assert sample(metrics, "llmserve_http_requests_total", method="WEBSOCKET", route="/ws/{room}", status="101") == 1


def test_an_unhandled_error_is_a_500_with_the_request_id_and_a_logged_line(caplog):
    app, metrics = small_app()
    with TestClient(app, raise_server_exceptions=False) as client, caplog.at_level(logging.INFO):
        reply = client.get("/bug", headers={"X-Request-ID": "bug-1"})
        missing = client.get("/nowhere/123")
    assert reply.status_code == 500 and reply.headers["x-request-id"] == "bug-1"
    assert reply.json()["error"]["message"] == "Internal server error (request id bug-1)."
    assert "a bug" not in reply.text  # no internals
    assert missing.status_code == 404 and len(missing.headers["x-request-id"]) == 32
    assert sample(metrics, "llmserve_http_requests_total", route="/bug", status="500") == 1
    assert sample(metrics, "llmserve_http_requests_total", route="unmatched", status="404") == 1
    access = [r for r in caplog.records if r.name == "llmserve.access" and r.route == "/bug"]
    assert len(access) == 1 and access[0].status == 500 and access[0].request_id == "bug-1"


def test_json_log_lines_carry_the_request_id(capsys):
    configure_logging("info", "json")
    try:

        async def log_inside_a_request():
            set_current_request(RequestContext("req-42", 0.0, "http"))
            logging.getLogger("test").warning("inside", extra={"route": "/x"})

        asyncio.run(log_inside_a_request())
        logging.getLogger("test").warning("outside")
        lines = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    finally:
        configure_logging("warning", "text")
    assert lines[0]["request_id"] == "req-42" and lines[0]["route"] == "/x" and lines[0]["level"] == "WARNING"
    assert lines[0]["logger"] == "test" and lines[0]["message"] == "inside" and "time" in lines[0]
    assert "request_id" not in lines[1]


async def test_system_probe_reads_the_host_and_says_why_without_gpus():
    probe = SystemProbe()
    sum(i * i for i in range(3_000_000))  # some CPU time for this process
    figures = await probe.snapshot()  # the real library: no NVIDIA driver on these machines
    probe.close()
    assert figures["cpu"]["process_percent"] > 0 and figures["cpu"]["percent"] > 0  # measured since start-up
    if figures["gpus"]:  # a host with an NVIDIA driver
        assert figures["gpu_error"] is None
    else:  # these machines
        assert figures["gpu_error"].startswith("NVML is not available")
    assert figures["memory"]["process_rss_bytes"] > 0 and figures["cpu"]["count"] >= 1


async def test_system_probe_reads_each_gpu(monkeypatch):
    """A fake NVML (named so): the GPU branch cannot run here, there is no driver."""
    from types import SimpleNamespace

    fake = {
        "nvmlInit": lambda: None,
        "nvmlShutdown": lambda: None,
        "nvmlDeviceGetCount": lambda: 2,
        "nvmlDeviceGetHandleByIndex": lambda i: i,
        "nvmlDeviceGetName": lambda h: b"Fake H200",
        "nvmlDeviceGetMemoryInfo": lambda h: SimpleNamespace(total=141 << 30, used=(h + 1) << 30),
        "nvmlDeviceGetUtilizationRates": lambda h: SimpleNamespace(gpu=40 + h),
        "nvmlDeviceGetTemperature": lambda h, sensor: 50,
    }
    for name, function in fake.items():
        monkeypatch.setattr(pynvml, name, function)
    probe = SystemProbe()
    figures = await probe.snapshot()
    probe.close()
    assert figures["gpu_error"] is None
    assert figures["gpus"][1] == {
        "index": 1,
        "name": "Fake H200",
        "memory_total_bytes": 141 << 30,
        "memory_used_bytes": 2 << 30,
        "utilization_percent": 41,
        "temperature_c": 50,
    }


def test_the_readme_documents_every_metric_with_its_labels():
    import re
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[2] / "docs/METRICS_AND_LOGS.md").read_text()
    documented = {}
    for name, labels in re.findall(r"^\| `(llmserve_\w+)` \| \w+ \| ([^|]*) \|", readme, flags=re.M):
        documented[name] = sorted(re.findall(r"`(\w+)`", labels))
    exposed = {}
    for metric in Metrics().registry._names_to_collectors.values():
        suffix = "_total" if metric._type == "counter" else ""
        exposed[metric._name + suffix] = sorted(metric._labelnames)
    assert documented == exposed
