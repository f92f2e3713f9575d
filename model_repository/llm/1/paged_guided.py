"""Guided decoding (grammar.py, over xgrammar) for the paged fast core: a GuideMatcher per guided sequence, its
row of the sampler's token bitmask written before a step samples it, and the step's token accepted once the host
has it.

A mask is only right once the matcher has accepted every token before it, so the host must not run ahead of the
grammar: while a guided sequence runs, paged_fast_core's loop waits for the step in flight (`_complete`) before it
plans and launches the next (its overlapped order is off: paged_overlap.overlappable), and this module accepts
that step's tokens there, before `_launch` writes the next masks. The text, stop strings
and finish reasons still follow a step later (`_deliver`), as for any sequence.

grammar.py (xgrammar, and the tokenizer it loads) is imported with the first guided request.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from core import Sampling
from sampler import SlotSampler

if TYPE_CHECKING:
    from grammar import GuideMatcher, Guides
    from paged_sequences import PagedSequence


class PagedGuides:
    """One engine's guided decoding: compiles guides (at submit), masks the sampled rows of a step (at launch),
    and moves each matcher past its sampled token (when the step completes)."""

    def __init__(self, checkpoint_dir: str, vocab_size: int, sampler: SlotSampler):
        self._checkpoint = Path(checkpoint_dir)
        self._vocab_size = vocab_size
        self._sampler = sampler
        self._guides: Guides | None = None  # made by the first guided request
        self._host_bitmask: torch.Tensor | None = None  # the rows written for a guided step, copied to the device
        self._in_flight = False  # a masked step whose tokens the matchers have not accepted yet

    def compile(self, sampling: Sampling):
        """The request's guide compiled, or None without one; InvalidRequest (naming the guide) if it does not
        compile, so that submit refuses it at once."""
        if sampling.guide is None:
            return None
        if self._guides is None:
            from grammar import Guides

            self._guides = Guides(self._checkpoint, self._vocab_size)
        return self._guides.compile(*sampling.guide)

    def matcher(self, compiled, end_ids: frozenset[int]) -> GuideMatcher:
        """A sequence's own matcher of a compiled guide (`end_ids`: the ids that end the sequence)."""
        assert self._guides is not None
        return self._guides.matcher(compiled, end_ids)

    def write_masks(self, sampled: list[PagedSequence]) -> None:
        """Before a guided step samples: each sampled row's bitmask, its grammar's allowed tokens or all (-1)
        without a grammar. A row is reused by later sequences, so every sampled row is written, guided or not."""
        assert not self._in_flight, "the previous guided step's tokens must be accepted before the next mask"
        if self._host_bitmask is None:
            device = self._sampler.bitmask
            self._host_bitmask = torch.empty(device.shape, dtype=torch.int32, pin_memory=device.is_cuda)
        host = self._host_bitmask
        for sequence in sampled:
            guide = sequence.guide
            # a sequence whose grammar ended rides along in this step (the host lags): its token will be dropped
            if guide is None or guide.terminated or sequence.done:
                host[sequence.row] = -1
            else:
                guide.fill(host, sequence.row)
        # the loop waits for each step before writing the next masks, so the pinned buffer is free to reuse
        self._sampler.bitmask.copy_(host, non_blocking=True)
        self._in_flight = True

    def accept(self, sampled: list[PagedSequence], tokens: list[int]) -> None:
        """After a guided step, with its tokens on the host: each matcher past its sequence's token (a refused one,
        which the mask rules out, is kept on the matcher: the sequence then ends "error" when delivered)."""
        if not self._in_flight:
            return
        self._in_flight = False
        for sequence, token in zip(sampled, tokens, strict=True):
            guide = sequence.guide
            if guide is not None and not sequence.done and not guide.terminated:
                guide.accept(token)
