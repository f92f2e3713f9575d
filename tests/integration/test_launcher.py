"""`llmserve serve` as a process: what happens when Triton dies, and when a port is taken."""

import os
import signal
import socket
import subprocess
import time

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stack import BIN, MODEL, free_port, prepare_repository, start_stack


def chat(stack, model):
    return httpx.post(f"{stack.api_url}/chat/completions", timeout=60,
                      json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3})  # fmt: skip


def test_two_models_are_served_and_triton_death_turns_ready_to_503(checkpoint_dir, tmp_path):
    repository = prepare_repository(tmp_path / "build", "--model", "builtin:smollm2",
                                    "--model", f"second={checkpoint_dir}", "--max-num-seqs", "2")  # fmt: skip
    stack = start_stack(repository, tmp_path / "llmserve.log")
    try:
        models = httpx.get(f"{stack.api_url}/models").json()["data"]
        assert sorted(m["id"] for m in models) == [MODEL, "second"]
        for model in (MODEL, "second"):  # each id routes to its own Triton model, warmed up at start
            reply = chat(stack, model)
            assert reply.status_code == 200 and reply.json()["model"] == model
            assert reply.json()["usage"]["completion_tokens"] >= 1

        triton_pid = int(subprocess.check_output(["pgrep", "-P", str(stack.process.pid), "-f", "tritonserver"]))
        os.kill(triton_pid, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and httpx.get(f"{stack.base_url}/ready").status_code != 503:
            time.sleep(0.2)
        ready = httpx.get(f"{stack.base_url}/ready")
        assert ready.status_code == 503 and "error" in ready.json()
        assert chat(stack, MODEL).status_code == 503
        assert httpx.get(f"{stack.base_url}/health").status_code == 200  # the process itself is alive
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline and "tritonserver exited" not in stack.log():
            time.sleep(0.2)
        assert "ERROR: tritonserver exited with code -9" in stack.log()
    finally:
        assert stack.stop(signal.SIGINT) == 0


@pytest.mark.parametrize("flag, moved_by", [("--triton-grpc-port", "--triton-grpc-port"), ("--port", "--port")])
def test_a_taken_port_is_reported_before_starting_triton(repository, flag, moved_by):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        ports = {"--port": str(free_port()), flag: str(taken)}
        result = subprocess.run(
            [str(BIN / "llmserve"), "serve", "--model-repository", str(repository), *(x for kv in ports.items() for x in kv)],
            capture_output=True, text=True, timeout=60,
        )  # fmt: skip
    assert result.returncode == 1
    assert f"port {taken}" in result.stdout and "taken" in result.stdout and moved_by in result.stdout
    assert "starting" not in result.stdout  # Triton was never started


def test_worker_processes_share_the_port_and_their_metrics(repository, tmp_path):
    """`--workers 2` (here LLMSERVE_WORKERS): two front-end processes answer on one port, any one's /metrics
    counts what both did, and SIGTERM still stops everything cleanly."""
    stack = start_stack(repository, tmp_path / "llmserve.log", env={"LLMSERVE_WORKERS": "2"})
    try:
        workers = [p for p in psutil.Process(stack.process.pid).children()
                   if "spawn_main" in " ".join(p.cmdline())]  # fmt: skip
        assert len(workers) == 2
        with httpx.Client(timeout=60) as http:
            for _ in range(6):
                reply = http.post(f"{stack.api_url}/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2})
                assert reply.status_code == 200
            for _ in range(4):  # whichever worker answers the scrape, it shows the six generations
                text = http.get(f"{stack.base_url}/metrics").text
                generations = sum(s.value for f in text_string_to_metric_families(text) for s in f.samples
                                  if s.name == "llmserve_generations_total")  # fmt: skip
                assert generations == 6
    finally:
        code = stack.stop(signal.SIGTERM)
    assert code == 0, stack.log()[-3000:]
    assert "stopped (tritonserver exit code 0)" in stack.log()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)
