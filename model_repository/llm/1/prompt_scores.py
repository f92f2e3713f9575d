"""Prompt log-probabilities for the paged fast core (return_prompt_log_probs): scored from the step's kept hidden
states, chunk by chunk, so a long prompt never holds all its logits at once."""

from __future__ import annotations

import torch

PROMPT_LOGPROB_CHUNK = 512  # prompt positions whose logits are held at once


def score_prompts(runner, plan, scheduled: list, device) -> None:
    """Log-probabilities of the prompt tokens in this step's chunks (row j of a chunk from `start` is the
    distribution of prompt token start + j + 1): the raw log_softmax, as for generated tokens. `scheduled` are
    the paged core's sequences of `plan`, in order; a sequence's scores gather in its `prompt_parts` until its
    prompt is complete, then every sequence of its request gets them (`prompt_scores`)."""
    hidden, indptr = runner.hidden, runner.qo_indptr
    assert hidden is not None
    for i, (item, sequence) in enumerate(zip(plan.scheduled, scheduled, strict=True)):
        prompt, k = sequence.request.prompt, sequence.prompt_k
        if k < 0 or item.start >= len(prompt) - 1:
            continue
        if item.start == 0:  # a recompute after preemption starts over
            sequence.prompt_parts = []
        rows = min(len(item.token_ids), len(prompt) - 1 - item.start)
        for offset in range(0, rows, PROMPT_LOGPROB_CHUNK):
            end = min(offset + PROMPT_LOGPROB_CHUNK, rows)
            logprobs = runner.logits_of(hidden[indptr[i] + offset : indptr[i] + end]).log_softmax(-1)
            first = item.start + offset + 1
            targets = torch.tensor(prompt[first : item.start + end + 1], device=device)
            chosen = logprobs.gather(1, targets[:, None])[:, 0].tolist()
            top = None
            if k:
                values, ids = logprobs.topk(k, dim=-1)
                top = [tuple(zip(i_, v_, strict=True)) for i_, v_ in zip(ids.tolist(), values.tolist(), strict=True)]
            sequence.prompt_parts.append((chosen, top))
        if item.start + rows == len(prompt) - 1:  # complete: every sequence of the request reports it
            chosen_all = tuple(v for part in sequence.prompt_parts for v in part[0])
            top_all = tuple(t for part in sequence.prompt_parts for t in part[1]) if k else None
            for other in sequence.request.sequences:
                other.prompt_scores = (chosen_all, top_all)
            sequence.prompt_k, sequence.prompt_parts = -1, []
