"""Where a step's GPU time goes, kernel by kernel: the fused paged runner (fused_llama.py) on the random Llama
1.07B, CUDA-graph decode replays at batch 1 and 256 and an eager prefill of 128 tokens, under torch.profiler.

Per case: each kernel's count and GPU time per step, grouped (GEMM, attention, norm, rope, activation, K/V write,
copy, other), the GPU's busy time against the wall time of the step (the gaps are launch and host time), and for
batch 1 the GEMMs' achieved memory bandwidth against reading every weight once (the decode floor). JSON and a
text table go to --out.

  PYTHONPATH=.:model_repository/llm/1:bench/gpu_perf python bench/gpu_perf/kernel_profile.py [--out DIR]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import time
from collections import defaultdict
from pathlib import Path

import torch
from fused_check import BLOCK_SIZE, decode
from inprocess import build_checkpoint
from torch.profiler import ProfilerActivity, profile
from transformers import AutoModelForCausalLM

from paged_runner import PagedRunner
from scheduler import ScheduledSequence, StepPlan

HBM_BYTES_PER_S = 4.8e12  # H200
GROUPS = (  # first match wins: kernel names of cuBLAS/CUTLASS, FlashInfer and torch
    ("gemm", r"gemm|gemv|cutlass|sm90_xmma|nvjet|cublas"),
    ("attention", r"BatchDecode|BatchPrefill|Attention|attention|flashinfer::.*(Decode|Prefill)"),
    ("norm", r"[Nn]orm"),
    ("rope", r"[Rr]ope|[Rr]otary"),
    ("activation", r"silu|act_and_mul|Silu"),
    ("kv_write", r"index_put|scatter|IndexPut"),
    ("copy", r"[Cc]opy|memcpy|Memcpy|memset|Memset|cat_|CatArray"),
)


def group_of(name: str) -> str:
    return next((group for group, pattern in GROUPS if re.search(pattern, name)), "other")


def kernels_per_step(prof, steps: int) -> list[dict]:
    totals: dict[str, list[float]] = defaultdict(lambda: [0, 0.0])
    for event in prof.events():
        if event.device_type == torch.autograd.DeviceType.CUDA:
            entry = totals[event.name]
            entry[0] += 1
            entry[1] += event.device_time_total if hasattr(event, "device_time_total") else event.cuda_time_total
    rows = [
        {"kernel": name[:160], "group": group_of(name), "count": n / steps, "us": round(us / steps, 2)}
        for name, (n, us) in totals.items()
    ]
    return sorted(rows, key=lambda row: -row["us"])


def profiled(fn, steps: int) -> tuple[list[dict], float]:
    """Kernels per step, and the wall time per step (synchronized, outside the profiler)."""
    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(steps):
        fn()
    torch.cuda.synchronize()
    wall_us = (time.perf_counter() - started) / steps * 1e6
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        for _ in range(steps):
            fn()
        torch.cuda.synchronize()
    return kernels_per_step(prof, steps), wall_us


def summary(rows: list[dict], wall_us: float) -> dict:
    groups: dict[str, dict] = defaultdict(lambda: {"count": 0.0, "us": 0.0})
    for row in rows:
        groups[row["group"]]["count"] += row["count"]
        groups[row["group"]]["us"] += row["us"]
    busy = sum(row["us"] for row in rows)
    return {
        "wall_us": round(wall_us, 1),
        "gpu_busy_us": round(busy, 1),
        "kernels": round(sum(row["count"] for row in rows), 1),
        "groups": {
            g: {"count": round(v["count"], 1), "us": round(v["us"], 1), "share": round(v["us"] / busy, 3)}
            for g, v in sorted(groups.items(), key=lambda item: -item[1]["us"])
        },  # fmt: skip
        "top": rows[:15],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", default="1b")
    parser.add_argument("--steps", type=int, default=20, help="profiled steps per case")
    parser.add_argument("--tokenizer", default="/tmp/smol")
    parser.add_argument("--ckpt", default="/tmp/ckpt")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    ckpt = build_checkpoint(args.shape, Path(args.ckpt), Path(args.tokenizer), "cuda")
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16).cuda().eval()
    weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())  # tied: once, as the LM head
    if not model.config.tie_word_embeddings:  # a decode step reads one row of an untied embedding, not all of it
        embedding = model.get_input_embeddings().weight
        weight_bytes -= embedding.numel() * embedding.element_size()
    runner = PagedRunner(model, 256 * 16, BLOCK_SIZE, "flashinfer", 4096, cuda_graph_batch=256, fused=True)
    rng = random.Random(0)
    result: dict = {"device": torch.cuda.get_device_name(0), "torch": torch.__version__, "shape": args.shape,
                    "weight_bytes": weight_bytes, "floor_us": round(weight_bytes / HBM_BYTES_PER_S * 1e6, 1),
                    "date": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "cases": {}}  # fmt: skip
    graphs = runner.graphs
    assert graphs is not None, "the runner made no CUDA graphs"
    with torch.inference_mode():
        for batch in (1, 256):
            runner.step(decode([rng.randrange(100, 49000) for _ in range(batch)], 128))  # the graph's inputs
            graph = graphs.graphs[next(b for b in graphs.buckets if b >= batch)]
            rows, wall = profiled(graph.replay, args.steps)
            result["cases"][f"decode_replay_b{batch}"] = summary(rows, wall)
        plan = StepPlan(
            [ScheduledSequence("x", [rng.randrange(100, 49000) for _ in range(128)], 0, list(range(8)), True)]
        )
        rows, wall = profiled(lambda: runner.step(plan), args.steps)
        result["cases"]["eager_prefill_128"] = summary(rows, wall)
    gemm_b1 = result["cases"]["decode_replay_b1"]["groups"].get("gemm", {}).get("us", 0)
    if gemm_b1:
        result["gemm_b1_bandwidth_tb_s"] = round(weight_bytes / (gemm_b1 * 1e-6) / 1e12, 2)
    lines = [f"weights {weight_bytes / 1e9:.2f} GB: floor {result['floor_us']} us a decode step at 4.8 TB/s"]
    for case, s in result["cases"].items():
        lines.append(f"\n{case}: wall {s['wall_us']} us, GPU busy {s['gpu_busy_us']} us, {s['kernels']} kernels")
        for group, g in s["groups"].items():
            lines.append(f"  {group:<11} {g['count']:>6} kernels {g['us']:>9.1f} us {g['share'] * 100:5.1f} %")
        for row in s["top"][:8]:
            lines.append(f"    {row['us']:>8.1f} us x{row['count']:<5g} {row['kernel'][:90]}")
    if gemm_b1:
        lines.append(f"\nbatch-1 GEMMs read the weights at {result['gemm_b1_bandwidth_tb_s']} TB/s")
    text = "\n".join(lines)
    print(text, flush=True)
    (out / "kernel-profile.json").write_text(json.dumps(result, indent=2))
    (out / "kernel-profile.txt").write_text(text + "\n")


if __name__ == "__main__":
    main()
