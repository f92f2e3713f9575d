"""What `llmserve prepare` and `llmserve serve` do, in order."""

from __future__ import annotations

import os
import shutil
import signal
import threading
import time
from pathlib import Path

import engine_contract
from llmserve.settings import LauncherSettings
from llmserve.supervisor import TritonSupervisor
from llmserve.triton import TritonError, TritonProcess, ensure_port_free, find_triton


def say(message: str) -> None:
    print(f"llmserve: {message}", flush=True)


def prepare_repository(settings: LauncherSettings, output: Path) -> Path:
    from build_engines.checkpoints import CheckpointError
    from build_engines.prepare import EngineOptions, prepare
    from build_engines.render import TemplateError

    options = EngineOptions(
        device=settings.device,
        dtype=settings.dtype,
        instance_count=settings.instance_count,
        max_num_seqs=settings.max_num_seqs,
        kv_cache_blocks=settings.kv_cache_blocks,
        engine_core=settings.engine_core or engine_contract.OPENVINO_PAGED,
        weight_format=settings.weight_format,
        prefix_caching=settings.prefix_caching,
        engine_process=settings.engine_process,
    )
    try:
        return prepare(settings.models, settings.home, output, options)
    except (CheckpointError, TemplateError, ValueError) as exc:
        raise SystemExit(f"llmserve: cannot prepare the models: {exc}") from None


def served_repository(settings: LauncherSettings) -> Path:
    """The repository to serve: the one given (`--model-repository`), else the default models, prepared."""
    return settings.model_repository or prepare_repository(settings, settings.home / "build")


def run_prepare(settings: LauncherSettings, output: str | None) -> int:
    out = Path(output) if output else settings.home / "build"
    started = time.monotonic()
    repository = prepare_repository(settings, out)
    say(
        f"model repository ready in {time.monotonic() - started:.1f} s: {repository} (manifest: {out / 'manifest.json'})"
    )
    return 0


def raise_on_sigterm(signum, frame):
    raise SystemExit(0)


def bind_refusal(settings: LauncherSettings) -> str | None:
    """Why the API may not listen where it was asked to, if it may not: without authentication, only loopback."""
    if settings.auth or settings.host_is_loopback or settings.allow_unauthenticated_public_bind:
        return None
    return (
        f"refusing to serve on {settings.host}: authentication is off, so only a loopback address is allowed. "
        "Turn authentication on (--auth, after `llmserve keys create`), use --host 127.0.0.1, or pass "
        "--allow-unauthenticated-public-bind if you really mean it."
    )


def run_serve(settings: LauncherSettings) -> int:
    refusal = bind_refusal(settings)
    if refusal:
        say(refusal)
        return 2
    started = time.monotonic()
    try:  # before anything is prepared or started
        ensure_port_free(settings.port, "127.0.0.1" if settings.host == "localhost" else settings.host, "the API")
        for port in (settings.triton_http_port, settings.triton_grpc_port, settings.triton_metrics_port):
            ensure_port_free(port)
    except TritonError as exc:
        say(str(exc))
        return 1
    repository = served_repository(settings)
    try:
        install = find_triton(settings.home)
    except TritonError as exc:
        say(str(exc))
        return 1
    triton = TritonProcess(
        install, Path(repository), settings.triton_http_port, settings.triton_grpc_port, settings.triton_metrics_port
    )
    supervisor = TritonSupervisor(
        triton,
        settings.triton_startup_timeout_s,
        settings.triton_restart_max_backoff_s,
        say,
        settings.triton_restart_max_attempts,
        give_up=_stop_this_process,
    )
    # uvicorn re-raises the signal it caught after its graceful shutdown (the app drains first on SIGTERM); turn
    # SIGTERM into SystemExit so that Triton is stopped below rather than the process dying on the spot.
    signal.signal(signal.SIGTERM, raise_on_sigterm)
    try:
        say(f"starting {install.binary} on 127.0.0.1:{settings.triton_grpc_port} (gRPC) with {repository}")
        supervisor.start()
        if not serve_api(settings, started):
            say(f"the API could not start on {settings.host}:{settings.port} (see uvicorn's message above)")
            return 1
    except TritonError as exc:
        say(str(exc))
        return 1
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        say("stopping Triton")
        code = supervisor.stop()
        say(f"stopped (tritonserver exit code {code})")
    return 1 if supervisor.gave_up else 0


