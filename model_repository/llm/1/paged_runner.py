"""The GPU half of a paged engine core: one scheduler.StepPlan (a ragged batch of prefill chunks and decode
tokens) through a Llama-family model over a paged KV cache.

It reuses the transformers model's own modules (embedding, norms, projections, rotary tables, MLP, LM head), so
weights load the usual way and the arithmetic is transformers'; on CUDA with FlashInfer the same weights run
through fused layers instead (fused_llama.py: ~10 kernels a layer rather than ~40). What differs from
transformers is the cache and the batch:
- the cache of each layer is ONE tensor [num_blocks, 2, block_size, kv_heads, head_dim] (K at [:, 0], V at
  [:, 1]): FlashInfer's "NHD" single-tensor layout, so its kernels read it as it is, with no copy;
- a step is flat: the T tokens of every scheduled sequence side by side ([T, hidden]), no padding; each token's
  K/V are scattered into (block_table[pos // block_size], pos % block_size), then attention reads each
  sequence's blocks up to its context length, causally (a chunk's queries sit at the END of its context);
- attention is a backend behind two calls, `begin_step` (once per step: metadata, FlashInfer's plan) and
  `attend` (per layer): `torch_reference` (per-sequence gather + SDPA: CPU, tests) and `flashinfer`
  (BatchPrefillWithPagedKVCacheWrapper over the whole ragged batch; CUDA only);
- only the rows whose logits are sampled (the last token of a finished prefill, every decode) reach the LM head.
"""

from __future__ import annotations

from array import array
from dataclasses import dataclass
from typing import Protocol

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from paged_overlap import feed_previous_tokens
from scheduler import StepPlan

SUPPORTED_ARCHITECTURES = ("LlamaForCausalLM",)  # its module layout; others (sliding windows, biases) untested
FLASHINFER_WORKSPACE_BYTES = 128 * 1024 * 1024


@dataclass
class StepTensors:
    """A plan flattened for the device, built once per step and shared by every layer."""

    input_ids: torch.Tensor  # [T]
    positions: torch.Tensor  # [T]
    write_blocks: torch.Tensor  # [T] where each token's K/V go: block ...
    write_offsets: torch.Tensor  # [T] ... and row in it
    sample_rows: torch.Tensor  # [S] rows whose logits are returned, in plan order
    # Per sequence, on the host (FlashInfer's CSR form of the block tables; qo = the step's query tokens):
    qo_indptr: list[int]  # [B + 1]
    kv_indptr: list[int]  # [B + 1] into kv_indices
    kv_indices: list[int]  # the blocks each sequence attends over, concatenated
    kv_last_page_len: list[int]  # [B] tokens in each sequence's last block (1..block_size)
    context_lens: list[int]  # [B] tokens attended over (cached + this step's)


class AttentionBackend(Protocol):
    def begin_step(self, step: StepTensors) -> None:
        """Prepare for this step's layers (FlashInfer plans here, outside any CUDA graph)."""
        ...

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, scale: float) -> torch.Tensor:
        """q [T, heads, head_dim] against the paged cache (this step's K/V already written) -> [T, heads, head_dim]."""
        ...


class TorchReferenceAttention:
    """Per sequence: gather its blocks, causal SDPA with the queries at the end of the context. Plain and slow
    (a Python loop over sequences per layer): the CPU path and the reference the FlashInfer path must match."""

    def __init__(self, block_size: int):
        self.block_size = block_size
        self._sequences: list[tuple[slice, torch.Tensor, int, torch.Tensor]] = []

    def begin_step(self, step: StepTensors) -> None:
        device = step.input_ids.device
        self._sequences = []
        for i, context_len in enumerate(step.context_lens):
            rows = slice(step.qo_indptr[i], step.qo_indptr[i + 1])
            blocks = torch.tensor(step.kv_indices[step.kv_indptr[i] : step.kv_indptr[i + 1]], device=device)
            num_queries = rows.stop - rows.start
            query_positions = torch.arange(context_len - num_queries, context_len, device=device)
            mask = torch.arange(context_len, device=device)[None] <= query_positions[:, None]  # [n, context]
            self._sequences.append((rows, blocks, context_len, mask))

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, scale: float) -> torch.Tensor:
        out = torch.empty_like(q)
        heads, head_dim = kv_cache.shape[-2:]
        for rows, blocks, context_len, mask in self._sequences:
            kv = kv_cache[blocks]  # [blocks, 2, block_size, kv_heads, head_dim]
            k = kv[:, 0].reshape(-1, heads, head_dim)[:context_len].transpose(0, 1)  # [kv_heads, context, d]
            v = kv[:, 1].reshape(-1, heads, head_dim)[:context_len].transpose(0, 1)
            attended = F.scaled_dot_product_attention(
                q[rows].transpose(0, 1)[None], k[None], v[None], attn_mask=mask, scale=scale, enable_gqa=True
            )
            out[rows] = attended[0].transpose(0, 1)
        return out


