"""Find, prepare and run a Triton Inference Server process.

Order of search: $TRITONSERVER, /opt/tritonserver/bin/tritonserver (the NGC container), then the complete
Triton that the nvidia-pytriton wheel ships. The wheel's server needs two things prepared (docs/TRITON_AND_GPU.md):
the python backend stub for this interpreter next to libtriton_python.so, and LD_LIBRARY_PATH starting with
this interpreter's libpython, then the wheel's bundled libraries.
"""

from __future__ import annotations

import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

NGC_TRITONSERVER = Path("/opt/tritonserver/bin/tritonserver")
# What Triton prints at start-up on a host without an NVIDIA driver. Expected there (the `llm` model runs on CPU),
# so these lines are not shown: a new user should not read "E... CudaDriverHelper has not been initialized".
_NO_GPU_NOISE = re.compile(
    rb"CUDA driver version is insufficient|CudaDriverHelper has not been initialized|CUDA memory pool disabled"
    rb"|Failed to initialize NVML|DCGM unable to start"
)


def has_nvidia_driver() -> bool:
    return Path("/proc/driver/nvidia/version").exists()


def _pass_output(source, sink) -> None:
    """Copy Triton's output to `sink` line by line, without the no-GPU start-up noise."""
    for line in iter(source.readline, b""):
        if not _NO_GPU_NOISE.search(line):
            sink.write(line)
            sink.flush()


class TritonError(RuntimeError):
    pass


@dataclass(frozen=True)
class TritonInstall:
    binary: Path
    backend_dir: Path | None  # None: the install's own default
    library_path: list[str]


def _pytriton_root() -> Path | None:
    try:
        import pytriton
    except ImportError:
        return None
    root = Path(pytriton.__file__).resolve().parent / "tritonserver"
    return root if (root / "bin" / "tritonserver").is_file() else None


def find_triton(home: Path) -> TritonInstall:
    env_binary = os.environ.get("TRITONSERVER")
    if env_binary:
        binary = Path(env_binary)
        if not binary.is_file():
            raise TritonError(
                f"TRITONSERVER={env_binary} does not exist; unset it or point it at a tritonserver binary"
            )
        bundled = _pytriton_root()
        if bundled and binary.resolve() == (bundled / "bin" / "tritonserver").resolve():
            return _pytriton_install(home)
        return TritonInstall(binary, None, [])
    if NGC_TRITONSERVER.is_file():
        return TritonInstall(NGC_TRITONSERVER, None, [])
    if _pytriton_root():
        return _pytriton_install(home)
    raise TritonError(
        "no tritonserver found: set TRITONSERVER, run inside the NGC Triton container, "
        "or install nvidia-pytriton (`make serve` does)"
    )


def _pytriton_install(home: Path) -> TritonInstall:
    root = _pytriton_root()
    assert root is not None
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    stub = root / "python_backend_stubs" / version / "triton_python_backend_stub"
    if not stub.is_file():
        raise TritonError(f"nvidia-pytriton has no python backend stub for Python {version}; use Python 3.8-3.13")
    backends = home / "triton_backends"
    python_backend = backends / "python"
    python_backend.mkdir(parents=True, exist_ok=True)
    for source in (root / "backends" / "python").iterdir():
        if source.is_file():
            _copy_if_changed(source, python_backend / source.name)
    _copy_if_changed(stub, python_backend / stub.name)
    libs = root.parent.parent / "nvidia_pytriton.libs"
    library_path = [sysconfig.get_config_var("LIBDIR") or "", str(libs)]
    return TritonInstall(root / "bin" / "tritonserver", backends, [p for p in library_path if p])


def _copy_if_changed(source: Path, target: Path) -> None:
    if not target.exists() or target.stat().st_size != source.stat().st_size:
        shutil.copy2(source, target)


def _die_with_parent() -> None:
    """Runs in the child before exec: if the launcher dies (even SIGKILL), Triton gets SIGTERM."""
    PR_SET_PDEATHSIG = 1
    try:
        ctypes.CDLL("libc.so.6").prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    except OSError:
        pass
    os.setpgrp()  # Ctrl-C reaches the launcher only; it stops Triton after the front-end has drained


