"""In-process benchmark of the paged fast core (paged_fast_core.PagedFastEngine over paged_runner.PagedRunner), issue 16:

1. greedy equality with HF `generate` on the random --shape checkpoint: fp32 with the torch reference attention
   (must be exact: the paging, chunking and scheduling), and bf16 with FlashInfer against HF bf16 (token agreement:
   random weights leave near-ties that bf16 rounding flips, so this one is reported, not asserted);
2. the closed-loop sweep of inprocess.py at each level, 8x concurrency requests, repeated --repeats times
   (median and spread), with the core's loop counters;
3. the prefix-cache case: a --prefix-token shared prefix + 128 new prompt tokens, TTFT cold (a new prefix) vs
   warm (the same prefix again), one request at a time.
--async-scheduling on|off|both: the core's overlapped loop (paged_overlap.py) or the synchronous one; both: each
level's repeats run both, interleaved on one engine (the order swapped each repeat), summarised per mode
(`levels_by_mode`), and the `overlap` stage checks the two loops give the same greedy tokens (fp32 torch reference:
must be equal; bf16 FlashInfer with graphs: reported).
Writes $OUT/paged-inprocess.json; bench/gpu_perf/plot_paged.py draws it.

  STAGES=paged bash bench/gpu_perf/run.sh       (PAGED_ARGS="--levels 1,64,256,1024")
  STAGES=paged PAGED_ARGS="--levels 1,256 --stages overlap,sweep --async-scheduling both" bash bench/gpu_perf/run.sh
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import threading
import time
import traceback
from pathlib import Path

import torch
from inprocess import build_checkpoint, drive
from transformers import AutoModelForCausalLM

from core import Sampling
from paged_fast_core import PagedFastEngine as FastEngine

PROMPTS = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "日本語のテキスト", "1, 2, 3,"]
results: dict = {}
DEVICE = "cuda"  # --device cpu: a smoke run of this script (the tiny shape), not a measurement


def save(out: Path) -> None:
    (out / "paged-inprocess.json").write_text(json.dumps(results, indent=1))


def greedy(checkpoint: Path, dtype: str, attention: str, tokens: int) -> dict:
    engine = FastEngine(str(checkpoint), device=DEVICE, dtype=dtype, max_num_seqs=8, attention=attention)
    ref = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=getattr(torch, dtype)).to(DEVICE).eval()
    tok = engine.tokenizer
    outputs = token_ids(engine, PROMPTS, Sampling(max_tokens=tokens, min_tokens=tokens, temperature=0.0))
    exact, agree, total = 0, 0, 0
    for prompt, ours in zip(PROMPTS, outputs, strict=True):
        ids = tok(prompt, return_tensors="pt").input_ids.to(DEVICE)
        out = ref.generate(ids, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
        theirs = out[0, ids.shape[1] :].tolist()
        exact += ours == theirs
        same = next((i for i, (a, b) in enumerate(zip(ours, theirs, strict=False)) if a != b), len(theirs))
        agree, total = agree + same, total + len(theirs)
    engine.shutdown()
    del ref
    if DEVICE == "cuda":
        torch.cuda.empty_cache()
    return {"exact": f"{exact}/{len(PROMPTS)}", "tokens_before_first_divergence": f"{agree}/{total}",
            "attention": attention, "dtype": dtype}  # fmt: skip


def token_ids(engine: FastEngine, prompts: list[str], sampling: Sampling) -> list[list[int]]:
    ids: list[list[int]] = [[] for _ in prompts]
    done = [threading.Event() for _ in prompts]
    for i, prompt in enumerate(prompts):

        def sink(update, i=i):
            ids[i].extend(update.token_ids)
            if update.finish_reason:
                done[i].set()

        engine.submit(f"ids-{i}-{time.monotonic_ns()}", prompt, sampling, sink, lambda: False)
    for event in done:
        event.wait(300)
    return ids


def graphs_equal_eager(checkpoint: Path, tokens: int) -> str:
    """Greedy text of 16 streams with CUDA-graph decode (FlashInfer's decode kernel) vs eager steps (its prefill
    kernel), both bf16: how many agree."""
    prompts = [f"{p} {i}" for i in range(4) for p in PROMPTS[:4]]
    sampling = Sampling(max_tokens=tokens, min_tokens=tokens, temperature=0.0)
    texts = []
    for graphs in (True, False):
        engine = FastEngine(str(checkpoint), device=DEVICE, dtype="bfloat16", max_num_seqs=16, cuda_graphs=graphs)
        texts.append(token_ids(engine, prompts, sampling))
        engine.shutdown()
    return f"{sum(a == b for a, b in zip(*texts, strict=True))}/{len(prompts)}"


def sweep(engine: FastEngine, levels: list[int], tokens: int, repeats: int, per_stream: int, out: Path,
          modes: list[bool]) -> list:  # fmt: skip
    """Each level `repeats` times per mode of `modes` (async_scheduling on/off), the modes interleaved."""
    drive(engine, 64, 128, tokens, 16)  # warm-up: FlashInfer's JIT, allocator, first shapes
    rows = results.setdefault("levels", [])  # saved level by level: a run cut short keeps what it measured
    by_mode = results.setdefault("levels_by_mode", {"async": [], "sync": []}) if len(modes) > 1 else None
    for concurrency in levels:
        runs: dict[bool, list] = {mode: [] for mode in modes}
        for repeat in range(repeats):
            for mode in modes if repeat % 2 == 0 else modes[::-1]:
                engine.async_scheduling = mode  # the loop is idle between drives: safe to switch
                before = dict(engine.stats)
                row = drive(engine, concurrency, per_stream * concurrency, tokens, tokens, timeout=900)
                row["loop"] = {k: round(engine.stats[k] - before[k], 4) for k in before}
                row["async_scheduling"] = mode
                print("paged", json.dumps(row), flush=True)
                runs[mode].append(row)
        summaries = {mode: summarize_level(concurrency, mode_runs) for mode, mode_runs in runs.items()}
        for mode, summary in summaries.items():
            print("paged level", json.dumps({k: v for k, v in summary.items() if k != "runs"}), flush=True)
            if by_mode is not None:
                by_mode["async" if mode else "sync"].append(summary)
        rows.append(summaries[modes[0]])
        save(out)
    return rows


def summarize_level(concurrency: int, runs: list) -> dict:
    rates = [r["output_tokens_per_s"] for r in runs]
    return {
        "concurrency": concurrency,
        "async_scheduling": runs[0]["async_scheduling"],
        "output_tokens_per_s_median": statistics.median(rates),
        "output_tokens_per_s_min": min(rates),
        "output_tokens_per_s_max": max(rates),
        **{k: statistics.median(r[k] for r in runs) for k in ("ttft_p50_ms", "ttft_p99_ms", "itl_p50_ms", "itl_p99_ms")},
        "runs": runs,
    }  # fmt: skip


def overlap_equals_sync(checkpoint: Path, dtype: str, attention: str, tokens: int) -> dict:
    """Greedy token ids of 16 streams from the overlapped and the synchronous loop on one engine: how many agree
    (fp32 torch reference: all must; bf16 FlashInfer with CUDA graphs: near-ties may flip if the batches differ)."""
    engine = FastEngine(str(checkpoint), device=DEVICE, dtype=dtype, max_num_seqs=16, attention=attention)
    prompts = [f"{p} {i}" for i in range(4) for p in PROMPTS[:4]]
    sampling = Sampling(max_tokens=tokens, min_tokens=tokens // 2, temperature=0.0)
    outputs, overlapped = [], []
    for mode in (True, False):
        engine.async_scheduling = mode
        before = engine.stats["overlapped_steps"]
        outputs.append(token_ids(engine, prompts, sampling))
        overlapped.append(engine.stats["overlapped_steps"] - before)
    engine.shutdown()
    same = sum(a == b for a, b in zip(*outputs, strict=True))
    return {"equal": f"{same}/{len(prompts)}", "dtype": dtype, "attention": attention,
            "overlapped_steps_async_sync": overlapped, "cuda_graphs": attention == "flashinfer"}  # fmt: skip


def ttft(engine: FastEngine, prompt: list[int], new_tokens: int = 8) -> float:
    first, done = [], threading.Event()
    started = time.perf_counter()

    def sink(update):
        if not first and update.token_ids:
            first.append(time.perf_counter())
        if update.finish_reason:
            done.set()

    sampling = Sampling(max_tokens=new_tokens, min_tokens=new_tokens, temperature=0.0)
    engine.submit(f"prefix-{time.monotonic_ns()}", tuple(prompt), sampling, sink, lambda: False)
    assert done.wait(120)
    return (first[0] - started) * 1000


def prefix_case(engine: FastEngine, prefix_tokens: int, new_tokens: int, repeats: int) -> dict:
    rng = random.Random(0)
    rows = []
    for _ in range(repeats):
        prefix = [rng.randrange(100, 49000) for _ in range(prefix_tokens)]
        cold = ttft(engine, prefix + [rng.randrange(100, 49000) for _ in range(new_tokens)])
        warm = [ttft(engine, prefix + [rng.randrange(100, 49000) for _ in range(new_tokens)]) for _ in range(3)]
        rows.append({"cold_ttft_ms": round(cold, 2), "warm_ttft_ms": round(statistics.median(warm), 2)})
        print("prefix", json.dumps(rows[-1]), flush=True)
    cold_ms = statistics.median(r["cold_ttft_ms"] for r in rows)
    warm_ms = statistics.median(r["warm_ttft_ms"] for r in rows)
    return {"prefix_tokens": prefix_tokens, "new_tokens": new_tokens, "cold_ttft_ms": cold_ms,
            "warm_ttft_ms": warm_ms, "speedup": round(cold_ms / warm_ms, 2), "runs": rows}  # fmt: skip


def stage(name: str, function, *args) -> None:
    """results[name] = function(*args), or the error it raised (the next stages still run)."""
    try:
        value = function(*args)
        if not name.endswith("_error"):
            results[name] = value
    except Exception as exc:
        traceback.print_exc()
        results[name if name.endswith("_error") else name + "_error"] = repr(exc)
    print(name, results.get(name, results.get(name + "_error")), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1b")
    parser.add_argument("--levels", default="1,64,256")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--per-stream", type=int, default=8, help="requests per level: this x concurrency")
    parser.add_argument("--tokens", type=int, default=128, help="prompt and output tokens")
    parser.add_argument("--greedy-tokens", type=int, default=32)
    parser.add_argument("--prefix-tokens", type=int, default=1024)
    parser.add_argument("--max-prefill-tokens", type=int, default=8192, help="the step's token budget")
    parser.add_argument("--stages", default="greedy,sweep,prefix")
    parser.add_argument("--eager", action="store_true", help="no CUDA graphs")
    parser.add_argument("--async-scheduling", choices=("on", "off", "both"), default="on",
                        help="the overlapped loop (paged_overlap.py), the synchronous one, or both interleaved")  # fmt: skip
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--tokenizer", default="/tmp/smol")
    parser.add_argument("--ckpt", default="/tmp/ckpt")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    args = parser.parse_args()
    global DEVICE
    DEVICE = args.device
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    levels = [int(x) for x in args.levels.split(",")]
    results.update(device=torch.cuda.get_device_name(0) if DEVICE == "cuda" else "cpu", torch=torch.__version__, shape=args.shape,
                   tokens=args.tokens, date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                   max_prefill_tokens=args.max_prefill_tokens, async_scheduling=args.async_scheduling)  # fmt: skip
    ckpt = build_checkpoint(args.shape, Path(args.ckpt), Path(args.tokenizer), DEVICE)
    if "greedy" in args.stages:
        stage("greedy_fp32_torch_reference", greedy, ckpt, "float32", "torch_reference", args.greedy_tokens)
        stage("greedy_bf16_flashinfer", greedy, ckpt, "bfloat16", "flashinfer", args.greedy_tokens)
        stage("graphs_equal_eager", graphs_equal_eager, ckpt, args.greedy_tokens)
        save(out)
    if "overlap" in args.stages:
        stage("overlap_equals_sync_fp32", overlap_equals_sync, ckpt, "float32", "torch_reference", args.greedy_tokens)
        if DEVICE == "cuda":
            stage("overlap_equals_sync_bf16", overlap_equals_sync, ckpt, "bfloat16", "flashinfer", args.greedy_tokens)
        save(out)
    started = time.perf_counter()
    options = {"device": DEVICE, "dtype": "bfloat16" if DEVICE == "cuda" else "float32", "max_num_seqs": max(levels),
               "max_prefill_tokens": args.max_prefill_tokens, "cuda_graphs": not args.eager,
               "async_scheduling": args.async_scheduling != "off"}  # fmt: skip
    try:
        engine = FastEngine(str(ckpt), **options)
    except Exception as exc:  # e.g. the graphs' capture: measure the eager step rather than nothing
        results["startup_error"] = repr(exc)
        print("startup failed, eager instead:", repr(exc), flush=True)
        engine = FastEngine(str(ckpt), **{**options, "cuda_graphs": False})
    results["startup_s"] = round(time.perf_counter() - started, 1)
    results["attention"] = engine.runner.attention_name
    results["cuda_graphs"] = engine.runner.graphs is not None
    if "prefix" in args.stages:
        stage("prefix_cache", prefix_case, engine, args.prefix_tokens, 128, args.repeats)
        save(out)
    if "sweep" in args.stages:
        modes = {"on": [True], "off": [False], "both": [True, False]}[args.async_scheduling]
        stage("sweep_error", sweep, engine, levels, args.tokens, args.repeats, args.per_stream, out, modes)
        results["block_stats"] = dict(engine.blocks.stats)
        save(out)
    engine.shutdown()
    print(json.dumps({k: v for k, v in results.items() if k not in ("levels", "levels_by_mode")}, indent=1))


if __name__ == "__main__":
    main()
