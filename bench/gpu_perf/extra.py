"""Baseline for docs/PERFORMANCE.md: HF static-batch `generate` under whichever transformers this interpreter has (the
GPU image's own, or ours). Our core's profile: paged_profile.py."""

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


if __name__ == "__main__":
    main()
