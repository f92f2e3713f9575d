"""The paged OpenVINO engine core (`engine_core: openvino_paged`): the PagedAttention IR that GenAI's
ContinuousBatchingPipeline runs, driven by us (openvino_paged_runner.PagedRunner), so that every step's logits come
back and our own sampler (numpy_sampler.py, the torch sampler's semantics) honours every sampling input: seeds,
penalties, logit_bias, bad_words, min_tokens, stop ids, n, log-probabilities with top 1..20, prompt log-probs, and
grammar-constrained decoding (a guide compiled at submit by grammar.py, one matcher per sequence, its bitmask
applied in numpy_sampler; a terminated matcher ends the sequence "stop").

ONE loop thread: take submitted requests into the Scheduler (scheduler.py: decode tokens first, then chunked
prefill within a token budget, preemption by recompute) over a BlockManager (kv_blocks.py: paged blocks, an
optional prefix cache); run the step; sample each sampled row; `scheduler.update`; then per sequence incremental
detokenization (text_stream.TextStream), stop strings, end ids, length, and the request's sink. Cancellation,
stop strings and end ids free a sequence's blocks at once (BlockManager.free), not a step later.

The KV cache is sized by kv_cache_blocks (256-token units) or DEFAULT_KV_TOKENS, but the runner's tensors start
small and grow (copied) when a step's block tables reach past them: memory follows use.

n sequences are n scheduler sequences, each prefilling the prompt (the BlockManager has no fork, and a prefix-cache
hit would change a sequence's logits slightly against its batch-mates: u8 KV read back vs. computed in-step). With
prefix_caching on, a sequence admitted after another's prompt blocks are cached reuses them.
"""

from __future__ import annotations

import json
import logging
import queue
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer

from bad_words import split_bad_words
from cancellation import CancellationPoller
from core import (
    InvalidRequest,
    Sampling,
    TopLogprobs,
    Update,
    check_prompt,
    check_prompt_ids,
    checkpoint_eos_ids,
    validate_sampling,
)
from kv_blocks import BlockManager
from numpy_sampler import SamplingParams, SequenceSampler, prompt_scores, sample_rows, sequence_key
from openvino_paged_runner import CPU_BLOCK_SIZE, PagedRunner, SeqInput
from scheduler import Scheduler
from text_stream import TextStream

log = logging.getLogger("llm.openvino_paged_core")

CANCEL_POLL_INTERVAL_S = 0.05
BLOCK = 256  # kv_cache_blocks counts blocks of this many tokens, for every core
DEFAULT_KV_TOKENS = 65536  # without kv_cache_blocks: ~0.9 GB of u8 KV for SmolLM2 at most, allocated as used
INITIAL_BLOCKS = 64  # the runner's cache tensors to begin with (CPU blocks of 32 tokens); doubled as needed
STEP_TOKENS = 256  # tokens per step (GenAI's default max_num_batched_tokens): prefill chunks beyond decodes


@dataclass(eq=False)
class _Request:
    request_id: str
    prompt: list[int]
    sampling: Sampling
    sink: Callable[[Update], None]
    is_cancelled: Callable[[], bool]
    sequences: list[_Sequence] = field(default_factory=list)
    done: bool = False


@dataclass(eq=False)
class _Sequence:
    request: _Request
    index: int
    seq_id: int
    sampler: SequenceSampler
    stream: TextStream
    eos_ids: frozenset[int]
    prompt_k: int = -1  # -1: no prompt log-probs; else their top k
    generated: int = 0
    done: bool = False
    ids: list[int] = field(default_factory=list)  # since the last update (end ids left out)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[TopLogprobs] = field(default_factory=list)
    prompt_chosen: np.ndarray | None = None  # by position (a recomputed chunk overwrites its entries)
    prompt_top: list | None = None
    prompt_scores: tuple | None = None  # complete, until the first update takes it


