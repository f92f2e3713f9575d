"""The fast core (paged_fast_core.py) on CUDA (the paged KV cache, the device sampler; FlashInfer and CUDA graphs in
bf16) against itself on CPU, with a tiny random Llama that uses SmolLM2's tokenizer (so it needs no download).
Skipped without a GPU; guided decoding on a GPU: LLMSERVE_TEST_DEVICE=cuda test_guided_decoding_fast.py."""

from __future__ import annotations

import shutil
import threading

import pytest
import torch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

PROMPTS = ["Hello there", "Once upon a time", "def f(x):", "The capital of"]
EVERYTHING = {
    "repetition_penalty": 1.3,
    "presence_penalty": 0.5,
    "frequency_penalty": 0.5,
    "logit_bias": ((11, 5.0), (13, -100.0)),
    "bad_words": ("the", "capital of"),
    "logprobs": True,
    "top_logprobs": 5,
    "prompt_logprobs": True,
}


@pytest.fixture(scope="module")
def tiny_checkpoint(checkpoint_dir, tmp_path_factory):
    from transformers import LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        shutil.copy(checkpoint_dir / name, path)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=49152, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=1024, eos_token_id=2, bos_token_id=1, tie_word_embeddings=True,
    )  # fmt: skip
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight.mul_(40)  # peakier logits than the initialisation's: fewer near-ties
    model.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def engines(tiny_checkpoint):
    from paged_fast_core import PagedFastEngine

    gpu = PagedFastEngine(str(tiny_checkpoint), device="cuda", max_num_seqs=8, max_model_len=512)
    cpu = PagedFastEngine(str(tiny_checkpoint), device="cpu", max_num_seqs=8, max_model_len=512)
    assert gpu.runner.attention_name == "torch_reference"  # fp32: FlashInfer takes fp16/bf16 only
    yield gpu, cpu
    gpu.shutdown()
    cpu.shutdown()


def submit(engine, prompt, **sampling):
    from core import Sampling

    updates, done = [], threading.Event()
    n = sampling.get("n", 1)

    def sink(update):
        updates.append(update)
        if sum(1 for u in updates if u.finish_reason) == n:
            done.set()

    engine.submit(f"t-{id(updates)}", prompt, Sampling(**sampling), sink, lambda: False)
    return updates, done


def run(engine, prompt, **sampling):
    updates, done = submit(engine, prompt, **sampling)
    assert done.wait(120)
    return updates


def ids(updates, index=0):
    return [t for u in updates if u.index == index for t in u.token_ids]


def test_greedy_and_every_feature_on_cuda_equal_cpu(engines):
    gpu, cpu = engines
    for prompt in PROMPTS:
        sampling = {"max_tokens": 24, "min_tokens": 24, "temperature": 0.0}
        assert ids(run(gpu, prompt, **sampling)) == ids(run(cpu, prompt, **sampling))
    sampling = {"max_tokens": 20, "min_tokens": 20, "temperature": 0.0, **EVERYTHING}
    on_gpu, on_cpu = run(gpu, PROMPTS[1], **sampling), run(cpu, PROMPTS[1], **sampling)
    assert ids(on_gpu) == ids(on_cpu)
    gpu_lp, cpu_lp = [x for u in on_gpu for x in u.logprobs], [x for u in on_cpu for x in u.logprobs]
    assert len(gpu_lp) == 20 and gpu_lp == pytest.approx(cpu_lp, abs=1e-3)
    assert on_gpu[0].prompt_logprobs == pytest.approx(on_cpu[0].prompt_logprobs, abs=1e-3)


def test_seeded_draws_on_cuda_repeat_ignore_the_batch_and_equal_cpu(engines):
    gpu, cpu = engines
    sampling = {"max_tokens": 24, "min_tokens": 24, "temperature": 1.0, "top_k": 50, "top_p": 0.95, "seed": 7}
    first = ids(run(gpu, PROMPTS[1], **sampling))
    assert ids(run(gpu, PROMPTS[1], **sampling)) == first
    others = [submit(gpu, p, max_tokens=30, temperature=0.9) for p in PROMPTS]
    others.append(submit(gpu, PROMPTS[0], max_tokens=10, temperature=0.0, logprobs=True, n=2))
    seeded = submit(gpu, PROMPTS[1], **sampling)
    assert seeded[1].wait(120) and ids(seeded[0]) == first
    assert all(done.wait(120) for _, done in others)
    assert ids(run(cpu, PROMPTS[1], **sampling)) == first  # the same draws on either device


