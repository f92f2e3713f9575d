"""The host fast paths of the paged core (issue 16) against the code they replaced, on random workloads with
admissions, finishes, chunked prefill, prefix-cache hits and preemptions: Scheduler.plan/update (decode inline
over BlockManager.append_slot) and PagedRunner.flatten (one pass, one copy) give what the previous code gave."""

from __future__ import annotations

import random
from types import SimpleNamespace

import torch

from kv_blocks import BlockManager
from scheduler import ScheduledSequence, Scheduler, StepPlan


class ReferenceScheduler(Scheduler):
    """plan and update as they were before the fast path (every step through schedule(), can_append +
    append_slots, a copied block table; update registers blocks after every item)."""

    def update(self, plan: StepPlan, sampled_tokens) -> None:
        new_tokens = iter(sampled_tokens)
        for item in plan.scheduled:
            token = next(new_tokens) if item.sample else None
            sequence = self._sequences.get(item.seq_id)
            if sequence is None:
                continue
            sequence.num_computed = item.context_len
            self.blocks.cache_full_blocks(item.seq_id, sequence.tokens, sequence.num_computed)
            if token is not None:
                sequence.tokens.append(token)

    def plan(self) -> StepPlan:
        plan = StepPlan()
        budget = self.max_num_batched_tokens
        scheduled: set = set()

        def schedule(sequence, n: int, reserve: bool = True) -> None:
            nonlocal budget
            start = sequence.num_computed
            table = (
                self.blocks.append_slots(sequence.seq_id, n) if reserve else self.blocks.block_table(sequence.seq_id)
            )
            item = ScheduledSequence(
                sequence.seq_id,
                sequence.tokens[start : start + n],
                start,
                list(table),
                start + n == len(sequence.tokens),
            )
            plan.scheduled.append(item)
            scheduled.add(sequence.seq_id)
            budget -= n

        for sequence in list(self.running):
            if sequence.num_uncomputed != 1 or not sequence.is_running:
                continue
            while sequence.is_running and not self.blocks.can_append(sequence.seq_id, 1):
                self._preempt(self._newest_unscheduled(scheduled), plan)
            if sequence.is_running:
                schedule(sequence, 1)
        for sequence in list(self.running):
            if sequence.seq_id in scheduled or not sequence.is_running or budget == 0:
                continue
            n = min(sequence.num_uncomputed, budget)
            while self.blocks.append_room(sequence.seq_id) < n:
                victim = self._newest_unscheduled(scheduled)
                if victim is sequence:
                    break
                self._preempt(victim, plan)
            n = min(n, self.blocks.append_room(sequence.seq_id))
            if n > 0:
                schedule(sequence, n)
        while self.waiting and budget > 0 and len(self.running) < self.max_num_seqs and not plan.preempted:
            sequence = self.waiting[0]
            cached = self.blocks.allocate(sequence.seq_id, sequence.tokens, budget, sequence.use_prefix_cache)
            if cached is None:
                break
            self.waiting.popleft()
            self.running.append(sequence)
            sequence.is_running = True
            sequence.num_computed = cached
            schedule(sequence, min(sequence.num_uncomputed, budget), reserve=False)
        return plan


