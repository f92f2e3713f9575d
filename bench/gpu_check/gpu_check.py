"""On the GPU: (1) the llm engine on CUDA matches HF generate greedily; (2) the llm Triton model on CUDA under
concurrency (Triton gRPC direct). SmolLM2-135M's shape with random weights (the real weights cannot travel)."""

import asyncio
import json
import os
import shutil
import statistics
import threading
import time
from pathlib import Path

import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

OUT = Path(os.environ.get("OUT", "/tmp/out"))
CKPT = Path("/tmp/ckpt")
SMOL = Path(os.environ.get("SMOL_DIR", "/tmp/smol"))  # SmolLM2's config and tokenizer (bench/gpu_setup.sh)
results = {"device": torch.cuda.get_device_name(0)}

torch.manual_seed(0)
config = AutoConfig.from_pretrained(SMOL)
model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
model.save_pretrained(CKPT)
for name in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "generation_config.json"):
    shutil.copy(SMOL / name, CKPT / name)
tok = AutoTokenizer.from_pretrained(CKPT)

# (1) greedy equivalence, fp32, in process
from core import Sampling  # noqa: E402  (model_repository/llm/1 is on PYTHONPATH: run.sh)
from paged_fast_core import PagedFastEngine  # noqa: E402

engine = PagedFastEngine(str(CKPT), device="cuda", dtype="float32", max_num_seqs=8)
ref = AutoModelForCausalLM.from_pretrained(CKPT, dtype=torch.float32).cuda().eval()
prompts = ["The capital of France is", "Once upon a time", "def fibonacci(n):", "日本語のテキスト"]
matches = 0
for i, prompt in enumerate(prompts):
    done, texts = threading.Event(), []

    def sink(u, texts=texts, done=done):
        texts.append(u.text)
        if u.finish_reason:
            done.set()

    engine.submit(f"eq{i}", prompt, Sampling(max_tokens=32, temperature=0.0, min_tokens=32), sink, lambda: False)
    done.wait(120)
    ids = tok(prompt, return_tensors="pt").input_ids.cuda()
    out = ref.generate(ids, max_new_tokens=32, min_new_tokens=32, do_sample=False, eos_token_id=None, pad_token_id=0)
    expected = tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True)
    same = "".join(texts) == expected
    matches += same
    print("greedy", i, "match" if same else f"DIFF\n  engine: {''.join(texts)!r}\n  hf:     {expected!r}")
results["greedy_matches"] = f"{matches}/{len(prompts)}"
engine.shutdown()
del engine, ref
torch.cuda.empty_cache()

# (2) Triton llm model on CUDA, bf16, concurrency sweep
import numpy as np  # noqa: E402
import tritonclient.grpc as grpcclient  # noqa: E402
import tritonclient.grpc.aio as aiogrpc  # noqa: E402

from build_engines.prepare import EngineOptions, prepare  # noqa: E402
from llmserve.triton import TritonProcess, find_triton  # noqa: E402

home = Path("/tmp/llmhome")
repo = prepare([f"gpu={CKPT}"], home, home / "build", EngineOptions(device="cuda", dtype="bfloat16", max_num_seqs=256))
triton = TritonProcess(find_triton(home), repo, 8100, 8101, 8102)
log = open(OUT / "triton.log", "w")
triton.start(log_file=log)
triton.wait_ready(300)
prompt = " ".join(["word"] * 127)


def tensor(name, value, dt, np_dt):
    arr = np.array([[value]], dtype=np_dt)
    t = grpcclient.InferInput(name, list(arr.shape), dt)
    t.set_data_from_numpy(arr)
    return t


async def one(client, i, n):
    async def reqs():
        yield {
            "model_name": "gpu",
            "inputs": [
                tensor("text_input", prompt.encode(), "BYTES", np.object_),
                tensor("max_tokens", n, "INT32", np.int32),
                tensor("min_tokens", n, "INT32", np.int32),
                tensor("stream", True, "BOOL", np.bool_),
            ],
        }

    t0, first, count = time.perf_counter(), None, 0
    async for result, error in client.stream_infer(reqs()):
        if error:
            raise RuntimeError(error)
        first = first or time.perf_counter() - t0
        count = int(result.as_numpy("num_output_tokens")[0][0])
    return count, first


async def sweep(n_streams, n_tokens=128):
    client = aiogrpc.InferenceServerClient("127.0.0.1:8101")
    t0 = time.perf_counter()
    res = await asyncio.gather(*(one(client, i, n_tokens) for i in range(n_streams)))
    dt = time.perf_counter() - t0
    await client.close()
    ttft = sorted(r[1] for r in res)
    return {
        "streams": n_streams,
        "output_tokens": sum(r[0] for r in res),
        "seconds": round(dt, 2),
        "tokens_per_s": round(sum(r[0] for r in res) / dt, 1),
        "ttft_p50_s": round(statistics.median(ttft), 3),
        "ttft_max_s": round(ttft[-1], 3),
    }


try:
    asyncio.run(sweep(4, 16))  # warm-up
    results["triton_sweep"] = []
    for n in (1, 16, 64, 256):
        r = asyncio.run(sweep(n))
        print(r)
        results["triton_sweep"].append(r)
finally:
    triton.stop()
print(json.dumps(results, indent=2))
(OUT / "gpu_check.json").write_text(json.dumps(results, indent=2))