class TritonProcess:
    def __init__(
        self,
        install: TritonInstall,
        repository: Path,
        http_port: int,
        grpc_port: int,
        metrics_port: int,
        address: str = "127.0.0.1",
    ):
        self.install = install
        self.address = address  # loopback under `llmserve serve`; `llmserve triton` in a container listens wider
        self.repository = repository
        self.http_port = http_port
        self.grpc_port = grpc_port
        self.metrics_port = metrics_port
        self.process: subprocess.Popen | None = None

    def command(self) -> list[str]:
        cmd = [
            str(self.install.binary),
            f"--model-repository={self.repository}",
            f"--http-port={self.http_port}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-port={self.metrics_port}",
            f"--http-address={self.address}",
            f"--grpc-address={self.address}",
            f"--metrics-address={self.address}",
            "--exit-on-error=true",
            # The launcher stops Triton only after the front-end has drained, so nothing should be in flight;
            # don't let a stuck unload hold shutdown for Triton's default 30 s.
            "--exit-timeout-secs=10",
            "--strict-readiness=true",
            "--log-verbose=0",
        ]
        if self.install.backend_dir:
            cmd.append(f"--backend-directory={self.install.backend_dir}")
        return cmd

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.install.library_path:
            env["LD_LIBRARY_PATH"] = os.pathsep.join(
                self.install.library_path + [p for p in env.get("LD_LIBRARY_PATH", "").split(os.pathsep) if p]
            )
        # The python backend stub finds packages through the active virtual environment.
        venv = Path(sys.prefix)
        if sys.prefix != sys.base_prefix:
            env["VIRTUAL_ENV"] = str(venv)
            env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
        env.setdefault("HF_HUB_OFFLINE", "1")
        env.setdefault("TOKENIZERS_PARALLELISM", "false")
        return env

    def start(self) -> None:
        """Start tritonserver; its output goes to ours (on a host without an NVIDIA driver, filtered)."""
        filtered = not has_nvidia_driver()
        self.process = subprocess.Popen(
            self.command(),
            env=self.environment(),
            preexec_fn=_die_with_parent,
            stdout=subprocess.PIPE if filtered else None,
            stderr=subprocess.STDOUT if filtered else None,
        )
        if filtered:
            sink = sys.stdout.buffer
            sink.write(
                b"llmserve: no NVIDIA driver here: Triton runs on CPU (its CUDA/NVML start-up notices are hidden)\n"
            )
            threading.Thread(target=_pass_output, args=(self.process.stdout, sink), daemon=True).start()

    def exit_code(self) -> int | None:
        return None if self.process is None else self.process.poll()

    def _get(self, path: str, method: str = "GET") -> tuple[int, bytes]:
        host = "127.0.0.1" if self.address == "0.0.0.0" else self.address
        request = urllib.request.Request(f"http://{host}:{self.http_port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                return response.status, response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, b""
        except (urllib.error.URLError, OSError):
            return 0, b""

    def model_states(self) -> dict[str, str]:
        status, body = self._get("/v2/repository/index", method="POST")
        if status != 200:
            return {}
        return {entry["name"]: entry.get("state", "UNKNOWN") for entry in json.loads(body)}

    def wait_ready(self, timeout_s: float, progress=print) -> None:
        """Block until every model is READY, reporting progress; raise if Triton exits or time runs out."""
        started = time.monotonic()
        last_report = ""
        while True:
            code = self.exit_code()
            if code is not None:
                raise TritonError(f"tritonserver exited with code {code} while loading models (its log is above)")
            if self._get("/v2/health/ready")[0] == 200:
                progress(f"Triton ready in {time.monotonic() - started:.0f} s: {self.model_states()}")
                return
            elapsed = time.monotonic() - started
            if elapsed > timeout_s:
                raise TritonError(f"Triton not ready after {timeout_s:.0f} s; models: {self.model_states()}")
            states = self.model_states()
            # Triton answers on HTTP only once every model has loaded; until then its own log shows the loading.
            report = ", ".join(f"{name} {state.lower()}" for name, state in sorted(states.items())) or "loading models"
            if report != last_report or int(elapsed) % 10 == 0:
                progress(f"[{elapsed:4.0f} s] waiting for Triton: {report}")
                last_report = report
            time.sleep(1)

    def kill_leftovers(self) -> None:
        """After Triton died: kill what it left running. Its python backend stubs outlive a SIGKILLed server (they
        go on generating, holding memory and CPU); they are in Triton's process group (see _die_with_parent)."""
        if self.process is None or self.process.poll() is None:
            return
        try:
            os.killpg(self.process.pid, signal.SIGKILL)
        except ProcessLookupError:  # nothing left
            pass

    def stop(self, timeout_s: float = 20) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return self.exit_code()
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            self.process.kill()
            code = self.process.wait()
            self.kill_leftovers()
            return code


def ensure_port_free(port: int, host: str = "127.0.0.1", what: str = "Triton") -> None:
    """Fail before starting anything if a port we need is taken, naming it and the flag that moves it."""
    import socket

    flags = {"Triton": "--triton-http-port/--triton-grpc-port/--triton-metrics-port", "the API": "--port"}
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            raise TritonError(
                f"port {port} on {host} is taken (another llmserve or Triton?); stop it or move {what} with "
                f"{flags[what]}"
            ) from None
