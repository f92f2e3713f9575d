"""Per-sequence sampling in numpy for the paged OpenVINO core (openvino_paged_core.py): the semantics of the torch
sampler (sampler.py of the fast core), on the host, over the logits rows openvino_paged_runner hands back.

In order, per row (`process`):
- repetition penalty (HF/vLLM: over prompt and generated tokens, positive logits divided, negative multiplied),
  then presence / frequency penalties (OpenAI: over generated tokens, `logit -= presence*(count>0) + frequency*count`);
- the logit bias (OpenAI logit_bias; -inf for single-token bad words), then the last token of each multi-token bad
  word whose other tokens the sequence just generated (vLLM's prefix match over generated tokens only);
- the end ids (end-of-sequence, stop_token_ids) masked while fewer than min_tokens were generated;
- a guide's grammar (grammar.GuideMatcher): the tokens it disallows next at -inf (if that leaves no token, as
  when min_tokens masks the end the grammar requires, the grammar's mask alone over the raw logits: the grammar
  wins); the kept token is accepted by the matcher in `advance`;
- then greedy argmax, or temperature, top-k, top-p and a Gumbel-max draw with the torch sampler's counter-based
  noise: u = mix32(step key + mix32(token id)), step key = mix32(sequence key ^ mix32(position)). The same sequence
  key, position and logits give the same token as the torch sampler (up to float32 rounding of the logs): no
  generator state, so a sequence's draws depend neither on its batch nor on preemption.
Log-probabilities are vLLM's default: the raw log_softmax of the model's logits (before all of the above).

Why host-side numpy: the runner returns numpy anyway (OpenVINO on CPU), and a row costs ~0.1 ms (argmax / a
partial selection), small next to the ~20-40 ms forward of a CPU step. Rows that need nothing beyond argmax are
batched into one argmax; the others are processed one by one (a copy of the row only when something changes it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # grammar.py imports xgrammar (and torch): only a guided request loads it
    from grammar import GuideMatcher

MASK32 = 0xFFFFFFFF
# top_p without top_k: look for the nucleus among the tokens within this many nats of the most likely (a model's
# nucleus is usually a few dozen tokens) before sorting the whole vocabulary (~3 ms a row of 49152). Exact: a token
# left out ranks below every candidate, so the mass before it is at least the candidates', >= top_p.
TOP_P_GAPS = (12.0, 30.0)
# The noise of 24-bit uniforms lies in [-log(-log(2**-25)), -log(-log(1 - 2**-25))] = [-2.85, 17.33]: a token more
# than 20.2 below the best can never win the Gumbel-max, so the draw looks only at those within GUMBEL_SPAN.
GUMBEL_SPAN = 21.0
CHUNK = 256  # _top_ids' prefilter: the k-th largest of the chunks' maxima bounds the k-th largest entry
_U64 = np.uint64


def mix32(x):
    """lowbias32, on python ints or numpy uint64 arrays holding values in [0, 2**32) (products stay < 2**64)."""
    if isinstance(x, np.ndarray):
        x = x.astype(_U64, copy=False)
        x = x ^ (x >> _U64(16))
        x = (x * _U64(0x21F0AAAD)) & _U64(MASK32)
        x = x ^ (x >> _U64(15))
        x = (x * _U64(0x735A2D97)) & _U64(MASK32)
        return x ^ (x >> _U64(15))
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & MASK32
    return x ^ (x >> 15)


def sequence_key(seed: int, index: int) -> int:
    """The 32-bit noise key of sequence `index` of a request seeded `seed` (any 64-bit value): sampler.py's."""
    folded = mix32((seed & MASK32) ^ mix32((seed >> 32) & MASK32))
    return mix32(folded ^ mix32((index * 0x9E3779B9 + 0x7F4A7C15) & MASK32))


def step_key(key: int, position: int) -> int:
    """The noise key of one draw: the sequence's key and the position of the token whose logits are sampled."""
    return mix32(key ^ mix32((position * 0x9E3779B1 + 0x632BE5AB) & MASK32))


_token_hash_cache: dict[int, np.ndarray] = {}


def token_hashes(vocab_size: int) -> np.ndarray:
    if vocab_size not in _token_hash_cache:
        _token_hash_cache[vocab_size] = mix32(np.arange(vocab_size, dtype=_U64))
    return _token_hash_cache[vocab_size]


def gumbel(step: int, tokens: np.ndarray, vocab_size: int) -> np.ndarray:
    """Gumbel noise (float32) of `tokens` for one draw keyed `step`: 24 random bits per token, as sampler.py."""
    hashed = token_hashes(vocab_size)[tokens]
    bits = mix32((hashed + _U64(step)) & _U64(MASK32)) >> _U64(8)
    uniform = (bits.astype(np.float32) + np.float32(0.5)) * np.float32(1.0 / (1 << 24))
    return -np.log(-np.log(uniform))


