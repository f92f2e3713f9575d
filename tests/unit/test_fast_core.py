"""The fast engine core (paged_fast_core.py) on CPU with the real SmolLM2: greedy output equals HF `generate` token
for token, through chunked prefill, preemption and the prefix cache."""

from __future__ import annotations

import threading

import pytest
import torch

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time",
    "def fibonacci(n):",
    "日本語のテキスト",
    "The three primary colours are",
]


@pytest.fixture(scope="module")
def fast_engine(checkpoint_dir):
    from paged_fast_core import PagedFastEngine

    engine = PagedFastEngine(str(checkpoint_dir), max_num_seqs=4, max_model_len=256)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def reference(checkpoint_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32, local_files_only=True).eval()


def generate(engine, prompts, **sampling):
    """Submit all prompts at once (more than the engine's slots: some wait); return [(text, last update)]."""
    from core import Sampling

    results = []
    for i, prompt in enumerate(prompts):
        done, parts = threading.Event(), []

        def sink(update, parts=parts, done=done):
            parts.append(update)
            if update.finish_reason:
                done.set()

        engine.submit(f"test-{i}-{id(parts)}", prompt, Sampling(**sampling), sink, lambda: False)
        results.append((done, parts))
    for done, _ in results:
        assert done.wait(120), "the engine did not finish a request in 120 s"
    return [("".join(u.text for u in parts), parts[-1]) for _, parts in results]


@pytest.mark.parametrize("stop_at_eos", [False, True])
def test_greedy_matches_hf_generate(fast_engine, reference, tokenizer, stop_at_eos):
    max_tokens = 40
    floor = {} if stop_at_eos else {"min_tokens": max_tokens}
    outputs = generate(fast_engine, PROMPTS, max_tokens=max_tokens, temperature=0.0, **floor)
    for prompt, (text, last) in zip(PROMPTS, outputs, strict=True):
        ids = tokenizer(prompt, return_tensors="pt").input_ids
        eos = reference.generation_config.eos_token_id if stop_at_eos else None
        out = reference.generate(
            ids,
            max_new_tokens=max_tokens,
            do_sample=False,
            eos_token_id=eos,
            pad_token_id=0,
            min_new_tokens=0 if stop_at_eos else max_tokens,
        )
        new = out[0, ids.shape[1] :].tolist()
        assert text == tokenizer.decode(new, skip_special_tokens=True), prompt
        assert last.num_output_tokens == len(new)
        stopped = stop_at_eos and new[-1] == eos
        assert last.finish_reason == ("stop" if stopped else "length")
    if stop_at_eos:  # the chat prompt ends its answer: the eos branch was exercised
        assert outputs[0][1].finish_reason == "stop"


def test_sampling_with_top_k_and_top_p_stays_in_the_nucleus(fast_engine):
    outputs = generate(fast_engine, PROMPTS[:3] * 2, max_tokens=12, min_tokens=12, temperature=0.8, top_k=20, top_p=0.9)
    assert all(last.num_output_tokens == 12 and last.finish_reason == "length" for _, last in outputs)
    assert len({text for text, _ in outputs}) > 1, "sampling produced identical texts for every request"


def test_stop_string_and_too_long_requests(fast_engine):
    from core import InvalidRequest, Sampling

    [(text, last)] = generate(fast_engine, PROMPTS[:1], max_tokens=20, temperature=0.0, stop=("Paris",))
    assert "Paris" not in text and last.finish_reason == "stop"
    with pytest.raises(InvalidRequest, match="context of 256 tokens"):
        fast_engine.submit("too-long", "hello", Sampling(max_tokens=256), lambda u: None, lambda: False)


def test_chunked_prefill_preemption_and_the_prefix_cache_keep_greedy_output(fast_engine, checkpoint_dir):
    """A cache too small for every sequence at once (16 blocks of 16 tokens, 4 sequences of ~80 tokens) and a
    step budget of 8 tokens: prompts are prefilled in chunks beside running decodes, sequences are preempted and
    recomputed rather than refused, and a repeated prompt reuses its cached blocks; greedy text stays the same."""
    from paged_fast_core import PagedFastEngine

    small = PagedFastEngine(str(checkpoint_dir), max_num_seqs=4, kv_cache_blocks=1, max_prefill_tokens=8)
    try:
        expected = generate(fast_engine, PROMPTS[1:], max_tokens=64, min_tokens=64, temperature=0.0)
        outputs = generate(small, PROMPTS[1:], max_tokens=64, min_tokens=64, temperature=0.0)
        assert [text for text, _ in outputs] == [text for text, _ in expected]
        assert small.stats["preemptions"] > 0, "the cache was meant to run out"
        assert small.stats["steps"] > 64 + 8, "prefill was meant to be chunked"
        hits = small.blocks.stats["hit_tokens"]
        long_prompt = [" ".join(PROMPTS)]  # ~50 tokens: 3 full blocks
        cold = generate(small, long_prompt, max_tokens=8, min_tokens=8, temperature=0.0)
        warm = generate(small, long_prompt, max_tokens=8, min_tokens=8, temperature=0.0)
        assert small.blocks.stats["hit_tokens"] >= hits + 32, "the second run of the prompt was meant to hit"
        assert (
            cold[0][0]
            == warm[0][0]
            == generate(fast_engine, long_prompt, max_tokens=8, min_tokens=8, temperature=0.0)[0][0]
        )
    finally:
        small.shutdown()
