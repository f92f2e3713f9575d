"""The GPU half of the fast engine core: a Llama-family forward over a preallocated slot KV cache.

It reuses the transformers model's own modules (embedding, norms, projections, MLP, rotary tables, LM head), so
weights load the usual way and the arithmetic is transformers' own; what it replaces is the cache and the loop:
- one KV slot per sequence, preallocated ([slots, kv_heads, slot_len, head_dim] per layer): no allocation per step;
- batched prefill of several prompts (right-padded, causal), writing straight into their slots;
- decode of slots [0, B) for B in a set of batch buckets and attention over [0, L) for L in a set of length
  buckets, each (B, L) captured once in a CUDA graph: one launch per step instead of hundreds of kernels;
- the next tokens stay on the device (greedy or sampled there) and feed the next step; the host only reads them.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from sampler import Flags, SlotConfig, SlotSampler

PROMPT_LOGPROB_CHUNK = 512  # prompt positions whose logits a prefill holds at once (return_prompt_log_probs)
SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)  # its module layout; others (sliding windows, biases) untested


@dataclass
class Prefilled:
    """What a prefill gives the host: each slot's first token, their log-probabilities (when asked: host_logprobs of
    every slot, the top-k shared), and per prompt its own (host_logprobs, or None)."""

    tokens: list[int]
    logprobs: tuple | None
    prompt_logprobs: list


def host_logprobs(logprobs):
    """(chosen, top values, top ids) on the device -> host lists (or None)."""
    if logprobs is None:
        return None
    return tuple(None if t is None else t.tolist() for t in logprobs)


def buckets(limit: int, start: int) -> list[int]:
    """Powers of two from `start` below `limit`, then `limit` itself."""
    sizes, size = [], start
    while size < limit:
        sizes.append(size)
        size *= 2
    return sizes + [limit]


class SlotRunner:
    def __init__(self, model, num_slots: int, slot_len: int, cuda_graphs: bool = True):
        arch = (model.config.architectures or [type(model).__name__])[0]
        if arch not in SUPPORTED_ARCHITECTURES and type(model).__name__ not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"the fast engine core supports {', '.join(SUPPORTED_ARCHITECTURES)}, not {arch}")
        config = model.config
        self.model = model
        self.layers = model.model.layers
        self.num_slots, self.slot_len = num_slots, slot_len
        self.device, self.dtype = model.device, model.dtype
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        self.vocab_size = config.vocab_size
        shape = (num_slots, self.num_kv_heads, slot_len, self.head_dim)
        kw = {"device": self.device, "dtype": self.dtype}
        self.k_cache = [torch.zeros(shape, **kw) for _ in self.layers]
        self.v_cache = [torch.zeros(shape, **kw) for _ in self.layers]
        positions = torch.arange(slot_len, device=self.device)
        cos, sin = model.model.rotary_emb(torch.zeros(1, **kw), positions[None])
        self.cos, self.sin = cos[0], sin[0]  # [slot_len, head_dim], transformers' own rotary tables
        self.arange = positions
        self.slot_ids = torch.arange(num_slots, device=self.device)
        # Per-slot state on the device; a step reads and updates it without the host.
        long = {"device": self.device, "dtype": torch.long}
        self.tokens = torch.zeros(num_slots, **long)  # the token each slot feeds into its next step
        self.positions = torch.zeros(num_slots, **long)  # where that token goes in the slot's cache
        self.active = torch.zeros(num_slots, **long)  # 1 for a slot in use: only those advance
        self.sampler = SlotSampler(num_slots, self.vocab_size, self.device)
        self.logits = torch.zeros(num_slots, self.vocab_size, device=self.device)
        self.batch_buckets = buckets(num_slots, 1)
        self.length_buckets = buckets(slot_len, 128)
        self.stats: Counter[str] = Counter()  # prefill_prompts: prompts run (a request's n sequences share one)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}
        if cuda_graphs and self.device.type == "cuda":
            self._capture_graphs()

    # ------------------------------------------------------------------ prefill
    @torch.inference_mode()
    def prefill(
        self, prompts: list[list[int]], slots: list[list[int]], configs: list[SlotConfig], prompt_logprobs: list[int]
    ) -> Prefilled:
        """Run each prompt once into the first of its slots and copy its KV cache to the others (a request's n
        sequences share its prefill), then sample each slot's first token with its own `configs` entry (aligned
        with the flattened `slots`). `prompt_logprobs[i]` >= 0 also scores prompt i's tokens (with that top-k)."""
        n, width = len(prompts), max(map(len, prompts))
        ids = torch.zeros(n, width, dtype=torch.long)
        for row, prompt in enumerate(prompts):
            ids[row, : len(prompt)] = torch.tensor(prompt)
        ids = ids.to(self.device, non_blocking=True)
        flat = [slot for group in slots for slot in group]
        group_rows = [row for row, group in enumerate(slots) for _ in group]
        slot_index = torch.tensor(flat, device=self.device)
        rows = torch.tensor(group_rows, device=self.device)
        lengths = torch.tensor([len(prompts[row]) for row in group_rows], device=self.device)
        x = self.model.model.embed_tokens(ids)
        cos, sin = self.cos[:width][None], self.sin[:width][None]
        for layer, k_cache, v_cache in zip(self.layers, self.k_cache, self.v_cache, strict=True):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(n, width, self.num_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(n, width, self.num_kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(n, width, self.num_kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k_cache[slot_index, :, :width] = k[rows]  # every slot of a prompt gets its one prefill's KV
            v_cache[slot_index, :, :width] = v[rows]
            # Right padding: real tokens come first, so the causal mask alone keeps pads out of their attention.
            out = F.scaled_dot_product_attention(q, k, v, is_causal=True, scale=attn.scaling, enable_gqa=True)
            x = x + attn.o_proj(out.transpose(1, 2).reshape(n, width, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.stats["prefill_prompts"] += n
        scored = [self._prompt_logprobs(x[row, : len(prompts[row])], prompts[row], k) for row, k in
                  enumerate(prompt_logprobs)]  # fmt: skip
        last = x[torch.arange(n, device=self.device), torch.tensor([len(p) for p in prompts], device=self.device) - 1]
        logits = self.model.lm_head(self.model.model.norm(last)).float()[rows]
        self.sampler.setup(slot_index, configs, [prompts[row] for row in group_rows])
        flags = Flags.of(configs, self.vocab_size)
        first, logprobs = self.sampler.sample(logits, slot_index, lengths - 1, flags)
        self.sampler.start(slot_index, first, flags)
        self.tokens[slot_index] = first
        self.positions[slot_index] = lengths
        self.active[slot_index] = 1
        return Prefilled(first.tolist(), host_logprobs(logprobs), scored)

    def _prompt_logprobs(self, hidden: torch.Tensor, prompt: list[int], k: int):
        """(log-probability of each prompt token after the first given its prefix (the raw log_softmax, as for
        generated tokens), top-k (values, ids)), or None; PROMPT_LOGPROB_CHUNK positions of logits at a time."""
        if k < 0:
            return None
        targets = torch.tensor(prompt[1:], device=self.device)
        parts = []
        for start in range(0, len(prompt) - 1, PROMPT_LOGPROB_CHUNK):
            end = min(start + PROMPT_LOGPROB_CHUNK, len(prompt) - 1)
            logprobs = self.model.lm_head(self.model.model.norm(hidden[start:end])).float().log_softmax(dim=-1)
            chosen = logprobs.gather(1, targets[start:end, None])[:, 0]
            parts.append((chosen, *(logprobs.topk(k, dim=-1) if k else (None, None))))
        if not parts:  # a one-token prompt: nothing to score
            return [], [] if k else None, [] if k else None
        return host_logprobs(tuple(None if p[0] is None else torch.cat(p) for p in zip(*parts, strict=True)))

    def release(self, slot: int) -> None:
        self.active[slot] = 0
        self.positions[slot] = 0

    # ------------------------------------------------------------------ decode
    def decode(self, batch: int, length: int, flags: Flags):
        """One step for slots [0, batch) attending over [0, length): the new tokens and, when `flags` asks, their
        log-probabilities (sampler.SlotSampler.sample), on the device."""
        batch = next(b for b in self.batch_buckets if b >= batch)
        length = next(n for n in self.length_buckets if n >= length)
        with torch.inference_mode():
            graph = self.graphs.get((batch, length))
            if graph is not None:
                graph.replay()
            else:
                self._decode_logits(batch, length)
            positions, active = self.positions[:batch], self.active[:batch]
            new, logprobs = self.sampler.sample(self.logits[:batch], slice(0, batch), positions, flags)
            self.sampler.advance(batch, new, active, flags)
            self.tokens[:batch] = torch.where(active.bool(), new, self.tokens[:batch])
            self.positions[:batch] += active
        return new, logprobs

    def _decode_logits(self, batch: int, length: int) -> None:
        tokens, positions = self.tokens[:batch], self.positions[:batch]
        rows = self.slot_ids[:batch]
        x = self.model.model.embed_tokens(tokens)[:, None]  # [B, 1, D]
        cos, sin = self.cos[positions][:, None], self.sin[positions][:, None]
        mask = (self.arange[:length][None] <= positions[:, None])[:, None, None]  # [B, 1, 1, L]
        group = self.num_heads // self.num_kv_heads
        for layer, k_cache, v_cache in zip(self.layers, self.k_cache, self.v_cache, strict=True):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(batch, 1, self.num_heads, self.head_dim).transpose(1, 2)
            k = attn.k_proj(h).view(batch, 1, self.num_kv_heads, self.head_dim).transpose(1, 2)
            v = attn.v_proj(h).view(batch, 1, self.num_kv_heads, self.head_dim).transpose(1, 2)
            q, k = apply_rotary_pos_emb(q, k, cos, sin)
            k_cache[rows, :, positions] = k[:, :, 0]
            v_cache[rows, :, positions] = v[:, :, 0]
            # Grouped-query attention without copying K/V: a KV head's query heads act as its query positions.
            q = q.reshape(batch, self.num_kv_heads, group, self.head_dim)
            out = F.scaled_dot_product_attention(
                q, k_cache[:batch, :, :length], v_cache[:batch, :, :length], attn_mask=mask, scale=attn.scaling
            )
            x = x + attn.o_proj(out.reshape(batch, 1, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        self.logits[:batch] = self.model.lm_head(self.model.model.norm(x[:, 0])).float()

    def _capture_graphs(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        with torch.inference_mode():
            for batch in reversed(self.batch_buckets):  # largest first: the smaller ones reuse its memory
                for length in reversed(self.length_buckets):
                    stream = torch.cuda.Stream()
                    stream.wait_stream(torch.cuda.current_stream())
                    with torch.cuda.stream(stream):
                        self._decode_logits(batch, length)  # warm-up outside the graph (lazy initialisation)
                    torch.cuda.current_stream().wait_stream(stream)
                    graph = torch.cuda.CUDAGraph()
                    with torch.cuda.graph(graph, pool=pool):
                        self._decode_logits(batch, length)
                    self.graphs[(batch, length)] = graph
        torch.cuda.synchronize()
