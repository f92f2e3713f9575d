"""The fast core's device sampler (sampler.py) on small tensors: the hash, the Gumbel-max draws' distribution, the
top-k shortcut, and each logits processor's arithmetic."""

from __future__ import annotations

import random

import pytest
import torch

from sampler import FlagCounts, Flags, SlotConfig, SlotSampler, mix32, sequence_key

VOCAB = 8


def sampler_with(*configs: SlotConfig, prompts=None) -> SlotSampler:
    sampler = SlotSampler(len(configs), VOCAB, torch.device("cpu"))
    sampler.setup(torch.arange(len(configs)), list(configs), prompts or [[0]] * len(configs))
    return sampler


def test_the_hash_is_the_same_on_ints_and_tensors_and_keys_differ():
    values = [0, 1, 2**31, 2**32 - 1, 123456789]
    assert mix32(torch.tensor(values)).tolist() == [mix32(v) for v in values]
    assert len({sequence_key(seed, index) for seed in (0, 1, 2**40) for index in range(16)}) == 48


def test_gumbel_max_draws_follow_the_softmax():
    logits = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, -3.0, -9.0, -9.0])
    sampler = sampler_with(SlotConfig(greedy=False, key=sequence_key(7, 0), temperature=1.0))
    draws = 6000
    positions = torch.arange(draws)
    rows = torch.zeros(draws, dtype=torch.long)
    tokens, _ = sampler.sample(logits.expand(draws, -1), rows, positions, Flags(sampling=True))
    frequencies = torch.bincount(tokens, minlength=VOCAB).float() / draws
    assert frequencies.tolist() == pytest.approx(logits.softmax(-1).tolist(), abs=0.02)


def test_the_top_k_shortcut_draws_what_the_full_sort_does():
    torch.manual_seed(0)
    vocab = 300
    configs = [SlotConfig(greedy=False, key=sequence_key(s, 0), top_k=k, top_p=p) for s, k, p in
               [(1, 5, 1.0), (2, 40, 0.9), (3, 40, 0.5), (4, 1, 1.0)]]  # fmt: skip
    sampler = SlotSampler(len(configs), vocab, torch.device("cpu"))
    sampler.setup(torch.arange(4), configs, [[0]] * 4)
    flags = Flags.of(configs, vocab)
    assert flags.top_k_bound == 40
    for position in range(50):
        logits = torch.randn(4, vocab) * 3
        args = (logits, torch.arange(4), torch.full((4,), position))
        shortcut, _ = sampler.sample(*args, flags)
        full, _ = sampler.sample(*args, Flags(sampling=True, filtered=True))
        assert shortcut.tolist() == full.tolist()
        assert all(t in logits[row].topk(configs[row].top_k).indices for row, t in enumerate(shortcut.tolist()))


def test_penalties_bias_and_min_tokens_arithmetic():
    config = SlotConfig(repetition=2.0, presence=0.5, frequency=0.25, bias=((6, 1.5),), end_ids=frozenset({7}),
                        min_tokens=2)  # fmt: skip
    sampler = sampler_with(config, prompts=[[1, 2]])
    flags = Flags.of([config], VOCAB)
    assert flags.penalties and flags.bias and flags.min_tokens
    sampler.advance_rows(torch.tensor([0]), torch.tensor([3]), flags)  # the first generated token: 3
    sampler.advance_rows(torch.tensor([0]), torch.tensor([3]), flags)  # and 3 again
    logits = torch.tensor([[4.0, 4.0, -4.0, 4.0, 1.0, 1.0, 1.0, 9.0]])
    processed = sampler.process(logits, slice(0, 1), flags)[0].tolist()
    # repetition: prompt token 1 (positive) halved, 2 (negative) doubled, generated 3 halved; then 3 (generated
    # twice) loses presence 0.5 + 2 x frequency 0.25; 6 gets its bias; 7 ends, allowed: 2 = min_tokens generated
    assert processed == pytest.approx([4.0, 2.0, -8.0, 1.0, 1.0, 1.0, 2.5, 9.0])
    sampler.generated[0] = 1
    assert sampler.process(logits, slice(0, 1), flags)[0, 7] == float("-inf")  # before min_tokens: masked


