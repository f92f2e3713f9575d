"""numpy_sampler: the torch sampler's semantics (sampler.py) on the host. Hand-checked processors, HF's repetition
penalty, the draw's distribution and its reproducibility by key, and (where sampler.py is importable) the very
same tokens as the torch sampler for the same keys and logits."""

from __future__ import annotations

import numpy as np
import pytest

from numpy_sampler import (
    SamplingParams,
    SequenceSampler,
    gumbel,
    mix32,
    prompt_scores,
    sample_rows,
    sequence_key,
    step_key,
)

VOCAB = 8


def row(*values):
    return np.array(values, dtype=np.float32)


def sampler(prompt=(), generated=(), vocab=VOCAB, **params):
    s = SequenceSampler(SamplingParams(**params), list(prompt), vocab)
    for token in generated:
        s.advance(token)
    return s


def test_mix32_on_arrays_is_mix32_on_ints():
    values = [0, 1, 12345, MASK := 0xFFFFFFFF, 0x9E3779B9]
    assert mix32(np.array(values, dtype=np.uint64)).tolist() == [mix32(v) for v in values]
    assert mix32(MASK) < 2**32
    assert sequence_key(7, 0) != sequence_key(7, 1) != sequence_key(8, 0)


def test_repetition_penalty_by_hand():
    s = sampler(prompt=[0], generated=[1], repetition=2.0)
    out = s.process(row(4, -4, 4, -4, 0, 0, 0, 0))
    assert out.tolist() == [2, -8, 4, -4, 0, 0, 0, 0]


def test_repetition_penalty_is_transformers():
    torch = pytest.importorskip("torch")
    from transformers import RepetitionPenaltyLogitsProcessor

    rng = np.random.default_rng(0)
    vocab = 300
    for penalty in (0.7, 1.3, 2.0):
        logits = rng.standard_normal(vocab).astype(np.float32) * 5
        prompt, generated = rng.integers(0, vocab, 20).tolist(), rng.integers(0, vocab, 15).tolist()
        ours = sampler(prompt, generated, vocab, repetition=penalty).process(logits)
        ids = torch.tensor([prompt + generated])
        theirs = RepetitionPenaltyLogitsProcessor(penalty)(ids, torch.from_numpy(logits.copy())[None])[0].numpy()
        np.testing.assert_allclose(ours, theirs, rtol=1e-6)


def test_presence_and_frequency_over_generated_only():
    s = sampler(prompt=[3], generated=[1, 1, 2], presence=0.5, frequency=1.0)
    out = s.process(row(0, 0, 0, 0, 0, 0, 0, 0))
    assert out.tolist() == [0, -2.5, -1.5, 0, 0, 0, 0, 0]


def test_logit_bias_adds_up_and_bans():
    s = sampler(bias=((2, 1.0), (2, 2.0), (5, -np.inf)))
    out = s.process(row(0, 0, 0, 0, 0, 0, 0, 0))
    assert out[2] == 3 and out[5] == -np.inf and out[0] == 0


def test_multi_token_bad_word_bans_its_last_token_after_its_prefix_was_generated():
    words = ((4, 5, 6),)
    assert sampler(generated=[4, 5], bad_sequences=words).process(np.zeros(VOCAB, np.float32))[6] == -np.inf
    assert sampler(generated=[4], bad_sequences=words).process(np.zeros(VOCAB, np.float32))[6] == 0
    # vLLM: over generated tokens only, not the prompt
    assert sampler(prompt=[4, 5], bad_sequences=words).process(np.zeros(VOCAB, np.float32))[6] == 0


def test_min_tokens_masks_end_ids_until_reached():
    s = sampler(end_ids=frozenset({7}), min_tokens=2, generated=[1])
    assert s.process(row(0, 0, 0, 0, 0, 0, 0, 9))[7] == -np.inf
    s.advance(1)
    assert s.process(row(0, 0, 0, 0, 0, 0, 0, 9))[7] == 9


def test_untouched_rows_are_not_copied():
    logits = row(1, 2, 3, 4, 5, 6, 7, 8)
    assert sampler().process(logits) is logits


def test_top_k_and_top_p_keep_only_the_nucleus():
    logits = row(5, 4, 3, 0, 0, 0, 0, 0)
    for seed in range(50):
        key = sequence_key(seed, 0)
        assert sampler(greedy=False, key=key, top_k=2).choose(logits, 3) in (0, 1)
        # probabilities ~ .66 .24 .09: top_p 0.8 keeps the first two (the second's mass before it is .66)
        assert sampler(greedy=False, key=key, top_p=0.8).choose(logits, 3) in (0, 1)


def test_top_p_beyond_the_candidate_window_sorts_everything():
    vocab = 5000
    logits = np.zeros(vocab, dtype=np.float32)  # flat: the nucleus of 0.9 spans 4500 tokens
    chosen = {sampler(vocab=vocab, greedy=False, key=k, top_p=0.9).choose(logits, 0) for k in range(200)}
    assert max(chosen) > 1024


