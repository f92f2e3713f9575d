"""The fast engine core's sampling, per slot, on the device (paged_fast_core.py calls it after each forward). A slot
is a sampler row: a running sequence's sampling state (its KV cache is in paged blocks, kv_blocks.py).

Every request's settings live in per-slot device tensors, written once at admission (`setup`), so one batched step
honours each sequence's own settings without the host:
- repetition penalty (HF/vLLM: over prompt and generated tokens, positive logits divided, negative multiplied),
  then presence / frequency penalties (OpenAI: over generated tokens, `logit -= presence*(count>0) + frequency*count`),
  then the logit bias row (OpenAI logit_bias, and -inf for banned single-token bad words), then the last token of
  each multi-token bad word whose other tokens the sequence just generated (vLLM's prefix match, over generated
  tokens only; a word spelt by other tokens is not caught, as in vLLM), then the end ids
  (end-of-sequence, stop_token_ids) masked while fewer than min_tokens were generated; then temperature, top-k,
  top-p;
- the draw is Gumbel-max with counter-based noise: u = hash(key, position, token id) in integer tensor ops, the
  sample is argmax(logits / temperature + gumbel(u)) over the top-k/top-p set. A sequence's draws depend only on
  its key (from its seed and its index among the request's n), its positions and its logits: not on its batch,
  and with no generator state and no host sync (a CUDA-graph-friendly step);
- log-probabilities are vLLM's default: the raw `log_softmax` of the model's logits, before temperature, penalties
  and bias, computed only in a step where some running sequence asks for them.
Which of these run in a step is the host's `Flags` (what the running sequences need): with every feature off a
step costs what it did before (an argmax, or a sort for top-k/top-p sampling).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from bad_words import BAD_WORD_SEQUENCES, BAD_WORD_TOKENS

MASK32 = 0xFFFFFFFF
TOP_K_BOUND = 1024  # top_k up to this: the candidates come from torch.topk rather than sorting the vocabulary
_NO_TOKEN = -2  # the recent-token window before anything was generated (matches no prefix entry)


def mix32(x):
    """A 32-bit integer hash (lowbias32), on python ints or int64 tensors holding values in [0, 2**32); every
    product stays below 2**63, so int64 arithmetic is exact on every device."""
    x = x ^ (x >> 16)
    x = (x * 0x21F0AAAD) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x735A2D97) & MASK32
    return x ^ (x >> 15)


def sequence_key(seed: int, index: int) -> int:
    """The 32-bit noise key of sequence `index` of a request seeded `seed` (any 64-bit value)."""
    folded = mix32((seed & MASK32) ^ mix32((seed >> 32) & MASK32))
    return mix32(folded ^ mix32((index * 0x9E3779B9 + 0x7F4A7C15) & MASK32))


@dataclass(frozen=True)
class SlotConfig:
    """One sequence's sampling settings, as the device tensors hold them."""

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
    guided: bool = False  # a grammar masks its logits (the host writes its row of SlotSampler.bitmask each step)

    @property
    def penalised(self) -> bool:
        return self.presence != 0 or self.frequency != 0 or self.repetition != 1


@dataclass(frozen=True)
class Flags:
    """What a step must compute for the sequences it runs (host-side, so the fast path stays fast)."""

    sampling: bool = False  # some sequence samples (else argmax)
    filtered: bool = False  # some sequence samples with top-k or top-p
    top_k_bound: int = 0  # > 0: every sampling sequence keeps at most this many tokens (a top-k, not a full sort)
    penalties: bool = False
    bias: bool = False
    bad_words: bool = False  # multi-token ones
    min_tokens: bool = False
    logprobs: int = -1  # the largest top-k asked for; -1 when nobody asks
    guided: bool = False  # some sequence has a grammar: the step applies the bitmask

    @classmethod
    def of(cls, configs, vocab_size: int) -> Flags:
        configs = list(configs)
        sampled = [c for c in configs if not c.greedy]
        return cls(
            sampling=bool(sampled),
            filtered=any(0 < c.top_k < vocab_size or c.top_p < 1 for c in sampled),
            top_k_bound=max((c.top_k for c in sampled), default=0)
            if all(0 < c.top_k <= TOP_K_BOUND for c in sampled)
            else 0,
            penalties=any(c.penalised for c in configs),
            bias=any(c.bias for c in configs),
            bad_words=any(c.bad_sequences for c in configs),
            min_tokens=any(c.min_tokens > 0 and c.end_ids for c in configs),
            logprobs=max((c.logprobs for c in configs), default=-1),
            guided=any(c.guided for c in configs),
        )


