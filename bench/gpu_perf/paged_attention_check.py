"""On the GPU: paged_runner.PagedRunner with FlashInfer attention against its torch reference attention, driven by
scheduler.Scheduler (chunked prefill mixed with decode, block size 16) on a random Llama in bf16: the greedy
tokens of both, how many agree, the largest logit difference of the first step, and the step time of each.

  PYTHONPATH=.:model_repository/llm/1 python bench/gpu_perf/paged_attention_check.py --shape 1b
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kv_blocks import BlockManager
from paged_runner import PagedRunner
from scheduler import Scheduler

SHAPES = {
    "small": dict(hidden_size=512, intermediate_size=1024, num_hidden_layers=4, num_attention_heads=8,
                  num_key_value_heads=2, head_dim=64),
    "1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16, num_attention_heads=32,
               num_key_value_heads=8, head_dim=64),
}  # fmt: skip


def generate(model, attention: str, prompts: dict[int, list[int]], max_tokens: int, budget: int) -> dict:
    blocks = BlockManager(4096, 16, enable_prefix_caching=False)
    scheduler = Scheduler(blocks, max_num_seqs=len(prompts), max_num_batched_tokens=budget)
    runner = PagedRunner(model, 4096, 16, attention=attention)
    for seq_id, prompt in prompts.items():
        scheduler.add(seq_id, prompt, max_tokens)
    outputs, step_s, first_logits, steps = {}, [], None, 0
    while scheduler.has_work:
        plan = scheduler.plan()
        torch.cuda.synchronize()
        started = time.perf_counter()
        logits = runner.step(plan)
        torch.cuda.synchronize()
        step_s.append(time.perf_counter() - started)
        if first_logits is None:
            first_logits = logits.float().cpu()
        scheduler.update(plan, logits.argmax(dim=-1).tolist())
        steps += 1
        for seq_id in plan.sampled:
            if len(scheduler.get(seq_id).output) >= max_tokens:
                outputs[seq_id] = scheduler.get(seq_id).output
                scheduler.finish(seq_id)
    decode = sorted(step_s[len(step_s) // 2 :])  # the later steps: decode-heavy
    return {
        "outputs": outputs,
        "first_logits": first_logits,
        "steps": steps,
        "median_step_ms": 1e3 * decode[len(decode) // 2],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1b", choices=SHAPES)
    parser.add_argument("--sequences", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=32, help="new tokens per sequence")
    parser.add_argument("--budget", type=int, default=512, help="tokens per step")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    args = parser.parse_args()
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=49152, max_position_embeddings=4096, **SHAPES[args.shape])
    model = LlamaForCausalLM(config).to("cuda", torch.bfloat16).eval()
    lengths = torch.randint(20, 300, (args.sequences,), generator=torch.Generator().manual_seed(1)).tolist()
    prompts = {i: torch.randint(3, 49152, (n,)).tolist() for i, n in enumerate(lengths)}
    result: dict = {"device": torch.cuda.get_device_name(0), "shape": args.shape, "sequences": args.sequences}
    runs = {}
    for attention in ("torch_reference", "flashinfer"):
        started = time.perf_counter()
        try:
            with torch.inference_mode():
                runs[attention] = generate(model, attention, prompts, args.tokens, args.budget)
        except Exception as exc:  # a check: report what failed and go on
            result[attention] = {"error": f"{type(exc).__name__}: {exc}"}
            print(attention, "failed:", result[attention]["error"], flush=True)
            continue
        result[attention] = {
            "wall_s": round(time.perf_counter() - started, 1),
            "steps": runs[attention]["steps"],
            "median_late_step_ms": round(runs[attention]["median_step_ms"], 3),
        }
        print(attention, result[attention], flush=True)
    if len(runs) == 2:
        ref, fi = runs["torch_reference"], runs["flashinfer"]
        same = sum(ref["outputs"][i] == fi["outputs"][i] for i in prompts)
        first = sum(ref["outputs"][i][0] == fi["outputs"][i][0] for i in prompts)
        result["sequences_identical"] = same
        result["first_token_identical"] = first
        result["first_step_max_logit_diff"] = float((ref["first_logits"] - fi["first_logits"]).abs().max())
    print(json.dumps(result, indent=1), flush=True)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / f"paged-attention-{args.shape}.json").write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
