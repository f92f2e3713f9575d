"""The front-end's Prometheus metrics: one `Metrics` per app, in its own registry (apps in one process, as in
tests, do not collide). Names and labels are documented in docs/METRICS_AND_LOGS.md.

Label values stay bounded: routes are templates (`/v1/sessions/{session_id}`, never the raw path), models are
the served ids, key names are the names of API keys (never the keys) or "anonymous".
"""

from __future__ import annotations

import os
from bisect import bisect_left
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

# Generation latencies span milliseconds (GPU decode) to minutes (long CPU generations).
TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1, 2.5, 5, 7.5, 10, 20, 40, 80, 160)
INTER_TOKEN_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5)
E2E_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 15, 20, 30, 45, 60, 120, 240, 480, 960)
HTTP_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


class Metrics:
    def __init__(self) -> None:
        self.registry = registry = CollectorRegistry()
        # HTTP (and WebSocket handshakes), recorded by ObservabilityMiddleware
        self.http_requests = Counter(
            "llmserve_http_requests",
            "HTTP requests by method, route template and status.",
            ["method", "route", "status"],
            registry=registry,
        )
        self.http_duration = Histogram(
            "llmserve_http_request_duration_seconds",
            "Time from request arrival to the end of the response (streams included).",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=registry,
        )
        self.websocket_connections = Gauge(
            "llmserve_websocket_connections",
            "Open (accepted) WebSocket connections.",
            registry=registry,
            multiprocess_mode="livesum",
        )
        # Generations, recorded by GenerationTimer
        self.in_flight = Gauge(
            "llmserve_generations_in_flight",
            "Generations sent to the engine and not yet over.",
            ["model"],
            registry=registry,
            multiprocess_mode="livesum",
        )
        self.generations = Counter(
            "llmserve_generations",
            "Generations by outcome: stop, length, cancelled, error.",
            ["model", "key_name", "finish_reason"],
            registry=registry,
        )
        self.time_to_first_token = Histogram(
            "llmserve_time_to_first_token_seconds",
            "From request arrival to the first generated token.",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=registry,
        )
        self.inter_token_latency = Histogram(
            "llmserve_inter_token_latency_seconds",
            "Gap between generated tokens (one observation per token after the first).",
            ["model"],
            buckets=INTER_TOKEN_BUCKETS,
            registry=registry,
        )
        self.e2e_latency = Histogram(
            "llmserve_e2e_request_latency_seconds",
            "From request arrival to the last token, for generations that finished.",
            ["model"],
            buckets=E2E_BUCKETS,
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "llmserve_prompt_tokens",
            "Prompt tokens of generations the engine accepted.",
            ["model", "key_name"],
            registry=registry,
        )
        self.completion_tokens = Counter(
            "llmserve_completion_tokens",
            "Generated tokens (cancelled ones included).",
            ["model", "key_name"],
            registry=registry,
        )
        # Limits and storage
        self.rate_limited_requests = Counter(
            "llmserve_rate_limited", "Requests refused by a limit (429/503).", ["key_name", "limit"], registry=registry
        )
        self.rate_limit_fail_open = Counter(
            "llmserve_rate_limit_fail_open",
            "Requests served without rate limits because Redis was unreachable (rate_limit_fail_open).",
            ["key_name"],
            registry=registry,
        )
        self.sessions_stored = Gauge(
            "llmserve_sessions_stored",
            "Chat sessions in the database (read at scrape time).",
            registry=registry,
            multiprocess_mode="mostrecent",
        )

    def exposition(self) -> bytes:
        """The text format. With several worker processes (PROMETHEUS_MULTIPROC_DIR set by the launcher) every
        process writes its values to files there, and a scrape of any one of them sums them all."""
        if not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
            return generate_latest(self.registry)
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
        return generate_latest(registry)

    def rate_limited(self, key_name: str, limit: str) -> None:
        """Count a refusal; `limit` names the limit crossed: rpm, tpm, streams or in_flight."""
        self.rate_limited_requests.labels(key_name=key_name, limit=limit).inc()

    def failed_open(self, key_name: str) -> None:
        self.rate_limit_fail_open.labels(key_name=key_name).inc()


class HistogramTally:
    """Observations of one labelled histogram counted locally and added to it at once (`flush`, at the end of a
    generation): per token this is a bisect, not a shared (with several workers: file-backed) value update.
    prometheus_client has no bulk observe, so `flush` adds to the child's buckets and sum as `observe` does."""

    def __init__(self, child: Any):
        self._child = child
        self._bounds: list[float] = list(child._upper_bounds)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0

    def observe(self, amount: float, times: int = 1) -> None:
        """`times` observations of `amount` (Histogram.observe puts it in the first bucket with amount <= bound)."""
        self._counts[bisect_left(self._bounds, amount)] += times
        self._sum += amount * times

    def flush(self) -> None:
        for bucket, count in enumerate(self._counts):
            if count:
                self._child._buckets[bucket].inc(count)
        if any(self._counts):
            self._child._sum.inc(self._sum)
        self._counts = [0] * len(self._bounds)
        self._sum = 0.0
