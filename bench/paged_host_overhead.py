"""The paged fast core's HOST path on CPU, the device work nulled (issue 16: on the H200 the loop is host-bound).

The real PagedFastEngine (paged_fast_core.py) runs its real loop: scheduler.plan, PagedRunner.flatten, the copies
of a step's inputs, scheduler.update, delivery (_deliver/_on_token, TextStream.push, Update, the request's sink).
Only the device work is replaced, by FAKES that return at once:
- FakeDeviceStep stands in for PagedRunner.step: it calls the real `flatten(plan)` (the host part of an eager
  step) and returns a [S, 1] placeholder instead of running the model;
- FakeSampler stands in for sampler.SlotSampler: `sample` returns token i of a fixed English text at position i
  (deterministic, plain text as a real model would write it), setup/advance do nothing.
The checkpoint is a tiny random Llama with SmolLM2's tokenizer (the detokenizer is real).
--device-ms D models the device's time: each step is "done" D ms after the device is free and the step was queued
(steps in order, as a CUDA stream runs them), and waiting for a step's tokens (paged_overlap.StepInFlight.wait)
sleeps until then: the wall tok/s then shows what overlapped scheduling hides (--async-scheduling on/off/both;
both: the two modes interleaved, a fresh engine each, the order swapped every round).

Per level (sequences decoding at once): --waves waves of `level` requests submitted together (128-token prompts,
128 output tokens, min_tokens = max_tokens so nothing ends early), repeated --repeats times on one engine
(the first wave of each engine is a warm-up and not counted). Reported: the engine's `stats` per generated token
(= per sequence per step in decode), in µs: plan (scheduler.plan), launch (flatten, copies), gpu_wait (here the
token copy back), deliver (detokenize, Update, sink), and `update` (scheduler.update, which the engine counts in no
phase: timed here by a wrapper; overlapped, scheduler.commit: its advance is in launch); `host`, their sum; `loop`,
all the loop thread's CPU time per token (admission, request intake included). With --clock cpu (the default) the
engine's phase clock is the loop thread's CPU time (time.thread_time): this machine is shared, and wall time there
counts the other processes' turns too.
--profile adds one cProfile'd wave per level (the loop thread; top functions by own time).

  PYTHONPATH=$PWD .venv/bin/python bench/paged_host_overhead.py --levels 256 1024 --out X.json
  ... --engine-dir /tmp/before/model_repository/llm/1   (another checkout's engine modules: A/B runs)
  ... --summarize DIR   (medians per --label and level of the JSON files there, into DIR/summary.json)
  ... --levels 256 --device-ms 2 --async-scheduling both --rounds 2   (the overlap A/B)
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import io
import json
import os
import pstats
import shutil
import statistics
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
FREEZE_GC = False  # --gc-freeze
REAL_WAIT = None  # paged_overlap.StepInFlight.wait, put back for each engine (--device-ms patches it)
PHASES = ("plan_s", "launch_s", "gpu_wait_s", "deliver_s", "update_s")
TEXT = (
    "The quick brown fox jumps over the lazy dog. In the beginning there was a small village by the river, "
    "where people grew wheat and barley, kept goats, and told stories of the mountains to the north. Every "
    "spring the snow melted and the water rose, and the children ran down to watch the ice break apart. "
)


def build_tiny_checkpoint(path: Path, tokenizer_dir: Path) -> Path:
    """A 2-layer Llama with random weights and SmolLM2's vocabulary and tokenizer (the model never runs)."""
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig

    if (path / "config.json").exists():
        return path
    config = LlamaConfig(vocab_size=49152, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=8192,
                         tie_word_embeddings=True, bos_token_id=1, eos_token_id=2)  # fmt: skip
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config, dtype=torch.float32).save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(tokenizer_dir / name, path / name)
    return path


class FakeSampler:
    """FAKE sampler.SlotSampler: token i of TEXT's ids at position i (no logits read, no device work)."""

    def __init__(self, text_ids, torch):
        self.text = torch.tensor(text_ids)

    def setup(self, rows, configs, prompts) -> None:
        pass

    def sample(self, logits, rows, positions, flags):
        return self.text[positions % len(self.text)], None

    def advance_rows(self, rows, tokens, flags) -> None:
        pass


