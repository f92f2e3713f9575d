"""`llmserve bench` at small scale against the real stack: both targets, JSON + PNG, numbers that add up."""

from __future__ import annotations

import json
import subprocess

import pytest

from stack import BIN, MODEL

OUTPUT_TOKENS = 6


@pytest.mark.parametrize("target", ["openai", "triton"])
def test_bench_sweeps_concurrency_and_writes_json_and_png(stack, tmp_path, target):
    url = stack.api_url if target == "openai" else f"127.0.0.1:{stack.triton_grpc_port}"
    command = [
        str(BIN / "llmserve"),
        "bench",
        "--target",
        target,
        "--url",
        url,
        "--model",
        MODEL,
        "--concurrency",
        "1,3",
        "--requests-per-level",
        "3",
        "--input-tokens",
        "16",
        "--output-tokens",
        str(OUTPUT_TOKENS),
        "--processes",
        "2",
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "TTFT p50" in done.stdout and f"{target} c=3" in done.stderr  # the table, and the progress bar
    report = json.loads((tmp_path / f"{target}.json").read_text())
    assert report["command"].startswith(f"llmserve bench --target {target} --url {url}")
    assert [lv["concurrency"] for lv in report["levels"]] == [1, 3]
    for level in report["levels"]:
        assert level["requests"] == 3 and level["failed"] == 0
        assert level["output_tokens"] == 3 * OUTPUT_TOKENS  # min_tokens = max_tokens held on this path
        assert 0 < level["ttft_p50_ms"] <= level["ttft_p99_ms"] < level["seconds"] * 1000
        # the report rounds tok/s to 0.1, which is more than 5 % when a loaded CI machine gives < 1 tok/s
        assert level["output_tokens_per_s"] == pytest.approx(
            level["output_tokens"] / level["seconds"], rel=0.01, abs=0.05
        )
    assert (tmp_path / f"{target}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bench_reports_a_target_that_is_down(tmp_path):
    from stack import free_port

    command = [
        str(BIN / "llmserve"),
        "bench",
        "--target",
        "openai",
        "--url",
        f"http://127.0.0.1:{free_port()}/v1",
        "--model",
        MODEL,
        "--out",
        str(tmp_path),
    ]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and "is the target up" in done.stderr
    assert not (tmp_path / "openai.json").exists()


def test_bench_rejects_bad_concurrency(tmp_path):
    done = subprocess.run(
        [str(BIN / "llmserve"), "bench", "--target", "triton", "--url", "x:1", "--model", "m", "--concurrency", "0,4"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0 and "--concurrency levels must be integers >= 1" in done.stderr
