"""FlashInfer's fused layer kernels (model_repository/llm/1/fused_llama.py) against transformers' modules in the
paged runner, on the GPU: are the logits the same (to bf16 rounding), and how much faster is a step?

Same random Llama 1.07B weights for every path. Correctness against an fp32 transformers forward (the truth):
the last prompt position's logits of 8 prompts of 128 tokens (max |diff|, argmax agreement), then 32 greedy
decode steps (CUDA graphs) per path against fp32 greedy `generate`. Speed, interleaved A/B rounds: a CUDA-graph
decode step at batch 1, 64 and 256 (wall per step with the host's input preparation, and the replay alone on
the GPU), and an eager prefill chunk of 128 and 1,152 tokens.

  PYTHONPATH=.:model_repository/llm/1:bench/gpu_perf python bench/gpu_perf/fused_check.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import time
from pathlib import Path

import torch
from inprocess import build_checkpoint
from paged_profile import timed
from transformers import AutoModelForCausalLM

from paged_runner import PagedRunner
from scheduler import ScheduledSequence, StepPlan

BLOCK_SIZE, BLOCKS_PER_SEQ = 16, 16  # 256 tokens per sequence
PROMPTS, PROMPT_LEN, DECODE_STEPS = 8, 128, 32


def table(i: int) -> list[int]:
    return list(range(i * BLOCKS_PER_SEQ, (i + 1) * BLOCKS_PER_SEQ))


def prefill(prompts: list[list[int]]) -> StepPlan:
    return StepPlan([ScheduledSequence(i, p, 0, table(i), True) for i, p in enumerate(prompts)])


def decode(tokens: list[int], position: int) -> StepPlan:
    return StepPlan([ScheduledSequence(i, [t], position, table(i), True) for i, t in enumerate(tokens)])


@torch.inference_mode()
def correctness(runner: PagedRunner, prompts: list[list[int]], truth: torch.Tensor, truth_tokens: list) -> dict:
    logits = runner.step(prefill(prompts))
    diff = (logits - truth).abs()
    tokens = logits.argmax(-1).tolist()
    generated = [[t] for t in tokens]
    for step in range(DECODE_STEPS - 1):
        tokens = runner.step(decode(tokens, PROMPT_LEN + step)).argmax(-1).tolist()
        for row, token in zip(generated, tokens, strict=True):
            row.append(token)
    first_divergence = [
        next((j for j, (a, b) in enumerate(zip(g, t, strict=True)) if a != b), len(t))
        for g, t in zip(generated, truth_tokens, strict=True)
    ]
    argmax_equal = sum(a == b for a, b in zip(logits.argmax(-1).tolist(), truth.argmax(-1).tolist(), strict=True))
    return {
        "prefill_logits_max_abs_diff": round(diff.max().item(), 4),
        "prefill_logits_mean_abs_diff": round(diff.mean().item(), 5),
        "prefill_argmax_equal": f"{argmax_equal}/{len(prompts)}",
        "greedy_sequences_equal": f"{sum(d == DECODE_STEPS for d in first_divergence)}/{len(prompts)}",
        "greedy_first_divergence": first_divergence,
    }


def replay_ms(runner: PagedRunner, batch: int, repeats: int) -> float:
    """The GPU time of one decode graph replay (CUDA events; the inputs stay those of the last step)."""
    graphs = runner.graphs
    assert graphs is not None
    graph = graphs.graphs[next(b for b in graphs.buckets if b >= batch)]
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    graph.replay()
    start.record()
    for _ in range(repeats):
        graph.replay()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / repeats


def speed(runner: PagedRunner, rng: random.Random) -> dict:
    row = {}
    for batch in (1, 64, 256):
        plan = decode([rng.randrange(100, 49000) for _ in range(batch)], PROMPT_LEN)
        row[f"decode_b{batch}_step_ms"] = timed(lambda plan=plan: runner.step(plan), 50)
        row[f"decode_b{batch}_replay_ms"] = replay_ms(runner, batch, 50)
    for tokens in (128, 1152):
        blocks = list(range(-(-tokens // BLOCK_SIZE)))
        plan = StepPlan([ScheduledSequence("x", [rng.randrange(100, 49000) for _ in range(tokens)], 0, blocks, True)])
        row[f"prefill_{tokens}_ms"] = timed(lambda plan=plan: runner.step(plan), 20)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1b")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved A/B rounds of the speed measurements")
    parser.add_argument("--tokenizer", default="/tmp/smol")
    parser.add_argument("--ckpt", default="/tmp/ckpt")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = build_checkpoint(args.shape, Path(args.ckpt), Path(args.tokenizer), "cuda")
    rng = random.Random(0)
    prompts = [[rng.randrange(100, 49000) for _ in range(PROMPT_LEN)] for _ in range(PROMPTS)]
    reference = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.float32).cuda().eval()
    ids = torch.tensor(prompts, device="cuda")
    with torch.inference_mode():
        truth = reference(ids).logits[:, -1].float()
        generated = reference.generate(ids, max_new_tokens=DECODE_STEPS, min_new_tokens=DECODE_STEPS, do_sample=False,
                                       eos_token_id=None, pad_token_id=0)  # fmt: skip
    truth_tokens = generated[:, PROMPT_LEN:].tolist()
    del reference
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16).cuda().eval()
    blocks = PROMPTS * BLOCKS_PER_SEQ * 32  # room for the speed steps' 256 sequences too
    # The fused runner first: it makes the model's weights views of its fused ones, which the other then captures.
    runners = {}
    for name, fused in (("fused", True), ("transformers", False)):
        started = time.perf_counter()
        runners[name] = PagedRunner(model, blocks, BLOCK_SIZE, "flashinfer", 4096, cuda_graph_batch=256, fused=fused)
        print(name, "runner ready in", round(time.perf_counter() - started, 1), "s", flush=True)
    results: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "shape": args.shape,
                     "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "correctness": {}, "speed": {}}  # fmt: skip
    for name, runner in runners.items():
        results["correctness"][name] = correctness(runner, prompts, truth, truth_tokens)
        print(name, json.dumps(results["correctness"][name]), flush=True)
    rounds: dict = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, runner in runners.items():
            rounds[name].append(speed(runner, rng))
            print(name, json.dumps({k: round(v, 3) for k, v in rounds[name][-1].items()}), flush=True)
    for name, rows in rounds.items():
        results["speed"][name] = {k: round(statistics.median(r[k] for r in rows), 3) for k in rows[0]}
        results["speed"][name + "_runs"] = rows
    a, b = results["speed"]["transformers"], results["speed"]["fused"]
    results["speedup"] = {k: round(a[k] / b[k], 2) for k in a}
    print("speedup (transformers / fused)", json.dumps(results["speedup"]), flush=True)
    (out / "fused-check.json").write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