def test_a_multi_token_bad_word_bans_its_last_token_after_its_prefix_only():
    config = SlotConfig(bad_sequences=((4, 5, 6),))
    sampler = sampler_with(config)
    flags = Flags.of([config], VOCAB)
    logits = torch.zeros(1, VOCAB)
    logits[0, 6] = 5.0  # greedy wants 6
    sampler.advance_rows(torch.tensor([0]), torch.tensor([4]), flags)
    assert sampler.sample(logits, slice(0, 1), torch.tensor([1]), flags)[0].item() == 6  # after 4: allowed
    sampler.advance_rows(torch.tensor([0]), torch.tensor([5]), flags)
    assert sampler.sample(logits, slice(0, 1), torch.tensor([2]), flags)[0].item() != 6  # after 4, 5: banned
    sampler.advance_rows(torch.tensor([0]), torch.tensor([1]), flags)
    assert sampler.sample(logits, slice(0, 1), torch.tensor([3]), flags)[0].item() == 6


def test_logprobs_are_the_raw_log_softmax_before_processing():
    config = SlotConfig(bias=((0, 50.0),), logprobs=2, temperature=0.5)
    sampler = sampler_with(config)
    logits = torch.tensor([[0.0, 3.0, 1.0, 0.0, 0.0, 0.0, 0.0, 0.0]])
    token, (chosen, values, ids) = sampler.sample(logits, slice(0, 1), torch.tensor([0]), Flags.of([config], VOCAB))
    raw = logits.log_softmax(-1)[0]
    assert token.item() == 0 and chosen.item() == pytest.approx(raw[0].item())  # biased choice, raw log-prob
    assert ids[0].tolist() == [1, 2] and values[0].tolist() == pytest.approx(raw[[1, 2]].tolist())


def test_advance_rows_counts_each_row_in_any_order():
    """A sequence's row is its sampler state only (its KV is in blocks): rows are scattered, in any order."""
    config = SlotConfig(presence=0.5, bad_sequences=((4, 5, 6),))
    flags = Flags.of([config], VOCAB)
    sampler = sampler_with(config, config, config)
    rows = torch.tensor([2, 0])
    sampler.advance_rows(rows, torch.tensor([4, 3]), flags)
    sampler.advance_rows(rows, torch.tensor([5, 3]), flags)
    assert sampler.generated.tolist() == [2, 0, 2]
    assert (
        sampler.counts[0, 3] == 2 and sampler.counts[2, 4] == sampler.counts[2, 5] == 1 and sampler.counts[1].sum() == 0
    )
    assert sampler.recent[2, -2:].tolist() == [4, 5] and sampler.recent[0, -2:].tolist() == [3, 3]


def test_flag_counts_give_the_flags_of_every_live_config():
    """FlagCounts (one config per distinct flag key) agrees with Flags.of over all the running configs, through
    random admissions and finishes."""
    rng = random.Random(5)
    choices = [
        SlotConfig(),
        SlotConfig(greedy=False, temperature=0.7),
        SlotConfig(greedy=False, top_k=40),
        SlotConfig(greedy=False, top_k=100_000, top_p=0.9),
        SlotConfig(repetition=1.2),
        SlotConfig(bias=((3, 1.0),)),
        SlotConfig(bad_sequences=((5, 6),)),
        SlotConfig(min_tokens=4, end_ids=frozenset({2})),
        SlotConfig(logprobs=3),
        SlotConfig(logprobs=0),
        SlotConfig(guided=True),
    ]
    counts, live = FlagCounts(), []
    for _ in range(500):
        if live and rng.random() < 0.45:
            config = live.pop(rng.randrange(len(live)))
            counts.remove(config)
        else:
            config = rng.choice(choices)
            live.append(config)
            counts.add(config)
        assert counts.flags(1000) == Flags.of(live, 1000)