@dataclass(frozen=True)
class SamplingParams:
    """One sequence's sampling settings (sampler.SlotConfig's fields)."""

    temperature: float = 1.0
    top_k: int = 0  # 0: every token
    top_p: float = 1.0
    greedy: bool = True
    key: int = 0  # sequence_key
    presence: float = 0.0
    frequency: float = 0.0
    repetition: float = 1.0
    bias: tuple[tuple[int, float], ...] = ()  # (token id, added to its logit); -inf bans it
    bad_sequences: tuple[tuple[int, ...], ...] = ()  # multi-token bad words: the last is banned after the others
    end_ids: frozenset[int] = field(default_factory=frozenset)  # masked while fewer than min_tokens generated
    min_tokens: int = 0
    logprobs: int = -1  # -1: none; k >= 0: the sampled token's log-probability and the top k

    @property
    def penalised(self) -> bool:
        return self.presence != 0 or self.frequency != 0 or self.repetition != 1

    @property
    def plain(self) -> bool:
        """Nothing but an argmax of the raw logits."""
        return self.greedy and not (self.penalised or self.bias or self.bad_sequences or self.min_tokens)


class SequenceSampler:
    """A sequence's settings and what its processors need of its history (prompt, generated tokens), and its
    grammar's matcher when it has a guide."""

    def __init__(self, params: SamplingParams, prompt: list[int], vocab_size: int, guide: GuideMatcher | None = None):
        self.params, self.vocab_size, self.guide = params, vocab_size, guide
        self.guide_refused = False
        self.generated: list[int] = []
        self._prompt_ids = np.unique(np.asarray(prompt, dtype=np.int64)) if params.repetition != 1 else None
        if params.bias:  # duplicates add up, as index_put_(accumulate=True)
            ids = np.array([t for t, _ in params.bias], dtype=np.int64)
            values = np.array([v for _, v in params.bias], dtype=np.float32)
            self._bias_ids, inverse = np.unique(ids, return_inverse=True)
            self._bias_values = np.zeros(len(self._bias_ids), dtype=np.float32)
            np.add.at(self._bias_values, inverse, values)
        self._end_ids = np.array(sorted(params.end_ids), dtype=np.int64)

    @property
    def plain(self) -> bool:
        return self.params.plain and self.guide is None

    def process(self, logits: np.ndarray) -> np.ndarray:
        """The row after the penalties, the bias, the bad words, the min_tokens mask and the grammar (a copy when
        changed)."""
        out = self._process(logits)
        if self.guide is not None:
            allowed = self.guide.allowed()
            if allowed is not None:
                masked = np.where(allowed, out, np.float32(-np.inf)).astype(np.float32, copy=False)
                out = masked if np.isfinite(masked).any() else np.where(allowed, logits, np.float32(-np.inf))
        return out

    def _process(self, logits: np.ndarray) -> np.ndarray:
        p = self.params
        out = logits
        if p.penalised:
            out = logits.astype(np.float32, copy=True)
            ids, counts = np.unique(np.asarray(self.generated, dtype=np.int64), return_counts=True)
            if p.repetition != 1:
                seen = np.union1d(self._prompt_ids, ids)
                values = out[seen]
                out[seen] = np.where(values > 0, values / np.float32(p.repetition), values * np.float32(p.repetition))
            if len(ids):
                out[ids] -= np.float32(p.frequency) * counts.astype(np.float32) + np.float32(p.presence)
        if p.bias:
            out = out.copy() if out is logits else out
            out[self._bias_ids] += self._bias_values
        if p.bad_sequences:
            banned = [w[-1] for w in p.bad_sequences if _ends_with(self.generated, w[:-1])]
            if banned:
                out = out.copy() if out is logits else out
                out[banned] = -np.inf
        if p.min_tokens and len(self.generated) < p.min_tokens and len(self._end_ids):
            out = out.copy() if out is logits else out
            out[self._end_ids] = -np.inf
        return out

    def choose(self, logits: np.ndarray, position: int) -> int:
        """The next token from a processed row; `position` is that of the token whose logits these are."""
        p = self.params
        if p.greedy:
            return int(np.argmax(logits))
        scaled = logits.astype(np.float32) / np.float32(max(p.temperature, 1e-5))
        step = step_key(p.key, position)
        vocab = self.vocab_size
        top_k = p.top_k if 0 < p.top_k < vocab else 0
        if not top_k and p.top_p >= 1:
            ids = np.flatnonzero(scaled >= scaled.max() - np.float32(GUMBEL_SPAN))
            return int(ids[int(np.argmax(scaled[ids] + gumbel(step, ids, vocab)))])
        log_norm = _logsumexp(scaled)
        order = None
        if top_k:
            order = _top_ids(scaled, top_k)
        else:
            top = scaled.max()
            for gap in TOP_P_GAPS:
                ids = np.flatnonzero(scaled >= top - np.float32(gap))
                order = ids[np.argsort(-scaled[ids], kind="stable")]
                if np.exp(scaled[order] - log_norm).sum() >= p.top_p:  # the nucleus lies within
                    break
                order = None
        if order is None:
            order = np.argsort(-scaled, kind="stable")
        ordered = scaled[order]
        probs = np.exp(ordered - log_norm)
        before = np.cumsum(probs) - probs  # mass of the tokens ranked above each one
        keep = before < np.float32(p.top_p)
        if top_k:
            keep &= np.arange(len(order)) < top_k
        score = np.where(keep, ordered + gumbel(step, order, vocab), -np.inf)
        return int(order[int(np.argmax(score))])

    def advance(self, token: int) -> None:
        self.generated.append(token)
        if self.guide is not None and not self.guide.accept(token):
            self.guide_refused = True  # cannot happen (the token passed the grammar's own mask): the core ends it


