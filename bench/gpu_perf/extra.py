"""Baseline and profile for docs/PERFORMANCE.md: HF static-batch `generate` under whichever transformers this
interpreter has (the GPU image's own, or ours), and a torch.profiler table of our core's batched prefill."""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, LlamaConfig

SHAPE_1B = dict(
    hidden_size=2048,
    intermediate_size=8192,
    num_hidden_layers=16,
    num_attention_heads=32,
    num_key_value_heads=8,
    head_dim=64,
)


def hf_static(model, n: int, tokens: int) -> dict:
    ids = torch.randint(100, 49000, (n, tokens), device="cuda")
    mask = torch.ones_like(ids)
    kwargs = dict(attention_mask=mask, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False, pad_token_id=0)
    model.generate(ids, **kwargs)  # warm-up at the measured shape
    torch.cuda.synchronize()
    started = time.perf_counter()
    out = model.generate(ids, **kwargs)
    torch.cuda.synchronize()
    seconds = time.perf_counter() - started
    return {
        "batch": n,
        "seconds": round(seconds, 3),
        "output_tokens_per_s": round((out.shape[1] - tokens) * n / seconds, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--label", required=True)
    parser.add_argument("--batches", default="64,256")
    parser.add_argument("--profile-prefill", action="store_true", help="also profile fast_core's prefill (our venv)")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    args = parser.parse_args()
    config = LlamaConfig(
        vocab_size=49152, max_position_embeddings=8192, tie_word_embeddings=True, rope_theta=100000.0, **SHAPE_1B
    )
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16).eval()
    result = {
        "label": args.label,
        "transformers": transformers.__version__,
        "torch": torch.__version__,
        "attn_implementation": model.config._attn_implementation,
        "hf_static": [hf_static(model, int(b), 128) for b in args.batches.split(",")],
    }
    print(json.dumps(result), flush=True)
    Path(args.out, f"hf-static-{args.label}.json").write_text(json.dumps(result, indent=2))
    if args.profile_prefill:
        profile_prefill(Path(args.out))


def profile_prefill(out: Path) -> None:
    from torch.profiler import ProfilerActivity, profile

    from fast_core import FastEngine  # model_repository/llm/1 is on PYTHONPATH (run.sh)

    engine = FastEngine("/tmp/ckpt", device="cuda", dtype="bfloat16", max_num_seqs=256, cuda_graphs=False)
    runner = engine.runner
    prompts = [torch.randint(100, 49000, (128,)).tolist() for _ in range(64)]
    params = [(0.0, 0, 1.0, True)] * 64
    for _ in range(2):
        runner.prefill(list(range(64)), prompts, params)
    torch.cuda.synchronize()
    started = time.perf_counter()
    runner.prefill(list(range(64)), prompts, params)
    seconds = time.perf_counter() - started
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        runner.prefill(list(range(64)), prompts, params)
    table = prof.key_averages().table(sort_by="cuda_time_total", row_limit=15)
    text = f"prefill 64 x 128 tokens: {seconds * 1000:.1f} ms wall\n{table}"
    print(text, flush=True)
    (out / "prefill-profile.txt").write_text(text)
    engine.shutdown()


if __name__ == "__main__":
    main()
