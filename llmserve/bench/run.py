"""`llmserve bench`: run a concurrency sweep against one target, print a table, write JSON and a PNG plot.

Load can come from several client processes (`--processes`), so that a Python client is not what saturates:
each runs its own event loop with its share of the concurrency; they start together and their results merge.
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import platform
import sys
import time
from datetime import UTC, datetime
from pathlib import Path

from llmserve.bench.loadgen import RequestResult, run_level
from llmserve.bench.report import plot, summarize, table, write_json


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--target",
        choices=["openai", "triton"],
        required=True,
        help="openai: the front-end's /v1/completions with SSE; triton: Triton gRPC streaming",
    )
    parser.add_argument(
        "--url", required=True, help="openai: base URL such as http://127.0.0.1:8000/v1; triton: host:grpc_port"
    )
    parser.add_argument("--model", required=True, help="served model id (openai) or Triton model name (triton)")
    parser.add_argument("--concurrency", default="1,8", help="comma-separated levels (default 1,8)")
    parser.add_argument(
        "--requests-per-level", type=int, default=0, help="requests per level (default: 2 x concurrency, at least 4)"
    )
    parser.add_argument("--input-tokens", type=int, default=128, help="prompt length in tokens (default 128)")
    parser.add_argument(
        "--output-tokens",
        type=int,
        default=128,
        help="tokens generated per request; min_tokens = max_tokens (default 128)",
    )
    parser.add_argument("--processes", type=int, default=1, help="client processes sharing the load (default 1)")
    parser.add_argument("--label", help="name of this run in the table and plot (default: target)")
    parser.add_argument("--out", default="bench-results", help="folder for <label>.json and <label>.png")
    parser.add_argument("--no-warmup", action="store_true", help="skip the short warm-up level")


def parse_levels(text: str) -> list[int]:
    try:
        levels = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise SystemExit(f"llmserve bench: --concurrency must be comma-separated integers, not {text!r}") from None
    if not levels or min(levels) < 1:
        raise SystemExit("llmserve bench: --concurrency levels must be integers >= 1")
    return levels


def _client_process(args: dict, share: int, requests: int, first: int, start_at: float, done, queue) -> None:
    def count():
        with done.get_lock():
            done.value += 1

    time.sleep(max(0.0, start_at - time.time()))
    try:
        results = asyncio.run(
            run_level(
                args["target"],
                args["url"],
                args["model"],
                share,
                requests,
                args["input_tokens"],
                args["output_tokens"],
                first,
                count,
            )
        )
        queue.put([r.__dict__ for r in results])
    except Exception as exc:  # report it to the parent rather than hang it
        queue.put(f"{type(exc).__name__}: {exc}")


def run_sweep_level(args: dict, concurrency: int, requests: int, processes: int, progress=None) -> list[RequestResult]:
    """One level across `processes` client processes (spawned, so each has a clean event loop)."""
    processes = max(1, min(processes, concurrency))
    ctx = mp.get_context("spawn")
    done, queue = ctx.Value("i", 0), ctx.Queue()
    start_at = time.time() + 1.0 + 0.3 * processes  # let every process import and connect first
    workers, first = [], 0
    for i in range(processes):
        share = concurrency // processes + (i < concurrency % processes)
        count = requests // processes + (i < requests % processes)
        proc = ctx.Process(target=_client_process, args=(args, share, count, first, start_at, done, queue))
        proc.start()
        workers.append(proc)
        first += count
    merged: list[RequestResult] = []
    received = 0
    while received < processes:
        if progress is not None:
            progress.n = done.value
            progress.refresh()
        try:
            item = queue.get(timeout=0.2)
        except Exception:  # queue.Empty; also re-check that the clients are alive
            if not any(p.is_alive() for p in workers) and queue.empty():
                raise RuntimeError("a benchmark client process died without reporting") from None
            continue
        received += 1
        if isinstance(item, str):
            raise RuntimeError(f"a benchmark client failed: {item}")
        merged.extend(RequestResult(**r) for r in item)
    for proc in workers:
        proc.join()
    if progress is not None:
        progress.n = done.value
        progress.refresh()
    return merged


def command_line() -> str:
    """How this run was started (`llmserve bench ...` or `python -m llmserve.bench ...`)."""
    args = sys.argv[2:] if sys.argv[1:2] == ["bench"] else sys.argv[1:]
    return " ".join(["llmserve", "bench", *args])


def main(ns: argparse.Namespace) -> int:
    from tqdm import tqdm

    levels = parse_levels(ns.concurrency)
    args = {
        "target": ns.target,
        "url": ns.url.rstrip("/"),
        "model": ns.model,
        "input_tokens": ns.input_tokens,
        "output_tokens": ns.output_tokens,
    }
    if ns.input_tokens < 2 or ns.output_tokens < 1 or ns.processes < 1 or ns.requests_per_level < 0:
        raise SystemExit("llmserve bench: --input-tokens >= 2, --output-tokens >= 1, --processes >= 1 please")
    label = ns.label or ns.target
    report = {
        "label": label,
        "target": ns.target,
        "url": args["url"],
        "model": ns.model,
        "input_tokens": ns.input_tokens,
        "output_tokens": ns.output_tokens,
        "processes": ns.processes,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "host": platform.node(),
        "command": command_line(),
        "levels": [],
    }
    if not ns.no_warmup:
        warm = run_sweep_level({**args, "output_tokens": min(ns.output_tokens, 8)}, 2, 2, 1)
        failed = [r.error for r in warm if r.error]
        if failed:
            raise SystemExit(f"llmserve bench: the warm-up request failed ({failed[0]}); is the target up at {ns.url}?")
    for concurrency in levels:
        requests = ns.requests_per_level or max(2 * concurrency, 4)
        with tqdm(total=requests, desc=f"{label} c={concurrency}", unit="req", file=sys.stderr) as progress:
            results = run_sweep_level(args, concurrency, requests, ns.processes, progress)
        report["levels"].append(summarize(results, concurrency))
    out = Path(ns.out)
    write_json(report, out / f"{label}.json")
    plot([report], out / f"{label}.png")
    print(table(report))
    print(f"wrote {out / f'{label}.json'} and {out / f'{label}.png'}")
    return 1 if any(lv["failed"] for lv in report["levels"]) else 0