def _ends_with(generated: list[int], prefix: tuple[int, ...]) -> bool:
    return len(generated) >= len(prefix) and tuple(generated[len(generated) - len(prefix) :]) == prefix


def _logsumexp(row: np.ndarray) -> np.float32:
    top = row.max()
    return top + np.log(np.exp(row - top).sum())


def _top_ids(row: np.ndarray, k: int) -> np.ndarray:
    """The k largest entries' ids, largest first (ties by id, as a stable sort)."""
    vocab = len(row)
    if vocab % CHUNK == 0 and k <= vocab // CHUNK:  # at least k entries reach the floor, so the top k all do
        maxima = row.reshape(-1, CHUNK).max(axis=-1)
        floor = np.partition(maxima, len(maxima) - k)[len(maxima) - k]
        candidates = np.flatnonzero(row >= floor)
        ids = candidates[np.argpartition(row[candidates], len(candidates) - k)[len(candidates) - k :]]
    else:
        ids = np.argpartition(row, vocab - k)[vocab - k :]
    ids.sort()
    return ids[np.argsort(-row[ids], kind="stable")]


@dataclass
class RowResult:
    token: int
    logprob: float | None = None  # with params.logprobs >= 0
    top: tuple[tuple[int, float], ...] = ()  # with params.logprobs > 0: (id, log-probability), most likely first


def sample_rows(logits: np.ndarray, samplers: list[SequenceSampler], positions: list[int]) -> list[RowResult]:
    """The next token of each row (`logits[i]` belongs to samplers[i], for the token at positions[i]), with the
    raw log-probabilities asked for. Does not advance the samplers (the caller does, once it keeps the token)."""
    from openvino_paged_runner import top_logprobs  # the chunked partial selection (~0.06 ms a row)

    rows = len(samplers)
    tokens = np.empty(rows, dtype=np.int64)
    plain = np.array([s.plain for s in samplers], dtype=bool)
    if plain.any():
        tokens[plain] = np.argmax(logits[plain], axis=-1)
    for i in np.flatnonzero(~plain):
        tokens[i] = samplers[i].choose(samplers[i].process(logits[i]), positions[i])
    results = [RowResult(int(t)) for t in tokens]

    wanted = [i for i, s in enumerate(samplers) if s.params.logprobs >= 0]
    if wanted:
        raw = logits[wanted].astype(np.float32, copy=False)
        shift = raw.max(axis=-1, keepdims=True)
        log_norm = (np.log(np.exp(raw - shift).sum(axis=-1, keepdims=True)) + shift)[:, 0]
        chosen = raw[np.arange(len(wanted)), tokens[wanted]] - log_norm
        k = max(samplers[i].params.logprobs for i in wanted)
        top_ids = top_values = None
        if k > 0:
            top_ids, top_values = top_logprobs(raw, k)
        for row, i in enumerate(wanted):
            results[i].logprob = float(chosen[row])
            ki = samplers[i].params.logprobs
            if ki > 0:
                results[i].top = tuple(
                    zip(top_ids[row, :ki].tolist(), top_values[row, :ki].tolist(), strict=True)  # type: ignore[index]
                )
    return results


def prompt_scores(logits: np.ndarray, next_ids: np.ndarray, k: int):
    """Raw log-probabilities of `next_ids` under each row (row j scores next_ids[j]) and, when k > 0, each row's
    top k as (ids [rows, k], values [rows, k])."""
    from openvino_paged_runner import top_logprobs

    shift = logits.max(axis=-1, keepdims=True)
    log_norm = (np.log(np.exp(logits - shift).sum(axis=-1, keepdims=True)) + shift)[:, 0]
    chosen = logits[np.arange(len(next_ids)), next_ids] - log_norm
    return chosen, (top_logprobs(logits, k) if k > 0 else None)
