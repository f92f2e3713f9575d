"""The CPU cost of each sampling feature of the OpenVINO engine core, against all of them off, in process.

Each run: --concurrency requests (different short chat prompts) submitted at once, each generating exactly
--tokens tokens (min_tokens = max_tokens, or min_tokens = max_tokens - 1 with stop ids that the mask keeps out),
sampled at temperature 1 with a seed. Configurations are interleaved: every round runs each once, in a shuffled
order, so load from elsewhere on the machine falls on all of them alike. Reported per configuration, as medians over
rounds: the process's CPU time (every thread, OpenVINO's pool included) and the wall time per generated token, and
the change of CPU time per token against `off` of the same round (paired).

    PYTHONPATH=.:model_repository/llm/1 python bench/openvino_sampling_cost.py --rounds 3
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "model_repository" / "llm" / "1")]

QUESTIONS = [
    "Write a short poem about the sea.",
    "Tell me about the moon.",
    "Explain photosynthesis.",
    "What is the capital of France?",
    "List ten fruits.",
    "Describe a cat.",
    "How do airplanes fly?",
    "Give me a recipe for pancakes.",
]


def configurations(tokens: int) -> dict[str, dict]:
    exact = {"max_tokens": tokens, "min_tokens": tokens}
    return {
        "off": exact,
        "logprobs": {**exact, "logprobs": True},
        "repetition_penalty": {**exact, "repetition_penalty": 1.1},
        "presence+frequency": {**exact, "presence_penalty": 0.5, "frequency_penalty": 0.5},
        "min_tokens+stop_ids": {"max_tokens": tokens, "min_tokens": tokens - 1, "stop_token_ids": tuple(range(3, 11))},
        "prompt_logprobs": {**exact, "prompt_logprobs": True},
        "n=4 (concurrency/4 requests)": {**exact, "n": 4},
        "all": {
            **exact,
            "logprobs": True,
            "prompt_logprobs": True,
            "repetition_penalty": 1.1,
            "presence_penalty": 0.5,
            "frequency_penalty": 0.5,
        },
    }


def run(engine, prompts, sampling: dict, seed: int) -> tuple[float, float, int]:
    """(CPU seconds, wall seconds, tokens generated) of one batch of concurrent requests."""
    from core import Sampling

    n = sampling.get("n", 1)
    prompts = prompts[: max(1, len(prompts) // n)]
    finals, lock, done = [], threading.Lock(), threading.Event()
    expected = len(prompts) * n

    def sink(update):
        if update.finish_reason:
            with lock:
                finals.append(update)
                if len(finals) == expected:
                    done.set()

    cpu, wall = time.process_time(), time.perf_counter()
    for i, prompt in enumerate(prompts):
        engine.submit(f"bench-{seed}-{i}", prompt, Sampling(temperature=1.0, seed=seed + i, **sampling), sink, bool)
    if not done.wait(600):
        raise RuntimeError("a batch did not finish in 600 s")
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert all(u.finish_reason in ("stop", "length") for u in finals), finals
    return cpu, wall, sum(u.num_output_tokens for u in finals)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=64)
    args = parser.parse_args()

    from build_engines.checkpoints import ensure_smollm2
    from build_engines.openvino import ensure_openvino_ir
    from frontend_api.settings import default_home

    from openvino_core import OpenVINOEngine

    home = Path(default_home())
    ir = ensure_openvino_ir(ensure_smollm2(home / "models" / "SmolLM2-135M-Instruct"), home)
    engine = OpenVINOEngine(str(ir), max_num_seqs=args.concurrency, max_model_len=512)
    chat = "<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
    prompts = [chat.format(QUESTIONS[i % len(QUESTIONS)]) for i in range(args.concurrency)]
    configs = configurations(args.tokens)
    run(engine, prompts, configs["off"], 0)  # warm-up
    results: dict[str, list[tuple[float, float, int]]] = {name: [] for name in configs}
    order = random.Random(0)
    for r in range(args.rounds):
        names = list(configs)
        order.shuffle(names)
        for name in names:
            results[name].append(run(engine, prompts, configs[name], 1000 * r))
        print(f"round {r + 1}/{args.rounds} done", file=sys.stderr)
    engine.shutdown()

    print(f"{args.concurrency} concurrent requests x {args.tokens} tokens, {args.rounds} rounds (medians)")
    print(f"{'feature':<30} {'CPU ms/token':>12} {'wall ms/token':>13} {'CPU vs off':>10}")
    off = results["off"]
    for name, runs in results.items():
        cpu = statistics.median(c / t * 1e3 for c, _, t in runs)
        wall = statistics.median(w / t * 1e3 for _, w, t in runs)
        paired = statistics.median((c / t) / (oc / ot) - 1 for (c, _, t), (oc, _, ot) in zip(runs, off, strict=True))
        print(f"{name:<30} {cpu:>12.2f} {wall:>13.2f} {paired:>+10.1%}")


if __name__ == "__main__":
    main()
