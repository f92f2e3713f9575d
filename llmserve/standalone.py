"""One half of the stack per process, for containers and Kubernetes: `llmserve api` (the front-end alone, against
the Triton at `triton_grpc_url`) and `llmserve triton` (prepare, then Triton alone on `triton_address`).
`llmserve serve` runs both in one process tree; these two run the same code apart."""

from __future__ import annotations

import signal
import time
from pathlib import Path

from llmserve.serve import bind_refusal, raise_on_sigterm, say, serve_api, served_repository
from llmserve.settings import LauncherSettings
from llmserve.triton import TritonError, TritonProcess, ensure_port_free, find_triton


def run_api(settings: LauncherSettings) -> int:
    """The front-end alone. Refuses a public bind without auth, like `serve`."""
    refusal = bind_refusal(settings)
    if refusal:
        say(refusal)
        return 2
    say(f"serving the API against Triton at {settings.triton_grpc_url} (gRPC)")
    # uvicorn re-raises the SIGTERM it drained on: exit 0 then, as a stopped container should
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        if not serve_api(settings, time.monotonic()):
            say(f"the API could not start on {settings.host}:{settings.port} (see uvicorn's message above)")
            return 1
    except (KeyboardInterrupt, SystemExit):
        pass
    return 0


def run_triton(settings: LauncherSettings) -> int:
    """Prepare the repository (unless one is given), start Triton on `triton_address`, and run until Triton exits
    or SIGTERM / Ctrl-C stops it."""
    try:
        for port in (settings.triton_http_port, settings.triton_grpc_port, settings.triton_metrics_port):
            ensure_port_free(port, settings.triton_address)
        install = find_triton(settings.home)
    except TritonError as exc:
        say(str(exc))
        return 1
    repository = served_repository(settings)
    triton = TritonProcess(
        install,
        Path(repository),
        settings.triton_http_port,
        settings.triton_grpc_port,
        settings.triton_metrics_port,
        address=settings.triton_address,
    )
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        say(
            f"starting {install.binary} on {settings.triton_address}: HTTP {settings.triton_http_port}, "
            f"gRPC {settings.triton_grpc_port}, metrics {settings.triton_metrics_port}, with {repository}"
        )
        triton.start()
        triton.wait_ready(settings.triton_startup_timeout_s, progress=say)
        assert triton.process is not None  # started above
        code = triton.process.wait()
        say(f"tritonserver exited with code {code}")
        return code or 1  # Triton should run until stopped: an exit on its own is a failure
    except TritonError as exc:
        say(str(exc))
        return 1
    except (KeyboardInterrupt, SystemExit):
        say("stopping Triton")
        stopped = triton.stop()
        say(f"stopped (tritonserver exit code {stopped})")
        return 0 if stopped == 0 else 1
