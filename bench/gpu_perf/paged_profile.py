"""Where one request's time goes in the paged fast core (GPU): TTFT and the loop counters of a lone request with a
128- and a 1,152-token prompt (cold and warm prefix), the bare step times (eager prefill chunk, CUDA-graph decode
at batch 1 and 256), and a torch.profiler table of a lone 1,152-token request.

  PYTHONPATH=.:model_repository/llm/1:bench/gpu_perf python bench/gpu_perf/paged_profile.py
"""

from __future__ import annotations

import cProfile
import io
import json
import os
import pstats
import random
import threading
import time
from pathlib import Path

import torch
from inprocess import build_checkpoint

from core import Sampling
from paged_fast_core import PagedFastEngine as FastEngine
from scheduler import ScheduledSequence, StepPlan


def lone(engine: FastEngine, prompt: list[int]) -> dict:
    first, done = [], threading.Event()
    before = dict(engine.stats)

    def sink(update):
        if not first and update.token_ids:
            first.append(time.perf_counter())
        if update.finish_reason:
            done.set()

    started = time.perf_counter()
    engine.submit(f"p-{time.monotonic_ns()}", tuple(prompt), Sampling(max_tokens=4, min_tokens=4, temperature=0.0),
                  sink, lambda: False)  # fmt: skip
    assert done.wait(300)
    row = {k: round((engine.stats[k] - before[k]) * (1e3 if k.endswith("_s") else 1), 3) for k in before}
    return {"tokens": len(prompt), "ttft_ms": round((first[0] - started) * 1e3, 2), "loop_ms": row}


def timed(fn, repeats: int = 20) -> float:
    fn()
    torch.cuda.synchronize()
    started = time.perf_counter()
    for _ in range(repeats):
        fn()
    torch.cuda.synchronize()
    return round((time.perf_counter() - started) / repeats * 1e3, 3)


def main() -> None:
    out = Path(os.environ.get("OUT", "/tmp/out"))
    ckpt = build_checkpoint("1b", Path("/tmp/ckpt"), Path("/tmp/smol"), "cuda")
    engine = FastEngine(str(ckpt), device="cuda", dtype="bfloat16", max_num_seqs=256)
    rng = random.Random(1)
    result: dict = {}
    prefix = [rng.randrange(100, 49000) for _ in range(1024)]
    lone(engine, [rng.randrange(100, 49000) for _ in range(1152)])  # warm-up (FlashInfer's JIT)
    result["lone"] = [
        lone(engine, [rng.randrange(100, 49000) for _ in range(128)]),
        lone(engine, prefix + [rng.randrange(100, 49000) for _ in range(128)]),  # cold
        lone(engine, prefix + [rng.randrange(100, 49000) for _ in range(128)]),  # warm
    ]
    print(json.dumps(result["lone"], indent=1), flush=True)
    runner = engine.runner
    blocks = list(range(100))  # the engine is idle: borrow blocks for bare steps

    def chunk(n: int) -> StepPlan:
        return StepPlan([ScheduledSequence("x", [5] * n, 0, blocks[: -(-n // 16)], True)])

    def decodes(batch: int) -> StepPlan:
        return StepPlan([ScheduledSequence(i, [5], 127, list(range(8 * i, 8 * i + 8)), True) for i in range(batch)])

    result["step_ms"] = {
        "eager_prefill_128": timed(lambda: runner.step(chunk(128))),
        "eager_prefill_1152": timed(lambda: runner.step(chunk(1152))),
        "graph_decode_b1": timed(lambda: runner.step(decodes(1))),
        "graph_decode_b256": timed(lambda: runner.step(decodes(256))),
    }
    graphs = runner.graphs
    if graphs is not None:
        for batch in (1, 256):
            result["step_ms"][f"graph_replay_only_b{batch}"] = timed(graphs.graphs[batch].replay)
    print(json.dumps(result["step_ms"]), flush=True)
    with torch.profiler.profile(
        activities=[torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
    ) as prof:
        lone(engine, [rng.randrange(100, 49000) for _ in range(1152)])
    table = prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=25)
    cuda_table = prof.key_averages().table(sort_by="self_cuda_time_total", row_limit=15)
    # The host's Python of an eager prefill step (which Python functions its ~8 ms go to), 10 steps of 128 tokens.
    profiler, stream = cProfile.Profile(), io.StringIO()
    profiler.enable()
    for _ in range(10):
        runner.step(chunk(128))
    torch.cuda.synchronize()
    profiler.disable()
    pstats.Stats(profiler, stream=stream).sort_stats("cumulative").print_stats(30)
    python_table = stream.getvalue()
    print(table, cuda_table, python_table, sep="\n", flush=True)
    (out / "paged-profile.txt").write_text(table + "\n" + cuda_table + "\n" + python_table)
    (out / "paged-profile.json").write_text(json.dumps(result, indent=1))
    engine.shutdown()


if __name__ == "__main__":
    main()
