"""paged_runner.PagedRunner driven by scheduler.Scheduler on CPU (torch_reference attention): greedy output equals
HF `generate` token for token, with chunked prefill mixed with decode, block size 4, and prefix-cache hits."""

from __future__ import annotations

import sys
from types import SimpleNamespace

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM

from kv_blocks import BlockManager
from paged_runner import PagedRunner
from scheduler import Scheduler


@pytest.fixture(scope="module")
def tiny_llama():
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention, as SmolLM2
        max_position_embeddings=256,
        architectures=["LlamaForCausalLM"],
    )
    return LlamaForCausalLM(config).eval()


def hf_greedy(model, prompt: list[int], max_tokens: int) -> list[int]:
    out = model.generate(
        torch.tensor([prompt]),
        attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
        max_new_tokens=max_tokens,
        min_new_tokens=max_tokens,  # never stop early at the config's end-of-sequence id
        do_sample=False,
        pad_token_id=0,
    )
    return out[0, len(prompt) :].tolist()


def paged_greedy(scheduler: Scheduler, runner: PagedRunner, prompts: dict, max_tokens: int, plans=None) -> dict:
    """The core's loop in miniature: plan -> runner.step -> argmax -> update -> finish."""
    for seq_id, prompt in prompts.items():
        scheduler.add(seq_id, prompt, max_tokens)
    outputs = {}
    for _ in range(500):
        if not scheduler.has_work:
            return outputs
        plan = scheduler.plan()
        if plans is not None:
            plans.append(plan)
        logits = runner.step(plan)
        assert logits.shape == (len(plan.sampled), runner.model.config.vocab_size)
        scheduler.update(plan, logits.argmax(dim=-1).tolist())
        for seq_id in plan.sampled:
            sequence = scheduler.get(seq_id)
            if len(sequence.output) >= max_tokens:
                outputs[seq_id] = sequence.output
                scheduler.finish(seq_id)
    raise AssertionError("the loop did not finish")


def make(model, num_blocks=64, block_size=4, max_num_seqs=3, budget=8, prefix_caching=True):
    blocks = BlockManager(num_blocks, block_size, enable_prefix_caching=prefix_caching)
    scheduler = Scheduler(blocks, max_num_seqs=max_num_seqs, max_num_batched_tokens=budget)
    return scheduler, PagedRunner(model, num_blocks, block_size, attention="torch_reference")


def test_mixed_chunked_prefill_and_decode_match_hf_greedy(tiny_llama):
    generator = torch.Generator().manual_seed(1)
    prompts = {i: torch.randint(3, 128, (n,), generator=generator).tolist() for i, n in enumerate((5, 11, 18))}
    scheduler, runner = make(tiny_llama, budget=8)  # chunks of at most 8 tokens: every prompt but one is split
    plans: list = []
    outputs = paged_greedy(scheduler, runner, prompts, max_tokens=10, plans=plans)
    # the steps really mixed decode tokens with prefill chunks, and prompts were split
    assert any(any(len(s.token_ids) == 1 for s in p.scheduled) and not p.is_pure_decode for p in plans)
    assert any(not s.sample and s.start > 0 for p in plans for s in p.scheduled)
    for seq_id, prompt in prompts.items():
        assert outputs[seq_id] == hf_greedy(tiny_llama, prompt, 10), seq_id


def test_preempted_sequence_recomputes_to_the_same_tokens(tiny_llama):
    generator = torch.Generator().manual_seed(2)
    prompts = {i: torch.randint(3, 128, (9,), generator=generator).tolist() for i in range(3)}
    scheduler, runner = make(tiny_llama, num_blocks=10, budget=16)  # 40 tokens for 3 x (9 + 12)
    plans: list = []
    outputs = paged_greedy(scheduler, runner, prompts, max_tokens=12, plans=plans)
    assert any(p.preempted for p in plans)
    for seq_id, prompt in prompts.items():
        assert outputs[seq_id] == hf_greedy(tiny_llama, prompt, 12), seq_id


def test_prefix_cache_hit_gives_the_same_tokens_as_without(tiny_llama):
    generator = torch.Generator().manual_seed(3)
    system = torch.randint(3, 128, (13,), generator=generator).tolist()  # 3 full blocks of 4 + 1
    first, second = system + [7, 8, 9], system + [50, 51]
    scheduler, runner = make(tiny_llama, budget=32)
    paged_greedy(scheduler, runner, {"first": first}, max_tokens=6)
    plans: list = []
    cached = paged_greedy(scheduler, runner, {"second": second}, max_tokens=6, plans=plans)["second"]
    assert plans[0].scheduled[0].start == 12  # 3 blocks came from the cache
    assert scheduler.blocks.stats["hit_tokens"] == 12
    uncached_scheduler, uncached_runner = make(tiny_llama, budget=32, prefix_caching=False)
    uncached = paged_greedy(uncached_scheduler, uncached_runner, {"second": second}, max_tokens=6)["second"]
    assert cached == uncached == hf_greedy(tiny_llama, second, 6)