class FlashInferAttention:
    """FlashInfer's paged prefill/append kernel over the whole ragged batch (decode tokens are 1-token chunks).

    NOT RUN in this repository's tests (no CUDA, no flashinfer here); written against flashinfer-python 0.7's
    documented API: BatchPrefillWithPagedKVCacheWrapper(workspace, kv_layout="NHD"), plan(qo_indptr,
    paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len, num_qo_heads, num_kv_heads, head_dim_qk,
    page_size, causal=True, sm_scale=, q_data_type=, kv_data_type=) once per step, then run(q, paged_kv_cache)
    per layer. Its causal mask aligns a chunk's queries with the end of the KV (query i of n sees KV positions
    <= kv_len - n + i), which is what a chunk after a cached prefix needs. fp16/bf16 only (not fp32).
    For CUDA graphs of pure-decode steps, use BatchDecodeWithPagedKVCacheWrapper(use_cuda_graph=True) with
    fixed buffers per batch bucket, planned outside the graph (see the integration notes)."""

    def __init__(self, num_heads: int, num_kv_heads: int, head_dim: int, block_size: int, dtype, device):
        import flashinfer  # only on CUDA: not installed on CPU machines

        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.block_size, self.dtype = block_size, dtype
        self.workspace = torch.zeros(FLASHINFER_WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        self.wrapper = flashinfer.BatchPrefillWithPagedKVCacheWrapper(self.workspace, kv_layout="NHD")
        self._scale: float | None = None
        self._step: StepTensors | None = None

    def begin_step(self, step: StepTensors) -> None:
        self._step = step
        self._scale = None  # planned at the first layer, once the model's scale is known

    def _plan(self, scale: float) -> None:
        step = self._step
        assert step is not None

        def host(values: list[int]) -> torch.Tensor:  # plan reads indptrs on the host: no device sync
            return torch.tensor(values, dtype=torch.int32)

        self.wrapper.plan(
            host(step.qo_indptr),
            host(step.kv_indptr),
            host(step.kv_indices),
            host(step.kv_last_page_len),
            self.num_heads,
            self.num_kv_heads,
            self.head_dim,
            self.block_size,
            causal=True,
            sm_scale=scale,
            q_data_type=self.dtype,
            kv_data_type=self.dtype,
        )
        self._scale = scale

    def attend(self, q: torch.Tensor, kv_cache: torch.Tensor, scale: float) -> torch.Tensor:
        if self._scale != scale:  # every Llama layer has the same scale: one plan per step
            self._plan(scale)
        return self.wrapper.run(q.contiguous(), kv_cache)


class PagedRunner:
    def __init__(
        self,
        model,
        num_blocks: int,
        block_size: int,
        attention: str = "auto",
        max_model_len: int = 0,
        cuda_graph_batch: int = 0,  # > 0 (flashinfer on CUDA): pure-decode steps up to this batch replay graphs
        fused: bool | None = None,  # FlashInfer's fused layer kernels (fused_llama.py); None: with flashinfer on CUDA
    ):
        arch = (model.config.architectures or [type(model).__name__])[0]
        if arch not in SUPPORTED_ARCHITECTURES and type(model).__name__ not in SUPPORTED_ARCHITECTURES:
            raise ValueError(f"the paged runner supports {', '.join(SUPPORTED_ARCHITECTURES)}, not {arch}")
        config = model.config
        self.model, self.layers = model, model.model.layers
        self.num_blocks, self.block_size = num_blocks, block_size
        self.device, self.dtype = model.device, model.dtype
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = config.num_key_value_heads
        self.head_dim = getattr(config, "head_dim", None) or config.hidden_size // self.num_heads
        # CUDA graphs pad their batch: the padding rows write their K/V into one spare block past the manager's.
        graphs = cuda_graph_batch > 0 and self.device.type == "cuda"
        shape = (num_blocks + graphs, 2, block_size, self.num_kv_heads, self.head_dim)
        kw = {"device": self.device, "dtype": self.dtype}
        self.kv_cache = [torch.zeros(shape, **kw) for _ in self.layers]
        self.max_model_len = max_model_len or min(config.max_position_embeddings, num_blocks * block_size)
        positions = torch.arange(self.max_model_len, device=self.device)
        cos, sin = model.model.rotary_emb(torch.zeros(1, **kw), positions[None])
        self.cos, self.sin = cos[0], sin[0]  # [max_model_len, head_dim], transformers' own rotary tables
        if attention == "auto":  # FlashInfer's kernels take fp16/bf16 only
            half = self.dtype in (torch.float16, torch.bfloat16)
            attention = "flashinfer" if self.device.type == "cuda" and half else "torch_reference"
        self.attention_name = attention
        self.hidden: torch.Tensor | None = None  # the last step's final hidden states, when kept
        self.qo_indptr: list[int] = [0]  # the last step's query rows per scheduled sequence
        self.attention: AttentionBackend
        if attention == "torch_reference":
            self.attention = TorchReferenceAttention(block_size)
        elif attention == "flashinfer":
            self.attention = FlashInferAttention(
                self.num_heads, self.num_kv_heads, self.head_dim, block_size, self.dtype, self.device
            )
        else:
            raise ValueError(f"attention must be auto, torch_reference or flashinfer, not {attention!r}")
        self.fused = None
        if fused or (fused is None and attention == "flashinfer" and self.device.type == "cuda"):
            from fused_llama import FusedLlama, can_fuse, cos_sin_cache

            if can_fuse(model):
                table = cos_sin_cache(model, self.max_model_len, self.device)
                self.fused = FusedLlama(model, self.num_heads, self.num_kv_heads, self.head_dim, table)
            elif fused:
                raise ValueError("fused layers need plain Llama layers (no biases, SiLU)")
        self.graphs = None
        if graphs and attention == "flashinfer":
            from paged_graphs import DecodeGraphs

            self.graphs = DecodeGraphs(self, cuda_graph_batch, scratch_block=num_blocks)

    def flatten(self, plan: StepPlan) -> StepTensors:
        """The plan as flat token arrays (device) and CSR block tables (host). One pass over the sequences (a
        decode token without the per-position loops) and ONE host-to-device copy of the flat arrays."""
        ids: list[int] = []
        positions: list[int] = []
        blocks: list[int] = []  # where each token's K/V go: block ...
        offsets: list[int] = []  # ... and row in it
        sample_rows: list[int] = []
        qo_indptr, kv_indptr = [0], [0]
        kv_indices: list[int] = []
        last_page_len: list[int] = []
        context_lens: list[int] = []
        size, max_model_len = self.block_size, self.max_model_len
        num_rows = num_pages = 0
        for item in plan.scheduled:
            start, token_ids, table = item.start, item.token_ids, item.block_table
            num_new = len(token_ids)
            context_len = start + num_new
            if context_len > max_model_len:
                raise ValueError(f"sequence {item.seq_id!r} reaches {context_len} tokens, past {max_model_len}")
            if num_new == 1:
                ids.append(token_ids[0])
                positions.append(start)
                blocks.append(table[start // size])
                offsets.append(start % size)
            else:
                span = range(start, context_len)
                ids.extend(token_ids)
                positions.extend(span)
                blocks.extend([table[p // size] for p in span])
                offsets.extend([p % size for p in span])
            num_rows += num_new
            qo_indptr.append(num_rows)
            if item.sample:
                sample_rows.append(num_rows - 1)
            used = -(-context_len // size)
            kv_indices.extend(table if len(table) == used else table[:used])
            num_pages += used
            kv_indptr.append(num_pages)
            last_page_len.append(context_len - (used - 1) * size)
            context_lens.append(context_len)
        num_tokens = len(ids)
        # array.array: ~2x cheaper than torch.tensor(list), which checks every element's type
        values = array("q", ids + positions + blocks + offsets + sample_rows)
        flat = torch.frombuffer(values, dtype=torch.long) if values else torch.empty(0, dtype=torch.long)
        flat = flat.to(self.device, non_blocking=True)
        input_ids, flat_positions, write_blocks, write_offsets, rows = flat.split(
            [num_tokens, num_tokens, num_tokens, num_tokens, len(sample_rows)]
        )
        return StepTensors(
            input_ids,
            flat_positions,
            write_blocks,
            write_offsets,
            rows,
            qo_indptr,
            kv_indptr,
            kv_indices,
            last_page_len,
            context_lens,
        )

    @torch.inference_mode()
    def step(self, plan: StepPlan, keep_hidden: bool = False, previous: torch.Tensor | None = None) -> torch.Tensor:
        """Run the plan: write its tokens' K/V into their blocks; the float32 logits [S, vocab] of the sampled
        rows, in `plan.sampled` order. With `keep_hidden`, every token's final hidden state stays in
        `self.hidden` ([T, hidden], sequence i's at rows qo_indptr[i]:qo_indptr[i + 1]) for `logits_of`.
        `previous`: the tokens the previous step sampled (on the device), which the plan's placeholder ids
        -(1 + j) stand for (overlapped scheduling: paged_overlap.py)."""
        if not plan.scheduled:
            return torch.empty(0, self.model.config.vocab_size, device=self.device)
        graphs = self.graphs
        if graphs is not None and not keep_hidden and plan.is_pure_decode and len(plan.scheduled) <= graphs.max_batch:
            self.hidden, self.qo_indptr = None, list(range(len(plan.scheduled) + 1))
            return graphs.run(plan, previous)
        step = self.flatten(plan)
        self.qo_indptr = step.qo_indptr
        self.attention.begin_step(step)
        input_ids = step.input_ids if previous is None else feed_previous_tokens(step.input_ids, previous)
        x = self.forward(input_ids, step.positions, step.write_blocks, step.write_offsets, self.attention.attend)
        self.hidden = x if keep_hidden else None
        return self.logits_of(x[step.sample_rows])

    def forward(self, input_ids, positions, write_blocks, write_offsets, attend) -> torch.Tensor:
        """The final hidden states [T, hidden] of flat tokens; each token's K/V written at (block, offset) first,
        then `attend(q, kv_cache, scale)` per layer. No host sync: CUDA graphs capture it."""
        if self.fused is not None:
            return self.fused.forward(input_ids, positions, write_blocks, write_offsets, self.kv_cache, attend)
        num_tokens = input_ids.shape[0]
        x = self.model.model.embed_tokens(input_ids)  # [T, hidden]
        cos, sin = self.cos[positions], self.sin[positions]  # [T, head_dim]
        for layer, kv_cache in zip(self.layers, self.kv_cache, strict=True):
            attn = layer.self_attn
            h = layer.input_layernorm(x)
            q = attn.q_proj(h).view(num_tokens, self.num_heads, self.head_dim)
            k = attn.k_proj(h).view(num_tokens, self.num_kv_heads, self.head_dim)
            v = attn.v_proj(h).view(num_tokens, self.num_kv_heads, self.head_dim)
            q, k = apply_rotary_pos_emb(q, k, cos, sin, unsqueeze_dim=1)  # heads at dim 1: [T, 1, head_dim]
            kv_cache[write_blocks, 0, write_offsets] = k
            kv_cache[write_blocks, 1, write_offsets] = v
            out = attend(q, kv_cache, attn.scaling)
            x = x + attn.o_proj(out.reshape(num_tokens, -1))
            x = x + layer.mlp(layer.post_attention_layernorm(x))
        return x

    @torch.inference_mode()
    def logits_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """The float32 logits of final hidden states (the model's norm, then its LM head)."""
        if self.fused is not None:
            return self.fused.logits_of(hidden)
        return self.model.lm_head(self.model.model.norm(hidden)).float()
