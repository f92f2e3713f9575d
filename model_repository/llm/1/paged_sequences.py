"""The paged fast core's records (paged_fast_core.py): a request and each of its n sequences, with what the loop
keeps per sequence between steps (sampler row, detokenizer, pending deltas, prompt scores, grammar state)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core import Sampling, TopLogprobs, Update
from sampler import SlotConfig
from text_stream import TextStream

if TYPE_CHECKING:  # grammar.py (xgrammar) is imported with the first guided request
    from grammar import GuideMatcher


@dataclass(eq=False)
class PagedRequest:
    request_id: str
    prompt: list[int]
    sampling: Sampling
    sink: Callable[[Update], None]
    is_cancelled: Callable[[], bool]
    sequences: list[PagedSequence] = field(default_factory=list)
    done: bool = False


@dataclass(eq=False)
class PagedSequence:
    """One of a request's n sequences: its scheduler id, sampler row, key (seed stream), text and pending deltas."""

    request: PagedRequest
    index: int
    seq_id: int
    config: SlotConfig
    stream: TextStream
    eos_ids: frozenset[int]  # the ids that end it (end-of-sequence, end_id, stop_token_ids)
    prompt_k: int = -1  # -1: no prompt log-probs (or scored already); else their top k
    row: int = -1  # its sampler row while it is scheduled
    generated: int = 0
    done: bool = False
    ids: list[int] = field(default_factory=list)  # generated since the last update (end ids left out)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[TopLogprobs] = field(default_factory=list)
    prompt_parts: list = field(default_factory=list)  # (start, chosen, top) per scored chunk, until complete
    prompt_scores: tuple | None = None  # (prompt_logprobs, prompt_top_logprobs) until the first update
    guide: GuideMatcher | None = None  # its grammar's state (grammar.py), when the request has a guide