def test_real_smollm2_greedy_matches_hf_generate(checkpoint_dir, tokenizer):
    model = LlamaForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32, local_files_only=True).eval()
    texts = ["Once upon a time", "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"]
    prompts = {i: tokenizer(text)["input_ids"] for i, text in enumerate(texts)}
    # blocks of 8 and at most 12 tokens a step: the chat prompt (16 tokens) is prefilled in two chunks, the
    # second alongside the short prompt's first decode
    scheduler, runner = make(model, num_blocks=16, block_size=8, max_num_seqs=2, budget=12)
    plans: list = []
    outputs = paged_greedy(scheduler, runner, prompts, max_tokens=6, plans=plans)
    assert [(s.seq_id, s.start, len(s.token_ids)) for s in plans[1].scheduled] == [(0, 4, 1), (1, 8, 8)]
    for seq_id, prompt in prompts.items():
        assert outputs[seq_id] == hf_greedy(model, prompt, 6), texts[seq_id]


class FakePagedPrefillWrapper:
    """A stand-in for flashinfer.BatchPrefillWithPagedKVCacheWrapper with the documented semantics (NHD pages,
    CSR page tables, causal with the queries at the end of each request's KV), in torch: it checks the metadata
    and the calls the `flashinfer` backend makes, not FlashInfer's kernels (those need CUDA)."""

    plans = 0

    def __init__(self, float_workspace_buffer, kv_layout="NHD"):
        assert kv_layout == "NHD" and float_workspace_buffer.dtype == torch.uint8

    def plan(
        self,
        qo_indptr,
        paged_kv_indptr,
        paged_kv_indices,
        paged_kv_last_page_len,
        num_qo_heads,
        num_kv_heads,
        head_dim_qk,
        page_size,
        *,
        causal=False,
        sm_scale=None,
        q_data_type=None,
        kv_data_type=None,
    ):
        for tensor in (qo_indptr, paged_kv_indptr, paged_kv_indices, paged_kv_last_page_len):
            assert tensor.dtype == torch.int32 and tensor.dim() == 1
        assert causal and len(paged_kv_indptr) == len(qo_indptr) == len(paged_kv_last_page_len) + 1
        assert ((paged_kv_last_page_len >= 1) & (paged_kv_last_page_len <= page_size)).all()
        self.qo, self.kv_indptr = qo_indptr.tolist(), paged_kv_indptr.tolist()
        self.pages, self.last = paged_kv_indices.tolist(), paged_kv_last_page_len.tolist()
        self.heads, self.page_size, self.scale = (num_qo_heads, num_kv_heads, head_dim_qk), page_size, sm_scale
        FakePagedPrefillWrapper.plans += 1

    def run(self, q, paged_kv_cache):
        num_qo_heads, num_kv_heads, head_dim = self.heads
        assert q.shape[1:] == (num_qo_heads, head_dim)
        assert paged_kv_cache.shape[1:] == (2, self.page_size, num_kv_heads, head_dim)
        out = torch.empty_like(q)
        for b in range(len(self.qo) - 1):
            pages = self.pages[self.kv_indptr[b] : self.kv_indptr[b + 1]]
            kv_len = (len(pages) - 1) * self.page_size + self.last[b]
            qo_len = self.qo[b + 1] - self.qo[b]
            k, v = (paged_kv_cache[pages, i].reshape(-1, num_kv_heads, head_dim)[:kv_len] for i in (0, 1))
            mask = torch.arange(kv_len)[None] <= torch.arange(qo_len)[:, None] + kv_len - qo_len
            rows = q[self.qo[b] : self.qo[b + 1]]
            q_, k_, v_ = (t.transpose(0, 1) for t in (rows, k, v))
            attended = torch.nn.functional.scaled_dot_product_attention(
                q_, k_, v_, attn_mask=mask, scale=self.scale, enable_gqa=True
            )
            out[self.qo[b] : self.qo[b + 1]] = attended.transpose(0, 1)
        return out


def test_flashinfer_backend_metadata_and_calls_against_a_stand_in(tiny_llama, monkeypatch):
    monkeypatch.setitem(
        sys.modules, "flashinfer", SimpleNamespace(BatchPrefillWithPagedKVCacheWrapper=FakePagedPrefillWrapper)
    )
    FakePagedPrefillWrapper.plans = 0
    generator = torch.Generator().manual_seed(4)
    prompts = {i: torch.randint(3, 128, (n,), generator=generator).tolist() for i, n in enumerate((3, 9, 14))}
    scheduler = Scheduler(BlockManager(64, 4), max_num_seqs=3, max_num_batched_tokens=8)
    runner = PagedRunner(tiny_llama, 64, 4, attention="flashinfer")
    plans: list = []
    outputs = paged_greedy(scheduler, runner, prompts, max_tokens=8, plans=plans)
    assert FakePagedPrefillWrapper.plans == len(plans)  # planned once per step, not per layer
    for seq_id, prompt in prompts.items():
        assert outputs[seq_id] == hf_greedy(tiny_llama, prompt, 8), seq_id
