"""A paged-KV model runner over the low-level `openvino` runtime (prototype): the PagedAttention form of the
exported IR that openvino_genai's ContinuousBatchingPipeline builds internally, but driven by us, so that every step
hands the logits back (numpy) and our own sampler decides (top-k log-probabilities, logit_bias, prompt log-probs).

How the model is prepared (as GenAI does on CPU, read from its source: continuous_batching/pipeline_impl.cpp,
model_runner.hpp, cache/kv_cache_manager.hpp, utils.cpp):
  1. `paged_attention_transformation(model, use_block_indices_inputs=False, use_score_outputs=False,
     allow_score_aggregation=True)`: the stateful SDPA model becomes one with every token of the step flattened
     into a single "batch" axis and one PagedAttentionExtension per layer reading/writing KV blocks;
  2. a Gather inserted before the lm_head MatMul, fed by a new `sampled_tokens_indices` input, so the vocab
     projection runs only for the rows whose logits are wanted (the last token of each sequence, or every token of
     a prompt whose log-probabilities are asked for);
  3. compiled for CPU with the plugin's defaults (GenAI passes none on our path): bf16 inference precision where the
     CPU has it, u8 KV cache (keys quantized by channel, values by token). The KV precision and the block layout
     are read back from the compiled model's `key_cache.N` / `value_cache.N` inputs.

The model's inputs after 1-2 (T tokens this step, B sequences, N block ids in all; CPU block size 32):
  input_ids [T] i64 · position_ids [T] i64 · past_lens [B] i32 (tokens already in each sequence's KV blocks) ·
  subsequence_begins [B+1] i32 (prefix sums of new tokens) · block_indices [N] i32 (each sequence's block table,
  concatenated) · block_indices_begins [B+1] i32 (prefix sums of table lengths) · max_context_len [] i32 ·
  score_aggregation_window [B] i32 (unused without score outputs; we pass 1s) · sampled_tokens_indices [K] i64
  (rows of the T tokens to project to logits) · key_cache.L [num_blocks, kv_heads, 32 + 8, head] u8 and
  value_cache.L [num_blocks, kv_heads, 32, head + 8] u8 for L in 0..layers-1 (the +8: fp32 scale and zero point).
  Output: logits [K, 1, vocab] f32.

The caller owns the scheduling: which sequences run this step, how many of their tokens (chunked prefill), and
their block tables, which must cover past_len + len(new tokens) tokens before the step (blocks_needed()).
A sequence's KV for positions < past_len must have been written by earlier steps with the same block table prefix.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
from openvino import opset13 as ops
from openvino._offline_transformations import paged_attention_transformation

CPU_BLOCK_SIZE = 32  # tokens per KV block: fixed by the CPU plugin's PagedAttention kernel
SAMPLED_INDICES = "sampled_tokens_indices"


class OutOfBlocks(RuntimeError):
    """The KV cache has no free block left (the scheduler should preempt or wait)."""


class BlockAllocator:
    """A free list of KV block ids. Blocks are plain ints; a sequence's block table is a list of them."""

    def __init__(self, num_blocks: int):
        self.num_blocks = 0
        self._free: list[int] = []
        self.grow(num_blocks)

    @property
    def num_free(self) -> int:
        return len(self._free)

    def grow(self, num_blocks: int) -> None:
        """Make ids [old num_blocks, num_blocks) available (the cache tensors must have grown first)."""
        if num_blocks > self.num_blocks:
            # Reversed so that pop() hands out low ids first (only cosmetic: any id works).
            self._free.extend(reversed(range(self.num_blocks, num_blocks)))
            self.num_blocks = num_blocks

    def allocate(self, n: int) -> list[int]:
        if n > len(self._free):
            raise OutOfBlocks(f"{n} KV blocks wanted, {len(self._free)} free of {self.num_blocks}")
        return [self._free.pop() for _ in range(n)]

    def free(self, blocks: list[int]) -> None:
        self._free.extend(blocks)


