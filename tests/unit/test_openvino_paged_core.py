"""The paged OpenVINO engine core (openvino_paged_core.py) on the real SmolLM2 int8 IR: GenAI's greedy tokens,
batch independence, seeds, every sampling input (the ones GenAI cannot do included: top_logprobs, logit_bias,
bad_words), prompt log-probs against the fp32 checkpoint, n, cancellation and refusals."""

from __future__ import annotations

import threading

import numpy as np
import pytest
import torch

from core import InvalidRequest, Sampling

# |log p| against the fp32 checkpoint: as for the GenAI core (test_openvino_core.py: bf16 compute, u8 KV, int8).
LOGPROB_TOLERANCE = 0.5
LOGPROB_MEAN_TOLERANCE = 0.12
REPEATING = "The farmer grows apples. The apples are red. The apples"
QUESTIONS = ["What is the capital of France?", "Write a short poem about the sea.", "What is 2 + 2?"]


@pytest.fixture(scope="module")
def engine(openvino_checkpoint):
    from openvino_paged_core import OpenVINOPagedEngine

    core = OpenVINOPagedEngine(str(openvino_checkpoint), max_num_seqs=8, max_model_len=1024)
    yield core
    core.shutdown()


@pytest.fixture(scope="module")
def reference(checkpoint_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32, local_files_only=True).eval()


