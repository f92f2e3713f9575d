"""scheduler.Scheduler: token budget, decode first, chunked prefill, preemption by recompute, prefix-cache hits.

A fake model stands in for the runner: the next token is a function of the whole sequence so far, so a
sequence that is preempted and recomputed must end with exactly the tokens it would have had without."""

from __future__ import annotations

import pytest

from kv_blocks import BlockManager
from scheduler import Scheduler, StepPlan


def fake_next_token(tokens: list[int]) -> int:
    return (sum(t * (i + 1) for i, t in enumerate(tokens)) + 7) % 1000


def make(num_blocks=64, block_size=4, max_num_seqs=8, budget=32) -> Scheduler:
    return Scheduler(BlockManager(num_blocks, block_size), max_num_seqs=max_num_seqs, max_num_batched_tokens=budget)


def step(scheduler: Scheduler, max_tokens: dict | None = None, finished: dict | None = None) -> StepPlan:
    """Plan, check the plan against the sequences, 'run' it, update, finish sequences at their max_tokens."""
    plan = scheduler.plan()
    assert plan.num_tokens <= scheduler.max_num_batched_tokens
    for item in plan.scheduled:
        sequence = scheduler.get(item.seq_id)
        assert item.start == sequence.num_computed
        assert item.token_ids == sequence.tokens[item.start : item.context_len]
        assert len(item.block_table) * scheduler.blocks.block_size >= item.context_len
        assert item.sample == (item.context_len == len(sequence.tokens))
    scheduler.update(plan, [fake_next_token(scheduler.get(i).tokens) for i in plan.sampled])
    for seq_id, limit in (max_tokens or {}).items():
        if seq_id in scheduler._sequences and len(scheduler.get(seq_id).output) >= limit:
            if finished is not None:
                finished[seq_id] = scheduler.get(seq_id).output
            scheduler.finish(seq_id)
    return plan


def reference_output(prompt: list[int], max_tokens: int) -> list[int]:
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(fake_next_token(tokens))
    return tokens[len(prompt) :]


def run_to_completion(scheduler: Scheduler, prompts: dict, max_tokens: int, max_steps: int = 1000) -> dict:
    limits = dict.fromkeys(prompts, max_tokens)
    outputs: dict = {}
    for _ in range(max_steps):
        if not scheduler.has_work:
            return outputs
        step(scheduler, limits, outputs)
    raise AssertionError("did not finish")


def test_chunked_prefill_progresses_by_the_budget_then_decodes():
    scheduler = make(budget=32)
    scheduler.add("a", list(range(1, 101)), max_tokens=3)
    chunks = [step(scheduler).scheduled[0] for _ in range(4)]
    assert [(c.start, len(c.token_ids), c.sample) for c in chunks] == [
        (0, 32, False),
        (32, 32, False),
        (64, 32, False),
        (96, 4, True),
    ]
    decode = step(scheduler)
    assert decode.is_pure_decode and decode.scheduled[0].start == 100
    assert scheduler.get("a").output == reference_output(list(range(1, 101)), 2)


def test_budget_is_filled_and_respected_across_many_prompts():
    scheduler = make(num_blocks=256, budget=48, max_num_seqs=16)
    prompts = {i: [i + 1] * (10 + 7 * i) for i in range(10)}
    for seq_id, prompt in prompts.items():
        scheduler.add(seq_id, prompt, max_tokens=5)
    first = step(scheduler)
    assert first.num_tokens == 48  # 10 + 17 + 21 (cut)
    assert [len(s.token_ids) for s in first.scheduled] == [10, 17, 21]
    outputs = run_to_completion(scheduler, prompts, max_tokens=5)
    for seq_id, prompt in prompts.items():
        assert outputs[seq_id] == reference_output(prompt, 5)


def test_decode_is_never_starved_by_a_burst_of_long_prompts():
    scheduler = make(num_blocks=1024, budget=64, max_num_seqs=16)
    for i in range(4):
        scheduler.add(f"short{i}", [i + 1] * 5, max_tokens=200)
    step(scheduler)  # all four prefilled in one step
    for i in range(10):
        scheduler.add(f"long{i}", [50 + i] * 300, max_tokens=2)
    for _ in range(30):
        # generating: a decode token to feed and below its max_tokens (at it, a sequence waits for its finish)
        generating = [s.seq_id for s in scheduler.running if s.num_uncomputed == 1 and len(s.output) < s.max_tokens]
        plan = step(scheduler)
        decoded = [s.seq_id for s in plan.scheduled if len(s.token_ids) == 1 and s.sample]
        assert set(generating) <= set(decoded)  # every generating sequence got its token
        assert plan.scheduled[: len(generating)] == [s for s in plan.scheduled if s.seq_id in generating]
        assert plan.num_tokens == 64 or not scheduler.waiting  # the rest of the budget went to prefill


def test_max_num_seqs_caps_admission():
    scheduler = make(max_num_seqs=2, budget=64)
    for i in range(4):
        scheduler.add(i, [1, 2, 3], max_tokens=4)
    plan = step(scheduler)
    assert [s.seq_id for s in plan.scheduled] == [0, 1] and len(scheduler.waiting) == 2
    scheduler.finish(0)
    assert [s.seq_id for s in step(scheduler).scheduled] == [1, 2]


