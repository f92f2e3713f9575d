"""Start and stop a real stack (`llmserve serve`: Triton + the front-end) for tests, on free ports; and extra
front-end processes against a running stack's Triton."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

BIN = Path(sys.executable).parent
MODEL = "SmolLM2-135M-Instruct"  # the id the embedded default is served under


def free_port() -> int:
    """A free port below Linux's ephemeral range (32768+). A port the kernel hands out for port 0 is also the
    source port of outgoing connections and other processes' port-0 binds: once a test's Triton is killed, another
    process could take its port before the restart binds it again."""
    for _ in range(1000):
        port = random.randrange(20000, 32768)
        with socket.socket() as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port in 20000-32767")


class LocalUrls:
    """The URLs of an API served on 127.0.0.1:port (a stack's process, or the fast tier's app in a thread)."""

    port: int

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def api_url(self) -> str:
        return f"{self.base_url}/v1"

    @property
    def ws_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/chat/ws"


@dataclass
class Server(LocalUrls):
    """A process serving the API on 127.0.0.1:port, its output in log_path."""

    process: subprocess.Popen
    log_path: Path
    port: int

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(timeout=timeout)


@dataclass
class Stack(Server):
    triton_grpc_port: int
    triton_metrics_port: int

    def triton_metric(self, name: str, **labels: str) -> float:
        """Sum of a Triton metric's samples matching the labels (0 if absent)."""
        text = httpx.get(f"http://127.0.0.1:{self.triton_metrics_port}/metrics", timeout=5).text
        return sum(
            sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items())
        )


def prepare_repository(output: Path, *extra: str) -> Path:
    subprocess.run([str(BIN / "llmserve"), "prepare", "--output", str(output), *extra], check=True)
    return output / "model_repository"


def start_stack(
    repository: Path,
    log_path: Path,
    ready_timeout: float = 300,
    env: dict[str, str] | None = None,
    log_level: str = "info",
) -> Stack:
    """`llmserve serve` on free ports; its database is a SQLite file beside the log unless `env` says otherwise."""
    port, http_port, grpc_port, metrics_port = (free_port() for _ in range(4))
    command = [
        str(BIN / "llmserve"),
        "serve",
        "--model-repository",
        str(repository),
        "--port",
        str(port),
        "--triton-http-port",
        str(http_port),
        "--triton-grpc-port",
        str(grpc_port),
        "--triton-metrics-port",
        str(metrics_port),
        "--log-level",
        log_level,  # info: the JSON access lines
    ]
    log = log_path.open("w")
    env = {
        "PYTHONUNBUFFERED": "1",
        "LLMSERVE_DATABASE_URL": f"sqlite:///{log_path.parent / 'llmserve.db'}",
        **os.environ,
        **(env or {}),
    }
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    stack = Stack(process, log_path, port, grpc_port, metrics_port)
    try:
        wait_ready(stack, ready_timeout)
    except BaseException:
        stack.stop(signal.SIGTERM, timeout=30)  # the launcher takes Triton down with it
        raise
    return stack


@contextmanager
def running_stack(repository: Path, log_path: Path) -> Iterator[Stack]:
    """A test session's stack: start_stack(), and on leaving, SIGTERM and check that `llmserve serve` exited 0
    and stopped its Triton cleanly."""
    stack = start_stack(repository, log_path)
    yield stack
    code = stack.stop(signal.SIGTERM)
    assert code == 0, f"llmserve serve exited with {code} on SIGTERM:\n{stack.log()[-3000:]}"
    assert "stopped (tritonserver exit code 0)" in stack.log(), f"Triton did not stop cleanly:\n{stack.log()[-3000:]}"


def start_frontend(
    triton_grpc_port: int,
    log_path: Path,
    env: Mapping[str, str],
    ready_timeout: float = 60,
    wait_for: str = "/ready",
    host: str = "127.0.0.1",
) -> Server:
    """One more front-end process (`uvicorn --factory frontend_api.server.app:create_app`) against the Triton at
    127.0.0.1:triton_grpc_port, configured by `env` (LLMSERVE_*, REDIS_URL, ...) over this process's environment.
    Returns once `wait_for` (/ready, or /health for a front-end that cannot be ready) answers 200; the caller
    stops it."""
    port = free_port()
    command = [
        sys.executable,
        "-m",
        "uvicorn",
        "--factory",
        "frontend_api.server.app:create_app",
        "--host",
        host,
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    full_env = dict(os.environ, PYTHONUNBUFFERED="1", LLMSERVE_TRITON_GRPC_URL=f"127.0.0.1:{triton_grpc_port}", **env)
    log = log_path.open("w")
    server = Server(subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=full_env), log_path, port)
    try:
        wait_ready(server, ready_timeout, wait_for)
    except BaseException:
        server.stop(signal.SIGKILL, timeout=30)
        raise
    return server


def wait_ready(stack: Server, timeout: float, path: str = "/ready") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if stack.process.poll() is not None:
            raise RuntimeError(f"{stack.process.args} exited with {stack.process.returncode}:\n{stack.log()[-4000:]}")
        try:
            if httpx.get(f"{stack.base_url}{path}", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"stack not ready after {timeout} s:\n{stack.log()[-4000:]}")


class TcpProxy:
    """A TCP forwarder in its own thread: `cut()` closes the port and every connection (the database is gone for
    the front-end), `restore()` listens again on the same port."""

    def __init__(self, target_host: str, target_port: int):
        self.target = (target_host, target_port)
        self.port = free_port()
        self.loop = asyncio.new_event_loop()
        self.server: asyncio.Server | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()

    def _run(self, coroutine):
        return asyncio.run_coroutine_threadsafe(coroutine, self.loop).result(10)

    def restore(self) -> None:
        self._run(self._listen())

    def cut(self) -> None:
        self._run(self._close())

    async def _listen(self) -> None:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _close(self) -> None:
        if self.server is not None:
            self.server.close()
        for writer in list(self.writers):
            writer.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        upstream_reader, upstream_writer = await asyncio.open_connection(*self.target)
        self.writers |= {writer, upstream_writer}

        async def pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
            with suppress(ConnectionError):
                while data := await source.read(65536):
                    sink.write(data)
                    await sink.drain()
            sink.close()

        await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))
        self.writers -= {writer, upstream_writer}
