"""Overlapped (asynchronous) scheduling for the paged fast core: step N+1 is planned and queued on the device
BEFORE the host waits for step N's tokens, so the device never idles while the host plans, flattens, launches and
delivers (vLLM's async scheduler, SGLang's overlap mode).

How a step runs ahead of its inputs:
- once step N is queued, `Scheduler.advance` gives each sequence it samples the placeholder token -(1 + j), j
  its index among N's sampled rows; positions, block tables (a decode's block is taken when N+1 is planned) and
  the sampler's positions are known on the host without N's tokens;
- step N+1's runner replaces each placeholder by N's sampled token ON THE DEVICE (`feed_previous_tokens`, a
  gather: no host round trip), in the eager step and inside the decode CUDA graphs alike;
- N's tokens (and log-probabilities) are copied to pinned host memory right after N's sampling, before N+1 is
  queued behind them (`StepInFlight.launched`), so waiting for them never waits for N+1;
- then `Scheduler.commit` puts the real tokens in place of the placeholders and registers the full blocks, and
  the core delivers N's tokens while N+1 runs. A sequence that ended at N (end id, stop string, cancelled) rides
  along in N+1 and that token is dropped, as in the synchronous order, where delivery also follows the next
  launch; max_tokens is known ahead, so the scheduler never plans past it.
The sampler's device state (penalty counts, bad-word windows, min_tokens counts) advances on the device in
stream order, and seeded draws depend only on (key, position): both orders give the same tokens.
Guided decoding needs N's tokens on the host for N+1's masks (paged_guided.py): with a guided sequence
running, the core uses the synchronous order (`overlappable`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from sampler import Flags
from scheduler import Scheduler, StepPlan

if TYPE_CHECKING:
    from paged_guided import PagedGuides


def overlappable(flags: Flags) -> bool:
    """Whether the next step may be planned before the one in flight is complete: not when a grammar must see
    the step's tokens before it masks the next (paged_guided.py)."""
    return not flags.guided


def feed_previous_tokens(input_ids: torch.Tensor, previous: torch.Tensor, limit: int | None = None) -> torch.Tensor:
    """`input_ids` with each placeholder -(1 + j) replaced by `previous[j]` (the previous step's sampled
    tokens), on the device with no host sync. `limit` clamps the index (a CUDA graph's fixed buffer, whose
    padding and non-placeholder rows must index something); without it a bad index raises."""
    index = (-1 - input_ids).clamp_min(0)
    if limit is not None:
        index = index.clamp_max(limit - 1)
    return torch.where(input_ids < 0, previous.index_select(0, index), input_ids)  # index_select: graph-safe


@dataclass(eq=False)
class StepInFlight:
    """A launched step: its plan, the core's sequences it samples (plan.sampled's order), their tokens on the
    device (what the next step's placeholders read) and on their way to the host."""

    plan: StepPlan
    sampled: list
    tokens: torch.Tensor | None  # [S] on the device; None when the step samples nothing
    host_tokens: torch.Tensor | None
    host_logprobs: tuple | None  # (chosen, top values, top ids) on the host (the last two may be None)
    ready: torch.cuda.Event | None  # recorded after the copies (CUDA); None on CPU, where they are done
    advanced: bool = False  # scheduler.advance'd (placeholders): complete with commit, not update

    @classmethod
    def launched(cls, plan: StepPlan, sampled: list, tokens, logprobs, scheduler: Scheduler | None) -> StepInFlight:
        """Start the copies to the host now, before anything else is queued behind them; with `scheduler`
        (overlapped), advance it: placeholders, so that the next plan can come before these tokens."""
        if scheduler is not None:
            scheduler.advance(plan)
        if tokens is None or not tokens.is_cuda:
            return cls(plan, sampled, tokens, tokens, logprobs, None, scheduler is not None)
        host = tokens.to("cpu", non_blocking=True)  # pinned memory (torch pins a non-blocking copy to the host)
        if logprobs is not None:
            logprobs = tuple(None if t is None else t.to("cpu", non_blocking=True) for t in logprobs)
        ready = torch.cuda.Event()
        ready.record()
        return cls(plan, sampled, tokens, host, logprobs, ready, scheduler is not None)

    def wait(self) -> tuple[list[int], tuple | None]:
        """The step's tokens and log-probabilities as lists, once the device has them."""
        if self.ready is not None:
            self.ready.synchronize()
        tokens = self.host_tokens.tolist() if self.host_tokens is not None else []
        logprobs = self.host_logprobs
        if logprobs is not None:
            logprobs = tuple(None if t is None else t.tolist() for t in logprobs)
        return tokens, logprobs

    def complete(self, tokens: list[int], scheduler: Scheduler, guides: PagedGuides) -> None:
        """The step's tokens (from `wait`) to the grammars (before the next masks) and the scheduler's sequences
        (in place of the placeholders, when advanced)."""
        guides.accept(self.sampled, tokens)
        if self.advanced:
            scheduler.commit(self.plan, tokens)
        else:
            scheduler.update(self.plan, tokens)