def chat(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


def submit(engine, prompt, cancel_after: int | None = None, **sampling):
    done, updates = threading.Event(), []
    n = sampling.get("n", 1)

    def sink(update):
        updates.append(update)
        if sum(1 for u in updates if u.finish_reason) == n:
            done.set()

    def is_cancelled():
        return cancel_after is not None and len(updates) >= cancel_after

    engine.submit(f"t-{id(updates)}", prompt, Sampling(**sampling), sink, is_cancelled)
    return done, updates


def by_index(done, updates, n: int = 1) -> dict[int, list]:
    assert done.wait(120), "no final update in 120 s"
    out: dict[int, list] = {}
    for update in updates:
        out.setdefault(update.index, []).append(update)
    assert sorted(out) == list(range(n))
    for seq in out.values():
        assert [u.finish_reason is not None for u in seq] == [False] * (len(seq) - 1) + [True]
    return out


def run(engine, prompt, **sampling) -> list:
    return by_index(*submit(engine, prompt, **sampling), sampling.get("n", 1))[0]


def tokens_of(updates) -> list[int]:
    return [t for u in updates for t in u.token_ids]


def text_of(updates) -> str:
    return "".join(u.text for u in updates)


def test_greedy_matches_the_genai_core_for_prompts_submitted_together(engine, openvino_checkpoint, tokenizer):
    from openvino_core import OpenVINOEngine

    prompts = [chat(tokenizer, q) for q in QUESTIONS]
    genai = OpenVINOEngine(str(openvino_checkpoint), max_num_seqs=8, max_model_len=1024)
    try:
        theirs = [submit(genai, p, max_tokens=16, min_tokens=16, temperature=0.0) for p in prompts]
        theirs = [tokens_of(by_index(*r)[0]) for r in theirs]
    finally:
        genai.shutdown()
    ours = [submit(engine, p, max_tokens=16, min_tokens=16, temperature=0.0) for p in prompts]
    ours = [tokens_of(by_index(*r)[0]) for r in ours]
    assert ours == theirs
    alone = [tokens_of(run(engine, p, max_tokens=16, min_tokens=16, temperature=0.0)) for p in prompts]
    assert alone == ours, "batching must not change a sequence's greedy tokens"
    assert engine.blocks.num_free == engine.blocks.num_blocks


def test_a_seed_gives_the_same_text_alone_and_among_other_requests(engine, tokenizer):
    prompt = chat(tokenizer, QUESTIONS[1])
    sampled = {"max_tokens": 24, "temperature": 1.0, "top_p": 0.95}
    alone = text_of(run(engine, prompt, seed=1234, **sampled))
    others = [submit(engine, chat(tokenizer, f"Tell me about the number {i}."), seed=i, **sampled) for i in range(4)]
    crowded = text_of(run(engine, prompt, seed=1234, **sampled))
    for done, _ in others:
        assert done.wait(120)
    assert crowded == alone
    assert {text_of(run(engine, prompt, seed=s, **sampled)) for s in (1, 2, 3)} != {alone}


def test_min_tokens_and_stop_ids_and_stop_strings(engine, tokenizer):
    prompt = chat(tokenizer, QUESTIONS[0])
    plain = run(engine, prompt, max_tokens=24, temperature=0.0)
    generated = tokens_of(plain)
    assert plain[-1].finish_reason == "stop" and "Paris" in text_of(plain)
    assert plain[-1].num_output_tokens == len(generated) + 1  # the end-of-sequence token is counted, not reported
    longer = run(engine, prompt, max_tokens=40, min_tokens=25, temperature=0.0)
    assert longer[-1].num_output_tokens >= 25
    stop_id = generated[4]
    stopped = run(engine, prompt, max_tokens=24, temperature=0.0, stop_token_ids=(stop_id,))
    assert stopped[-1].finish_reason == "stop" and tokens_of(stopped) == generated[: generated.index(stop_id)]
    held = run(engine, prompt, max_tokens=30, min_tokens=12, temperature=0.0, stop_token_ids=(stop_id,))
    assert held[-1].num_output_tokens >= 12
    trimmed = run(engine, prompt, max_tokens=24, temperature=0.0, stop=("Paris",))
    assert "Paris" not in text_of(trimmed) and trimmed[-1].finish_reason == "stop"
    assert text_of(trimmed) == text_of(plain)[: text_of(plain).index("Paris")]


def test_logprobs_and_top_logprobs_are_the_fp32_checkpoints_within_int8s_tolerance(engine, reference, tokenizer):
    prompt = tuple(tokenizer(chat(tokenizer, "Tell me about the moon."))["input_ids"])
    seq = run(engine, prompt, max_tokens=24, min_tokens=24, temperature=0.0, logprobs=True, top_logprobs=5)
    generated, logprobs = tokens_of(seq), [lp for u in seq for lp in u.logprobs]
    tops = [t for u in seq for t in u.top_logprobs]
    assert len(generated) == len(logprobs) == len(tops) == 24
    with torch.no_grad():
        fp32 = reference(torch.tensor([list(prompt) + generated])).logits[0].float()
    expected = torch.log_softmax(fp32[len(prompt) - 1 : -1], -1)
    error = (torch.tensor(logprobs) - expected[torch.arange(24), torch.tensor(generated)]).abs()
    assert error.max() <= LOGPROB_TOLERANCE and error.mean() <= LOGPROB_MEAN_TOLERANCE, error
    for token, logprob, top in zip(generated, logprobs, tops, strict=True):
        assert len(top) == 5 and [v for _, v in top] == sorted((v for _, v in top), reverse=True)
        assert top[0][1] == pytest.approx(logprob, abs=1e-5)  # greedy: the chosen token is the most likely
        assert token in {i for i, _ in top} or top[0][1] == top[1][1]  # (bf16 ties)
    values = np.array([[v for _, v in t] for t in tops])
    theirs = np.array([expected[i, [j for j, _ in t]].numpy() for i, t in enumerate(tops)])
    assert np.abs(values - theirs).mean() <= LOGPROB_MEAN_TOLERANCE


def test_prompt_logprobs_over_chunks_are_the_fp32_checkpoints(engine, reference, tokenizer):
    text = "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France. "
    prompt = tuple(tokenizer(text * 16)["input_ids"])
    assert len(prompt) > 256  # prefilled in two chunks
    seq = run(engine, prompt, max_tokens=2, temperature=0.0, prompt_logprobs=True, top_logprobs=3)
    first = seq[0]
    assert len(first.prompt_logprobs) == len(prompt) - 1 and len(first.prompt_top_logprobs) == len(prompt) - 1
    assert all(u.prompt_logprobs is None for u in seq[1:])
    with torch.no_grad():
        expected = torch.log_softmax(reference(torch.tensor([list(prompt)])).logits[0, :-1].float(), -1)
    expected = expected[torch.arange(len(prompt) - 1), torch.tensor(prompt[1:])]
    error = (torch.tensor(first.prompt_logprobs) - expected).abs()
    assert error.max() <= LOGPROB_TOLERANCE and error.mean() <= LOGPROB_MEAN_TOLERANCE, error
    assert all(
        len(t) == 3 and t[0][1] >= lp - 1e-5
        for t, lp in zip(first.prompt_top_logprobs, first.prompt_logprobs, strict=True)
    )


def test_logit_bias_and_bad_words_change_the_greedy_answer(engine, tokenizer):
    prompt = chat(tokenizer, QUESTIONS[0])
    plain = tokens_of(run(engine, prompt, max_tokens=12, temperature=0.0))
    biased = tokens_of(run(engine, prompt, max_tokens=12, temperature=0.0, logit_bias=((plain[0], -100.0),)))
    assert biased[0] != plain[0]
    pushed = tokens_of(run(engine, prompt, max_tokens=3, temperature=0.0, logit_bias=((1234, 100.0),)))
    assert pushed == [1234] * 3
    banned = run(engine, prompt, max_tokens=24, temperature=0.0, bad_words=("Paris",))
    assert "Paris" not in text_of(banned)
    two = run(engine, prompt, max_tokens=24, temperature=0.0, bad_words=("capital of",))
    assert "capital of" not in text_of(two)


def reference_greedy(runner, prompt: list[int], steps: int, penalise) -> list[int]:
    """Greedy tokens from the runner's raw logits with `penalise(logits, generated)` applied: the same shapes as
    the engine alone (whole prompt, then one token a step), the processors written out independently."""
    from openvino_paged_runner import SeqInput, blocks_needed

    table = runner.allocator.allocate(blocks_needed(len(prompt) + steps))
    try:
        out = runner.step([SeqInput(prompt, 0, table)])
        generated: list[int] = []
        for _ in range(steps):
            logits = penalise(out.last[0].astype(np.float64), generated)
            generated.append(int(np.argmax(logits)))
            out = runner.step([SeqInput([generated[-1]], len(prompt) + len(generated) - 1, table)])
        return generated
    finally:
        runner.allocator.free(table)


@pytest.mark.parametrize(
    "settings",
    [
        {"repetition_penalty": 1.3},
        {"presence_penalty": 1.5},
        {"frequency_penalty": 0.7},
        {"presence_penalty": -1.0, "frequency_penalty": 0.5, "repetition_penalty": 1.1},
    ],
)
def test_penalties_at_temperature_0_follow_a_written_reference(engine, openvino_checkpoint, tokenizer, settings):
    from openvino_paged_runner import PagedRunner

    prompt = tokenizer(REPEATING)["input_ids"]
    plain = tokens_of(run(engine, prompt, max_tokens=40, min_tokens=40, temperature=0.0))
    ours = tokens_of(run(engine, tuple(prompt), max_tokens=40, min_tokens=40, temperature=0.0, **settings))
    assert ours != plain
    rep = settings.get("repetition_penalty", 1.0)
    presence, frequency = settings.get("presence_penalty", 0.0), settings.get("frequency_penalty", 0.0)

    def penalise(logits, generated):  # HF's repetition penalty over prompt + generated, then OpenAI's
        for token in set(prompt) | set(generated):
            logits[token] = logits[token] / rep if logits[token] > 0 else logits[token] * rep
        for token in set(generated):
            logits[token] -= presence + frequency * generated.count(token)
        return logits

    runner = PagedRunner(openvino_checkpoint, num_blocks=8)
    assert reference_greedy(runner, prompt, 40, penalise) == ours


def test_n_sequences_at_temperature_1(engine, tokenizer):
    prompt = chat(tokenizer, QUESTIONS[1])
    seqs = by_index(*submit(engine, prompt, max_tokens=16, temperature=1.0, n=4, seed=7), 4)
    texts = [text_of(seqs[i]) for i in range(4)]
    assert len(set(texts)) > 1
    assert all(seqs[i][-1].num_output_tokens >= len(tokens_of(seqs[i])) for i in range(4))
    again = by_index(*submit(engine, prompt, max_tokens=16, temperature=1.0, n=4, seed=7), 4)
    assert [text_of(again[i]) for i in range(4)] == texts
    assert text_of(run(engine, prompt, max_tokens=16, temperature=1.0, seed=7)) == texts[0]


def test_cancellation_frees_the_blocks_at_once(engine, tokenizer):
    done, updates = submit(
        engine, chat(tokenizer, "Tell me a story."), cancel_after=3, max_tokens=400, min_tokens=400, n=3
    )
    seqs = by_index(done, updates, 3)
    assert {seq[-1].finish_reason for seq in seqs.values()} == {"cancelled"}
    assert engine.num_active == 0
    assert engine.blocks.num_free == engine.blocks.num_blocks  # freed when cancelled, no step later


def test_a_token_id_prompt_answers_as_its_text(engine, tokenizer):
    prompt = chat(tokenizer, QUESTIONS[0])
    by_text = run(engine, prompt, max_tokens=12, temperature=0.0)
    by_ids = run(engine, tuple(tokenizer(prompt)["input_ids"]), max_tokens=12, temperature=0.0)
    assert text_of(by_ids) == text_of(by_text) and by_ids[-1].num_input_tokens == by_text[-1].num_input_tokens


@pytest.mark.parametrize(
    "sampling, named",
    [
        ({"top_logprobs": 21, "logprobs": True}, "num_top_log_probs"),
        ({"logit_bias": ((10**6, 1.0),)}, "embedding_bias_token_ids"),
        ({"logit_bias": ((5, 101.0),)}, "embedding_bias_weights"),
        ({"bad_words": ("a b c d e f g h i j",)}, "bad_words"),
        ({"stop_token_ids": (10**6,)}, "stop_token_ids"),
        ({"presence_penalty": 2.5}, "presence_penalty"),
        ({"frequency_penalty": -3.0}, "frequency_penalty"),
        ({"repetition_penalty": 0.0}, "repetition_penalty"),
        ({"n": 17}, "num_return_sequences"),
        ({"n": 0}, "num_return_sequences"),
        ({"max_tokens": 2000}, "context"),
    ],
)
def test_what_cannot_be_honoured_is_refused_by_name(engine, sampling, named):
    with pytest.raises(InvalidRequest, match=f"^{named}" if named != "context" else named):
        submit(engine, "Hello", **{"max_tokens": 4, **sampling})
    with pytest.raises(InvalidRequest, match="^input_ids"):
        submit(engine, (1, 2, 10**6), max_tokens=4)
    assert engine.num_active == 0


def test_the_kv_cache_grows_as_used(openvino_checkpoint, tokenizer):
    from openvino_paged_core import OpenVINOPagedEngine

    core = OpenVINOPagedEngine(str(openvino_checkpoint), max_num_seqs=4, kv_cache_blocks=16)  # 4096 tokens
    try:
        assert core.max_model_len == 4096 and core.blocks.num_blocks == 128
        start = core.runner.num_blocks
        prompt = tuple(tokenizer("The history of the Roman Empire spans many centuries. " * 300)["input_ids"])
        assert len(prompt) > 2100
        seq = run(core, prompt[:2100], max_tokens=2, temperature=0.0)
        assert seq[-1].finish_reason == "length" and core.runner.num_blocks > start
    finally:
        core.shutdown()


def test_a_full_cache_preempts_and_every_request_still_finishes(openvino_checkpoint, tokenizer):
    from openvino_paged_core import OpenVINOPagedEngine

    core = OpenVINOPagedEngine(str(openvino_checkpoint), max_num_seqs=4, kv_cache_blocks=1)  # 8 blocks of 32
    try:
        requests = [
            submit(core, chat(tokenizer, q), max_tokens=60, min_tokens=60, temperature=1.0, seed=i)
            for i, q in enumerate(QUESTIONS + ["Tell me a story."])
        ]
        results = [tokens_of(by_index(*r)[0]) for r in requests]
        assert all(len(tokens) == 60 for tokens in results)
        assert core.blocks.num_free == core.blocks.num_blocks
        assert core.stats["preemptions"] > 0
    finally:
        core.shutdown()


def test_prompt_logprobs_of_n_sequences_are_computed_once_and_sent_to_each(engine, tokenizer):
    prompt = chat(tokenizer, QUESTIONS[0])
    seqs = by_index(*submit(engine, prompt, max_tokens=4, temperature=1.0, n=2, seed=3, prompt_logprobs=True), 2)
    firsts = [seqs[i][0].prompt_logprobs for i in range(2)]
    assert firsts[0] is not None and firsts[0] == firsts[1]
    assert len(firsts[0]) == seqs[0][0].num_input_tokens - 1
