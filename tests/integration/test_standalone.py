"""The two commands the containers run, run here as processes: `llmserve triton` (the CPU Triton image's command:
Triton alone on 0.0.0.0) and `llmserve api` (the front-end image's: the API alone against that Triton)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import httpx
from openai import OpenAI

from stack import BIN, MODEL, Server, free_port, wait_ready


def test_triton_alone_and_the_api_alone_serve_a_chat_and_stop_cleanly(repository, tmp_path):
    http_port, grpc_port, metrics_port, api_port = (free_port() for _ in range(4))
    env = {
        **os.environ,
        "PYTHONUNBUFFERED": "1",
        "LLMSERVE_HOME": str(tmp_path / "home"),
        "LLMSERVE_TRITON_ADDRESS": "0.0.0.0",
    }
    triton_log = tmp_path / "triton.log"
    triton = subprocess.Popen(
        [
            str(BIN / "llmserve"),
            "triton",
            "--model-repository",
            str(repository),
            "--triton-http-port",
            str(http_port),
            "--triton-grpc-port",
            str(grpc_port),
            "--triton-metrics-port",
            str(metrics_port),
        ],
        stdout=triton_log.open("w"),
        stderr=subprocess.STDOUT,
        env=env,
    )
    api = None
    try:
        deadline = time.monotonic() + 300
        while "Triton ready" not in triton_log.read_text():
            assert triton.poll() is None and time.monotonic() < deadline, triton_log.read_text()[-3000:]
            time.sleep(0.5)
        assert "on 0.0.0.0" in triton_log.read_text()
        # Triton listens on all addresses, as a container needs: its metrics port answers too
        assert "nv_inference_count" in httpx.get(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5).text

        api_log = tmp_path / "api.log"
        api = Server(
            subprocess.Popen(
                [str(BIN / "llmserve"), "api", "--port", str(api_port), "--triton-grpc-url", f"127.0.0.1:{grpc_port}"],
                stdout=api_log.open("w"),
                stderr=subprocess.STDOUT,
                env={**env, "LLMSERVE_DATABASE_URL": f"sqlite:///{tmp_path / 'api.db'}"},
            ),
            api_log,
            api_port,
        )
        wait_ready(api, 60)
        client = OpenAI(base_url=api.api_url, api_key="unused", max_retries=0, timeout=120)
        reply = client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": "Say hi."}], max_tokens=6, temperature=0
        )
        assert reply.choices[0].message.content and reply.usage.completion_tokens > 0
        assert f"against Triton at 127.0.0.1:{grpc_port}" in api.log()

        assert api.stop(signal.SIGTERM, timeout=30) == 0, api.log()[-3000:]
        api = None
    finally:
        if api is not None:
            api.stop(signal.SIGKILL)
        if triton.poll() is None:
            triton.send_signal(signal.SIGTERM)
        code = triton.wait(timeout=60)
    assert code == 0 and "stopped (tritonserver exit code 0)" in triton_log.read_text(), triton_log.read_text()[-3000:]


def test_api_alone_refuses_a_public_bind_without_auth(tmp_path):
    result = subprocess.run(
        [str(BIN / "llmserve"), "api", "--host", "0.0.0.0", "--port", str(free_port())],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "LLMSERVE_HOME": str(tmp_path)},
    )
    assert result.returncode == 2 and "refusing to serve on 0.0.0.0" in result.stdout
