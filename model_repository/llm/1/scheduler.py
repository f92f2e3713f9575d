"""The step planner of a paged engine core: which tokens of which sequences run through the model in the next step.

Why: today's fast core stops decoding while it prefills a batch of prompts, and refuses work beyond its slots.
Here one step mixes both (chunked prefill): a token budget per step is filled
1. first with ONE decode token per running sequence that has finished its prefill, so a burst of long prompts
   never starves the sequences already generating (the budget must cover max_num_seqs decode tokens);
2. then with prefill chunks of running sequences that are part-way through their prompt (oldest first);
3. then with the first chunk of waiting sequences, admitted first come first served while blocks, the budget and
   `max_num_seqs` allow; admission looks the prompt up in the prefix cache, so cached tokens cost nothing.
Every sequence is the same thing to the planner: `tokens` (prompt, then generated) of which the first
`num_computed` have K/V in the cache; a step feeds it tokens[num_computed : num_computed + n], and when that
reaches its last token, that token's logits are sampled (decode is simply n = 1).

When blocks run out for a decode token, the most recently admitted running sequence not yet scheduled in this
step is preempted by recompute: its blocks are freed and it goes back to the FRONT of the waiting queue with
num_computed = 0; since its tokens already include what it generated, its next "prefill" recomputes prompt and
output together (the prefix cache usually still holds most of its full blocks). A prefill chunk never preempts
an older sequence or itself; it is shrunk to the room left, or waits.

Pure Python, no torch: the core drives it as  plan = scheduler.plan(); logits = runner.step(plan);
tokens = sample(logits); scheduler.update(plan, tokens); scheduler.finish(...) for the sequences that ended.
Overlapped (paged_overlap.py): `advance(plan)` once the step is launched, its tokens still on the device: each
sampled sequence gets a placeholder token, -(1 + j) for the j-th sampled row, which the next step's runner takes on
the device from this step's sampled tokens; then the next plan; then `commit(plan, tokens)` puts the real tokens in
and registers the full blocks (a block joins the prefix cache only once every token in it is known).
A sequence whose output reached its max_tokens (a placeholder counts) is not scheduled again: it only waits for
the core to finish it.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Hashable, Sequence
from dataclasses import dataclass, field

from kv_blocks import BlockManager


@dataclass(eq=False)
class SequenceState:
    seq_id: Hashable
    tokens: list[int]  # prompt, then every generated token
    num_prompt_tokens: int
    num_computed: int = 0  # leading tokens whose K/V are in the cache
    num_preemptions: int = 0
    is_running: bool = False  # holds blocks (a flag, not `in running`: the planner asks for every sequence)
    use_prefix_cache: bool = True  # False: every token is computed (the core scores the prompt's tokens)
    max_tokens: int = 1 << 62  # output tokens it may have: never scheduled past them

    @property
    def output(self) -> list[int]:
        return self.tokens[self.num_prompt_tokens :]

    @property
    def num_uncomputed(self) -> int:
        return len(self.tokens) - self.num_computed


@dataclass(slots=True)
class ScheduledSequence:
    """One sequence's share of a step: its new tokens and where they go."""

    seq_id: Hashable
    token_ids: list[int]  # fed this step (a prefill chunk, or the one token of a decode)
    start: int  # position of token_ids[0] = tokens already in the cache
    block_table: list[int]  # covers start + len(token_ids) tokens (may grow later: read it at the step)
    sample: bool  # the last token is the sequence's last known one: sample the next from its logits

    @property
    def context_len(self) -> int:
        return self.start + len(self.token_ids)


@dataclass
class StepPlan:
    scheduled: list[ScheduledSequence] = field(default_factory=list)  # decodes first, then prefill chunks
    preempted: list[Hashable] = field(default_factory=list)  # sent back to waiting in this step

    @property
    def num_tokens(self) -> int:
        return sum(len(s.token_ids) for s in self.scheduled)

    @property
    def sampled(self) -> list[Hashable]:
        """The sequences whose logits the runner returns, in its order."""
        return [s.seq_id for s in self.scheduled if s.sample]

    @property
    def is_pure_decode(self) -> bool:
        """Every sequence feeds one token and samples: the shape a CUDA graph of the decode step can replay."""
        return all(len(s.token_ids) == 1 and s.sample for s in self.scheduled)