def test_preemption_by_recompute_frees_the_newest_and_resumes_it_with_its_output():
    # 6 blocks of 4 = 24 tokens: two sequences of 8 prompt tokens cannot both reach 8 + 8 tokens
    scheduler = make(num_blocks=6, block_size=4, budget=32)
    prompts = {"old": list(range(1, 9)), "new": list(range(20, 28))}
    for seq_id, prompt in prompts.items():
        scheduler.add(seq_id, prompt, max_tokens=8)
    limits = dict.fromkeys(prompts, 8)
    preempted_plan = None
    for _ in range(20):
        plan = step(scheduler, limits)
        if plan.preempted:
            preempted_plan = plan
            break
    assert preempted_plan is not None and preempted_plan.preempted == ["new"]
    victim = scheduler.get("new")
    assert scheduler.waiting[0] is victim and victim.num_computed == 0 and victim.num_preemptions == 1
    assert not scheduler.blocks.has("new")
    generated_before = list(victim.output)
    assert generated_before  # it had generated: those tokens are recomputed with the prompt
    assert [s.seq_id for s in preempted_plan.scheduled] == ["old"]
    outputs = run_to_completion(scheduler, prompts, max_tokens=8)
    assert outputs["new"][: len(generated_before)] == generated_before
    for seq_id, prompt in prompts.items():
        assert outputs[seq_id] == reference_output(prompt, 8)
    assert scheduler.blocks.num_free == 6


def test_a_resumed_sequence_recomputes_prompt_and_output_in_one_prefill():
    scheduler = make(num_blocks=6, block_size=4, budget=32)
    scheduler.blocks.enable_prefix_caching = False  # no cache hits: the whole history is recomputed
    scheduler.add("old", list(range(1, 9)), max_tokens=8)
    scheduler.add("new", list(range(20, 28)), max_tokens=8)
    while not step(scheduler).preempted:
        pass
    history = list(scheduler.get("new").tokens)
    assert len(history) > 8
    scheduler.finish("old")
    (item,) = step(scheduler).scheduled
    assert (item.seq_id, item.start, item.token_ids, item.sample) == ("new", 0, history, True)


def test_prefix_cache_hit_skips_the_cached_tokens():
    scheduler = make(budget=64)
    shared = list(range(1, 13))  # 3 full blocks of 4
    scheduler.add("first", shared + [99], max_tokens=2)
    step(scheduler)
    scheduler.add("second", shared + [42, 43], max_tokens=2)
    plan = step(scheduler)
    second = next(s for s in plan.scheduled if s.seq_id == "second")
    assert second.start == 12 and second.token_ids == [42, 43]
    first_table = scheduler.blocks.block_table("first")
    assert second.block_table[:3] == first_table[:3]
    outputs = run_to_completion(scheduler, {"first": shared + [99], "second": shared + [42, 43]}, max_tokens=2)
    assert outputs["second"] == reference_output(shared + [42, 43], 2)


def test_finish_releases_blocks_and_a_waiting_sequence_can_be_cancelled():
    scheduler = make(num_blocks=8, max_num_seqs=1)
    scheduler.add("a", [1] * 9, max_tokens=4)
    scheduler.add("b", [2] * 9, max_tokens=4)
    step(scheduler)
    scheduler.finish("b")  # still waiting
    scheduler.finish("a")
    assert not scheduler.has_work and scheduler.blocks.num_free == 8


def test_a_sequence_that_can_never_fit_is_refused():
    scheduler = make(num_blocks=4, block_size=4)
    with pytest.raises(ValueError, match="exceeds the KV cache"):
        scheduler.add("big", [1] * 10, max_tokens=7)
    with pytest.raises(ValueError, match="cover one decode token"):
        Scheduler(BlockManager(4, 4), max_num_seqs=8, max_num_batched_tokens=4)


def test_a_prefill_chunk_shrinks_to_the_room_left_and_never_preempts_an_older_sequence():
    scheduler = make(num_blocks=5, block_size=4, budget=8, max_num_seqs=2)  # 20 tokens in all
    scheduler.add("old", [1] * 6, max_tokens=8)
    scheduler.add("new", [2] * 16, max_tokens=2)
    assert [(s.seq_id, len(s.token_ids)) for s in step(scheduler).scheduled] == [("old", 6), ("new", 2)]
    assert [(s.seq_id, len(s.token_ids)) for s in step(scheduler).scheduled] == [("old", 1), ("new", 7)]
    plan = step(scheduler)  # "new" wants 7 more tokens; its blocks have room for 3 and none is free
    assert [(s.seq_id, s.start, len(s.token_ids)) for s in plan.scheduled] == [("old", 7, 1), ("new", 9, 3)]
    assert not plan.preempted and scheduler.blocks.num_free == 0
    plan = step(scheduler)  # "old"'s next decode token needs a block: the newer sequence makes room
    assert plan.preempted == ["new"] and [s.seq_id for s in plan.scheduled] == ["old"]