def test_the_draw_follows_the_softmax():
    logits = row(2, 1, 0, -1, 0.5, 0, 0, 0)
    temperature = 0.8
    probs = np.exp(logits / temperature) / np.exp(logits / temperature).sum()
    draws = 6000
    counts = np.zeros(VOCAB)
    s = sampler(greedy=False, key=sequence_key(42, 0), temperature=temperature)
    for position in range(draws):
        counts[s.choose(logits, position)] += 1
    expected = probs * draws
    chi2 = ((counts - expected) ** 2 / expected).sum()
    assert chi2 < 30, (chi2, counts, expected)  # 7 degrees of freedom: p < 1e-4


def test_the_same_key_and_position_give_the_same_token():
    rng = np.random.default_rng(1)
    logits = rng.standard_normal(1000).astype(np.float32)
    a = [sampler(vocab=1000, greedy=False, key=sequence_key(9, 0)).choose(logits, p) for p in range(20)]
    b = [sampler(vocab=1000, greedy=False, key=sequence_key(9, 0)).choose(logits, p) for p in range(20)]
    c = [sampler(vocab=1000, greedy=False, key=sequence_key(9, 1)).choose(logits, p) for p in range(20)]
    assert a == b and a != c


def test_sample_rows_batches_and_reports_raw_logprobs():
    rng = np.random.default_rng(2)
    vocab = 49152
    logits = rng.standard_normal((3, vocab)).astype(np.float32) * 3
    samplers = [
        sampler(vocab=vocab, logprobs=5),
        sampler(vocab=vocab, logprobs=0, bias=((7, 100.0),)),
        sampler(vocab=vocab),
    ]
    results = sample_rows(logits, samplers, [0, 0, 0])
    logp = (
        logits
        - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True))
        - logits.max(-1, keepdims=True)
    )
    assert results[0].token == int(logits[0].argmax()) and results[2].token == int(logits[2].argmax())
    assert results[1].token == 7
    assert results[1].logprob == pytest.approx(logp[1, 7], abs=1e-4)  # raw: before the bias
    assert [i for i, _ in results[0].top] == np.argsort(-logp[0])[:5].tolist()
    assert results[0].top[0][1] == pytest.approx(results[0].logprob, abs=1e-5)
    assert results[2].logprob is None and results[1].top == ()
    chosen, (ids, values) = prompt_scores(logits, np.array([1, 2, 3]), 2)
    np.testing.assert_allclose(chosen, logp[[0, 1, 2], [1, 2, 3]], atol=1e-4)
    assert ids.shape == (3, 2)


def test_gumbel_noise_is_the_torch_samplers():
    torch_sampler = pytest.importorskip("sampler")
    torch = pytest.importorskip("torch")
    key, position = sequence_key(123, 2), 17
    assert key == torch_sampler.sequence_key(123, 2)
    ours = gumbel(step_key(key, position), np.arange(VOCAB), VOCAB)
    s = torch_sampler.SlotSampler(1, VOCAB, torch.device("cpu"))
    step = torch_sampler.mix32(
        torch.tensor([key]) ^ torch_sampler.mix32(torch.tensor([(position * 0x9E3779B1 + 0x632BE5AB) & 0xFFFFFFFF]))
    )
    np.testing.assert_allclose(ours, s._gumbel(step, None)[0].numpy(), rtol=1e-5)


def test_same_tokens_as_the_torch_sampler():
    torch_sampler = pytest.importorskip("sampler")
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    vocab = 2048
    configs = [
        dict(greedy=False, temperature=0.7, top_p=0.9),
        dict(greedy=False, temperature=1.0, top_k=40),
        dict(greedy=False, temperature=1.2),
        dict(greedy=True, repetition=1.3, presence=0.5, frequency=0.4),
        dict(
            greedy=False,
            temperature=1.0,
            bias=((5, 3.0),),
            bad_sequences=((1, 2),),
            min_tokens=9,
            end_ids=frozenset({0}),
        ),
    ]
    for trial in range(8):
        logits = rng.standard_normal((len(configs), vocab)).astype(np.float32) * (
            3 if trial % 2 else 15
        )  # 15: a spread beyond GUMBEL_SPAN
        prompt = rng.integers(0, vocab, 10).tolist()
        generated = [1] + rng.integers(0, vocab, 6).tolist()
        positions = [len(prompt) + len(generated) - 1] * len(configs)
        keyed = [dict(c, key=sequence_key(trial, i)) for i, c in enumerate(configs)]
        ours = [
            r.token for r in sample_rows(logits, [sampler(prompt, generated, vocab, **c) for c in keyed], positions)
        ]
        slot_configs = [torch_sampler.SlotConfig(**c) for c in keyed]
        ts = torch_sampler.SlotSampler(len(configs), vocab, torch.device("cpu"))
        slots = torch.arange(len(configs))
        ts.setup(slots, slot_configs, [prompt] * len(configs))
        flags = torch_sampler.Flags.of(slot_configs, vocab)
        for token in generated:  # the paged core's counting, token by token
            ts.advance_rows(slots, torch.tensor([token] * len(configs)), flags)
        theirs, _ = ts.sample(torch.from_numpy(logits), slice(0, len(configs)), torch.tensor(positions), flags)
        assert ours == theirs.tolist(), trial
