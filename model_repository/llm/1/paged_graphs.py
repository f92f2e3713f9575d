"""CUDA graphs of the paged runner's pure-decode steps (every scheduled sequence feeds one token and samples).

Why: an eager step of a 16-layer Llama is ~300 kernel launches, ~2 ms of host time, more than the GPU needs for
the step at small batches. Here each batch bucket (1, 2, 4, ... max_batch) is captured once: embedding, the 16
layers with FlashInfer's paged DECODE kernel (BatchDecodeWithPagedKVCacheWrapper(use_cuda_graph=True), faster
than the prefill kernel on one query per sequence), the final norm and the LM head into a fixed logits buffer.
Per step the host writes the batch into fixed device buffers (one copy from pinned memory), plans FlashInfer's
decode (its index pointers are copied into the wrapper's fixed buffers; the plan itself runs on the host), and
replays. Padding rows (batch below the bucket) read and write one spare KV block the BlockManager never hands out.
Overlapped scheduling (paged_overlap.py): an input id -(1 + j) is the previous step's sampled token j, taken from
a fixed buffer inside the graph (the host copies the previous step's tokens there, device to device). The pinned
staging rows alternate between two buffers: with a step in flight, the one before it had its copy done.
"""

from __future__ import annotations

from array import array
from itertools import accumulate

import torch

from paged_overlap import feed_previous_tokens
from paged_runner import FLASHINFER_WORKSPACE_BYTES
from scheduler import StepPlan


def batch_buckets(limit: int) -> list[int]:
    """Powers of two below `limit`, then `limit` itself."""
    sizes, size = [], 1
    while size < limit:
        sizes.append(size)
        size *= 2
    return sizes + [limit]


class DecodeGraphs:
    def __init__(self, runner, max_batch: int, scratch_block: int):
        import flashinfer  # CUDA only

        self.runner, self.max_batch, self.scratch = runner, max_batch, scratch_block
        self.buckets = batch_buckets(max_batch)
        device = runner.device
        self.scale = runner.layers[0].self_attn.scaling
        # One staging row per input: ids, positions, write blocks, write offsets (pinned: an async copy).
        self.host = [torch.zeros(4, max_batch, dtype=torch.long, pin_memory=True) for _ in range(2)]
        self._host_turn = 0
        self.inputs = torch.zeros(4, max_batch, dtype=torch.long, device=device)
        self.previous = torch.zeros(max_batch, dtype=torch.long, device=device)  # the last step's sampled tokens
        vocab = runner.model.config.vocab_size
        self.logits = torch.zeros(max_batch, vocab, dtype=torch.float32, device=device)
        self.workspace = torch.zeros(FLASHINFER_WORKSPACE_BYTES, dtype=torch.uint8, device=device)
        max_pages = runner.num_blocks + 1 + max_batch
        self.wrappers, self.graphs = {}, {}
        for batch in self.buckets:
            i32 = {"dtype": torch.int32, "device": device}
            self.wrappers[batch] = flashinfer.BatchDecodeWithPagedKVCacheWrapper(
                self.workspace,
                "NHD",
                use_cuda_graph=True,
                paged_kv_indptr_buffer=torch.zeros(batch + 1, **i32),
                paged_kv_indices_buffer=torch.zeros(max_pages, **i32),
                paged_kv_last_page_len_buffer=torch.zeros(batch, **i32),
            )
        self._capture()

    def _plan(self, batch: int, indptr: list[int], indices: list[int], last_page_len: list[int]) -> None:
        r = self.runner

        def host(values: list[int]) -> torch.Tensor:  # plan reads them on the host
            return torch.frombuffer(array("i", values), dtype=torch.int32)

        self.wrappers[batch].plan(
            host(indptr),
            host(indices),
            host(last_page_len),
            r.num_heads,
            r.num_kv_heads,
            r.head_dim,
            r.block_size,
            q_data_type=r.dtype,
            kv_data_type=r.dtype,
            sm_scale=self.scale,
        )

    def _forward(self, batch: int) -> None:
        wrapper = self.wrappers[batch]
        ids, positions, blocks, offsets = (row[:batch] for row in self.inputs)
        ids = feed_previous_tokens(ids, self.previous, self.max_batch)
        x = self.runner.forward(ids, positions, blocks, offsets, lambda q, kv_cache, scale: wrapper.run(q, kv_cache))
        self.logits[:batch] = self.runner.logits_of(x)

    @torch.inference_mode()
    def _capture(self) -> None:
        pool = torch.cuda.graph_pool_handle()
        self.inputs[2].fill_(self.scratch)
        for batch in reversed(self.buckets):  # largest first: the smaller ones reuse its memory
            self._plan(batch, list(range(batch + 1)), [self.scratch] * batch, [1] * batch)
            stream = torch.cuda.Stream()
            stream.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(stream):
                self._forward(batch)  # warm-up outside the graph (lazy initialisation, FlashInfer's JIT)
            torch.cuda.current_stream().wait_stream(stream)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=pool):
                self._forward(batch)
            self.graphs[batch] = graph
        torch.cuda.synchronize()

    @torch.inference_mode()
    def run(self, plan: StepPlan, previous: torch.Tensor | None = None) -> torch.Tensor:
        """The float32 logits [B, vocab] of a pure-decode plan of B <= max_batch sequences (a view of the fixed
        buffer: valid until the next replay); `previous`: the previous step's sampled tokens, which placeholder
        ids stand for."""
        n = len(plan.scheduled)
        batch = next(b for b in self.buckets if b >= n)
        size, scratch, pad = self.runner.block_size, self.scratch, batch - n
        # One pass per input, no per-token appends: this runs every decode step for every sequence.
        scheduled = plan.scheduled
        positions = [item.start for item in scheduled]
        used = [position // size + 1 for position in positions]  # blocks attended over
        offsets = [position % size for position in positions]
        ids = [item.token_ids[0] for item in scheduled]
        blocks = [item.block_table[u - 1] for item, u in zip(scheduled, used, strict=True)]
        indices = [block for item, u in zip(scheduled, used, strict=True) for block in item.block_table[:u]]
        indptr = list(accumulate(used, initial=0))
        last_page_len = [offset + 1 for offset in offsets]
        if pad:  # padding rows: one token in the spare block
            zeros = [0] * pad
            ids, positions, offsets = ids + zeros, positions + zeros, offsets + zeros
            blocks += [scratch] * pad
            indices += [scratch] * pad
            indptr += range(indptr[-1] + 1, indptr[-1] + 1 + pad)
            last_page_len += [1] * pad
        flat = array("q", ids)
        for row in (positions, blocks, offsets):
            flat.extend(row)
        host, self._host_turn = self.host[self._host_turn], 1 - self._host_turn
        host[:, :batch] = torch.frombuffer(flat, dtype=torch.long).view(4, batch)  # cheaper than torch.tensor
        self.inputs[:, :batch].copy_(host[:, :batch], non_blocking=True)
        if previous is not None:
            self.previous[: len(previous)].copy_(previous, non_blocking=True)
        self._plan(batch, indptr, indices, last_page_len)
        self.graphs[batch].replay()
        return self.logits[:n]