def flag_key(config: SlotConfig) -> tuple:
    """What of a config decides Flags.of: configs with equal keys ask the same of a step."""
    return (
        config.greedy,
        config.top_k,
        config.top_p,
        config.penalised,
        bool(config.bias),
        bool(config.bad_sequences),
        config.min_tokens > 0 and bool(config.end_ids),
        config.logprobs,
        config.guided,
    )


class FlagCounts:
    """The running sequences' configs counted by flag_key, so a step's Flags come from one config per distinct
    key (a handful) rather than from every sequence after each admission or finish (2.3 ms at 1,024 sequences)."""

    def __init__(self) -> None:
        self._counts: dict[tuple, int] = {}
        self._examples: dict[tuple, SlotConfig] = {}

    def add(self, config: SlotConfig) -> None:
        key = flag_key(config)
        self._counts[key] = self._counts.get(key, 0) + 1
        self._examples.setdefault(key, config)

    def remove(self, config: SlotConfig) -> None:
        key = flag_key(config)
        self._counts[key] -= 1
        if not self._counts[key]:
            del self._counts[key], self._examples[key]

    def flags(self, vocab_size: int) -> Flags:
        return Flags.of(self._examples.values(), vocab_size)


class SlotSampler:
    def __init__(self, num_slots: int, vocab_size: int, device: torch.device):
        self.vocab_size, self.device = vocab_size, device
        f32, i64 = {"device": device, "dtype": torch.float32}, {"device": device, "dtype": torch.long}
        self.temperature = torch.ones(num_slots, **f32)
        self.top_k = torch.full((num_slots,), vocab_size, **i64)
        self.top_p = torch.ones(num_slots, **f32)
        self.greedy = torch.ones(num_slots, device=device, dtype=torch.bool)
        self.key = torch.zeros(num_slots, **i64)
        self.presence = torch.zeros(num_slots, **f32)
        self.frequency = torch.zeros(num_slots, **f32)
        self.repetition = torch.ones(num_slots, **f32)
        self.min_tokens = torch.zeros(num_slots, **i64)
        self.generated = torch.zeros(num_slots, **i64)  # tokens sampled for the slot's sequence so far
        self.counts = torch.zeros(num_slots, vocab_size, device=device, dtype=torch.int32)  # of generated tokens
        self.in_prompt = torch.zeros(num_slots, vocab_size, device=device, dtype=torch.bool)
        self.bias = torch.zeros(num_slots, vocab_size, **f32)
        self.end_mask = torch.zeros(num_slots, vocab_size, device=device, dtype=torch.bool)
        window = BAD_WORD_TOKENS - 1
        self.recent = torch.full((num_slots, window), _NO_TOKEN, **i64)  # the last tokens generated, oldest first
        self.bad_prefix = torch.full((num_slots, BAD_WORD_SEQUENCES, window), -1, **i64)  # right-aligned; -1: any
        self.bad_last = torch.full((num_slots, BAD_WORD_SEQUENCES), -1, **i64)  # -1: no entry
        # the grammar's allowed tokens per slot, xgrammar's packed int32 bitmask (-1: all), written by the host
        self.bitmask = torch.full((num_slots, (vocab_size + 31) // 32), -1, device=device, dtype=torch.int32)
        self.token_hash = mix32(torch.arange(vocab_size, **i64))
        self.ranks = torch.arange(vocab_size, **i64)[None]

    def setup(self, slots: torch.Tensor, configs: list[SlotConfig], prompts: list[list[int]]) -> None:
        """Write the settings of the sequences starting in `slots` (`prompts[i]` is slot i's prompt). Pass `slots` on
        the host: read there, a device tensor would wait for every step queued (a step may be in flight)."""
        host = slots.cpu()
        slots = slots.to(self.device, non_blocking=True)

        def put(tensor: torch.Tensor, values: list) -> None:
            tensor[slots] = torch.tensor(values, dtype=tensor.dtype).to(self.device, non_blocking=True)

        put(self.temperature, [c.temperature for c in configs])
        put(self.top_k, [c.top_k or self.vocab_size for c in configs])
        put(self.top_p, [c.top_p for c in configs])
        put(self.greedy, [c.greedy for c in configs])
        put(self.key, [c.key for c in configs])
        put(self.presence, [c.presence for c in configs])
        put(self.frequency, [c.frequency for c in configs])
        put(self.repetition, [c.repetition for c in configs])
        put(self.min_tokens, [c.min_tokens for c in configs])
        self.generated[slots] = 0
        self.counts[slots] = 0
        self.in_prompt[slots] = False
        self.bias[slots] = 0.0
        self.end_mask[slots] = False
        self.recent[slots] = _NO_TOKEN
        window = BAD_WORD_TOKENS - 1
        prefix = torch.full((len(configs), BAD_WORD_SEQUENCES, window), -1, dtype=torch.long)
        last = torch.full((len(configs), BAD_WORD_SEQUENCES), -1, dtype=torch.long)
        for row, config in enumerate(configs):
            for entry, words in enumerate(config.bad_sequences):
                prefix[row, entry, window - len(words) + 1 :] = torch.tensor(words[:-1])
                last[row, entry] = words[-1]
        self.bad_prefix[slots] = prefix.to(self.device, non_blocking=True)
        self.bad_last[slots] = last.to(self.device, non_blocking=True)
        rows, cols, values, prompt_rows, prompt_cols, end_rows, end_cols = [], [], [], [], [], [], []
        for row, (config, prompt) in enumerate(zip(configs, prompts, strict=True)):
            for token, value in config.bias:
                rows.append(row), cols.append(token), values.append(value)
            if config.repetition != 1:
                prompt_rows += [row] * len(prompt)
                prompt_cols += prompt
            end_rows += [row] * len(config.end_ids)
            end_cols += sorted(config.end_ids)
        if rows:  # duplicates add up
            index = (host[rows].to(self.device), torch.tensor(cols, device=self.device))
            self.bias.index_put_(index, torch.tensor(values, device=self.device), accumulate=True)
        if prompt_rows:
            index = (host[prompt_rows].to(self.device), torch.tensor(prompt_cols, device=self.device))
            self.in_prompt[index] = True
        if end_rows:
            self.end_mask[host[end_rows].to(self.device), torch.tensor(end_cols, device=self.device)] = True

    def sample(self, logits: torch.Tensor, rows: torch.Tensor | slice, positions: torch.Tensor, flags: Flags):
        """The next token of each row (`logits[i]` is slot `rows[i]`'s, for the token at `positions[i]`; `rows` may be
        a slice [0, batch): views rather than gathers) and, when flags.logprobs >= 0, its log-probability
        and the top flags.logprobs (values, ids): vLLM's default, the raw log_softmax of the model's logits (before
        temperature, penalties and bias). All on the device, with no host sync."""
        logprobs = logits.float().log_softmax(dim=-1) if flags.logprobs >= 0 else None
        raw, logits = logits, self.process(logits, rows, flags)
        if flags.guided:
            logits = self._guide(raw, logits, rows)
        tokens = logits.argmax(dim=-1)
        if flags.sampling:
            tokens = torch.where(self.greedy[rows], tokens, self._draw(logits, rows, positions, flags))
        if logprobs is None:
            return tokens, None
        chosen = logprobs.gather(1, tokens[:, None])[:, 0]
        if flags.logprobs == 0:
            return tokens, (chosen, None, None)
        top_values, top_ids = logprobs.topk(flags.logprobs, dim=-1)
        return tokens, (chosen, top_values, top_ids)

    def process(self, logits: torch.Tensor, rows: torch.Tensor | slice, flags: Flags) -> torch.Tensor:
        """The logits after the penalties, the bias, the bad words and the min_tokens mask (not in place)."""
        if flags.penalties:
            counts = self.counts[rows]
            seen = self.in_prompt[rows] | (counts > 0)
            penalty = self.repetition[rows][:, None]
            logits = torch.where(seen, torch.where(logits > 0, logits / penalty, logits * penalty), logits)
            logits = logits - self.frequency[rows][:, None] * counts - self.presence[rows][:, None] * (counts > 0)
        if flags.bias:
            logits = logits + self.bias[rows]
        if flags.bad_words:
            prefix, last = self.bad_prefix[rows], self.bad_last[rows]
            matched = ((prefix == self.recent[rows][:, None]) | (prefix < 0)).all(dim=-1) & (last >= 0)
            ban = torch.where(matched, float("-inf"), 0.0).to(logits.dtype)
            logits = logits + torch.zeros_like(logits).scatter_add_(1, last.clamp_min(0), ban)
        if flags.min_tokens:
            early = (self.generated[rows] < self.min_tokens[rows])[:, None]
            logits = logits.masked_fill(self.end_mask[rows] & early, float("-inf"))
        return logits

    def _guide(self, raw: torch.Tensor, logits: torch.Tensor, rows: torch.Tensor | slice) -> torch.Tensor:
        """The grammar's disallowed tokens at -inf (xgrammar's kernel). A row the other masks left with no token the
        grammar allows gets the grammar's mask over its raw logits instead: the grammar wins (numpy_sampler's rule)."""
        from xgrammar import apply_token_bitmask_inplace  # only a guided step needs it

        bitmask = self.bitmask[rows].contiguous()
        masked = logits.float().clone()  # never the caller's buffer (the runner's logits)
        apply_token_bitmask_inplace(masked, bitmask, vocab_size=self.vocab_size)
        fallback = raw.float().clone()
        apply_token_bitmask_inplace(fallback, bitmask, vocab_size=self.vocab_size)
        return torch.where(torch.isfinite(masked).any(dim=-1, keepdim=True), masked, fallback)

    def _draw(self, logits: torch.Tensor, rows: torch.Tensor | slice, positions: torch.Tensor, flags: Flags):
        scaled = logits / self.temperature[rows].clamp_min(1e-5)[:, None]
        step = mix32(self.key[rows] ^ mix32((positions * 0x9E3779B1 + 0x632BE5AB) & MASK32))
        if not flags.filtered:
            return (scaled + self._gumbel(step, None)).argmax(dim=-1)
        if flags.top_k_bound:  # the same candidates and probabilities as the full sort, from a top-k
            ordered, order = scaled.topk(min(flags.top_k_bound, self.vocab_size), dim=-1)
            probs = (ordered - scaled.logsumexp(dim=-1, keepdim=True)).exp()
        else:
            ordered, order = scaled.sort(dim=-1, descending=True)
            probs = ordered.softmax(dim=-1)
        before = probs.cumsum(dim=-1) - probs  # mass of the tokens ranked above each one
        ranks = self.ranks[:, : order.shape[1]]
        keep = (ranks < self.top_k[rows][:, None]) & (before < self.top_p[rows][:, None])
        score = (ordered + self._gumbel(step, order)).masked_fill(~keep, float("-inf"))
        return order.gather(1, score.argmax(dim=-1, keepdim=True))[:, 0]

    def _gumbel(self, step: torch.Tensor, tokens: torch.Tensor | None) -> torch.Tensor:
        """Gumbel noise of each row's `tokens` (every token when None), from hash(row's step key, token id)."""
        hashed = self.token_hash[None] if tokens is None else self.token_hash[tokens]
        bits = mix32((step[:, None] + hashed) & MASK32) >> 8  # 24 random bits per token
        uniform = (bits.float() + 0.5) * (1.0 / (1 << 24))
        return -torch.log(-torch.log(uniform))

    def advance_rows(self, rows: torch.Tensor, tokens: torch.Tensor, flags: Flags) -> None:
        """Count the tokens just sampled for the sequences in sampler `rows` (distinct; any order): a sequence's
        row is its sampler state only (its KV is in blocks)."""
        self.generated[rows] += 1
        if flags.penalties:
            self.counts[rows, tokens] += 1
        if flags.bad_words:
            self.recent[rows] = torch.cat([self.recent[rows][:, 1:], tokens[:, None]], dim=1)
