"""The paged OpenVINO engine core (openvino_paged_core.py) against the GenAI core (openvino_core.py) through the
EngineCore API, on the same int8 IR: 1 and 8 concurrent requests x 64 tokens (min_tokens = max_tokens: exact
length), interleaved A/B (every variant once per round, the order reversed every other round), 3 rounds, medians.
Also the price of what only the paged core can do (top_logprobs = 5), and of the penalties and of sampling
(temperature 1, top_p 0.95) on each core; greedy otherwise.

    PYTHONPATH=$PWD:$PWD/model_repository/llm/1 .venv/bin/python bench/openvino_paged_core_bench.py [--out X.json]

"tok/s": generated tokens over the run's wall time (submit to the last final update; prefill included).
"cpu ms/tok": the process's CPU time over the run (every thread: OpenVINO's pool, the engine loop) per token; only
one engine works at a time, the idle one's loop waits on its queue.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "model_repository" / "llm" / "1"))

from core import Sampling  # noqa: E402

TOKENS = 64
ROUNDS = 3
CONCURRENCY = (1, 8)
PROMPT = (
    "<|im_start|>user\nQuestion number {i}: why is the sky blue, and why are sunsets red? Answer in a few "
    "sentences.<|im_end|>\n<|im_start|>assistant\n"
)
PENALTIES = {"presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.1}
VARIANTS = {  # name -> (engine, extra sampling)
    "genai": ("genai", {}),
    "paged": ("paged", {}),
    "paged+top5": ("paged", {"logprobs": True, "top_logprobs": 5}),
    "genai+penalties": ("genai", PENALTIES),
    "paged+penalties": ("paged", PENALTIES),
    "genai+top_p": ("genai", {"temperature": 1.0, "top_p": 0.95, "seed": 1}),
    "paged+top_p": ("paged", {"temperature": 1.0, "top_p": 0.95, "seed": 1}),
}


def default_checkpoint() -> str:
    found = sorted(glob.glob(os.path.expanduser("~/.cache/llmserve/openvino/*/openvino_model.xml")))
    if not found:
        raise SystemExit("no OpenVINO IR under ~/.cache/llmserve/openvino; run `llmserve prepare`")
    return str(Path(found[0]).parent)


def run(engine, concurrency: int, extra: dict, tag: str) -> dict:
    done = threading.Semaphore(0)
    counts = [0] * concurrency

    def sink_for(i):
        def sink(update):
            if update.finish_reason:
                counts[i] = update.num_output_tokens
                done.release()

        return sink

    sampling = Sampling(max_tokens=TOKENS, min_tokens=TOKENS, **({"temperature": 0.0} | extra))
    stats = dict(getattr(engine, "stats", {}))
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(concurrency):
        engine.submit(f"{tag}-{i}", PROMPT.format(i=i), sampling, sink_for(i), lambda: False)
    for _ in range(concurrency):
        assert done.acquire(timeout=300), "a request did not finish in 300 s"
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    tokens = sum(counts)
    assert tokens == concurrency * TOKENS, counts
    result = {"tok_s": tokens / wall, "cpu_ms_per_tok": cpu * 1e3 / tokens, "wall_s": wall}
    for phase in ("forward", "sample", "deliver"):  # the paged core's loop, per token
        if f"{phase}_s" in stats:
            result[f"{phase}_ms_per_tok"] = (engine.stats[f"{phase}_s"] - stats[f"{phase}_s"]) * 1e3 / tokens
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default=None)
    parser.add_argument("--rounds", type=int, default=ROUNDS)
    parser.add_argument("--out", default=str(HERE / "openvino_paged_core_bench.json"))
    args = parser.parse_args()
    checkpoint = args.checkpoint or default_checkpoint()

    from openvino_core import OpenVINOEngine
    from openvino_paged_core import OpenVINOPagedEngine

    engines = {
        "genai": OpenVINOEngine(checkpoint, max_num_seqs=8, max_model_len=512),
        "paged": OpenVINOPagedEngine(checkpoint, max_num_seqs=8, max_model_len=512),
    }
    try:
        for name in engines:  # warm-up: first-inference compilation, cache growth
            run(engines[name], 8, {}, f"warm-{name}")
        results: dict[str, dict[int, list[dict]]] = {v: {c: [] for c in CONCURRENCY} for v in VARIANTS}
        for round_ in range(args.rounds):
            order = list(VARIANTS) if round_ % 2 == 0 else list(reversed(VARIANTS))
            for concurrency in CONCURRENCY:
                for variant in order:
                    engine, extra = VARIANTS[variant]
                    measured = run(engines[engine], concurrency, extra, f"{variant}-{concurrency}-{round_}")
                    results[variant][concurrency].append(measured)
    finally:
        for engine in engines.values():
            engine.shutdown()

    table = {}
    for variant, by_concurrency in results.items():
        for concurrency, runs in by_concurrency.items():
            table[f"{variant}@{concurrency}"] = {key: statistics.median(r[key] for r in runs) for key in runs[0]} | {
                "runs": runs
            }
    print(f"{'variant':<18} {'conc':>4} {'tok/s':>8} {'cpu ms/tok':>11} {'vs genai':>9} {'sample ms/tok':>14}")
    for concurrency in CONCURRENCY:
        base = table[f"genai@{concurrency}"]["tok_s"]
        for variant in VARIANTS:
            row = table[f"{variant}@{concurrency}"]
            print(
                f"{variant:<18} {concurrency:>4} {row['tok_s']:>8.1f} {row['cpu_ms_per_tok']:>11.2f} "
                f"{row['tok_s'] / base:>8.2f}x {row.get('sample_ms_per_tok', float('nan')):>14.3f}"
            )
    meta = {"tokens": TOKENS, "rounds": args.rounds, "cpus": os.cpu_count(), "checkpoint": checkpoint}
    Path(args.out).write_text(json.dumps({"meta": meta, "results": table}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
