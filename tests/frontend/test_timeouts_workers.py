"""The default number of front-end processes (llmserve/settings.py auto_workers), and the connection limits in
worker processes: `llmserve api --workers 2` (no Triton needed for /health) closes slow-header connections at the
configured time in every worker, and their descriptors (/proc/<pid>/fd) come back to where they were."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil
import pytest

from llmserve import settings as launcher
from llmserve.settings import LauncherSettings

from stack import free_port


@pytest.mark.parametrize(("cpus", "workers"), [(1, 1), (2, 1), (3, 1), (4, 2), (16, 8), (64, 8), (2.5, 1)])
def test_workers_default_to_half_the_cpus_from_1_to_8(monkeypatch, cpus, workers):
    monkeypatch.setattr(launcher, "available_cpus", lambda: cpus)
    settings = LauncherSettings()
    assert settings.workers == workers and settings.workers_reason.startswith("auto")


@pytest.mark.parametrize("limit", ["rate_limit_rpm", "rate_limit_tpm", "max_streams_per_key"])
def test_one_worker_by_default_when_per_key_limits_live_in_memory(monkeypatch, limit):
    monkeypatch.setattr(launcher, "available_cpus", lambda: 16)
    settings = LauncherSettings(**{limit: 5})
    assert settings.workers == 1 and limit in settings.workers_reason
    shared = LauncherSettings(**{limit: 5}, redis_url="redis://127.0.0.1:6379/0").workers
    assert shared == (1 if limit == "max_streams_per_key" else 8)  # Redis shares rpm/tpm, not the stream count


def test_an_explicit_worker_count_wins(monkeypatch):
    monkeypatch.setattr(launcher, "available_cpus", lambda: 16)
    assert LauncherSettings(workers=3).workers == 3
    assert LauncherSettings(workers=1).workers == 1
    with pytest.raises(ValueError, match="needs redis_url"):
        LauncherSettings(workers=2, rate_limit_rpm=5)


def test_a_cgroup_cpu_quota_lowers_the_count(tmp_path):
    cpu_max = tmp_path / "cpu.max"
    cpu_max.write_text("150000 100000\n")
    assert launcher.available_cpus(cpu_max) == min(1.5, len(os.sched_getaffinity(0)))
    cpu_max.write_text("max 100000\n")
    assert launcher.available_cpus(cpu_max) == len(os.sched_getaffinity(0))


def worker_pids(parent: int) -> list[int]:
    return [p.pid for p in psutil.Process(parent).children() if "spawn_main" in " ".join(p.cmdline())]


def fd_count(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


async def slow_header(port: int) -> tuple[float, bytes]:
    started = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /health HTTP/1.1\r\nHost: x\r\n")
    data = b""
    async with asyncio.timeout(15):
        while chunk := await reader.read(65536):
            data += chunk
    writer.close()
    return time.monotonic() - started, data


async def test_worker_processes_apply_the_limits_and_give_their_descriptors_back(tmp_path: Path):
    port = free_port()
    env = {
        **os.environ,
        "LLMSERVE_HOME": str(tmp_path),
        "LLMSERVE_HTTP_HEADER_TIMEOUT_S": "1.5",
        "LLMSERVE_TRITON_GRPC_URL": "127.0.0.1:1",  # none: /health answers without it
        "PYTHONUNBUFFERED": "1",
    }
    log = (tmp_path / "api.log").open("w")
    command = [sys.executable, "-m", "llmserve", "api", "--workers", "2", "--port", str(port), "--log-level", "warning"]
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None and time.monotonic() < deadline, (tmp_path / "api.log").read_text()
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        time.sleep(1)  # both workers up
        workers = worker_pids(process.pid)
        assert len(workers) == 2
        # Warm up with the measured load itself: the kernel may hand a small burst to one worker only, and the
        # other would then open its lazily created files (pools, caches) during the measurement.
        await asyncio.gather(*(slow_header(port) for _ in range(400)))
        baseline = {pid: fd_count(pid) for pid in workers}
        results = await asyncio.gather(*(slow_header(port) for _ in range(400)))
        times = sorted(t for t, _ in results)
        assert 1.3 <= times[0] and times[-1] <= 1.5 + 3
        assert all(data.startswith(b"HTTP/1.1 408") for _, data in results)
        # Back to baseline within a few seconds: a loaded machine may take a while to run the closes of 400
        # transports; a leak never gets there.
        deadline = time.monotonic() + 10
        while True:
            after = {pid: fd_count(pid) for pid in workers}
            if all(after[pid] <= baseline[pid] + 2 for pid in workers) or time.monotonic() > deadline:
                break
            time.sleep(0.25)
        assert all(after[pid] <= baseline[pid] + 2 for pid in workers), (baseline, after)
        # Only now a normal request: its metrics open their multiprocess files in the worker that serves it (4 fds
        # the first time), which would read as a leak if it came between the two counts.
        assert httpx.get(f"http://127.0.0.1:{port}/health", timeout=5).status_code == 200
        assert "starting 2 front-end worker processes (as configured)" in (tmp_path / "api.log").read_text()
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(30)
        except subprocess.TimeoutExpired:
            process.kill()