class FakeDeviceStep:
    """FAKE PagedRunner.step: the real flatten (host), then a placeholder instead of the model's logits; with
    `device_s`, the step's modelled completion time joins `done_at` (in launch order, as a stream runs)."""

    def __init__(self, runner, torch, device_s: float = 0.0):
        self.runner, self.torch, self.device_s = runner, torch, device_s
        self.done_at: list[float] = []
        self.busy_until = 0.0

    def __call__(self, plan, keep_hidden: bool = False, previous=None):
        step = self.runner.flatten(plan)
        self.runner.qo_indptr = step.qo_indptr
        if self.device_s:
            self.busy_until = max(self.busy_until, time.perf_counter()) + self.device_s
            self.done_at.append(self.busy_until)
        return self.torch.empty(len(step.sample_rows), 1)


def fake_waits(overlap_module, device: FakeDeviceStep) -> None:
    """StepInFlight.wait sleeps until its step's modelled completion (one wait per step, in launch order)."""
    real_wait = overlap_module.StepInFlight.wait

    def wait(self):
        if device.done_at:
            time.sleep(max(device.done_at.pop(0) - time.perf_counter(), 0.0))
        return real_wait(self)

    overlap_module.StepInFlight.wait = wait


class ThreadCpuClock:
    """The `time` module for paged_fast_core with perf_counter reading the calling thread's CPU time."""

    perf_counter = staticmethod(time.thread_time)

    def __getattr__(self, name):
        return getattr(time, name)


def make_engine(module, checkpoint: Path, level: int, text_ids, torch, async_scheduling=True, device_ms=0.0):
    engine = module.PagedFastEngine(
        str(checkpoint),
        max_num_seqs=level,
        kv_cache_blocks=level + 8,
        max_model_len=512,
        cuda_graphs=False,
        async_scheduling=async_scheduling,
    )  # 256 tokens a sequence: one 256-token kv_cache block each
    engine.runner.step = FakeDeviceStep(engine.runner, torch, device_ms / 1000)
    import paged_overlap

    paged_overlap.StepInFlight.wait = REAL_WAIT
    if device_ms:
        fake_waits(paged_overlap, engine.runner.step)
    engine.stats["update_s"] = 0.0
    update, clock = engine.scheduler.update, module.time.perf_counter

    def timed_update(plan, tokens) -> None:
        started = clock()
        update(plan, tokens)
        engine.stats["update_s"] += clock() - started

    engine.scheduler.update = timed_update
    commit = engine.scheduler.commit  # the overlapped loop's update (its advance is in launch)

    def timed_commit(plan, tokens) -> None:
        started = clock()
        commit(plan, tokens)
        engine.stats["update_s"] += clock() - started

    engine.scheduler.commit = timed_commit
    if FREEZE_GC:  # the model, torch and transformers: ~400k objects every full collection would scan
        gc.freeze()
    return engine


def loop_cpu_s(engine) -> float:
    return time.clock_gettime(time.pthread_getcpuclockid(engine._thread.ident))


def run_wave(engine, level: int, wave: int, prompt_tokens: int, output_tokens: int, vocab: int, Sampling) -> float:
    """`level` requests at once; wall seconds until the last one ends."""
    remaining, all_done, lock = [level], threading.Event(), threading.Lock()
    received = [0]

    def sink(update) -> None:  # what a server's sink does at least: look at the update, note the end
        received[0] += len(update.text)
        if update.finish_reason:
            with lock:
                remaining[0] -= 1
                if not remaining[0]:
                    all_done.set()

    sampling = Sampling(max_tokens=output_tokens, min_tokens=output_tokens, temperature=0.0)
    started = time.perf_counter()
    for i in range(level):  # distinct prompts: no prefix-cache hits between them
        prompt = [(wave * 7919 + i * 104729 + j * 31) % (vocab - 200) + 100 for j in range(prompt_tokens)]
        engine.submit(f"w{wave}-{i}", prompt, sampling, sink, lambda: False)
    if not all_done.wait(600):
        raise RuntimeError("a wave did not finish in 600 s")
    return time.perf_counter() - started


