"""The soak test's short version (llmserve/bench/soak.py; the long run is in docs/RELIABILITY.md): 200 streaming
chat clients in sessions, SSE and WebSocket, a quarter of the messages hung up early, for about half a minute of
new messages. Checked: no 5xx (client side and the server's own count), no transport or stream errors, every
completed reply stored exactly once in its session and every hung-up one stored as docs/SESSIONS.md says, and the
front-end's memory within a generous bound. Timings are reported, not asserted."""

from __future__ import annotations

import json

import pytest

from llmserve.bench.soak import run_soak

from stack import MODEL

CLIENTS = 200
RSS_GROWTH_BOUND_MIB = (
    300  # generous: 200 connections, their buffers and sessions; a leak per request shows over the long run
)


@pytest.mark.timeout(1200)  # 200 streams queue in a CPU engine for minutes; correctness is asserted, not speed
async def test_many_streaming_clients_with_hang_ups_lose_nothing(stack):
    report = await run_soak(
        stack.base_url,
        MODEL,
        clients=CLIENTS,
        duration=30,
        max_tokens=4,
        disconnect_fraction=0.25,
        ws_fraction=0.2,
        seed=1,
        progress_interval=15,
    )
    summary = {k: v for k, v in report.items() if k != "rss_samples"}
    print(json.dumps(summary, indent=2))
    outcomes = report["outcomes"]
    assert report["requests"] >= CLIENTS and outcomes.get("completed", 0) >= CLIENTS // 2, summary
    assert outcomes.get("disconnected", 0) + outcomes.get("stopped", 0) >= 1, summary  # hang-ups were exercised
    assert report["unexpected_5xx"] == 0 and report["server_5xx_counted"] == 0, summary
    assert report["failure_examples"] == [] and report["refused_by_caps"] == 0, summary
    assert report["storage_violations"] == 0 and report["hung_up_not_stored_in_time"] == 0, summary
    assert report["rss_end_mib"] - report["rss_start_mib"] < RSS_GROWTH_BOUND_MIB, summary
    assert report["passed"], summary
