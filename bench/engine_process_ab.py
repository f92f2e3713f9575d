"""A/B of the `engine_process` setting through the real Triton: one `llmserve serve` per variant, both up at once,
`llmserve bench --target triton` against each in turn (interleaved: level by level, round by round), with the CPU
seconds the stack's processes (tritonserver, its python stub, the engine process) spent during each run.

    python bench/engine_process_ab.py --engine-core openvino_paged --levels 1,8,16 --rounds 3 --out /tmp/ab
    python bench/engine_process_ab.py --device cuda --dtype bfloat16 --engine-core fast --max-num-seqs 256 \\
        --levels 64,256 --requests-per-level 2048 --processes 8 --model gpu=/tmp/ckpt

Prints medians per variant and level (tok/s, CPU ms per generated token) and writes ab.json (every run).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
import psutil

VARIANTS = {"off": "--no-engine-process", "on": "--engine-process"}


def cpu_seconds(root: psutil.Process) -> dict[int, float]:
    """user + system seconds of `root` and its descendants, by pid."""
    seconds = {}
    for proc in [root, *root.children(recursive=True)]:
        try:
            times = proc.cpu_times()
            seconds[proc.pid] = times.user + times.system
        except psutil.NoSuchProcess:
            pass
    return seconds


def start(variant: str, args, port: int, out: Path) -> subprocess.Popen:
    """`llmserve prepare` into out/VARIANT, then `llmserve serve` of that repository on port .. port + 3."""
    env = {**os.environ, "LLMSERVE_HOME": str(args.home), "LLMSERVE_DATABASE_URL": f"sqlite:///{out}/{variant}.db"}
    prepare = [
        sys.executable, "-m", "llmserve", "prepare", "--output", str(out / variant), VARIANTS[variant],
        "--engine-core", args.engine_core, "--device", args.device, "--dtype", args.dtype,
        "--max-num-seqs", str(args.max_num_seqs), *(f"--model={m}" for m in args.model),
    ]  # fmt: skip
    subprocess.run(prepare, check=True, env=env)
    serve = [
        sys.executable, "-m", "llmserve", "serve", "--model-repository", str(out / variant / "model_repository"),
        "--log-level", "warning", "--workers", "1", f"--port={port}", f"--triton-http-port={port + 1}",
        f"--triton-grpc-port={port + 2}", f"--triton-metrics-port={port + 3}",
    ]  # fmt: skip
    return subprocess.Popen(serve, stdout=(out / f"serve-{variant}.log").open("w"), stderr=subprocess.STDOUT, env=env)


def wait_ready(server: subprocess.Popen, port: int, timeout: float = 600) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            raise SystemExit(f"llmserve serve exited with {server.returncode}; see its log")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(1)
    raise SystemExit(f"the stack on port {port} was not ready in {timeout:.0f} s")


def bench(args, grpc_port: int, level: int, label: str, out: Path, warmup: bool = False) -> dict:
    requests = args.requests_per_level or max(4, 4 * level)
    command = [
        sys.executable, "-m", "llmserve.bench", "--target", "triton", "--url", f"127.0.0.1:{grpc_port}",
        "--model", args.served_id, "--concurrency", str(level), "--requests-per-level", str(requests),
        "--input-tokens", str(args.tokens), "--output-tokens", str(args.tokens), "--processes", str(args.processes),
        "--label", label, "--out", str(out / "runs"), *([] if warmup else ["--no-warmup"]),
    ]  # fmt: skip
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    return json.loads((out / "runs" / f"{label}.json").read_text())["levels"][-1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--engine-core", default="openvino_paged")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="float32")
    parser.add_argument("--max-num-seqs", type=int, default=16)
    parser.add_argument("--model", action="append", default=[], help="as llmserve's --model (default: builtin)")
    parser.add_argument("--levels", default="1,8,16")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=64, help="prompt and output tokens per request")
    parser.add_argument("--requests-per-level", type=int, default=0, help="default: 4 x the level")
    parser.add_argument("--processes", type=int, default=1)
    parser.add_argument(
        "--home", type=Path, default=Path(os.environ.get("LLMSERVE_HOME", Path.home() / ".cache/llmserve"))
    )
    parser.add_argument("--out", type=Path, default=Path("/tmp/engine-process-ab"))
    args = parser.parse_args()
    args.served_id = args.model[0].split("=", 1)[0] if args.model else "SmolLM2-135M-Instruct"
    args.out.mkdir(parents=True, exist_ok=True)
    ports = {"off": 21100, "on": 21200}
    servers = {}
    try:
        for variant in VARIANTS:
            servers[variant] = start(variant, args, ports[variant], args.out)
            wait_ready(servers[variant], ports[variant])
            bench(args, ports[variant] + 2, 1, f"warmup-{variant}", args.out, warmup=True)
        rows = []
        for round_ in range(args.rounds):
            for level in map(int, args.levels.split(",")):
                order = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))  # ABBA
                for variant in order:
                    root = psutil.Process(servers[variant].pid)
                    before = cpu_seconds(root)
                    result = bench(args, ports[variant] + 2, level, f"{variant}-c{level}-r{round_}", args.out)
                    after = cpu_seconds(root)
                    spent = sum(after[pid] - before.get(pid, 0.0) for pid in after)
                    tokens = (result["requests"] - result["failed"]) * args.tokens
                    row = {"variant": variant, "level": level, "round": round_, "failed": result["failed"],
                           "tok_s": result.get("output_tokens_per_s", 0.0), "cpu_s": spent,
                           "cpu_ms_per_token": 1000 * spent / max(tokens, 1)}  # fmt: skip
                    rows.append(row)
                    print(json.dumps(row), flush=True)
        (args.out / "ab.json").write_text(
            json.dumps({"args": vars(args) | {"home": str(args.home), "out": str(args.out)}, "runs": rows}, indent=1)
        )
        print(f"\n{args.engine_core} on {args.device}, {args.tokens}/{args.tokens} tokens, medians of {args.rounds}:")
        print("level  variant  tok/s     CPU ms/token")
        for level in map(int, args.levels.split(",")):
            for variant in VARIANTS:
                mine = [r for r in rows if r["level"] == level and r["variant"] == variant]
                tok_s = statistics.median(r["tok_s"] for r in mine)
                cpu = statistics.median(r["cpu_ms_per_token"] for r in mine)
                print(f"{level:>5}  {variant:>7}  {tok_s:>8.1f}  {cpu:>8.2f}")
    finally:
        for server in servers.values():
            server.terminate()
        for server in servers.values():
            server.wait(timeout=120)


if __name__ == "__main__":
    main()
