"""Overlapped scheduling below the engine (paged_overlap.py, Scheduler.advance/commit, PagedRunner.step(previous=)):
step N+1 planned and run before step N's tokens reach the host, its decode inputs taken on the device from N's
sampled tokens, gives the greedy tokens of full forwards and the synchronous loop's, with chunked prefill, preemption,
the prefix cache and sequences that end while the next step is in flight."""

from __future__ import annotations

import pytest
import torch
from test_paged_runner import make, paged_greedy, tiny_llama  # noqa: F401  (tiny_llama: a fixture)

from paged_overlap import feed_previous_tokens


def overlapped_greedy(scheduler, runner, prompts: dict, limits: dict, plans: list | None = None) -> dict:
    """The core's overlapped loop in miniature: plan N+1 -> runner.step(previous = N's tokens) -> argmax ->
    advance, THEN commit N and finish the sequences that reached their limit at N (they may ride along in N+1)."""
    for seq_id, prompt in prompts.items():
        scheduler.add(seq_id, prompt, max(limits.values()))
    outputs: dict = {}
    pending = None  # (plan, its sampled tokens on the "device")
    for _ in range(1000):
        if not scheduler.has_work and pending is None:
            return outputs
        launched = None
        plan = scheduler.plan() if scheduler.has_work else None
        if plan is not None and plan.scheduled:
            if plans is not None:
                plans.append(plan)
            previous = pending[1] if pending is not None and len(pending[1]) else None
            tokens = runner.step(plan, previous=previous).argmax(dim=-1)
            scheduler.advance(plan)
            launched = (plan, tokens)
        if pending is not None:
            done_plan, done_tokens = pending
            scheduler.commit(done_plan, done_tokens.tolist())
            for seq_id in done_plan.sampled:
                if seq_id in outputs:  # ended at the step before: this token rode along
                    continue
                output = scheduler.get(seq_id).output
                known = len(output) - (launched is not None and seq_id in launched[0].sampled)
                if known >= limits[seq_id]:
                    outputs[seq_id] = output[: limits[seq_id]]
                    scheduler.finish(seq_id)
        pending = launched
    raise AssertionError("the loop did not finish")


def synchronous_greedy(scheduler, runner, prompts: dict, limits: dict) -> dict:
    """The same loop waiting for each step (plan -> step -> update -> finish)."""
    for seq_id, prompt in prompts.items():
        scheduler.add(seq_id, prompt, max(limits.values()))
    outputs: dict = {}
    for _ in range(1000):
        if not scheduler.has_work:
            return outputs
        plan = scheduler.plan()
        scheduler.update(plan, runner.step(plan).argmax(dim=-1).tolist())
        for seq_id in plan.sampled:
            if seq_id not in outputs and len(scheduler.get(seq_id).output) >= limits[seq_id]:
                outputs[seq_id] = scheduler.get(seq_id).output[: limits[seq_id]]
                scheduler.finish(seq_id)
    raise AssertionError("the loop did not finish")


@torch.inference_mode()
def full_greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    """Greedy by full forwards, no cache (nor HF generate's end-of-sequence handling: argmax as it is)."""
    tokens = list(prompt)
    for _ in range(max_tokens):
        tokens.append(int(model(torch.tensor([tokens])).logits[0, -1].argmax()))
    return tokens[len(prompt) :]


def random_prompts(count: int, seed: int) -> dict:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(3, 20, (count,), generator=generator).tolist()
    return {i: torch.randint(3, 128, (n,), generator=generator).tolist() for i, n in enumerate(lengths)}


@pytest.mark.parametrize(
    ("num_blocks", "budget", "max_num_seqs"),
    [(64, 8, 3), (9, 6, 4)],  # chunked prefill beside decodes; then blocks short enough to preempt
)
def test_overlapped_greedy_equals_full_forwards_and_the_synchronous_loop(tiny_llama, num_blocks, budget, max_num_seqs):  # noqa: F811
    prompts = random_prompts(5, seed=num_blocks)
    limits = {i: 4 + 3 * i for i in prompts}  # different lengths: sequences end while others run ahead
    scheduler, runner = make(tiny_llama, num_blocks=num_blocks, budget=budget, max_num_seqs=max_num_seqs)
    plans: list = []
    overlapped = overlapped_greedy(scheduler, runner, prompts, limits, plans)
    sync_scheduler, sync_runner = make(tiny_llama, num_blocks=num_blocks, budget=budget, max_num_seqs=max_num_seqs)
    assert overlapped == synchronous_greedy(sync_scheduler, sync_runner, prompts, limits)
    for seq_id, prompt in prompts.items():
        assert overlapped[seq_id] == full_greedy(tiny_llama, prompt, limits[seq_id]), seq_id
    fed_on_device = sum(1 for plan in plans for item in plan.scheduled if item.token_ids[0] < 0)
    assert fed_on_device > 20, "decode inputs were meant to come from the previous step's tokens"
    if num_blocks == 9:
        assert any(plan.preempted for plan in plans), "the cache was meant to run out"
    # every sequence ended and gave its blocks back (those that rode along too)
    assert not scheduler.blocks._tables and scheduler.blocks.num_free == num_blocks


def test_a_placeholder_is_never_fed_as_a_token(tiny_llama):  # noqa: F811
    """Without the previous step's tokens a placeholder id reaches the embedding and fails: it is never a token."""
    scheduler, runner = make(tiny_llama)
    scheduler.add("a", [5, 6, 7], 4)
    plan = scheduler.plan()
    runner.step(plan)
    scheduler.advance(plan)
    following = scheduler.plan()
    assert following.scheduled[0].token_ids == [-1]
    with pytest.raises(IndexError):
        runner.step(following)


def test_commit_replaces_placeholders_and_registers_blocks_only_then(tiny_llama):  # noqa: F811
    scheduler, runner = make(tiny_llama, block_size=4)
    scheduler.add("a", [5, 6, 7, 8, 9, 10, 11], 8)  # 7 prompt tokens: the first decode fills block 1
    first = scheduler.plan()
    scheduler.advance(first)
    second = scheduler.plan()  # feeds the placeholder at position 7: block 1 full once it runs
    scheduler.commit(first, [42])
    scheduler.advance(second)
    assert scheduler.get("a").tokens[7:] == [42, -1]
    cached_before = dict(scheduler.blocks._cached)
    scheduler.commit(second, [43])
    assert scheduler.get("a").tokens[7:] == [42, 43]
    assert len(scheduler.blocks._cached) == len(cached_before) + 1  # [9, 10, 11, 42] joined the cache only now


def test_feed_previous_tokens():
    previous = torch.tensor([70, 71, 72])
    ids = torch.tensor([5, -1, 9, -3, -2])
    assert feed_previous_tokens(ids, previous).tolist() == [5, 70, 9, 72, 71]
    assert feed_previous_tokens(torch.tensor([-3, 0]), previous, limit=2).tolist() == [71, 0]


def test_the_synchronous_loop_is_unchanged_by_the_max_tokens_rule(tiny_llama):  # noqa: F811
    """A sequence at its max_tokens is not planned again (its finish is the core's): paged_greedy still equals full forwards."""
    prompts = random_prompts(3, seed=3)
    scheduler, runner = make(tiny_llama)
    outputs = paged_greedy(scheduler, runner, prompts, max_tokens=6)
    assert all(outputs[i] == full_greedy(tiny_llama, p, 6) for i, p in prompts.items())