def reference_flatten(block_size: int, plan: StepPlan) -> dict:
    """The previous PagedRunner.flatten, per position, as plain lists."""
    out: dict = {k: [] for k in ("ids", "positions", "blocks", "offsets", "rows", "kv_indices", "last", "context")}
    out["qo"], out["kv"] = [0], [0]
    for item in plan.scheduled:
        span = range(item.start, item.context_len)
        out["ids"] += item.token_ids
        out["positions"] += span
        out["blocks"] += [item.block_table[p // block_size] for p in span]
        out["offsets"] += [p % block_size for p in span]
        out["qo"].append(out["qo"][-1] + len(item.token_ids))
        if item.sample:
            out["rows"].append(out["qo"][-1] - 1)
        used = -(-item.context_len // block_size)
        out["kv_indices"] += item.block_table[:used]
        out["kv"].append(out["kv"][-1] + used)
        out["last"].append(item.context_len - (used - 1) * block_size)
        out["context"].append(item.context_len)
    return out


def flattened(block_size: int, plan: StepPlan) -> dict:
    from paged_runner import PagedRunner

    runner = SimpleNamespace(block_size=block_size, max_model_len=1 << 20, device=torch.device("cpu"))
    step = PagedRunner.flatten(runner, plan)  # type: ignore[arg-type]  # flatten reads only these three
    return {
        "ids": step.input_ids.tolist(), "positions": step.positions.tolist(), "blocks": step.write_blocks.tolist(),
        "offsets": step.write_offsets.tolist(), "rows": step.sample_rows.tolist(), "kv_indices": step.kv_indices,
        "last": step.kv_last_page_len, "context": step.context_lens, "qo": step.qo_indptr, "kv": step.kv_indptr,
    }  # fmt: skip


def snapshot(plan: StepPlan) -> list:
    return [(s.seq_id, list(s.token_ids), s.start, list(s.block_table), s.sample) for s in plan.scheduled]


def test_fast_plan_update_and_flatten_equal_the_previous_code_on_random_workloads():
    preempting = [seed for seed in range(8) if run_both(seed) > 0]
    assert len(preempting) >= 2, "some workloads should run out of blocks now and then"


def run_both(seed: int) -> int:
    """Both schedulers through one random workload, compared at every step; the preemptions it saw."""
    rng = random.Random(seed)
    block_size = rng.choice([2, 4, 16])
    num_blocks, max_num_seqs = rng.randint(10, 24), rng.randint(3, 8)
    budget = rng.randint(max_num_seqs, 48)
    pair = [cls(BlockManager(num_blocks, block_size), max_num_seqs, budget) for cls in (Scheduler, ReferenceScheduler)]
    prefixes = [[rng.randrange(1000) for _ in range(rng.randint(0, 3 * block_size))] for _ in range(3)]
    limits: dict[int, int] = {}
    next_id, preemptions = 0, 0
    for _ in range(300):
        if rng.random() < 0.4 and len(limits) < 12:  # admissions, often sharing a cached prefix
            prompt = rng.choice(prefixes) + [rng.randrange(1000) for _ in range(rng.randint(1, 2 * block_size))]
            max_tokens = rng.randint(1, 4 * block_size)
            if len(prompt) + max_tokens <= num_blocks * block_size:
                use_cache = rng.random() < 0.8
                for scheduler in pair:
                    scheduler.add(next_id, prompt, max_tokens, use_cache)
                limits[next_id], next_id = max_tokens, next_id + 1
        fast, reference = (scheduler.plan() for scheduler in pair)
        assert snapshot(fast) == snapshot(reference)
        assert fast.preempted == reference.preempted
        preemptions += len(fast.preempted)
        assert flattened(block_size, fast) == reference_flatten(block_size, fast)
        tokens = [rng.randrange(1000) for _ in fast.sampled]
        for scheduler, plan in zip(pair, (fast, reference), strict=True):
            scheduler.update(plan, tokens)
        for seq_id in list(limits):  # finishes: at max_tokens, and now and then early (a stop string, a cancel)
            state = pair[0].get(seq_id)
            if len(state.output) >= limits[seq_id] or (state.output and rng.random() < 0.02):
                for scheduler in pair:
                    scheduler.finish(seq_id)
                del limits[seq_id]
        for a, b in zip(*(sorted(s._sequences.items()) for s in pair), strict=True):
            assert (a[0], a[1].tokens, a[1].num_computed, a[1].is_running) == (
                b[0],
                b[1].tokens,
                b[1].num_computed,
                b[1].is_running,
            )
        fast_blocks, reference_blocks = (s.blocks for s in pair)
        assert fast_blocks._tables.keys() == reference_blocks._tables.keys()
        for seq_id, table in fast_blocks._tables.items():
            other = reference_blocks._tables[seq_id]
            assert (table.blocks, table.num_tokens, table.hashes) == (other.blocks, other.num_tokens, other.hashes)
        assert fast_blocks._cached == reference_blocks._cached
        assert list(fast_blocks._evictable) == list(reference_blocks._evictable)
    assert next_id > 20
    return preemptions
