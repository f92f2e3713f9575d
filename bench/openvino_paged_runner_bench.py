"""Per-token time of our paged runner (model_repository/llm/1/openvino_paged_runner.py, greedy argmax in numpy)
against openvino_genai.ContinuousBatchingPipeline on the same int8 IR, at 1 and 8 concurrent sequences x 64 new
tokens; interleaved A/B at the grain of single steps (the variants advance in lockstep, one step each in turn, the
order reversed every other round: a busy shared machine slows them alike), 3 rounds, medians. Also the cost of what the runner makes
possible: a numpy log_softmax + top-20 over the vocabulary per sequence per step.

    PYTHONPATH=$PWD:$PWD/model_repository/llm/1 .venv/bin/python bench/openvino_paged_runner_bench.py [--out X.json]

Both engines get every prompt in the first step (a whole-prompt prefill, then one token per sequence per step) and
their KV blocks allocated up front. "step ms" is the median decode step (the inter-token latency each sequence sees); "vs genai" the median, over
all decode steps, of a variant's step time over GenAI's step of the same index and round (paired: robust to the
load of a shared machine);
"ms/token" is the run's summed step time over the tokens generated (prefill included; 1 / throughput).
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


def run_ours(runner: PagedRunner, prompts: list[list[int]], with_top: bool):
    """Prefill all prompts in one step, then NEW_TOKENS - 1 decode steps; greedy argmax per row (and, with_top,
    log_softmax + top-20 of every row as a logprobs request would). Yields after each step (its duration)."""
    tables = [runner.allocator.allocate(blocks_needed(len(p) + NEW_TOKENS)) for p in prompts]
    past = [0] * len(prompts)
    steps: list[float] = []
    try:
        batch = [SeqInput(p, 0, t) for p, t in zip(prompts, tables, strict=True)]
        for _ in range(NEW_TOKENS):
            t0 = time.perf_counter()
            out = runner.step(batch)
            tokens = out.last.argmax(-1)
            if with_top:
                top_logprobs(out.last, TOPK)
            steps.append(time.perf_counter() - t0)
            yield steps[-1]
            past = [p + len(s.token_ids) for p, s in zip(past, batch, strict=True)]
            batch = [SeqInput([int(tok)], p, t) for tok, p, t in zip(tokens, past, tables, strict=True)]
    finally:
        for t in tables:
            runner.allocator.free(t)
    return _summary(steps)


def _summary(steps: list[float]) -> dict:
    """The median decode step (bursts of the other processes on a shared machine skew a mean), the prefill step,
    the sum, and every decode step (for the paired ratios)."""
    return {
        "prefill_ms": steps[0] * 1e3,
        "step_ms": statistics.median(steps[1:]) * 1e3,
        "total_s": sum(steps),
        "decode_steps": steps[1:],
    }


def run_genai(pipeline, prompts: list[list[int]]):
    import openvino as ov
    import openvino_genai as ov_genai

    config = ov_genai.GenerationConfig()
    config.max_new_tokens = NEW_TOKENS
    config.ignore_eos = True
    t0 = time.perf_counter()
    handles = [pipeline.add_request(i, ov.Tensor(np.array([p], dtype=np.int64)), config) for i, p in enumerate(prompts)]
    steps: list[float] = []
    while pipeline.has_non_finished_requests():
        pipeline.step()
        steps.append(time.perf_counter() - t0)  # the first step's time includes add_request
        yield steps[-1]
        t0 = time.perf_counter()
    generated = sum(len(list(h.read_all()[0].generated_ids)) for h in handles)
    assert generated == NEW_TOKENS * len(prompts), generated
    return _summary(steps)


def lockstep(runs: dict) -> dict:
    """Advance every variant's run one step at a time, round robin, so that the load of a shared machine falls on
    all of them alike; the summary of each."""
    results, live = {}, dict(runs)
    while live:
        for name, run in list(live.items()):
            try:
                next(run)
            except StopIteration as stop:
                results[name] = stop.value
                del live[name]
    return results


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
    # "ours" and "ours+top20" share one runner and run in lockstep: room for both

    engines: dict[str, object] = {"ours": PagedRunner(checkpoint, num_blocks=2 * blocks)}
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
        lockstep({name: run(prompts[:n]) for name, run in variants.items()})

    samples: dict[tuple[str, int], list[dict]] = {}
    order = list(variants)
    for round_ in range(args.rounds):
        for n in CONCURRENCY:
            names = order if round_ % 2 == 0 else order[::-1]
            for name, result in lockstep({name: variants[name](prompts[:n]) for name in names}).items():
                samples.setdefault((name, n), []).append(result)

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
                # median over every decode step of every round of (this step's time / genai's same step's time):
                # lockstep neighbours share the machine's load of that moment
                "vs_genai": round(
                    statistics.median(
                        a / b
                        for r, g in zip(runs, samples[("genai", n)], strict=True)
                        for a, b in zip(r["decode_steps"], g["decode_steps"], strict=True)
                    ),
                    3,
                ),
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
    print(
        f"{'engine':12s} {'seqs':>4s} {'step ms':>8s} {'ms/token':>9s} {'tok/s':>7s} {'prefill ms':>10s} {'vs genai':>8s}  rounds(step ms)"
    )
    for r in rows:
        print(
            f"{r['engine']:12s} {r['concurrency']:4d} {r['step_ms']:8.2f} {r['ms_per_token']:9.2f} "
            f"{r['tokens_per_s']:7.1f} {r['prefill_ms']:10.1f} {r['vs_genai']:8.3f}  {r['step_ms_rounds']}"
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
