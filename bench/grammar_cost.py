"""The per-token CPU cost of grammar-constrained decoding (grammar.py over xgrammar) in the openvino_paged core.

1. Per token, in process, replaying a guided generation: the matcher's bitmask (fill_next_token_bitmask and its
   unpacking into a boolean mask), applying it to a logits row of the model's width (disallowed -> -inf) and
   accepting the token; against
2. a step of the openvino_paged core (its forward, and its sampling) on the real SmolLM2 IR, one sequence and
   --concurrency sequences; and the wall time per token of guided against unguided requests end to end.

The guide is a json_schema (an object with a string, an integer, a boolean and up to 3 strings). Prints a
table and writes JSON (--out, default bench/results/grammar_cost.json).

    PYTHONPATH=.:model_repository/llm/1 python bench/grammar_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "model_repository" / "llm" / "1")]

SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string"},
        "age": {"type": "integer"},
        "employed": {"type": "boolean"},
        "hobbies": {"type": "array", "items": {"type": "string"}, "maxItems": 3},
    },
    "required": ["name", "age", "employed", "hobbies"],
}
QUESTIONS = [
    "Describe a person called Alice, as JSON.",
    "Describe a person called Bob who likes chess, as JSON.",
    "Describe a retired teacher, as JSON.",
    "Describe a young painter, as JSON.",
]
CHAT = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"


def generate(engine, prompts: list[str], tokens: int, guided: bool, tag: str) -> tuple[float, int, list[list[int]]]:
    """(wall seconds, tokens generated, each request's token ids) of concurrent greedy requests."""
    from core import Sampling

    guide = ("json_schema", json.dumps(SCHEMA)) if guided else None
    # unguided requests generate exactly `tokens`; guided ones end when the object is complete (or at `tokens`)
    sampling = Sampling(max_tokens=tokens, temperature=0, guide=guide, min_tokens=0 if guided else tokens)
    ids: dict[int, list[int]] = {i: [] for i in range(len(prompts))}
    finals, lock, done = [], threading.Lock(), threading.Event()

    def sink_of(i):
        def sink(update):
            with lock:
                ids[i].extend(update.token_ids)
                if update.finish_reason:
                    finals.append(update)
                    if len(finals) == len(prompts):
                        done.set()

        return sink

    wall = time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.submit(f"{tag}-{i}", prompt, sampling, sink_of(i), bool)
    if not done.wait(600):
        raise RuntimeError("a batch did not finish in 600 s")
    wall = time.perf_counter() - wall
    if any(u.finish_reason not in ("stop", "length") for u in finals):
        raise RuntimeError(f"a request failed: {finals}")
    if guided:
        print(f"  {tag}: finish {[u.finish_reason for u in finals]}", file=sys.stderr)
    return wall, sum(u.num_output_tokens for u in finals), [ids[i] for i in range(len(prompts))]


def step_costs(engine, prompts, tokens, guided, tag) -> dict[str, float]:
    """ms per step of the core's forward and sampling, and wall ms per generated token, over one batch."""
    before = dict(engine.stats)
    wall, generated, _ = generate(engine, prompts, tokens, guided, tag)
    steps = engine.stats["steps"] - before["steps"]
    return {
        "forward_ms_per_step": (engine.stats["forward_s"] - before["forward_s"]) / steps * 1e3,
        "sample_ms_per_step": (engine.stats["sample_s"] - before["sample_s"]) / steps * 1e3,
        "wall_ms_per_token": wall / generated * 1e3,
        "tokens": generated,
    }


def matcher_costs(guides, compiled, end_ids, token_lists, vocab_size: int, repeats: int) -> dict[str, float]:
    """Median µs per token of the bitmask, the mask's application and the accept, replaying guided generations."""
    rng = np.random.default_rng(0)
    row = rng.standard_normal(vocab_size).astype(np.float32)
    fill, apply, accept = [], [], []
    for _ in range(repeats):
        for tokens in token_lists:
            matcher = guides.matcher(compiled, end_ids)
            end = min(end_ids)
            for i, token in enumerate(tokens + [end]):  # and the end, which the grammar allows once complete
                t0 = time.perf_counter_ns()
                allowed = matcher.allowed()
                t1 = time.perf_counter_ns()
                if allowed is not None:
                    np.where(allowed, row, np.float32(-np.inf))
                t2 = time.perf_counter_ns()
                if i == len(tokens) and allowed is not None and not allowed[end]:
                    break  # the generation stopped at max_tokens, before the object was complete
                if not matcher.accept(token):
                    raise RuntimeError(f"the grammar refused token {token} of its own generation")
                t3 = time.perf_counter_ns()
                fill.append(t1 - t0)
                apply.append(t2 - t1)
                accept.append(t3 - t2)
    total = [a + b + c for a, b, c in zip(fill, apply, accept, strict=True)]

    def us(values):
        return {"median_us": statistics.median(values) / 1e3, "mean_us": statistics.fmean(values) / 1e3}

    return {"bitmask": us(fill), "apply": us(apply), "accept": us(accept), "total": us(total), "tokens": len(total)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3, help="batches of each kind (medians over them)")
    parser.add_argument("--concurrency", type=int, default=4, help="sequences of the batched runs")
    parser.add_argument("--tokens", type=int, default=96, help="max_tokens of each request")
    parser.add_argument("--repeats", type=int, default=20, help="replays of the guided generations (part 1)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "grammar_cost.json")
    args = parser.parse_args()

    from build_engines.checkpoints import ensure_smollm2
    from build_engines.openvino import ensure_openvino_ir
    from frontend_api.settings import default_home

    from grammar import Guides
    from openvino_paged_core import OpenVINOPagedEngine

    home = Path(default_home())
    ir = ensure_openvino_ir(ensure_smollm2(home / "models" / "SmolLM2-135M-Instruct"), home)
    engine = OpenVINOPagedEngine(str(ir), max_num_seqs=max(8, args.concurrency), max_model_len=1024)
    prompts = [CHAT.format(QUESTIONS[i % len(QUESTIONS)]) for i in range(args.concurrency)]
    try:
        _, _, token_lists = generate(engine, prompts, args.tokens, True, "warm-guided")  # compiles, warms the cache
        generate(engine, prompts[:1], args.tokens, False, "warm-plain")
        steps: dict[str, list[dict[str, float]]] = {}
        for r in range(args.rounds):
            for batch in (1, args.concurrency):
                for guided in (False, True):
                    name = f"{'guided' if guided else 'unguided'} x{batch}"
                    steps.setdefault(name, []).append(
                        step_costs(engine, prompts[:batch], args.tokens, guided, f"{r}{name}")
                    )
    finally:
        engine.shutdown()
    guides = Guides(ir, engine.vocab_size)
    compiled = guides.compile("json_schema", json.dumps(SCHEMA))
    per_token = matcher_costs(guides, compiled, engine.default_eos_ids, token_lists, engine.vocab_size, args.repeats)
    step_medians = {
        name: {key: statistics.median(run[key] for run in runs) for key in runs[0]} for name, runs in steps.items()
    }

    print(f"grammar per token (json_schema, {per_token['tokens']} tokens replayed; vocabulary {engine.vocab_size})")
    for part in ("bitmask", "apply", "accept", "total"):
        print(f"  {part:<8} median {per_token[part]['median_us']:8.1f} µs   mean {per_token[part]['mean_us']:8.1f} µs")
    print(f"openvino_paged core, medians over {args.rounds} rounds")
    print(f"  {'batch':<14} {'forward ms/step':>15} {'sample ms/step':>14} {'wall ms/token':>13}")
    for name, value in step_medians.items():
        print(
            f"  {name:<14} {value['forward_ms_per_step']:>15.2f} {value['sample_ms_per_step']:>14.2f} "
            f"{value['wall_ms_per_token']:>13.2f}"
        )
    one_step = step_medians["unguided x1"]["forward_ms_per_step"] + step_medians["unguided x1"]["sample_ms_per_step"]
    share = per_token["total"]["median_us"] / 1e3 / one_step
    print(f"  the grammar's median per-token cost is {share:.1%} of an unguided single-sequence step")

    args.out.parent.mkdir(parents=True, exist_ok=True)
    result = {
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor(),
            "python": platform.python_version(),
        },
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "schema": SCHEMA,
        "grammar_per_token": per_token,
        "core_steps": step_medians,
        "grammar_share_of_single_step": share,
    }
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