def _stop_this_process() -> None:
    """The supervisor gave up: shut down as on SIGTERM (the API drains; nothing is in flight with Triton gone)."""
    os.kill(os.getpid(), signal.SIGTERM)


def serve_api(settings: LauncherSettings, started: float) -> bool:
    """Run the front-end until it is stopped; False if it never started."""
    import uvicorn

    if settings.workers > 1:
        return _serve_workers(settings, started)
    say(f"serving the API from this process (workers = 1: {settings.workers_reason})")

    from frontend_api.server.app import create_app
    from frontend_api.server.protocol import raise_fd_limit, uvicorn_options

    frontend = settings.frontend()
    raise_fd_limit(settings.max_connections)
    config = uvicorn.Config(
        create_app(frontend),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
        server_header=False,
        log_config=None,
        access_log=False,  # create_app set up logging; its middleware writes the access lines
        **uvicorn_options(frontend),
    )
    server = uvicorn.Server(config)

    def announce():
        while not server.started and not server.should_exit:
            time.sleep(0.1)
        if server.started:
            _announce_ready(settings, started)

    threading.Thread(target=announce, daemon=True).start()
    server.run()
    return server.started


def _announce_ready(settings: LauncherSettings, started: float) -> None:
    host = f"[{settings.host}]" if ":" in settings.host else settings.host
    root = f"http://{host}:{settings.port}"
    ui = f"  Web UI: {root}/" if settings.web_dir.joinpath("index.html").is_file() else ""
    say(
        f"ready in {time.monotonic() - started:.0f} s. OpenAI API: {root}/v1{ui}  "
        f"(e.g. OpenAI(base_url='{root}/v1', api_key='none'); curl {root}/v1/models). Ctrl-C stops."
    )


def _serve_workers(settings: LauncherSettings, started: float) -> bool:
    """N uvicorn worker processes on one socket, each building the app from the settings handed down in the
    environment; their Prometheus values meet in a shared folder, so any worker's /metrics shows the sum."""
    import tempfile
    import urllib.request

    import uvicorn
    from uvicorn.supervisors import Multiprocess

    from frontend_api.server.protocol import raise_fd_limit, uvicorn_options
    from frontend_api.settings import SETTINGS_JSON_ENV

    raise_fd_limit(settings.max_connections)  # the workers inherit the limit
    metrics_dir = tempfile.mkdtemp(prefix="llmserve-metrics-")
    os.environ[SETTINGS_JSON_ENV] = settings.frontend().model_dump_json()
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = metrics_dir
    config = uvicorn.Config(
        "frontend_api.server.app:create_app",
        factory=True,
        workers=settings.workers,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        timeout_graceful_shutdown=30,
        server_header=False,
        log_config=None,
        access_log=False,
        **uvicorn_options(settings.frontend(), workers=True),  # the workers read the limits handed down
    )
    host = "127.0.0.1" if settings.host in ("0.0.0.0", "localhost") else settings.host
    ready_url = f"http://{'[' + host + ']' if ':' in host else host}:{settings.port}/health"

    def announce():
        for _ in range(600):
            try:
                with urllib.request.urlopen(ready_url, timeout=1):
                    _announce_ready(settings, started)
                    return
            except OSError:
                time.sleep(0.1)

    say(f"starting {settings.workers} front-end worker processes ({settings.workers_reason})")
    threading.Thread(target=announce, daemon=True).start()
    try:
        Multiprocess(config, sockets=[config.bind_socket()]).run()
    finally:
        shutil.rmtree(metrics_dir, ignore_errors=True)
    return True