def measure(module, checkpoint, level, args, text_ids, torch, Sampling, async_scheduling=True) -> dict:
    engine = make_engine(module, checkpoint, level, text_ids, torch, async_scheduling, args.device_ms)
    try:
        run_wave(engine, level, 0, args.prompt_tokens, args.output_tokens, engine.vocab_size, Sampling)  # warm-up
        runs = []
        for wave in range(1, args.waves + 1):
            before, cpu = dict(engine.stats), loop_cpu_s(engine)
            wall = run_wave(engine, level, wave, args.prompt_tokens, args.output_tokens, engine.vocab_size, Sampling)
            cpu = loop_cpu_s(engine) - cpu
            tokens = level * args.output_tokens
            delta = {k: engine.stats[k] - before[k] for k in ("steps", *PHASES)}
            us = {k.removesuffix("_s"): round(delta[k] / tokens * 1e6, 3) for k in PHASES}
            us["host"] = round(sum(us[k.removesuffix("_s")] for k in PHASES), 3)
            us["loop"] = round(cpu / tokens * 1e6, 3)
            runs.append({"wall_s": round(wall, 3), "steps": delta["steps"], "tok_s": round(tokens / wall, 1),
                         "overlapped_steps": engine.stats["overlapped_steps"] - before["overlapped_steps"],
                         "us_per_seq_step": us})  # fmt: skip
        return {"runs": runs, "median_us_per_seq_step": median_of(runs)}
    finally:
        engine.shutdown()


def median_of(runs: list[dict]) -> dict:
    keys = runs[0]["us_per_seq_step"]
    return {k: round(statistics.median(r["us_per_seq_step"][k] for r in runs), 3) for k in keys}


def profile(module, checkpoint, level, args, text_ids, torch, Sampling, top: int) -> str:
    """One wave with cProfile in the loop thread (after a warm-up wave): the top functions by own time."""
    profiler, original = cProfile.Profile(), module.PagedFastEngine._loop
    armed = threading.Event()

    def profiled_loop(self) -> None:
        armed.wait()
        profiler.enable()
        try:
            original(self)
        finally:
            profiler.disable()

    module.PagedFastEngine._loop = profiled_loop
    try:
        engine = make_engine(module, checkpoint, level, text_ids, torch)
        armed.set()
        try:
            run_wave(engine, level, 99, args.prompt_tokens, args.output_tokens, engine.vocab_size, Sampling)
        finally:
            engine.shutdown()
    finally:
        module.PagedFastEngine._loop = original
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    return out.getvalue()


def summarize(directory: Path) -> dict:
    """The medians per label and level over every run's JSON in `directory` (interleaved A/B rounds)."""
    runs: dict = {}
    for path in sorted(directory.glob("*.json")):
        result = json.loads(path.read_text())
        if "levels" not in result:
            continue
        for level, data in result["levels"].items():
            runs.setdefault(result["label"], {}).setdefault(level, []).extend(data["runs"])
    table = {label: {level: median_of(r) | {"runs": len(r)} for level, r in levels.items()} for label, levels in
             runs.items()}  # fmt: skip
    for label, levels in table.items():
        for level, med in levels.items():
            print(f"{label:>10} {level:>5}: " + "  ".join(f"{k} {v}" for k, v in med.items()))
    return table


