"""What each sampling feature costs the fast core, on the GPU: output tok/s of every variant of
inprocess.SAMPLING_VARIANTS against greedy, in process, variants interleaved in every round (levels of 8x the
concurrency), and, with --baseline DIR, greedy on an earlier fast core (its modules copied into DIR, the core's as
baseline_fast_core.py with its class FastEngine) interleaved with ours in the same process.

  PYTHONPATH=.:model_repository/llm/1:bench/gpu_perf python bench/gpu_perf/sampling_costs.py --concurrency 256
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch
from inprocess import SAMPLING_VARIANTS, build_checkpoint, drive

from paged_fast_core import PagedFastEngine


def save(args: argparse.Namespace, runs: dict[str, list[float]]) -> None:
    median = {key: statistics.median(values) for key, values in runs.items() if values}
    greedy = median["ours:greedy"]
    result = {
        "device": torch.cuda.get_device_name(0) if args.device.startswith("cuda") else "cpu",
        "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "command": " ".join(sys.argv),
        "concurrency": args.concurrency,
        "tokens": args.tokens,
        "runs": runs,
        "median": median,
        "relative_to_our_greedy": {key: round(value / greedy, 3) for key, value in median.items()},
    }
    print(json.dumps(result), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"sampling-costs-{args.concurrency}.json").write_text(json.dumps(result, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--concurrency", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=128, help="prompt and output tokens")
    parser.add_argument("--variants", default=",".join(SAMPLING_VARIANTS), help="comma-separated")
    parser.add_argument("--baseline", default="", help="a folder with an earlier core's modules (see above)")
    parser.add_argument("--shape", default="1b")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokenizer", default="/tmp/smol")
    parser.add_argument("--ckpt", default="/tmp/ckpt")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    args = parser.parse_args()
    concurrency, tokens = args.concurrency, args.tokens
    ckpt = build_checkpoint(args.shape, Path(args.ckpt), Path(args.tokenizer), args.device)
    dtype = "bfloat16" if args.device.startswith("cuda") else "float32"
    options = dict(device=args.device, dtype=dtype, max_num_seqs=concurrency, max_model_len=4 * tokens)
    engines = {"ours": PagedFastEngine(str(ckpt), **options)}
    if args.baseline:
        sys.path.insert(0, args.baseline)
        engines["baseline"] = importlib.import_module("baseline_fast_core").FastEngine(str(ckpt), **options)
    for engine in engines.values():
        drive(engine, concurrency, concurrency, tokens, 8)  # warm-up: allocations, first prefills
    plan = [("ours", name) for name in args.variants.split(",")]
    if args.baseline:  # right after our greedy, in every round
        plan.insert(1, ("baseline", "greedy"))
    runs: dict[str, list[float]] = {f"{engine}:{variant}": [] for engine, variant in plan}
    for round_ in range(args.rounds):
        for engine, variant in plan:
            extra = SAMPLING_VARIANTS[variant]
            row = drive(engines[engine], concurrency, 8 * concurrency, tokens, tokens, sampling_extra=extra)
            runs[f"{engine}:{variant}"].append(row["output_tokens_per_s"])
            print(f"round {round_} {engine}:{variant} {row['output_tokens_per_s']:.0f} tok/s", flush=True)
        save(args, runs)  # after every round: a run cut short keeps what it measured
    for engine in engines.values():
        engine.shutdown()


if __name__ == "__main__":
    main()
