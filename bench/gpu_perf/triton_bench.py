"""Served half of the GPU benchmark: `llmserve serve` (Triton + front-end) with our engine core on the checkpoint
inprocess.py built, then `llmserve bench` against Triton gRPC directly and against the OpenAI endpoint (SSE)."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

from build_engines.prepare import EngineOptions, prepare  # the repository root is on PYTHONPATH (run.sh)


def sample_cpu(server_pid: int, client: subprocess.Popen) -> dict:
    """Mean CPU use of the stack's processes (front-end, tritonserver, python stub) and the clients, while it runs."""
    totals: dict[str, list[float]] = {}
    procs: dict[int, psutil.Process] = {}
    while client.poll() is None:
        family = [psutil.Process(server_pid), *psutil.Process(server_pid).children(recursive=True)]
        family += psutil.Process(client.pid).children(recursive=True)
        for proc in family:
            if proc.pid not in procs:
                procs[proc.pid] = proc
                proc.cpu_percent(None)  # the first call only starts the measurement
        time.sleep(1.0)
        tick: dict[str, float] = {}
        for pid, proc in list(procs.items()):
            try:
                name = "front-end (llmserve serve)" if pid == server_pid else proc.name()[:40]
                tick[name] = tick.get(name, 0.0) + proc.cpu_percent(None)
            except psutil.NoSuchProcess:
                procs.pop(pid)
        for name, value in tick.items():
            totals.setdefault(name, []).append(value)
    # Per process name (the clients summed): mean and peak of 1-second samples, in % of one core.
    return {name: {"mean": round(sum(v) / len(v), 1), "max": round(max(v), 1)} for name, v in totals.items() if v}


def serve(repository: Path, base_port: int, log_path: Path, home: Path) -> subprocess.Popen:
    """`llmserve serve` of `repository`, the API on base_port and Triton's HTTP, gRPC, metrics on base_port+100..102."""
    ports = {"port": base_port, "triton-http-port": base_port + 100, "triton-grpc-port": base_port + 101}
    ports["triton-metrics-port"] = base_port + 102
    command = [
        sys.executable,
        "-m",
        "llmserve",
        "serve",
        "--model-repository",
        str(repository),
        "--log-level",
        "warning",
        *(f"--{k}={v}" for k, v in ports.items()),
    ]
    log = log_path.open("w")
    return subprocess.Popen(
        command, stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "LLMSERVE_HOME": str(home)}
    )


def wait_ready(server: subprocess.Popen, port: int, started: float) -> None:
    while True:
        if server.poll() is not None:
            raise SystemExit(f"llmserve serve exited with {server.returncode}; see its serve*.log")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                break
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > 400:
            raise SystemExit("the stack was not ready in 400 s")
        time.sleep(1)
    print(f"stack on port {port} ready in {time.monotonic() - started:.0f} s", flush=True)


def bench(server: subprocess.Popen, target: str, url: str, levels: str, label: str, common: list[str], out: Path):
    """One `llmserve bench` run (its JSON under --bench-out), and the stack's CPU use during it (cpu-LABEL.json)."""
    command = [sys.executable, "-m", "llmserve.bench", "--target", target, "--url", url, "--concurrency", levels]
    command += ["--label", label, *common]
    print("$", " ".join(command[1:]), flush=True)
    client = subprocess.Popen(command)
    cpu = sample_cpu(server.pid, client)
    print(f"CPU use during {label} (% of one core, mean over the run): {cpu}", flush=True)
    (out / f"cpu-{label}.json").write_text(json.dumps(cpu))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", default="/tmp/ckpt")
    parser.add_argument("--levels", default="1,64,256")
    parser.add_argument("--openai-levels", default="1,64,256")
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--processes", type=int, default=8)
    parser.add_argument(
        "--requests-per-level",
        type=int,
        default=0,
        help="requests at every level (default: llmserve bench's 2 x concurrency; levels of 2x at 256 "
        "streams last under 2 s and swing +-15 %%: ask for >= 8x the largest level)",
    )
    parser.add_argument(
        "--engine-process",
        choices=["on", "off", "both"],
        default="on",
        help="the fast core in a child process of Triton's model (on: the default) or in it (off); both: two "
        "stacks up at once, benchmarked level by level in turn (on, off, then off, on, ...), labels "
        "TARGET-fast-on-cLEVEL / TARGET-fast-off-cLEVEL",
    )
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"), help="serve.log goes here")
    parser.add_argument("--bench-out", default=None, help="bench JSON + PNG (default: --out)")
    args = parser.parse_args()
    out = Path(args.out)
    home = Path("/tmp/llmhome")
    variants = ["on", "off"] if args.engine_process == "both" else [args.engine_process]
    servers: dict[str, subprocess.Popen] = {}
    base_ports = {"on": 8000, "off": 9000} if len(variants) == 2 else {variants[0]: 8000}
    try:
        for variant in variants:
            options = EngineOptions(
                device=args.device,
                dtype=args.dtype,
                max_num_seqs=args.max_num_seqs,
                engine_core="fast",
                engine_process=variant == "on",
            )
            build = home / ("build" if len(variants) == 1 else f"build-{variant}")
            repository = prepare([f"gpu={args.ckpt}"], home, build, options)
            log_name = "serve.log" if len(variants) == 1 else f"serve-{variant}.log"
            servers[variant] = serve(repository, base_ports[variant], out / log_name, home)
            wait_ready(servers[variant], base_ports[variant], time.monotonic())
        common = [
            "--model",
            "gpu",
            "--input-tokens",
            str(args.tokens),
            "--output-tokens",
            str(args.tokens),
            "--processes",
            str(args.processes),
            "--out",
            args.bench_out or str(out),
            "--requests-per-level",
            str(args.requests_per_level),
        ]
        for target, levels in (("triton", args.levels), ("openai", args.openai_levels)):
            if not levels:
                continue
            if len(variants) == 1:  # as before: one run over every level, labelled TARGET-fast
                url = _url(target, base_ports[variants[0]])
                bench(servers[variants[0]], target, url, levels, f"{target}-fast", common, out)
                continue
            for turn, level in enumerate(levels.split(",")):
                for variant in variants if turn % 2 == 0 else variants[::-1]:
                    label = f"{target}-fast-{variant}-c{level}"
                    bench(servers[variant], target, _url(target, base_ports[variant]), level, label, common, out)
    finally:
        for server in servers.values():
            server.terminate()
        for server in servers.values():
            server.wait(timeout=60)


def _url(target: str, base_port: int) -> str:
    return f"127.0.0.1:{base_port + 101}" if target == "triton" else f"http://127.0.0.1:{base_port}/v1"


if __name__ == "__main__":
    main()