def ab_rounds(module, checkpoint, args, text_ids, torch, Sampling) -> dict:
    """Both loops per level, --rounds times, the order swapped each round: the medians of each mode's waves."""
    table: dict = {}
    for level in args.levels:
        runs: dict = {"async": [], "sync": []}
        for round_ in range(args.rounds):
            for mode in ("async", "sync") if round_ % 2 == 0 else ("sync", "async"):
                result = measure(module, checkpoint, level, args, text_ids, torch, Sampling, mode == "async")
                runs[mode].extend(result["runs"])
        table[str(level)] = {mode: {"tok_s_median": statistics.median(r["tok_s"] for r in rs),
                                    "median_us_per_seq_step": median_of(rs), "runs": rs}
                             for mode, rs in runs.items()}  # fmt: skip
        for mode, row in table[str(level)].items():
            med = row["median_us_per_seq_step"]
            print(f"level {level:5d} {mode:>5}: {row['tok_s_median']:>10,.0f} tok/s wall (device {args.device_ms} ms a"
                  " step)  µs per sequence per step  " + "  ".join(f"{k} {v:.2f}" for k, v in med.items()),
                  flush=True)  # fmt: skip
    return table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--levels", type=int, nargs="+", default=[256, 1024], help="sequences decoding at once")
    parser.add_argument("--waves", type=int, default=3, help="measured waves per level (after one warm-up)")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--output-tokens", type=int, default=128)
    parser.add_argument("--profile", action="store_true", help="also one cProfile'd wave per level")
    parser.add_argument("--top", type=int, default=30, help="functions listed per profile")
    parser.add_argument("--engine-dir", type=Path, default=HERE.parent / "model_repository" / "llm" / "1",
                        help="the engine modules to measure (another checkout's for an A/B run)")  # fmt: skip
    parser.add_argument("--tokenizer-dir", type=Path, default=None, help="SmolLM2's (default: the converted one)")
    parser.add_argument("--work-dir", type=Path, default=Path("/tmp/paged-host-overhead"))
    parser.add_argument("--gc-freeze", action="store_true",
                        help="gc.freeze() once each engine is built (an experiment: the engine does not do it)")  # fmt: skip
    parser.add_argument("--clock", choices=("cpu", "wall"), default="cpu", help="the engine's phase clock")
    parser.add_argument("--async-scheduling", choices=("on", "off", "both"), default="on",
                        help="the engine's overlapped loop; both: the two interleaved")  # fmt: skip
    parser.add_argument("--device-ms", type=float, default=0.0, help="modelled device time per step (see above)")
    parser.add_argument("--rounds", type=int, default=1, help="with --async-scheduling both: A/B rounds")
    parser.add_argument("--label", default="", help="a name for this run in the JSON")
    parser.add_argument("--out", type=Path, default=None, help="write the results here (JSON)")
    parser.add_argument("--summarize", type=Path, default=None, help="only print the medians of a folder's JSON")
    args = parser.parse_args()
    if args.summarize:
        (args.summarize / "summary.json").write_text(json.dumps(summarize(args.summarize), indent=1))
        return

    global FREEZE_GC
    FREEZE_GC = args.gc_freeze
    sys.path.insert(0, str(args.engine_dir.resolve()))
    import torch

    torch.set_num_threads(1)  # nothing here is worth a thread pool; keeps the numbers of a noisy machine steadier
    import paged_fast_core as module

    if args.clock == "cpu":
        module.time = ThreadCpuClock()
    from transformers import AutoTokenizer

    from core import Sampling

    tokenizer_dir = args.tokenizer_dir
    if tokenizer_dir is None:
        from build_engines.checkpoints import ensure_smollm2
        from frontend_api.settings import default_home

        tokenizer_dir = ensure_smollm2(Path(os.environ.get("LLMSERVE_HOME") or default_home()) / "models" /
                                       "SmolLM2-135M-Instruct")  # fmt: skip
    checkpoint = build_tiny_checkpoint(args.work_dir / "tiny-llama", tokenizer_dir)
    text_ids = AutoTokenizer.from_pretrained(checkpoint)(TEXT, add_special_tokens=False)["input_ids"]
    module.SlotSampler = lambda *a, **k: FakeSampler(text_ids, torch)  # the engine builds its sampler with this

    results: dict = {"label": args.label, "engine_dir": str(args.engine_dir), "args": {k: str(v) for k, v in
                     vars(args).items()}, "levels": {}}  # fmt: skip
    import paged_overlap

    global REAL_WAIT
    REAL_WAIT = paged_overlap.StepInFlight.wait
    if args.async_scheduling == "both":
        results["ab"] = ab_rounds(module, checkpoint, args, text_ids, torch, Sampling)
    for level in args.levels if args.async_scheduling != "both" else ():
        result = measure(module, checkpoint, level, args, text_ids, torch, Sampling, args.async_scheduling == "on")
        if args.profile:
            result["profile"] = profile(module, checkpoint, level, args, text_ids, torch, Sampling, args.top)
        results["levels"][str(level)] = result
        med = result["median_us_per_seq_step"]
        walls = [r["tok_s"] for r in result["runs"]]
        print(f"level {level:5d}: µs per sequence per step  " + "  ".join(f"{k} {v:7.2f}" for k, v in med.items())
              + f"   ({statistics.median(walls):,.0f} tok/s wall, host only)", flush=True)  # fmt: skip
        if args.profile:
            print(result["profile"])
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