def blocks_needed(num_tokens: int, block_size: int = CPU_BLOCK_SIZE) -> int:
    return -(-num_tokens // block_size)


@dataclass
class SeqInput:
    """One scheduled sequence of a step: its new tokens (a prompt chunk, or the last sampled token), how many of
    its tokens are already in the KV cache, and its block table (covering past_len + len(token_ids) tokens)."""

    token_ids: list[int] | np.ndarray
    past_len: int
    block_table: list[int]
    all_logits: bool = False  # logits of every new token (prompt log-probs), not only of the last


@dataclass
class StepOutput:
    """The logits of a step: `last[i]` is sequence i's last new token's row ([B, vocab] float32). With all_logits,
    `per_token[i]` holds sequence i's rows for every new token ([len(token_ids), vocab]); else it is None."""

    last: np.ndarray
    per_token: list[np.ndarray | None] = field(default_factory=list)


def _add_logits_gather(model: ov.Model) -> None:
    """Project to the vocabulary only the rows listed in a new `sampled_tokens_indices` input (axis 0: the PA
    model has every token of the step on its batch axis). Handles the lm_head pattern of our exports
    (Result <- MatMul); raises for another."""
    last = model.outputs[0].get_node().input_value(0).get_node()
    if last.get_type_name() != "MatMul":
        raise ValueError(f"the logits come from a {last.get_type_name()}, not the lm_head MatMul this runner expects")
    indices = ops.parameter([-1], ov.Type.i64, name=SAMPLED_INDICES)
    indices.output(0).get_tensor().set_names({SAMPLED_INDICES})
    hidden = last.input_value(0)
    gathered = ops.gather(hidden, indices, ops.constant(np.array([0], dtype=np.int64)))
    # Gather with a [K] index over axis 0 of [T, 1, H] gives [K, 1, H], the rank the MatMul had.
    last.input(0).replace_source_output(gathered.output(0))
    model.add_parameters([indices])
    model.validate_nodes_and_infer_types()


# fp32 compute and KV over the int8 weights, no dynamic activation quantization, on every CPU: on CPUs with AMX or
# AVX512-BF16 OpenVINO otherwise picks bf16 compute, int8 activations and u8 KV, which make a sequence's logits depend
# on the batch it runs in (a seed's text changes with the load). Both OpenVINO cores compile with these.
CPU_PROPERTIES = {
    "INFERENCE_PRECISION_HINT": "f32",
    "DYNAMIC_QUANTIZATION_GROUP_SIZE": "0",
    "KV_CACHE_PRECISION": "f32",
}


class PagedRunner:
    """The PagedAttention model compiled for CPU, its KV cache blocks, and a step() that returns logits."""

    def __init__(
        self,
        checkpoint_dir: str | Path,
        num_blocks: int = 64,
        properties: dict | None = None,
        core: ov.Core | None = None,
    ):
        checkpoint = Path(checkpoint_dir)
        config = json.loads((checkpoint / "config.json").read_text())
        self.vocab_size = int(config["vocab_size"])
        self.core = core or ov.Core()
        model = self.core.read_model(checkpoint / "openvino_model.xml")
        paged_attention_transformation(model, False, False, True)  # block tables shared by every layer, as GenAI
        _add_logits_gather(model)
        self.compiled = self.core.compile_model(model, "CPU", {**CPU_PROPERTIES, **(properties or {})})
        self.request = self.compiled.create_infer_request()
        self.input_names = {port.get_any_name() for port in self.compiled.inputs}

        layers = sorted(int(name.split(".")[1]) for name in self.input_names if name.startswith("key_cache."))
        self.num_layers = len(layers)
        self._kv_specs: list[tuple[str, ov.Type, list[int]]] = []
        for layer in layers:
            for kind in ("key_cache", "value_cache"):
                port = self.compiled.input(f"{kind}.{layer}")
                shape = [d.get_length() for d in list(port.get_partial_shape())[1:]]
                self._kv_specs.append((f"{kind}.{layer}", port.get_element_type(), shape))
        value_shape = self._kv_specs[1][2]  # [kv_heads, block_size, head (+ scale/zp)]
        self.block_size = value_shape[1]
        if self.block_size != CPU_BLOCK_SIZE:
            raise ValueError(f"unexpected KV block size {self.block_size}")
        self.kv_precision = self._kv_specs[0][1]
        self.block_bytes = sum(int(np.prod(shape)) * t.size for _, t, shape in self._kv_specs)
        self._kv: dict[str, ov.Tensor] = {}
        self.allocator = BlockAllocator(0)
        self.grow_cache(num_blocks)

    # ------------------------------------------------------------------ KV cache
    @property
    def num_blocks(self) -> int:
        return self.allocator.num_blocks

    def grow_cache(self, num_blocks: int) -> None:
        """Reallocate the cache tensors with `num_blocks` blocks (copying what is there) and free the new ids."""
        if num_blocks <= self.num_blocks:
            return
        for name, element_type, shape in self._kv_specs:
            tensor = ov.Tensor(element_type, [num_blocks, *shape])
            old = self._kv.get(name)
            if old is not None:
                tensor.data[: old.shape[0]] = old.data
            self._kv[name] = tensor
            self.request.set_tensor(name, tensor)
        self.allocator.grow(num_blocks)

    # ------------------------------------------------------------------ the forward step
    def step(self, batch: list[SeqInput]) -> StepOutput:
        if not batch:
            raise ValueError("an empty step")
        counts = np.array([len(s.token_ids) for s in batch], dtype=np.int32)
        if (counts < 1).any():
            raise ValueError("every scheduled sequence needs at least one new token")
        past = np.array([s.past_len for s in batch], dtype=np.int32)
        for s, n in zip(batch, counts, strict=True):
            if len(s.block_table) < blocks_needed(s.past_len + int(n), self.block_size):
                raise ValueError(f"a block table of {len(s.block_table)} blocks cannot hold {s.past_len + n} tokens")
        begins = np.zeros(len(batch) + 1, dtype=np.int32)
        np.cumsum(counts, out=begins[1:])
        # Only as many blocks as the sequence uses this step (the table may have been grown ahead).
        tables = [
            s.block_table[: blocks_needed(s.past_len + int(n), self.block_size)]
            for s, n in zip(batch, counts, strict=True)
        ]
        table_begins = np.zeros(len(batch) + 1, dtype=np.int32)
        np.cumsum([len(t) for t in tables], out=table_begins[1:])

        input_ids = np.concatenate([np.asarray(s.token_ids, dtype=np.int64) for s in batch])
        positions = np.concatenate([np.arange(p, p + n, dtype=np.int64) for p, n in zip(past, counts, strict=True)])
        # The rows to project: each sequence's last token, or all its new tokens.
        rows = [
            np.arange(b, e, dtype=np.int64) if s.all_logits else np.array([e - 1], dtype=np.int64)
            for s, b, e in zip(batch, begins[:-1], begins[1:], strict=True)
        ]
        sampled = np.concatenate(rows)

        inputs = {
            "input_ids": input_ids,
            "position_ids": positions,
            "past_lens": past,
            "subsequence_begins": begins,
            "block_indices": np.concatenate([np.asarray(t, dtype=np.int32) for t in tables]),
            "block_indices_begins": table_begins,
            "max_context_len": np.array(int((past + counts).max()), dtype=np.int32),
            SAMPLED_INDICES: sampled,
        }
        if "score_aggregation_window" in self.input_names:
            inputs["score_aggregation_window"] = np.ones(len(batch), dtype=np.int32)
        for name, value in inputs.items():
            self.request.set_tensor(name, ov.Tensor(value))
        self.request.infer()
        logits = self.request.get_output_tensor(0).data.reshape(len(sampled), -1)

        # Index of each sequence's rows in `logits`.
        row_ends = np.cumsum([len(r) for r in rows])
        last = logits[row_ends - 1].copy()
        per_token: list[np.ndarray | None] = [
            logits[e - len(r) : e].copy() if s.all_logits else None
            for s, r, e in zip(batch, rows, row_ends, strict=True)
        ]
        return StepOutput(last, per_token)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise log-softmax in float32."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


def top_logprobs(logits: np.ndarray, k: int, chunk: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """The k most likely token ids of each row of [rows, vocab] logits and their log-probabilities, most likely
    first. A full argpartition of 49152 floats costs ~0.75 ms a row; instead only the entries at or above the k-th
    largest of the rows' chunk maxima are candidates (at least k entries reach it, so the top k all do): ~0.06 ms."""
    rows, vocab = logits.shape
    shift = logits.max(axis=-1, keepdims=True)
    log_norm = np.log(np.exp(logits - shift).sum(axis=-1, keepdims=True)) + shift  # logsumexp
    ids = np.empty((rows, k), dtype=np.int64)
    if vocab % chunk or vocab // chunk < k:
        ids[:] = np.argpartition(logits, vocab - k, axis=-1)[:, vocab - k :]
    else:
        maxima = logits.reshape(rows, vocab // chunk, chunk).max(axis=-1)
        floors = np.partition(maxima, maxima.shape[1] - k, axis=-1)[:, maxima.shape[1] - k]
        for r in range(rows):
            candidates = np.flatnonzero(logits[r] >= floors[r])
            ids[r] = candidates[np.argpartition(logits[r, candidates], len(candidates) - k)[len(candidates) - k :]]
    values = np.take_along_axis(logits, ids, axis=-1)
    order = np.argsort(-values, axis=-1, kind="stable")
    return np.take_along_axis(ids, order, axis=-1), np.take_along_axis(values, order, axis=-1) - log_norm


class GreedyDecoder:
    """A minimal driver for tests and benchmarks: every sequence's whole prompt in one step (optionally capped to
    `chunk` tokens per sequence per step: chunked prefill), then one token per step, greedy, fixed length."""

    def __init__(self, runner: PagedRunner, chunk: int | None = None):
        self.runner = runner
        self.chunk = chunk

    def generate(self, prompts: list[list[int]], max_new_tokens: int, start_steps: list[int] | None = None):
        """Greedy tokens of each prompt; prompt i joins the batch at step start_steps[i] (default 0), so a
        prefill can run alongside other sequences' decodes. Returns (tokens per prompt, last-token logits per
        prompt per generated token)."""
        runner = self.runner
        start_steps = start_steps or [0] * len(prompts)
        state = [{"tokens": list(p), "past": 0, "table": [], "out": [], "logits": []} for p in prompts]
        step = 0
        try:
            while any(len(s["out"]) < max_new_tokens for s in state):
                batch, members = [], []
                for i, s in enumerate(state):
                    if step < start_steps[i] or len(s["out"]) >= max_new_tokens:
                        continue
                    new = s["tokens"][s["past"] :]
                    if self.chunk:
                        new = new[: self.chunk]
                    need = blocks_needed(s["past"] + len(new), runner.block_size) - len(s["table"])
                    if need > 0:
                        s["table"] += runner.allocator.allocate(need)
                    batch.append(SeqInput(new, s["past"], s["table"]))
                    members.append(i)
                if batch:
                    out = runner.step(batch)
                    for row, i in enumerate(members):
                        s = state[i]
                        s["past"] += len(batch[row].token_ids)
                        if s["past"] == len(s["tokens"]):  # the prompt (or the last token) is all in: sample
                            token = int(out.last[row].argmax())
                            s["out"].append(token)
                            s["logits"].append(out.last[row])
                            s["tokens"].append(token)
                step += 1
        finally:
            for s in state:
                runner.allocator.free(s["table"])
        return [s["out"] for s in state], [np.stack(s["logits"]) for s in state]


SCHEDULING_SKETCH = """How an EngineCore over PagedRunner would schedule (a sketch; nothing here is wired in).

One loop thread, as openvino_core has: admit new requests, poll cancellations, build one step, run it, sample,
deliver. Per step:

1. Budget. At most `max_num_batched_tokens` tokens (GenAI's default is 256) and `max_num_seqs` sequences. Every
   running sequence that has finished its prompt gets its one decode token first (decodes never wait behind a
   prefill); what remains of the budget goes to prompts, oldest first, in chunks (chunked prefill, GenAI's
   dynamic_split_fuse): a prompt longer than the remainder is fed `remainder` tokens now and the rest in later
   steps, its past_len advancing. Chunks are best kept multiples of the 32-token block. With the u8 KV cache a
   chunk attends to the earlier chunks' keys and values as quantized in the cache, while a whole-prompt prefill
   attends to them unquantized: chunking changes the logits a little (the same holds for GenAI).

2. Blocks. Before the step each scheduled sequence's table must cover past_len + new tokens: take
   blocks_needed(...) - len(table) blocks from the free list. If the list runs short, preempt by recomputation: the
   most recently admitted running sequence gives all its blocks back and goes to the head of the waiting queue with
   prompt + generated tokens as its prompt (its tokens already streamed are not streamed again; its sampler state,
   a per-request seeded Generator and its penalty counters, stays with the request, so preemption does not change
   what a seeded request samples beyond the recomputed KV's rounding). A prompt that cannot fit even in an empty
   cache is refused at submit (max_model_len and the cache size are known). grow_cache() lets the cache start
   small and double up to kv_cache_blocks (the copy is ~0.44 MB a block for SmolLM2) instead of preempting.

3. Logits. step() returns one row per sequence (every row of a prompt chunk for prompt_logprobs: row i is the
   distribution of prompt token i + 1). Per row, in numpy: logit_bias (add at ids), bad words / min_tokens (set
   ids to -inf), presence/frequency/repetition penalties from per-sequence counts, then temperature, top-k, top-p
   and a draw from the request's Generator, or argmax. logprobs / top_logprobs via top_logprobs() (~0.15 ms a row)
   of the raw logits (as vLLM reports them by default) or of the processed ones: a choice to document.

4. n > 1. Prefill the prompt once, then fork: the full prompt blocks are shared (a reference count per block, so
   free() returns a block only when its last sequence lets go) and only the partly filled last block is copied for
   each child (numpy copy of that block in every key/value tensor); each child then grows its own table.

5. Cancellation, stop strings, end ids: the sequence's blocks go back to the free list at once (no step needed,
   unlike GenAI's cancel which frees them in the next step).
"""
