"""A Llama model's layers as serving engines run them on CUDA: FlashInfer's fused kernels, fused projections.

Why: transformers' modules are written for clarity, not for one token per sequence. Its RMSNorm is ~7 kernels,
its rotary embedding ~10, its MLP 5, so a 16-layer decode step is ~600 small kernels: the GPU time of a step at
batch 1 is launch latency, not weights (2.1 ms against the 0.45 ms it takes to read them). Here a layer is ~10
kernels, as in vLLM and SGLang: one GEMM for q, k and v (their weights concatenated) and one for gate and up,
FlashInfer's rmsnorm / fused_add_rmsnorm (the residual add inside the norm), rotary embedding in place on q and k
from a float32 cos/sin table, silu_and_mul, and one scatter of K and V into the paged cache.

The arithmetic is transformers' (same weights, same order of operations), in bf16 with float32 inside the
kernels; logits differ from transformers' at bf16 rounding (bench/gpu_perf/fused_check.py measures by how much).
The transformers modules stay usable: their weights become views of the fused ones (no second copy in memory).
CUDA with flashinfer only; the CPU path keeps paged_runner's plain forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class _Layer:
    input_norm: torch.Tensor  # [hidden]
    qkv: torch.Tensor  # [(heads + 2 kv_heads) * head_dim, hidden]
    o: torch.Tensor
    post_norm: torch.Tensor
    gate_up: torch.Tensor  # [2 * intermediate, hidden]
    down: torch.Tensor


def can_fuse(model) -> bool:
    """Whether this model's layers are plain Llama ones (no biases), which is all FusedLlama computes."""
    if getattr(model.config, "hidden_act", "silu") not in ("silu", "swish"):
        return False
    for layer in model.model.layers:
        attn, mlp = layer.self_attn, layer.mlp
        projections = (attn.q_proj, attn.k_proj, attn.v_proj, attn.o_proj, mlp.gate_proj, mlp.up_proj, mlp.down_proj)
        if any(p.bias is not None for p in projections):
            return False
    return True


def _fuse(*linears) -> torch.Tensor:
    """One weight for several projections of the same input; each module's weight becomes a view of it."""
    fused = torch.cat([linear.weight.data for linear in linears])
    start = 0
    for linear in linears:
        rows = linear.weight.shape[0]
        linear.weight.data = fused[start : start + rows]
        start += rows
    return fused


class FusedLlama:
    def __init__(self, model, num_heads: int, num_kv_heads: int, head_dim: int, cos_sin_cache: torch.Tensor):
        import flashinfer  # CUDA only

        self.fi = flashinfer
        self.embed = model.model.embed_tokens
        self.lm_head = model.lm_head
        self.final_norm = model.model.norm.weight
        self.eps = model.model.norm.variance_epsilon
        self.num_heads, self.num_kv_heads, self.head_dim = num_heads, num_kv_heads, head_dim
        self.q_size, self.kv_size = num_heads * head_dim, num_kv_heads * head_dim
        self.cos_sin_cache = cos_sin_cache  # [max_len, head_dim] float32: cos of the half dims, then sin
        self.layers = [
            _Layer(
                layer.input_layernorm.weight,
                _fuse(layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj),
                layer.self_attn.o_proj.weight,
                layer.post_attention_layernorm.weight,
                _fuse(layer.mlp.gate_proj, layer.mlp.up_proj),
                layer.mlp.down_proj.weight,
            )
            for layer in model.model.layers
        ]
        self.scale = model.model.layers[0].self_attn.scaling

    def forward(self, input_ids, positions, write_blocks, write_offsets, kv_caches, attend) -> torch.Tensor:
        """The final hidden states [T, hidden] before the model's norm, as PagedRunner.forward returns them."""
        fi, num_tokens = self.fi, input_ids.shape[0]
        residual = self.embed(input_ids)
        h = fi.rmsnorm(residual, self.layers[0].input_norm, self.eps)
        for i, (layer, kv_cache) in enumerate(zip(self.layers, kv_caches, strict=True)):
            qkv = F.linear(h, layer.qkv)
            q, k = qkv[:, : self.q_size], qkv[:, self.q_size : self.q_size + self.kv_size]
            fi.apply_rope_with_cos_sin_cache_inplace(positions, q, k, self.head_dim, self.cos_sin_cache, is_neox=True)
            # K and V side by side in qkv are [T, 2, kv_heads, head_dim]: one scatter writes both into the cache.
            kv = qkv[:, self.q_size :].view(num_tokens, 2, self.num_kv_heads, self.head_dim)
            kv_cache[write_blocks, :, write_offsets] = kv
            out = attend(q.reshape(num_tokens, self.num_heads, self.head_dim).contiguous(), kv_cache, self.scale)
            h = F.linear(out.reshape(num_tokens, -1), layer.o)
            fi.fused_add_rmsnorm(h, residual, layer.post_norm, self.eps)  # residual += h; h = norm(residual)
            h = F.linear(fi.silu_and_mul(F.linear(h, layer.gate_up)), layer.down)
            if i + 1 < len(self.layers):
                fi.fused_add_rmsnorm(h, residual, self.layers[i + 1].input_norm, self.eps)
            else:
                residual = residual + h
        return residual

    def logits_of(self, hidden: torch.Tensor) -> torch.Tensor:
        """The float32 logits of final hidden states (the model's norm, then its LM head)."""
        return self.lm_head(self.fi.rmsnorm(hidden.contiguous(), self.final_norm, self.eps)).float()


def cos_sin_cache(model, max_len: int, device) -> torch.Tensor:
    """FlashInfer's rotary table from transformers' own rotary embedding (so rope scaling carries over): [max_len,
    head_dim] float32, the cos of the half dims then their sin (transformers repeats each half twice)."""
    positions = torch.arange(max_len, device=device)
    cos, sin = model.model.rotary_emb(torch.zeros(1, device=device, dtype=torch.float32), positions[None])
    half = cos.shape[-1] // 2
    return torch.cat([cos[0, :, :half], sin[0, :, :half]], dim=-1).float().contiguous()