class Scheduler:
    def __init__(self, blocks: BlockManager, max_num_seqs: int, max_num_batched_tokens: int = 2048):
        if max_num_batched_tokens < max_num_seqs:
            raise ValueError("max_num_batched_tokens must cover one decode token for each of max_num_seqs")
        self.blocks = blocks
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[SequenceState] = deque()
        self.running: list[SequenceState] = []  # admission order: the last is the first to preempt
        self._sequences: dict[Hashable, SequenceState] = {}

    # ------------------------------------------------------------------ the core's side
    def add(
        self, seq_id: Hashable, prompt: Sequence[int], max_tokens: int, use_prefix_cache: bool = True
    ) -> SequenceState:
        """Queue a sequence. It must fit the whole cache on its own (else preemption could never make room)."""
        if seq_id in self._sequences:
            raise ValueError(f"sequence {seq_id!r} is already scheduled")
        if not prompt:
            raise ValueError("the prompt is empty")
        capacity = self.blocks.num_blocks * self.blocks.block_size
        if len(prompt) + max_tokens > capacity:
            raise ValueError(f"prompt + max_tokens ({len(prompt) + max_tokens}) exceeds the KV cache ({capacity})")
        sequence = SequenceState(seq_id, list(prompt), len(prompt), use_prefix_cache=use_prefix_cache,
                                 max_tokens=max_tokens)  # fmt: skip
        self._sequences[seq_id] = sequence
        self.waiting.append(sequence)
        return sequence

    def get(self, seq_id: Hashable) -> SequenceState:
        return self._sequences[seq_id]

    def finish(self, seq_id: Hashable) -> None:
        """The sequence ended (stop, length, cancelled): free its blocks, forget it."""
        sequence = self._sequences.pop(seq_id)
        if sequence.is_running:
            sequence.is_running = False
            self.running.remove(sequence)
            self.blocks.free(seq_id)
        else:
            self.waiting.remove(sequence)

    @property
    def has_work(self) -> bool:
        return bool(self.running or self.waiting)

    def update(self, plan: StepPlan, sampled_tokens: Sequence[int]) -> None:
        """After the step ran: its tokens' K/V are written (full blocks join the prefix cache) and each sampled
        sequence gets its new token (aligned with `plan.sampled`)."""
        if len(sampled_tokens) != sum(1 for item in plan.scheduled if item.sample):
            raise ValueError(f"{len(plan.sampled)} sampled sequences, {len(sampled_tokens)} tokens")
        new_tokens = iter(sampled_tokens)
        sequences, block_size = self._sequences, self.blocks.block_size
        for item in plan.scheduled:
            token = next(new_tokens) if item.sample else None
            sequence = sequences.get(item.seq_id)
            if sequence is None:  # finished since the plan (its token is dropped)
                continue
            num_new = len(item.token_ids)
            sequence.num_computed = item.start + num_new
            # Blocks are registered up to the computed tokens after every update, so one token completes a block
            # only when it is a block's last: the per-token decode step skips the call otherwise.
            if num_new > 1 or sequence.num_computed % block_size == 0:
                self.blocks.cache_full_blocks(item.seq_id, sequence.tokens, sequence.num_computed)
            if token is not None:
                sequence.tokens.append(token)

    def advance(self, plan: StepPlan) -> None:
        """After the step is launched, before its tokens are known: its tokens count as computed and each sampled
        sequence gets the placeholder -(1 + j), j its index among the step's sampled rows (`commit` replaces it).
        Nothing joins the prefix cache here: the step's inputs may hold the previous step's placeholders."""
        sequences, j = self._sequences, 0
        for item in plan.scheduled:
            sequence = sequences.get(item.seq_id)
            if sequence is not None:
                sequence.num_computed = item.start + len(item.token_ids)
                if item.sample:
                    sequence.tokens.append(-1 - j)
            j += item.sample

    def commit(self, plan: StepPlan, sampled_tokens: Sequence[int]) -> None:
        """After an advanced step ran: its placeholders become `sampled_tokens` (aligned with `plan.sampled`) and the
        blocks its tokens filled join the prefix cache. A sequence finished meanwhile is gone; one preempted since
        holds no blocks (its recompute reads the real token: it is not admitted again before this)."""
        if len(sampled_tokens) != sum(1 for item in plan.scheduled if item.sample):
            raise ValueError(f"{len(plan.sampled)} sampled sequences, {len(sampled_tokens)} tokens")
        new_tokens = iter(sampled_tokens)
        sequences, block_size = self._sequences, self.blocks.block_size
        for item in plan.scheduled:
            token = next(new_tokens) if item.sample else None
            sequence = sequences.get(item.seq_id)
            if sequence is None:
                continue
            computed = item.start + len(item.token_ids)
            if token is not None:
                sequence.tokens[computed] = token
            if sequence.is_running and (len(item.token_ids) > 1 or computed % block_size == 0):
                self.blocks.cache_full_blocks(item.seq_id, sequence.tokens, computed)

    # ------------------------------------------------------------------ planning
    def plan(self) -> StepPlan:
        plan = StepPlan()
        budget = self.max_num_batched_tokens
        scheduled: set[Hashable] = set()

        def schedule(sequence: SequenceState, n: int, reserve: bool = True) -> None:
            nonlocal budget
            start = sequence.num_computed
            table = (
                self.blocks.append_slots(sequence.seq_id, n) if reserve else self.blocks.block_table(sequence.seq_id)
            )
            plan.scheduled.append(
                ScheduledSequence(
                    sequence.seq_id,
                    sequence.tokens[start : start + n],
                    start,
                    list(table),  # a snapshot: the table grows after this step
                    start + n == len(sequence.tokens),
                )
            )
            scheduled.add(sequence.seq_id)
            budget -= n

        # 1. one decode token per generating sequence, preempting the newest to make room (the hot loop: one
        # sequence of a large batch costs ~1 us here, so it does the work of schedule() inline)
        prefilling: list[SequenceState] = []  # running sequences part-way through their prompt, in order
        append_slot = self.blocks.append_slot
        for sequence in list(self.running):
            if not sequence.is_running:  # preempted by an earlier one of this loop
                continue
            start = sequence.num_computed
            if len(sequence.tokens) - start != 1:
                prefilling.append(sequence)
                continue
            if len(sequence.tokens) - sequence.num_prompt_tokens >= sequence.max_tokens:  # done: the core ends it
                continue
            table = append_slot(sequence.seq_id)
            while table is None and sequence.is_running:  # no block free for its next token
                self._preempt(self._newest_unscheduled(scheduled), plan)
                table = append_slot(sequence.seq_id) if sequence.is_running else None
            if table is not None:
                # the live table, not a copy: a table only grows, so it keeps covering this step's tokens
                plan.scheduled.append(ScheduledSequence(sequence.seq_id, sequence.tokens[start:], start, table, True))
                scheduled.add(sequence.seq_id)
                budget -= 1

        # 2. the next chunk of prompts part-way through; room only from sequences admitted after them
        for sequence in prefilling:
            if not sequence.is_running or budget == 0:
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

        # 3. admit waiting sequences, first come first served (a prompt that does not fit waits: no overtaking);
        # not in a step that had to preempt: blocks are short, and the victim would only be admitted again
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

    def _newest_unscheduled(self, scheduled: set[Hashable]) -> SequenceState:
        return next(s for s in reversed(self.running) if s.seq_id not in scheduled)

    def _preempt(self, sequence: SequenceState, plan: StepPlan) -> None:
        self.running.remove(sequence)
        self.blocks.free(sequence.seq_id)
        sequence.is_running = False
        sequence.num_computed = 0
        sequence.num_preemptions += 1
        # Victims go newest first; each in front of the previous one keeps them in admission order.
        self.waiting.appendleft(sequence)
        plan.preempted.append(sequence.seq_id)
