"""NVIDIA's benchmark tools and ours against one running stack, interleaved: perf_analyzer on Triton gRPC (the
`llm` model, streaming), aiperf on the OpenAI endpoint (/v1/completions, SSE), and `llmserve bench` on both.

Every tool sends 128-token prompts and asks for exactly 128 output tokens (perf_analyzer and llmserve's Triton
target: min_tokens = max_tokens; aiperf and llmserve's OpenAI target: ignore_eos and min_tokens), greedy, at each
concurrency level. Rounds interleave the tools (their order rotates every round), so that a busy machine's drift
falls on all of them alike. Each run's raw output lands in OUT/raw/, the normalized rows in OUT/results.json;
bench/nvidia_tools/summarize.py prints the table.

perf_analyzer counts responses, not tokens (one response may carry several tokens): its TTFT is the first
response's time, its tokens/s the requests' known fixed length (128) over the measured span, from the per-response
timestamps of --profile-export-file.

    # against a running `llmserve serve` (CPU, default ports)
    python bench/nvidia_tools/compare.py --model SmolLM2-135M-Instruct --tokenizer DIR --levels 1,4 --out OUT
    # start the stack first (--serve cpu: `llmserve serve`; --serve gpu: the fast core on a checkpoint, as
    # bench/gpu_perf/triton_bench.py does)
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
PA_INPUTS = Path(__file__).with_name("perf_analyzer_inputs.json")
TOOLS = ("perf_analyzer", "aiperf", "llmserve-triton", "llmserve-openai")
TARGET = {"perf_analyzer": "triton", "aiperf": "openai", "llmserve-triton": "triton", "llmserve-openai": "openai"}


def percentiles(values_ms: list[float]) -> dict:
    if not values_ms:
        return {}
    return {"p50": float(np.percentile(values_ms, 50)), "p99": float(np.percentile(values_ms, 99))}


def row(tool: str, concurrency: int, **metrics) -> dict:
    return {"tool": tool, "target": TARGET[tool], "concurrency": concurrency, **metrics}


# ------------------------------------------------------------------------------------------------ perf_analyzer


def parse_perf_analyzer_export(export: dict, output_tokens: int) -> dict:
    """Token metrics from perf_analyzer's profile export: per request its send time and each response's time.
    A request's tokens are its last response's num_output_tokens (the contract's running count) where the export
    has the outputs, else `output_tokens` (min_tokens = max_tokens), whatever number of responses carried them."""
    requests = [r for experiment in export["experiments"] for r in experiment["requests"]]
    done = [r for r in requests if r.get("response_timestamps")]
    if not done:
        return {"requests": len(requests), "failed": len(requests)}
    tokens = np.array([_last_token_count(r, output_tokens) for r in done])
    starts = np.array([r["timestamp"] for r in done], dtype=np.int64)
    firsts = np.array([r["response_timestamps"][0] for r in done], dtype=np.int64)
    lasts = np.array([r["response_timestamps"][-1] for r in done], dtype=np.int64)
    seconds = (lasts.max() - starts.min()) / 1e9
    responses = [len(r["response_timestamps"]) for r in done]
    ttft = (firsts - starts) / 1e6
    itl = (lasts - firsts) / 1e6 / np.maximum(tokens - 1, 1)  # as llmserve bench and aiperf define it
    return {
        "requests": len(requests),
        "failed": len(requests) - len(done),
        "seconds": round(seconds, 3),
        "output_tokens": int(tokens.sum()),
        "output_tokens_per_s": round(float(tokens.sum()) / seconds, 1),
        "requests_per_s": round(len(done) / seconds, 3),
        "ttft_p50_ms": round(float(np.percentile(ttft, 50)), 2),
        "ttft_p99_ms": round(float(np.percentile(ttft, 99)), 2),
        "itl_p50_ms": round(float(np.percentile(itl, 50)), 3),
        "itl_p99_ms": round(float(np.percentile(itl, 99)), 3),
        "responses_per_request": round(float(np.mean(responses)), 1),  # < output_tokens: responses merge tokens
    }


def _last_token_count(request: dict, output_tokens: int) -> int:
    outputs = request.get("response_outputs") or [{}]
    count = outputs[-1].get("num_output_tokens")
    return int(count) if isinstance(count, int | float) else output_tokens


def run_perf_analyzer(args, concurrency: int, requests: int, raw: Path) -> dict:
    stem = raw / f"perf_analyzer-c{concurrency}"
    command = [
        *shlex.split(args.perf_analyzer),
        "-m",
        args.triton_model or args.model,
        "-u",
        args.triton_url,
        "-i",
        "grpc",
        "--streaming",  # the llm model is decoupled
        "--input-data",
        str(args.perf_analyzer_inputs),
        "--concurrency-range",
        str(concurrency),
        "--request-count",  # one count of requests, like the other tools, rather than stability windows
        str(requests),
        "--warmup-request-count",
        str(concurrency),
        "--profile-export-file",
        f"{stem}.json",
        "-f",
        f"{stem}.csv",
    ]
    log = run_logged(command, f"{stem}.log")
    export = Path(f"{stem}.json")
    if log.returncode != 0 or not export.exists():
        return row("perf_analyzer", concurrency, requests=requests, failed=requests, error=f"exit {log.returncode}")
    metrics = parse_perf_analyzer_export(json.loads(export.read_text()), args.output_tokens)
    return row("perf_analyzer", concurrency, **metrics)


# ------------------------------------------------------------------------------------------------------ aiperf


def parse_aiperf_export(export: dict) -> dict:
    """aiperf's profile_export_aiperf.json: each metric by tag, with its unit and statistics."""

    def stat(tag: str, name: str):
        value = (export.get(tag) or {}).get(name)
        return None if value is None else float(value)

    requests = stat("request_count", "avg") or 0
    failed = stat("error_request_count", "avg") or 0
    return {
        "requests": int(requests + failed),
        "failed": int(failed),
        "seconds": round(stat("benchmark_duration", "avg") or 0, 3),
        "output_tokens_per_s": round(stat("output_token_throughput", "avg") or 0, 1),
        "requests_per_s": round(stat("request_throughput", "avg") or 0, 3),
        "ttft_p50_ms": stat("time_to_first_token", "p50"),
        "ttft_p99_ms": stat("time_to_first_token", "p99"),
        "itl_p50_ms": stat("inter_token_latency", "p50"),
        "itl_p99_ms": stat("inter_token_latency", "p99"),
        "output_tokens_per_request": stat("output_sequence_length", "avg"),  # the server's count (usage)
    }


def run_aiperf(args, concurrency: int, requests: int, raw: Path) -> dict:
    artifacts = raw / f"aiperf-c{concurrency}"
    shutil.rmtree(artifacts, ignore_errors=True)
    base_url = args.openai_url.removesuffix("/v1")
    command = [
        *shlex.split(args.aiperf),
        "profile",
        "--model",
        args.model,
        "--url",
        base_url,
        "--endpoint-type",
        "completions",  # /v1/completions, as llmserve bench's OpenAI target
        "--streaming",
        "--tokenizer",
        args.tokenizer,
        "--isl",
        str(args.input_tokens),
        "--isl-stddev",
        "0",
        "--osl",
        str(args.output_tokens),
        "--osl-stddev",
        "0",
        # Fixed-length outputs: aiperf puts --extra-inputs at the top level of the request body, where our
        # front-end honours vLLM's ignore_eos and min_tokens.
        "--extra-inputs",
        "ignore_eos:true",
        "--extra-inputs",
        f"min_tokens:{args.output_tokens}",
        "--extra-inputs",
        "temperature:0",
        # Count tokens as the server does (usage.completion_tokens): re-tokenizing the text miscounts outputs
        # that ran past end-of-sequence (special tokens are not in the text).
        "--use-server-token-count",
        "--concurrency",
        str(concurrency),
        "--request-count",
        str(requests),
        "--warmup-request-count",
        str(concurrency),
        "--random-seed",
        "0",
        "--ui-type",
        "none",
        "--no-server-metrics",
        "--no-gpu-telemetry",
        "--artifact-dir",
        str(artifacts),
    ]
    log = run_logged(command, f"{artifacts}.log")
    exports = sorted(artifacts.rglob("profile_export_aiperf.json"))
    if log.returncode != 0 or not exports:
        return row("aiperf", concurrency, requests=requests, failed=requests, error=f"exit {log.returncode}")
    return row("aiperf", concurrency, **parse_aiperf_export(json.loads(exports[0].read_text())))


# ----------------------------------------------------------------------------------------------- llmserve bench


def run_llmserve_bench(args, target: str, concurrency: int, requests: int, raw: Path) -> dict:
    tool = f"llmserve-{target}"
    label = f"{tool}-c{concurrency}"
    command = [
        sys.executable,
        "-m",
        "llmserve.bench",
        "--target",
        target,
        "--url",
        args.triton_url if target == "triton" else args.openai_url,
        "--model",
        (args.triton_model or args.model) if target == "triton" else args.model,
        "--concurrency",
        str(concurrency),
        "--requests-per-level",
        str(requests),
        "--input-tokens",
        str(args.input_tokens),
        "--output-tokens",
        str(args.output_tokens),
        "--processes",
        str(args.processes),
        "--label",
        label,
        "--out",
        str(raw),
    ]
    log = run_logged(command, raw / f"{label}.log")
    report = raw / f"{label}.json"
    if log.returncode != 0 or not report.exists():
        return row(tool, concurrency, requests=requests, failed=requests, error=f"exit {log.returncode}")
    level = json.loads(report.read_text())["levels"][-1]
    keep = ("requests", "failed", "seconds", "output_tokens", "output_tokens_per_s", "requests_per_s")
    metrics = {k: level.get(k) for k in (*keep, "ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")}
    return row(tool, concurrency, **metrics)


# ------------------------------------------------------------------------------------------------------ running


RUN_TIMEOUT_S: float | None = None  # --run-timeout: one tool's run at one level


def run_logged(command: list[str], log_path) -> subprocess.CompletedProcess:
    print("$", shlex.join(command), flush=True)
    with open(log_path, "w") as log:
        try:
            return subprocess.run(
                command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT, check=False, timeout=RUN_TIMEOUT_S
            )
        except subprocess.TimeoutExpired:  # the row says so; the next run goes on
            return subprocess.CompletedProcess(command, returncode=124)


def schedule(rounds: int, levels: list[int], tools: list[str]) -> list[tuple[int, int, str]]:
    """(round, level, tool): every level in every round, the tools' order rotated by one each round."""
    order = []
    for r in range(rounds):
        shift = r % len(tools)
        for level in levels:
            order += [(r, level, tool) for tool in tools[shift:] + tools[:shift]]
    return order


def start_stack(args, out: Path) -> subprocess.Popen:
    """`llmserve serve` on the ports of --openai-url and --triton-url; on the GPU, the fast core on a checkpoint
    (bench/gpu_perf/triton_bench.py's setup)."""
    port = args.openai_url.split(":")[-1].split("/")[0]
    grpc_port = int(args.triton_url.split(":")[-1])
    command = [sys.executable, "-m", "llmserve", "serve", "--port", port, "--log-level", "warning"]
    command += [f"--triton-grpc-port={grpc_port}", f"--triton-http-port={grpc_port - 1}"]
    command += [f"--triton-metrics-port={grpc_port + 1}"]
    if args.serve == "gpu":
        from build_engines.prepare import EngineOptions, prepare

        home = Path(os.environ.get("LLMSERVE_HOME", "/tmp/llmhome"))
        options = EngineOptions(device="cuda", dtype="bfloat16", max_num_seqs=args.max_num_seqs, engine_core="fast")
        repository = prepare([f"{args.model}={args.checkpoint}"], home, home / "build", options)
        command += ["--model-repository", str(repository)]
    else:
        command += ["--home", args.home] if args.home else []
    server = subprocess.Popen(command, stdout=(out / "serve.log").open("w"), stderr=subprocess.STDOUT, cwd=ROOT)
    ready_url = args.openai_url.removesuffix("/v1") + "/ready"
    started = time.monotonic()
    import httpx

    while True:
        if server.poll() is not None:
            raise SystemExit(f"llmserve serve exited with {server.returncode}; see {out / 'serve.log'}")
        try:
            if httpx.get(ready_url, timeout=2).status_code == 200:
                print(f"stack ready in {time.monotonic() - started:.0f} s", flush=True)
                return server
        except httpx.HTTPError:
            pass
        if time.monotonic() - started > args.ready_timeout:
            server.terminate()
            raise SystemExit(f"the stack was not ready in {args.ready_timeout} s")
        time.sleep(1)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="served model id (and Triton model name)")
    parser.add_argument("--triton-model", default=None, help="Triton model name when it differs from --model")
    parser.add_argument("--openai-url", default="http://127.0.0.1:8000/v1")
    parser.add_argument("--triton-url", default="127.0.0.1:8101", help="Triton gRPC host:port")
    parser.add_argument("--tokenizer", required=True, help="aiperf's tokenizer: a local Hugging Face directory")
    parser.add_argument("--levels", default="1,4", help="comma-separated concurrency levels (default 1,4)")
    parser.add_argument(
        "--requests-per-level",
        default="",
        help="one count for every level, or one per level (comma-separated); default 8 x concurrency, at least 16",
    )
    parser.add_argument("--rounds", type=int, default=2, help="interleaved repetitions of every (tool, level)")
    parser.add_argument("--tools", default=",".join(TOOLS), help=f"comma-separated, of {', '.join(TOOLS)}")
    parser.add_argument("--input-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--processes", type=int, default=1, help="llmserve bench's client processes")
    parser.add_argument(
        "--perf-analyzer",
        default="perf_analyzer",
        help="its command line (on glibc < 2.38: a newer loader and libraries before the binary)",
    )
    parser.add_argument("--perf-analyzer-inputs", type=Path, default=PA_INPUTS)
    parser.add_argument("--aiperf", default="aiperf", help="its command (e.g. /tmp/aiperf-venv/bin/aiperf)")
    parser.add_argument("--serve", choices=("none", "cpu", "gpu"), default="none", help="start the stack first")
    parser.add_argument("--home", default=None, help="--serve cpu: llmserve's cache directory")
    parser.add_argument("--checkpoint", default="/tmp/ckpt", help="--serve gpu: the checkpoint to serve")
    parser.add_argument("--max-num-seqs", type=int, default=256, help="--serve gpu")
    parser.add_argument("--ready-timeout", type=int, default=600)
    parser.add_argument("--run-timeout", type=float, default=None, help="seconds for one tool at one level")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", "/tmp/out")) / "nvtools")
    args = parser.parse_args(argv)
    global RUN_TIMEOUT_S
    RUN_TIMEOUT_S = args.run_timeout
    if args.output_tokens != 128 or args.input_tokens != 128:
        # perf_analyzer's requests are the committed JSON's (128/128): rewrite it for other lengths
        print("note: perf_analyzer still sends its input JSON's lengths", file=sys.stderr)
    levels = [int(v) for v in args.levels.split(",")]
    counts = [int(v) for v in args.requests_per_level.split(",") if v] or [max(8 * level, 16) for level in levels]
    if len(counts) not in (1, len(levels)):
        parser.error("--requests-per-level: one count, or one per level")
    requests_at = dict(zip(levels, counts * len(levels) if len(counts) == 1 else counts, strict=False))
    tools = [t for t in args.tools.split(",") if t]
    unknown = set(tools) - set(TOOLS)
    if unknown:
        parser.error(f"unknown tools {sorted(unknown)}")
    raw = args.out / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    server = start_stack(args, args.out) if args.serve != "none" else None
    rows = []
    try:
        for round_index, level, tool in schedule(args.rounds, levels, tools):
            requests = requests_at[level]
            round_raw = raw / f"round{round_index}"
            round_raw.mkdir(exist_ok=True)
            started = time.monotonic()
            if tool == "perf_analyzer":
                result = run_perf_analyzer(args, level, requests, round_raw)
            elif tool == "aiperf":
                result = run_aiperf(args, level, requests, round_raw)
            else:
                result = run_llmserve_bench(args, TARGET[tool], level, requests, round_raw)
            result.update(round=round_index, wall_s=round(time.monotonic() - started, 1))
            print(json.dumps(result), flush=True)
            rows.append(result)
            report = {
                "input_tokens": args.input_tokens,
                "output_tokens": args.output_tokens,
                "levels": levels,
                "rounds": args.rounds,
                "tools": tools,
                "rows": rows,
            }
            (args.out / "results.json").write_text(json.dumps(report, indent=1) + "\n")  # after every run
    finally:
        if server is not None:
            server.terminate()
            server.wait(timeout=60)


if __name__ == "__main__":
    main()