class OpenVINOPagedEngine:
    """core.EngineCore over openvino_paged_runner.PagedRunner, kv_blocks.BlockManager and scheduler.Scheduler."""

    def __init__(
        self,
        checkpoint_dir: str,
        device: str = "cpu",
        dtype: str = "float32",  # the IR's weights were compressed at export (build_engines/openvino.py)
        max_num_seqs: int = 32,
        kv_cache_blocks: int = 0,
        max_model_len: int | None = None,
        prefix_caching: bool = False,
    ):
        if device != "cpu":
            raise ValueError(f"the openvino_paged engine core runs on the CPU, not {device!r}; use engine_core fast")
        checkpoint = Path(checkpoint_dir)
        if not (checkpoint / "openvino_model.xml").is_file():
            raise ValueError(f"{checkpoint} holds no OpenVINO model (openvino_model.xml); run `llmserve prepare`")
        self.tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
        config = json.loads((checkpoint / "config.json").read_text())
        self.vocab_size = int(config["vocab_size"])
        context = int(config.get("max_position_embeddings") or 2048)
        context = min(max_model_len or context, context)
        kv_tokens = kv_cache_blocks * BLOCK if kv_cache_blocks else max(DEFAULT_KV_TOKENS, context)
        num_blocks = kv_tokens // CPU_BLOCK_SIZE
        self.max_model_len = min(context, num_blocks * CPU_BLOCK_SIZE)
        self.default_eos_ids = checkpoint_eos_ids(checkpoint)
        self.prefix_caching = prefix_caching
        self.runner = PagedRunner(checkpoint, num_blocks=min(INITIAL_BLOCKS, num_blocks))
        self.blocks = BlockManager(num_blocks, CPU_BLOCK_SIZE, enable_prefix_caching=prefix_caching)
        self.scheduler = Scheduler(self.blocks, max_num_seqs, max(STEP_TOKENS, max_num_seqs))
        self._sequences: dict[int, _Sequence] = {}  # scheduler seq id -> sequence
        self._next_seq_id = 0
        self._incoming: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._active: dict[str, _Request] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._failure: BaseException | None = None
        self._cancellations = CancellationPoller()
        self._guides = None  # grammar.Guides, made by the first guided request (it loads xgrammar)
        self._checkpoint = checkpoint
        # Where the loop's time goes (read by the benchmark): counts, and seconds in each phase.
        self.stats = {"steps": 0, "tokens": 0, "preemptions": 0, "forward_s": 0.0, "sample_s": 0.0, "deliver_s": 0.0}
        self._thread = threading.Thread(target=self._run, name="llm-openvino-paged-core", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ core.EngineCore
    @property
    def num_active(self) -> int:
        return len(self._active)

    def submit(self, request_id, prompt, sampling, sink, is_cancelled) -> None:
        if self._failure is not None:
            raise RuntimeError(f"the generation loop has failed ({self._failure}); the model must be reloaded")
        validate_sampling(sampling, self.vocab_size)
        if sampling.prompt_logprobs and self.prefix_caching:
            raise InvalidRequest(
                "return_prompt_log_probs is not available with prefix caching (cached tokens are not recomputed)"
            )
        if isinstance(prompt, str):
            input_ids = self.tokenizer.encode(prompt, add_special_tokens=True).ids
        else:
            input_ids = check_prompt_ids(prompt, self.vocab_size)
        eos_ids = check_prompt(input_ids, sampling, self.max_model_len, self.default_eos_ids)
        if sampling.min_tokens < sampling.max_tokens:  # else exactly max_tokens: no end at all
            eos_ids |= frozenset(sampling.stop_token_ids)
        banned, bad_sequences = split_bad_words(sampling.bad_words, self._encode)
        bias = sampling.logit_bias + tuple((token, float("-inf")) for token in sorted(banned))
        seed = random.getrandbits(64) if sampling.seed is None else sampling.seed
        compiled = self._compile_guide(sampling)  # here, so that an invalid guide is refused at once
        request = _Request(request_id, input_ids, sampling, sink, is_cancelled)
        for index in range(sampling.n):
            params = SamplingParams(
                temperature=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                greedy=sampling.greedy,
                key=sequence_key(seed, index),
                presence=sampling.presence_penalty,
                frequency=sampling.frequency_penalty,
                repetition=sampling.repetition_penalty,
                bias=bias,
                bad_sequences=bad_sequences,
                end_ids=eos_ids,
                min_tokens=sampling.min_tokens,
                logprobs=sampling.top_logprobs if sampling.logprobs or sampling.top_logprobs else -1,
            )
            with self._lock:
                seq_id, self._next_seq_id = self._next_seq_id, self._next_seq_id + 1
            sequence = _Sequence(
                request,
                index,
                seq_id,
                SequenceSampler(
                    params,
                    input_ids,
                    self.vocab_size,
                    None if compiled is None else self._guides.matcher(compiled, eos_ids),  # type: ignore[union-attr]
                ),
                TextStream(self.tokenizer, sampling.stop),
                eos_ids,
                # every sequence reports the prompt's scores, computed once (sequence 0's prefill)
                prompt_k=sampling.top_logprobs if sampling.prompt_logprobs and index == 0 else -1,
            )
            request.sequences.append(sequence)
        if sampling.prompt_logprobs and len(input_ids) == 1:  # a one-token prompt scores nothing
            for sequence in request.sequences:
                sequence.prompt_k, sequence.prompt_scores = -1, ((), () if sampling.top_logprobs else None)
        with self._lock:
            if request_id in self._active:
                raise InvalidRequest(f"request id {request_id!r} is already in flight")
            self._active[request_id] = request
        self._incoming.put(request)

    def _compile_guide(self, sampling: Sampling):
        """The request's guide compiled (grammar.py, imported with the first one), or None without one."""
        if sampling.guide is None:
            return None
        if self._guides is None:
            from grammar import Guides

            self._guides = Guides(self._checkpoint, self.vocab_size)
        return self._guides.compile(*sampling.guide)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def shutdown(self) -> None:
        self._stopping.set()
        self._incoming.put(None)  # wake the loop
        self._thread.join(timeout=30)
        for request in list(self._active.values()):
            self._finish_request(request, "error", error="the model is being unloaded")

    # ------------------------------------------------------------------ the loop thread
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # OpenVINO failed (out of memory, ...): fail every request, say why
            log.exception("the openvino_paged engine core's loop failed")
            self._failure = exc
            for request in list(self._active.values()):
                self._finish_request(request, "error", error=f"the generation loop failed: {exc}")

    def _loop(self) -> None:
        while not self._stopping.is_set():
            self._take_incoming(block=not self.scheduler.has_work)
            self._poll_cancellations()
            if self.scheduler.has_work:
                self._step()

    def _take_incoming(self, block: bool) -> None:
        try:
            item = self._incoming.get(timeout=CANCEL_POLL_INTERVAL_S) if block else self._incoming.get_nowait()
            while True:
                if item is not None and not item.done:
                    for sequence in item.sequences:
                        self.scheduler.add(sequence.seq_id, item.prompt, item.sampling.max_tokens)
                        self._sequences[sequence.seq_id] = sequence
                item = self._incoming.get_nowait()
        except queue.Empty:
            pass

    def _step(self) -> None:
        plan = self.scheduler.plan()
        if not plan.scheduled:
            return
        highest = max(max(item.block_table) for item in plan.scheduled)
        if highest >= self.runner.num_blocks:  # grow by doubling, up to the BlockManager's size
            self.runner.grow_cache(min(self.blocks.num_blocks, max(2 * self.runner.num_blocks, highest + 1)))
        sequences = [self._sequences[item.seq_id] for item in plan.scheduled]
        batch = []
        for item, sequence in zip(plan.scheduled, sequences, strict=True):
            scores = sequence.prompt_k >= 0 and item.start < len(sequence.request.prompt) - 1
            batch.append(SeqInput(item.token_ids, item.start, item.block_table, all_logits=scores))
        started = time.perf_counter()
        out = self.runner.step(batch)
        forwarded = time.perf_counter()
        self.stats["steps"] += 1
        self.stats["tokens"] += plan.num_tokens
        self.stats["preemptions"] += len(plan.preempted)
        for row, (item, sequence) in enumerate(zip(plan.scheduled, sequences, strict=True)):
            if out.per_token[row] is not None:
                self._score_prompt(sequence, item.start, out.per_token[row])
        rows = [row for row, item in enumerate(plan.scheduled) if item.sample]
        sampled = [sequences[row] for row in rows]
        positions = [plan.scheduled[row].context_len - 1 for row in rows]
        results = sample_rows(out.last[rows], [s.sampler for s in sampled], positions) if rows else []
        self.scheduler.update(plan, [r.token for r in results])
        sampled_at = time.perf_counter()
        for sequence, result in zip(sampled, results, strict=True):
            sequence.sampler.advance(result.token)
            self._on_token(sequence, result)
        self.stats["forward_s"] += forwarded - started
        self.stats["sample_s"] += sampled_at - forwarded
        self.stats["deliver_s"] += time.perf_counter() - sampled_at

    def _score_prompt(self, sequence: _Sequence, start: int, logits: np.ndarray) -> None:
        """Row j of a prompt chunk from `start` is the distribution of prompt token start + j + 1."""
        prompt = sequence.request.prompt
        if sequence.prompt_chosen is None:
            sequence.prompt_chosen = np.zeros(len(prompt) - 1, dtype=np.float32)
            sequence.prompt_top = [()] * (len(prompt) - 1)
        rows = min(len(logits), len(prompt) - 1 - start)
        chosen, top = prompt_scores(logits[:rows], np.asarray(prompt[start + 1 : start + 1 + rows]), sequence.prompt_k)
        sequence.prompt_chosen[start : start + rows] = chosen
        if top is not None:
            for j, (ids, values) in enumerate(zip(top[0].tolist(), top[1].tolist(), strict=True)):
                sequence.prompt_top[start + j] = tuple(zip(ids, values, strict=True))  # type: ignore[index]
        if start + rows == len(prompt) - 1:  # complete: every sequence of the request reports it
            scores = (
                tuple(sequence.prompt_chosen.tolist()),
                tuple(sequence.prompt_top) if sequence.prompt_k > 0 else None,  # type: ignore[arg-type]
            )
            for other in sequence.request.sequences:
                other.prompt_scores = scores
            sequence.prompt_k = -1

    def _on_token(self, sequence: _Sequence, result) -> None:
        sequence.generated += 1
        token = result.token
        hit_eos = token in sequence.eos_ids
        if not hit_eos:
            sequence.ids.append(token)
            if result.logprob is not None:
                sequence.logprobs.append(result.logprob)
                if sequence.sampler.params.logprobs > 0:
                    sequence.top_logprobs.append(result.top)
        text = "" if hit_eos else sequence.stream.push((token,))
        if hit_eos:
            self._finish(sequence, "stop", sequence.stream.finish())
        elif sequence.sampler.guide_refused:
            self._finish(sequence, "error", text, error=f"the grammar refused token {token}")
        elif sequence.stream.stopped:
            self._finish(sequence, "stop", text)
        elif sequence.sampler.guide is not None and sequence.sampler.guide.terminated:  # complete, no end id
            self._finish(sequence, "stop", text + sequence.stream.finish())
        elif sequence.generated >= sequence.request.sampling.max_tokens:
            self._finish(sequence, "length", text + sequence.stream.finish())
        elif text:
            sequence.request.sink(self._update(sequence, text))

    def _update(self, sequence: _Sequence, text: str, reason: str | None = None, error: str | None = None) -> Update:
        """The sequence's delta since its last update (and its prompt's scores on its first)."""
        prompt_scores_, sequence.prompt_scores = sequence.prompt_scores, None
        update = Update(
            text, reason, error, len(sequence.request.prompt), sequence.generated, sequence.index,
            tuple(sequence.ids), tuple(sequence.logprobs), tuple(sequence.top_logprobs),
            *(prompt_scores_ or (None, None)),
        )  # fmt: skip
        sequence.ids, sequence.logprobs, sequence.top_logprobs = [], [], []
        return update

    def _poll_cancellations(self) -> None:
        for request in self._cancellations.due(list(self._active.values())):
            if not request.done and request.is_cancelled():
                self._finish_request(request, "cancelled")

    def _finish_request(self, request: _Request, reason: str, error: str | None = None) -> None:
        for sequence in request.sequences:
            self._finish(sequence, reason, error=error)

    def _finish(self, sequence: _Sequence, reason: str, text: str = "", error: str | None = None) -> None:
        if sequence.done:
            return
        sequence.done = True
        request = sequence.request
        if all(s.done for s in request.sequences):
            request.done = True
            with self._lock:
                self._active.pop(request.request_id, None)
        # Its blocks go back now (a cancelled or stopped sequence's are free before the next step is planned).
        if self._sequences.pop(sequence.seq_id, None) is not None and threading.current_thread() is self._thread:
            self.scheduler.finish(sequence.seq_id)
        try:
            request.sink(self._update(sequence, text, reason, error))
        except Exception:  # e.g. the client is gone; the request is over for us either way
            log.exception("could not deliver the end of request %s (%s)", request.request_id, reason)
