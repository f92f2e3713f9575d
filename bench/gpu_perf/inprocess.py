"""In-process half of the GPU benchmark (docs/PERFORMANCE.md): one script, one run, side-by-side numbers.

1. a Llama-shaped checkpoint with random weights (the real weights cannot travel to the GPU machine) and the
   real SmolLM2 tokenizer; 2. greedy equivalence of our core with HF `generate` (fp32, SmolLM2's shape);
3. HF static-batch `generate`; 4. our core (paged_fast_core.PagedFastEngine) driven in-process with the same closed-loop load
   as `llmserve bench`;
5. where our core's time goes (its loop counters, graph replay times, detokenization cost).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import threading
import time
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, LlamaConfig

# The repository root and model_repository/llm/1 come from PYTHONPATH (bench/gpu_perf/run.sh sets it).
from llmserve.bench.loadgen import RequestResult, make_prompt
from llmserve.bench.report import summarize

from core import Sampling
from paged_fast_core import PagedFastEngine
from text_stream import TextStream, fast_decoder

SHAPES = {  # 1b: the shape of docs/PERFORMANCE.md's measurements (1.07B parameters with tied embeddings)
    "1b": dict(
        hidden_size=2048,
        intermediate_size=8192,
        num_hidden_layers=16,
        num_attention_heads=32,
        num_key_value_heads=8,
        head_dim=64,
    ),
    "smol": dict(
        hidden_size=576,
        intermediate_size=1536,
        num_hidden_layers=30,
        num_attention_heads=9,
        num_key_value_heads=3,
        head_dim=64,
    ),
    "tiny": dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
    ),
}
results: dict = {}


def save(out: Path) -> None:
    (out / "inprocess.json").write_text(json.dumps(results, indent=2))


def build_checkpoint(shape: str, path: Path, tokenizer_dir: Path, device: str) -> Path:
    config = LlamaConfig(
        vocab_size=49152,
        max_position_embeddings=8192,
        tie_word_embeddings=True,
        rms_norm_eps=1e-5,
        rope_theta=100000.0,
        bos_token_id=1,
        eos_token_id=2,
        **SHAPES[shape],
    )
    torch.manual_seed(0)
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.save_pretrained(path)
    for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        shutil.copy(tokenizer_dir / name, path / name)
    del model
    return path


def greedy_check(checkpoint: Path, device: str) -> str:
    engine = PagedFastEngine(str(checkpoint), device=device, dtype="float32", max_num_seqs=4, max_model_len=256)
    ref = AutoModelForCausalLM.from_pretrained(checkpoint, dtype=torch.float32).to(device).eval()
    tok = engine.tokenizer
    prompts = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "日本語のテキスト", "1, 2, 3,"]
    outputs = drive_once(engine, prompts, Sampling(max_tokens=32, min_tokens=32, temperature=0.0))
    matches = 0
    for prompt, text in zip(prompts, outputs, strict=True):
        ids = tok(prompt, return_tensors="pt").input_ids.to(device)
        out = ref.generate(
            ids, max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0
        )
        matches += text == tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    engine.shutdown()
    return f"{matches}/{len(prompts)}"


def drive_once(engine, prompts, sampling) -> list[str]:
    texts, done = [[] for _ in prompts], [threading.Event() for _ in prompts]
    for i, prompt in enumerate(prompts):

        def sink(u, i=i):
            texts[i].append(u.text)
            if u.finish_reason:
                done[i].set()

        engine.submit(f"once-{i}-{time.monotonic_ns()}", prompt, sampling, sink, lambda: False)
    for event in done:
        event.wait(300)
    return ["".join(t) for t in texts]


def hf_static(model, n: int, prompt_len: int, new: int, device: str) -> dict:
    ids = torch.randint(100, 49000, (n, prompt_len), device=device)
    kwargs = dict(
        attention_mask=torch.ones_like(ids), max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0
    )
    model.generate(ids, **kwargs)  # warm-up at the measured shape (the first call at a shape is much slower)
    sync(device)
    started = time.perf_counter()
    out = model.generate(ids, **kwargs)
    sync(device)
    seconds = time.perf_counter() - started
    tokens = (out.shape[1] - prompt_len) * n
    return {"batch": n, "seconds": round(seconds, 3), "output_tokens_per_s": round(tokens / seconds, 1)}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


# The sampling features' cost (sampling_costs.py): each variant is the greedy baseline plus what it names.
SAMPLING_VARIANTS = {
    "greedy": {},
    "sampled": {"temperature": 1.0, "top_p": 0.9},
    "seeded": {"temperature": 1.0, "top_p": 0.9, "seed": 1234},
    "penalties": {"presence_penalty": 0.5, "frequency_penalty": 0.5, "repetition_penalty": 1.1},
    "logit_bias": {"logit_bias": ((13, -5.0), (42, 5.0))},
    "logprobs": {"logprobs": True},
    "top_logprobs_5": {"logprobs": True, "top_logprobs": 5},
    "all": {"temperature": 1.0, "top_p": 0.9, "seed": 1234, "presence_penalty": 0.5, "frequency_penalty": 0.5,
            "repetition_penalty": 1.1, "logit_bias": ((13, -5.0),), "logprobs": True, "top_logprobs": 5},
    # guided decoding (grammar.py, xgrammar): a JSON array of strings, which no length of output completes early
    "guided_json": {"guide": ("json_schema", '{"type": "array", "items": {"type": "string"}}')},
}  # fmt: skip


def drive(
    engine,
    concurrency: int,
    total: int,
    input_tokens: int,
    output_tokens: int,
    timeout: float = 600,
    sampling_extra: dict | None = None,
) -> dict:
    """Closed loop like `llmserve bench`: `concurrency` requests in flight, each replaced when it ends."""
    finished: list[RequestResult] = []
    all_done = threading.Event()
    pending = iter(range(concurrency, total))

    def launch(index: int) -> None:
        record = RequestResult(start=time.perf_counter(), end=0.0)

        def sink(update, record=record):
            if record.first_token is None and update.text:
                record.first_token = time.perf_counter()
            if update.finish_reason:
                record.end, record.output_tokens, record.error = (
                    time.perf_counter(),
                    update.num_output_tokens,
                    update.error,
                )
                finished.append(record)
                following = next(pending, None)
                if following is not None:
                    launch(following)
                elif len(finished) == total:
                    all_done.set()

        options = {"temperature": 0.0, **(sampling_extra or {})}
        sampling = Sampling(max_tokens=output_tokens, min_tokens=output_tokens, **options)
        engine.submit(
            f"c{concurrency}-{index}-{time.monotonic_ns()}",
            make_prompt(input_tokens, index),
            sampling,
            sink,
            lambda: False,
        )

    for index in range(min(concurrency, total)):
        launch(index)
    if not all_done.wait(timeout):
        raise TimeoutError(f"{len(finished)}/{total} requests finished in {timeout} s")
    return summarize(finished, concurrency)


def sweep(engine, label: str, levels: list[int], input_tokens: int, output_tokens: int) -> list[dict]:
    drive(engine, 64, 64, input_tokens, 8)  # warm-up: first prefills at a shape pay for allocations and heuristics
    rows = []
    for concurrency in levels:
        stats_before = dict(getattr(engine, "stats", {}))
        row = drive(engine, concurrency, max(2 * concurrency, 4), input_tokens, output_tokens)
        if stats_before:
            row["loop"] = {k: round(engine.stats[k] - stats_before[k], 4) for k in stats_before}
        print(label, json.dumps(row), flush=True)
        rows.append(row)
    return rows


def profile_fast(engine: PagedFastEngine, tokenizer, device: str) -> dict:
    """The host's detokenization cost per token (the paged core's step profile: paged_profile.py)."""
    profile = {}
    streams = [TextStream(fast_decoder(tokenizer)) for _ in range(256)]
    ids = torch.randint(100, 49000, (256, 64)).tolist()
    started = time.perf_counter()
    for step in range(64):
        for stream, row in zip(streams, ids, strict=True):
            stream.push((row[step],))
    profile["detokenize_us_per_token"] = round((time.perf_counter() - started) / (256 * 64) * 1e6, 2)
    return profile


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--shape", default="1b", choices=SHAPES)
    parser.add_argument("--levels", default="1,64,256")
    parser.add_argument("--static", default="64,256", help="HF static generate batch sizes")
    parser.add_argument("--tokens", type=int, default=128, help="prompt and output tokens")
    parser.add_argument("--tokenizer", default="/tmp/smol", help="SmolLM2's config and tokenizer (bench/gpu_setup.sh)")
    parser.add_argument("--ckpt", default="/tmp/ckpt")
    parser.add_argument("--out", default=os.environ.get("OUT", "/tmp/out"))
    parser.add_argument(
        "--checkpoint-only",
        action="store_true",
        help="only build the --shape checkpoint at --ckpt (what the served stages load), then exit",
    )
    args = parser.parse_args()
    if args.checkpoint_only:
        build_checkpoint(args.shape, Path(args.ckpt), Path(args.tokenizer), args.device)
        return
    out, device, n = Path(args.out), args.device, args.tokens
    out.mkdir(parents=True, exist_ok=True)
    levels = [int(x) for x in args.levels.split(",")]
    results.update(
        device=torch.cuda.get_device_name(0) if device.startswith("cuda") else "cpu",
        torch=torch.__version__,
        shape=args.shape,
        tokens=n,
        date=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        command=" ".join(sys.argv),
    )
    tokenizer_dir = Path(args.tokenizer)
    check_shape = "tiny" if args.shape == "tiny" else "smol"
    results["greedy_fp32_" + check_shape] = greedy_check(
        build_checkpoint(check_shape, Path(args.ckpt + "-check"), tokenizer_dir, device), device
    )
    print("greedy", results["greedy_fp32_" + check_shape], flush=True)
    save(out)

    ckpt = build_checkpoint(args.shape, Path(args.ckpt), tokenizer_dir, device)
    model = AutoModelForCausalLM.from_pretrained(ckpt, dtype=torch.bfloat16).to(device).eval()
    results["hf_static"] = [hf_static(model, int(b), n, n, device) for b in args.static.split(",") if b]
    print("hf static", results["hf_static"], flush=True)
    del model
    torch.cuda.empty_cache() if device.startswith("cuda") else None
    save(out)

    started = time.perf_counter()
    fast = PagedFastEngine(str(ckpt), device=device, dtype="bfloat16", max_num_seqs=max(levels))
    results["fast_startup_s"] = round(time.perf_counter() - started, 1)
    results["fast"] = sweep(fast, "fast", levels, n, n)
    results["fast_profile"] = profile_fast(fast, fast.tokenizer, device)
    print("profile", results["fast_profile"], flush=True)
    fast.shutdown()
    del fast
    torch.cuda.empty_cache() if device.startswith("cuda") else None
    save(out)
    print(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
