"""`llmserve serve` as a process: Triton killed under open clients and restarted (or given up on), a taken port,
workers."""

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import time

import httpx
import psutil
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import connect

from stack import BIN, MODEL, free_port, prepare_repository, start_stack


def chat(stack, model):
    return httpx.post(
        f"{stack.api_url}/chat/completions",
        timeout=60,
        json={"model": model, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
    )


def triton_pid(stack) -> int:
    return int(subprocess.check_output(["pgrep", "-P", str(stack.process.pid), "-f", "tritonserver"]))


async def kill_triton_under_open_clients(stack) -> dict[str, float]:
    """Open an SSE stream, a WebSocket chat and a non-streaming request, SIGKILL tritonserver once the engine runs
    all three, and return the seconds from the kill to each client's error."""
    long = {"max_tokens": 2000, "min_tokens": 2000}
    story = [{"role": "user", "content": "Tell me a very long story."}]
    async with httpx.AsyncClient(timeout=60) as http, connect(stack.ws_url) as ws:
        sse = await http.send(
            http.build_request(
                "POST",
                f"{stack.api_url}/chat/completions",
                json={"model": MODEL, "messages": story, "stream": True, **long},
            ),
            stream=True,
        )
        sse_lines = sse.aiter_lines()
        assert sse.status_code == 200 and (await anext(sse_lines)).startswith("data: ")
        plain = asyncio.create_task(
            http.post(f"{stack.api_url}/chat/completions", json={"model": MODEL, "messages": story, **long})
        )
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(
            json.dumps(
                {
                    "type": "chat",
                    "content": "Write a very long story.",
                    "settings": {"model": "second", "max_tokens": 2000},
                }
            )
        )
        while stack.triton_metric("llm_engine_active_requests") < 3:
            await asyncio.sleep(0.05)

        os.kill(triton_pid(stack), signal.SIGKILL)
        killed = time.monotonic()

        async def sse_error() -> float:
            events = [line async for line in sse_lines if line.startswith("data: ")]
            error = json.loads(next(e[6:] for e in events if '"error"' in e))["error"]
            assert error["code"] == "engine_unavailable" and events[-1] == "data: [DONE]", events[-3:]
            return time.monotonic() - killed

        async def ws_error() -> float:
            while (frame := json.loads(await ws.recv()))["type"] == "delta":
                pass
            assert frame["type"] == "error" and frame["code"] == "engine_unavailable", frame
            waited = time.monotonic() - killed
            await ws.send(json.dumps({"type": "ping"}))  # the connection stays usable
            assert json.loads(await ws.recv()) == {"type": "pong"}
            return waited

        async def plain_error() -> float:
            reply = await plain
            assert reply.status_code == 503 and reply.json()["error"]["code"] == "engine_unavailable", reply.text
            return time.monotonic() - killed

        times = await asyncio.gather(sse_error(), ws_error(), plain_error())
        await sse.aclose()
    return dict(zip(("sse", "websocket", "http"), times, strict=True))


@pytest.mark.timeout(900)  # two model loads, a restart and the backoff: minutes on a shared 2-core machine
def test_triton_killed_mid_stream_errors_every_client_and_is_restarted(checkpoint_dir, tmp_path):
    """Two models; Triton SIGKILLed while three clients are being served: each gets a clean error, /ready turns
    503, the launcher restarts Triton and the same front-end serves again (its gRPC channel reconnects)."""
    repository = prepare_repository(
        tmp_path / "build", "--model", "builtin:smollm2", "--model", f"second={checkpoint_dir}", "--max-num-seqs", "2"
    )
    stack = start_stack(repository, tmp_path / "llmserve.log")
    try:
        models = httpx.get(f"{stack.api_url}/models").json()["data"]
        assert sorted(m["id"] for m in models) == [MODEL, "second"]
        for model in (MODEL, "second"):  # each id routes to its own Triton model, warmed up at start
            reply = chat(stack, model)
            assert reply.status_code == 200 and reply.json()["model"] == model
            assert reply.json()["usage"]["completion_tokens"] >= 1

        times = asyncio.run(kill_triton_under_open_clients(stack))
        killed = time.monotonic() - max(times.values())
        print("\nTriton SIGKILL -> client error: " + ", ".join(f"{k} {v * 1000:.0f} ms" for k, v in times.items()))
        assert max(times.values()) < 5, times  # the target is 2 s; this bound is for noisy CI machines
        ready = httpx.get(f"{stack.base_url}/ready", timeout=10)
        assert ready.status_code == 503 and "inference server" in ready.json()["error"]["message"]
        assert chat(stack, MODEL).status_code == 503
        assert httpx.get(f"{stack.base_url}/health").status_code == 200  # the process itself is alive

        deadline = time.monotonic() + 400  # the restart reloads both models
        while httpx.get(f"{stack.base_url}/ready", timeout=10).status_code != 200:
            assert time.monotonic() < deadline, f"not ready again after the restart:\n{stack.log()[-3000:]}"
            time.sleep(0.2)
        print(f"Triton SIGKILL -> /ready 200 again in {time.monotonic() - killed:.1f} s")
        for model in (MODEL, "second"):
            assert chat(stack, model).status_code == 200
        # The front-end's /ready asks Triton itself; the supervisor's own readiness poll may say so a moment later.
        deadline = time.monotonic() + 30
        while "Triton restarted (restart 1) and ready" not in stack.log() and time.monotonic() < deadline:
            time.sleep(0.2)
        log = stack.log()
        assert "ERROR: tritonserver exited with code -9" in log and "Restarting it in 1 s (restart 1)" in log
        assert "Triton restarted (restart 1) and ready" in log
        assert stack.process.poll() is None  # the front-end runs in the launcher process: never restarted
        stubs = [
            p
            for p in psutil.process_iter(["cmdline"])
            if str(repository) in " ".join(p.info["cmdline"] or [])
            and "triton_python_backend_stub" in " ".join(p.info["cmdline"] or [])
        ]
        assert len(stubs) == 2, "the killed Triton's python backend stubs must not live on"

        # Repeated failures (Triton cannot start: its repository is gone): the restarts go on, waiting longer.
        repository.rename(repository.with_name("moved"))
        seen = len(stack.log())
        os.kill(triton_pid(stack), signal.SIGKILL)
        deadline = time.monotonic() + 90
        while len(waits := [int(w) for w in re.findall(r"Restarting it in (\d+) s", stack.log()[seen:])]) < 3:
            assert time.monotonic() < deadline, stack.log()[-3000:]
            time.sleep(0.5)
        assert waits[1] == 2 * waits[0] and waits[2] == 2 * waits[1], waits
        assert re.search(r"Triton restart \d+ failed: tritonserver exited with code 1", stack.log()[seen:])
        assert httpx.get(f"{stack.base_url}/ready", timeout=10).status_code == 503
    finally:
        assert stack.stop(signal.SIGINT) == 0


@pytest.mark.parametrize("workers", ["1", "2"])
def test_after_max_attempts_failed_restarts_serve_stops_with_code_1(checkpoint_dir, tmp_path, workers):
    """With `triton_restart_max_attempts`, a Triton that cannot come back stops `serve` (exit code 1, Triton's
    leftovers gone) for a process manager to act on, instead of answering 503 forever."""
    repository = prepare_repository(tmp_path / "build", "--model", "builtin:smollm2", "--max-num-seqs", "2")
    stack = start_stack(
        repository,
        tmp_path / "llmserve.log",
        env={"LLMSERVE_TRITON_RESTART_MAX_ATTEMPTS": "2", "LLMSERVE_WORKERS": workers},
    )
    try:
        repository.rename(repository.with_name("moved"))  # every restart now fails: Triton exits with code 1
        killed = time.monotonic()
        os.kill(triton_pid(stack), signal.SIGKILL)
        code = stack.process.wait(timeout=120)
        print(f"\nTriton SIGKILL -> serve gave up and exited in {time.monotonic() - killed:.1f} s")
    finally:
        stack.stop(signal.SIGKILL)
    log = stack.log()
    assert code == 1, log[-3000:]
    assert len(re.findall(r"Triton restart \d+ failed", log)) == 2, log[-3000:]
    assert "giving up: 2 restarts of Triton in a row failed" in log and "stopped (tritonserver exit code" in log
    assert not [p for p in psutil.process_iter(["cmdline"]) if str(repository) in " ".join(p.info["cmdline"] or [])], (
        "no Triton or python backend stub may outlive serve"
    )


@pytest.mark.parametrize("flag, moved_by", [("--triton-grpc-port", "--triton-grpc-port"), ("--port", "--port")])
def test_a_taken_port_is_reported_before_starting_triton(repository, flag, moved_by):
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        ports = {"--port": str(free_port()), flag: str(taken)}
        result = subprocess.run(
            [
                str(BIN / "llmserve"),
                "serve",
                "--model-repository",
                str(repository),
                *(x for kv in ports.items() for x in kv),
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    assert result.returncode == 1
    assert f"port {taken}" in result.stdout and "taken" in result.stdout and moved_by in result.stdout
    assert "starting" not in result.stdout  # Triton was never started


def test_worker_processes_share_the_port_and_their_metrics(repository, tmp_path):
    """`--workers 2` (here LLMSERVE_WORKERS): two front-end processes answer on one port, any one's /metrics
    counts what both did, and SIGTERM still stops everything cleanly."""
    stack = start_stack(repository, tmp_path / "llmserve.log", env={"LLMSERVE_WORKERS": "2"})
    try:
        workers = [p for p in psutil.Process(stack.process.pid).children() if "spawn_main" in " ".join(p.cmdline())]
        assert len(workers) == 2
        with httpx.Client(timeout=60) as http:
            for _ in range(6):
                reply = http.post(
                    f"{stack.api_url}/completions", json={"model": MODEL, "prompt": "Hi", "max_tokens": 2}
                )
                assert reply.status_code == 200
            for _ in range(4):  # whichever worker answers the scrape, it shows the six generations
                text = http.get(f"{stack.base_url}/metrics").text
                generations = sum(
                    s.value
                    for f in text_string_to_metric_families(text)
                    for s in f.samples
                    if s.name == "llmserve_generations_total"
                )
                assert generations == 6
    finally:
        code = stack.stop(signal.SIGTERM)
    assert code == 0, stack.log()[-3000:]
    assert "stopped (tritonserver exit code 0)" in stack.log()
    assert not any(p.is_running() and p.status() != psutil.STATUS_ZOMBIE for p in workers)
