"""fused_llama.FusedLlama's wiring on CPU: fused projections, the residual carried through fused_add_rmsnorm, rotary
embedding from the float32 cos/sin table, the one-scatter K/V write. FlashInfer's kernels do not run on a CPU, so
a STAND-IN for the five it calls (plain torch, written from FlashInfer's documented semantics) takes its place;
on the GPU bench/gpu_perf/fused_check.py compares the real kernels' logits with transformers'. Greedy output of
the paged runner with fused layers equals HF `generate`, with chunked prefill, decode and prefix-cache hits."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from test_paged_runner import hf_greedy, paged_greedy, tiny_llama  # noqa: F401 (a fixture)

from fused_llama import can_fuse
from kv_blocks import BlockManager
from paged_runner import PagedRunner
from scheduler import Scheduler


def rmsnorm(x, weight, eps=1e-6, out=None, enable_pdl=None):
    normed = x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps)
    return weight * normed.to(x.dtype)


def fused_add_rmsnorm(x, residual, weight, eps=1e-6, enable_pdl=None):
    residual.add_(x)
    x.copy_(rmsnorm(residual, weight, eps))


def apply_rope_with_cos_sin_cache_inplace(positions, query, key, head_size, cos_sin_cache, is_neox=True):
    assert is_neox and cos_sin_cache.dtype == torch.float32
    half = cos_sin_cache.shape[-1] // 2
    cos, sin = cos_sin_cache[positions, :half][:, None], cos_sin_cache[positions, half:][:, None]
    for x in (query, key):
        heads = x.view(x.shape[0], -1, head_size)
        first, second = heads[..., :half].float(), heads[..., half:].float()
        rotated = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
        heads.copy_(rotated.to(x.dtype))


def silu_and_mul(x):
    half = x.shape[-1] // 2
    return F.silu(x[..., :half]) * x[..., half:]


STAND_IN = SimpleNamespace(
    rmsnorm=rmsnorm,
    fused_add_rmsnorm=fused_add_rmsnorm,
    apply_rope_with_cos_sin_cache_inplace=apply_rope_with_cos_sin_cache_inplace,
    silu_and_mul=silu_and_mul,
)


@pytest.fixture
def fused_runner(tiny_llama, monkeypatch):  # noqa: F811
    monkeypatch.setitem(sys.modules, "flashinfer", STAND_IN)
    weights = {name: p.detach().clone() for name, p in tiny_llama.named_parameters()}
    runner = PagedRunner(tiny_llama, 64, 4, attention="torch_reference", fused=True)
    yield runner
    # the model's weights are views of the fused ones now: same values, so the other tests see the same model
    for name, p in tiny_llama.named_parameters():
        assert torch.equal(p, weights[name]), name


def test_fused_layers_greedy_equal_hf_generate(tiny_llama, fused_runner):  # noqa: F811
    assert fused_runner.fused is not None
    generator = torch.Generator().manual_seed(
        1
    )  # greedy never meets id 2 (end-of-sequence, which min_new_tokens makes HF skip)
    prompts = {i: torch.randint(3, 128, (n,), generator=generator).tolist() for i, n in enumerate((5, 11, 18))}
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=3, max_num_batched_tokens=8)
    outputs = paged_greedy(scheduler, fused_runner, prompts, max_tokens=10)
    for seq_id, prompt in prompts.items():
        assert outputs[seq_id] == hf_greedy(tiny_llama, prompt, 10), seq_id


def test_fused_logits_equal_the_plain_forward(tiny_llama, fused_runner):  # noqa: F811
    plain = PagedRunner(tiny_llama, 64, 4, attention="torch_reference", fused=False)
    prompt = torch.randint(3, 128, (13,), generator=torch.Generator().manual_seed(3)).tolist()
    logits = []
    for runner in (plain, fused_runner):
        scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=1, max_num_batched_tokens=64)
        scheduler.add("s", prompt, 4)
        logits.append(runner.step(scheduler.plan()))
    torch.testing.assert_close(logits[1], logits[0], rtol=1e-4, atol=1e-4)


def test_models_with_biases_are_not_fused(tiny_llama):  # noqa: F811
    attn = tiny_llama.model.layers[0].self_attn
    attn.q_proj.bias = torch.nn.Parameter(torch.zeros(attn.q_proj.out_features))
    try:
        assert not can_fuse(tiny_llama)
        with pytest.raises(ValueError, match="plain Llama layers"):
            PagedRunner(tiny_llama, 64, 4, attention="torch_reference", fused=True)
    finally:
        attn.q_proj.bias = None