def test_n_and_min_tokens_on_cuda(engines):
    gpu, _ = engines
    request = run(gpu, PROMPTS[2], max_tokens=16, temperature=1.0, n=4, seed=1)
    assert {u.index for u in request if u.finish_reason} == {0, 1, 2, 3}
    assert len({tuple(ids(request, i)) for i in range(4)}) > 1
    stops = tuple(range(0, 49152, 2))  # half the vocabulary ends the sequence
    assert (
        run(gpu, PROMPTS[0], max_tokens=12, min_tokens=6, temperature=0.0, stop_token_ids=stops)[-1].num_output_tokens
        >= 6
    )


def test_a_sampling_step_with_every_feature_never_syncs_with_the_host():
    """The paged core's sampling step (sampler rows as an index tensor, as `_launch` passes them)."""
    from sampler import Flags, SlotConfig, SlotSampler

    config = SlotConfig(
        temperature=1.0, top_k=20, top_p=0.9, greedy=False, key=5, presence=0.5, frequency=0.5, repetition=1.2,
        bias=((3, 1.0),), bad_sequences=((5, 6),), end_ids=frozenset({2}), min_tokens=3, logprobs=5,
    )  # fmt: skip
    sampler = SlotSampler(8, 49152, torch.device("cuda"))
    rows = torch.tensor([1, 3, 4, 6], device="cuda")
    sampler.setup(rows, [config] * 4, [[1, 2, 3, 4]] * 4)
    logits, positions = torch.randn(4, 49152, device="cuda"), torch.full((4,), 4, device="cuda")
    flags = Flags.of([config], sampler.vocab_size)
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for _ in range(3):
            tokens, _ = sampler.sample(logits, rows, positions, flags)
            sampler.advance_rows(rows, tokens, flags)
        sampler.sample(logits, rows, positions, Flags())
    finally:
        torch.cuda.set_sync_debug_mode(0)


def test_cuda_graph_decode_equals_the_eager_flashinfer_step(tiny_checkpoint):
    from paged_fast_core import PagedFastEngine

    kwargs = {"device": "cuda", "dtype": "bfloat16", "max_num_seqs": 4, "max_model_len": 256}
    graphs = PagedFastEngine(str(tiny_checkpoint), **kwargs)
    eager = PagedFastEngine(str(tiny_checkpoint), cuda_graphs=False, **kwargs)
    try:
        assert graphs.runner.graphs is not None and eager.runner.graphs is None
        assert graphs.runner.attention_name == "flashinfer"
        sampling = {"max_tokens": 24, "min_tokens": 24, "temperature": 0.0}
        assert [ids(run(graphs, p, **sampling)) for p in PROMPTS] == [ids(run(eager, p, **sampling)) for p in PROMPTS]
    finally:
        graphs.shutdown()
        eager.shutdown()


def test_bfloat16_on_cuda_runs_every_feature_and_repeats_a_seed(tiny_checkpoint):
    from paged_fast_core import PagedFastEngine

    engine = PagedFastEngine(str(tiny_checkpoint), device="cuda", dtype="bfloat16", max_num_seqs=4, max_model_len=256)
    try:
        sampling = {"max_tokens": 12, "min_tokens": 4, "temperature": 0.8, "top_p": 0.9, "seed": 3, "n": 2}
        first = run(engine, PROMPTS[1], **sampling, **EVERYTHING)
        again = run(engine, PROMPTS[1], **sampling, **EVERYTHING)
        assert [ids(first, i) for i in range(2)] == [ids(again, i) for i in range(2)]
        assert all(len([x for u in first if u.index == i for x in u.logprobs]) == len(ids(first, i)) for i in range(2))
    finally:
        engine.shutdown()
