"""Per-token time of our paged runner (model_repository/llm/1/openvino_paged_runner.py, greedy argmax in numpy)
against openvino_genai.ContinuousBatchingPipeline on the same int8 IR, at 1 and 8 concurrent sequences x 64 new
tokens; interleaved A/B (the order alternates each round), 3 rounds, medians. Also the cost of what the runner makes
possible: a numpy log_softmax + top-20 over the vocabulary per sequence per step.

    PYTHONPATH=$PWD:$PWD/model_repository/llm/1 .venv/bin/python bench/openvino_paged_runner_bench.py [--out X.json]

Both engines get every prompt in the first step (a whole-prompt prefill, then one token per sequence per step) and
their KV blocks allocated up front. "step ms" is the mean decode step (the inter-token latency each sequence sees);
"ms/token" is the whole run's wall time over the tokens generated (prefill included; 1 / throughput).
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "model_repository" / "llm" / "1"))

from openvino_paged_runner import PagedRunner, SeqInput, blocks_needed, log_softmax, top_logprobs  # noqa: E402

NEW_TOKENS = 64
ROUNDS = 3
CONCURRENCY = (1, 8)
TOPK = 20
BASE_PROMPT = (
    "You are a helpful assistant. Answer the question in a few sentences. Question number {i}: why is the sky blue, "
    "and why are sunsets red?"
)


def default_checkpoint() -> str:
    found = sorted(glob.glob(os.path.expanduser("~/.cache/llmserve/openvino/*/openvino_model.xml")))
    if not found:
        raise SystemExit("no OpenVINO IR under ~/.cache/llmserve/openvino; run `llmserve prepare`")
    return str(Path(found[0]).parent)


def run_ours(runner: PagedRunner, prompts: list[list[int]], with_top: bool) -> dict:
    """Prefill all prompts in one step, then NEW_TOKENS - 1 decode steps; greedy argmax per row (and, with_top,
    log_softmax + top-20 of every row as a logprobs request would)."""
    tables = [runner.allocator.allocate(blocks_needed(len(p) + NEW_TOKENS)) for p in prompts]
    past = [0] * len(prompts)
    steps: list[float] = []
    start = time.perf_counter()
    try:
        batch = [SeqInput(p, 0, t) for p, t in zip(prompts, tables)]
        for n in range(NEW_TOKENS):
            t0 = time.perf_counter()
            out = runner.step(batch)
            tokens = out.last.argmax(-1)
            if with_top:
                top_logprobs(out.last, TOPK)
            steps.append(time.perf_counter() - t0)
            past = [p + len(s.token_ids) for p, s in zip(past, batch)]
            batch = [SeqInput([int(tok)], p, t) for tok, p, t in zip(tokens, past, tables)]
    finally:
        for t in tables:
            runner.allocator.free(t)
    total = time.perf_counter() - start
    return {"prefill_ms": steps[0] * 1e3, "step_ms": statistics.mean(steps[1:]) * 1e3, "total_s": total}


def run_genai(pipeline, prompts: list[list[int]]) -> dict:
    import openvino as ov
    import openvino_genai as ov_genai

    config = ov_genai.GenerationConfig()
    config.max_new_tokens = NEW_TOKENS
    config.ignore_eos = True
    start = time.perf_counter()
    handles = [
        pipeline.add_request(i, ov.Tensor(np.array([p], dtype=np.int64)), config) for i, p in enumerate(prompts)
    ]
    steps: list[float] = []
    while pipeline.has_non_finished_requests():
        t0 = time.perf_counter()
        pipeline.step()
        steps.append(time.perf_counter() - t0)
    total = time.perf_counter() - start
    generated = sum(len(list(h.read_all()[0].generated_ids)) for h in handles)
    assert generated == NEW_TOKENS * len(prompts), generated
    return {"prefill_ms": steps[0] * 1e3, "step_ms": statistics.mean(steps[1:]) * 1e3, "total_s": total}


def bench_softmax_top(vocab: int, rows: int, repeats: int = 200) -> float:
    """ms per sequence for log_softmax + top-20 over `rows` rows of float32 logits at once."""
    logits = np.random.default_rng(0).standard_normal((rows, vocab), dtype=np.float32) * 4
    top_logprobs(logits, TOPK)
    t0 = time.perf_counter()
    for _ in range(repeats):
        top_logprobs(logits, TOPK)
    return (time.perf_counter() - t0) / repeats / rows * 1e3


def bench_log_softmax_only(vocab: int, rows: int, repeats: int = 200) -> float:
    logits = np.random.default_rng(0).standard_normal((rows, vocab), dtype=np.float32) * 4
    t0 = time.perf_counter()
    for _ in range(repeats):
        log_softmax(logits)
    return (time.perf_counter() - t0) / repeats / rows * 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--out", default=str(HERE / "openvino_paged_runner_bench.json"))
    parser.add_argument("--f32", action="store_true", help="also our runner compiled with INFERENCE_PRECISION_HINT f32")
    args = parser.parse_args()

    import openvino_genai as ov_genai
    from tokenizers import Tokenizer

    checkpoint = args.checkpoint or default_checkpoint()
    tokenizer = Tokenizer.from_file(str(Path(checkpoint) / "tokenizer.json"))
    prompts = [tokenizer.encode(BASE_PROMPT.format(i=i)).ids for i in range(max(CONCURRENCY))]
    blocks = sum(blocks_needed(len(p) + NEW_TOKENS) for p in prompts) + 4

    engines: dict[str, object] = {"ours": PagedRunner(checkpoint, num_blocks=blocks)}
    if args.f32:
        engines["ours_f32"] = PagedRunner(checkpoint, num_blocks=blocks, properties={"INFERENCE_PRECISION_HINT": "f32"})
    scheduler = ov_genai.SchedulerConfig()
    scheduler.max_num_seqs = max(CONCURRENCY)
    scheduler.dynamic_split_fuse = True
    scheduler.cache_size = 0
    scheduler.num_kv_blocks = blocks
    genai = ov_genai.ContinuousBatchingPipeline(checkpoint, scheduler, "CPU")

    variants = {
        "genai": lambda ps: run_genai(genai, ps),
        "ours": lambda ps: run_ours(engines["ours"], ps, with_top=False),
        "ours+top20": lambda ps: run_ours(engines["ours"], ps, with_top=True),
    }
    if args.f32:
        variants["ours_f32"] = lambda ps: run_ours(engines["ours_f32"], ps, with_top=False)
    for n in CONCURRENCY:  # warm-up: first inferences of each shape
        for run in variants.values():
            run(prompts[:n])

    samples: dict[tuple[str, int], list[dict]] = {}
    order = list(variants)
    for round_ in range(args.rounds):
        for n in CONCURRENCY:
            for name in order if round_ % 2 == 0 else reversed(order):
                samples.setdefault((name, n), []).append(variants[name](prompts[:n]))

    rows = []
    for (name, n), runs in sorted(samples.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        step = statistics.median(r["step_ms"] for r in runs)
        total = statistics.median(r["total_s"] for r in runs)
        prefill = statistics.median(r["prefill_ms"] for r in runs)
        rows.append(
            {
                "engine": name,
                "concurrency": n,
                "new_tokens": NEW_TOKENS,
                "step_ms": round(step, 3),
                "ms_per_token": round(total * 1e3 / (n * NEW_TOKENS), 3),
                "tokens_per_s": round(n * NEW_TOKENS / total, 1),
                "prefill_ms": round(prefill, 2),
                "step_ms_rounds": [round(r["step_ms"], 3) for r in runs],
            }
        )
    vocab = engines["ours"].vocab_size
    softmax = {
        f"rows={r}": {
            "log_softmax_top20_ms_per_seq": round(bench_softmax_top(vocab, r), 4),
            "log_softmax_only_ms_per_seq": round(bench_log_softmax_only(vocab, r), 4),
        }
        for r in (1, 8)
    }

    print(f"prompt tokens: {[len(p) for p in prompts]}; vocab {vocab}; {args.rounds} rounds, medians")
    print(f"{'engine':12s} {'seqs':>4s} {'step ms':>8s} {'ms/token':>9s} {'tok/s':>7s} {'prefill ms':>10s}  rounds(step ms)")
    for r in rows:
        print(
            f"{r['engine']:12s} {r['concurrency']:4d} {r['step_ms']:8.2f} {r['ms_per_token']:9.2f} "
            f"{r['tokens_per_s']:7.1f} {r['prefill_ms']:10.1f}  {r['step_ms_rounds']}"
        )
    for key, value in softmax.items():
        print(f"numpy log_softmax + top-{TOPK} over {vocab} ({key} at once): {value}")
    result = {
        "checkpoint": checkpoint,
        "cpu_count": os.cpu_count(),
        "rounds": args.rounds,
        "rows": rows,
        "log_softmax_top20": softmax,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
