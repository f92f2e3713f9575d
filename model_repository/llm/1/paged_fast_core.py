"""The fast engine core (`engine_core: fast`): torch, a paged KV cache, chunked prefill scheduled with decode.

ONE loop thread (as openvino_paged_core.py): take submitted requests, give each sequence a sampler row (its
sampling state on the device: sampler.SlotSampler; the row is NOT its KV), hand it to the Scheduler
(scheduler.py: decode tokens first, then prefill chunks within a token budget, preemption by recompute when
blocks run out) over a BlockManager (kv_blocks.py: paged blocks, a prefix cache of full blocks with reference
counts and LRU eviction); run the StepPlan through paged_runner.PagedRunner (FlashInfer's paged kernels on CUDA,
a torch reference on CPU); sample every sampled row on the device with its own settings (seeds, penalties, bias,
bad words, min_tokens, stop ids, log-probabilities, a grammar's bitmask: paged_guided.py); `scheduler.update`;
then per sequence incremental detokenization, stop strings, end ids, length, and the request's sink, while the NEXT
step already runs on the device (the host lags one step: a sequence that just ended rides along in the step in
flight and its token there is dropped). A finished or cancelled sequence gives its blocks and its row back at once.
With async_scheduling (paged_overlap.py) step N+1 is planned and queued before the host waits for step N, its
decode inputs taken on the device from N's tokens; without it (or while a sequence is guided) N+1 waits for N.

n sequences (num_return_sequences) are n scheduler sequences with their own seed streams; with the prefix cache
on, one admitted after another's prompt blocks are cached shares them. Prompt log-probabilities need every
prompt token computed: such a request skips the prefix-cache lookup (its blocks still join the cache).
Token ids (Update.token_ids) leave out the token that ended a sequence (end-of-sequence, end_id, stop_token_ids),
as its text does; they keep the tokens of a stop string the text is trimmed before.
A guided sequence's matcher accepts each token in `_complete`, before the next mask; its grammar's end ends it "stop".
"""

from __future__ import annotations

import heapq
import logging
import queue
import random
import threading
import time
from array import array
from collections import deque

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from bad_words import split_bad_words
from cancellation import CancellationPoller
from core import InvalidRequest, Sampling, Update, check_prompt, check_prompt_ids, validate_sampling
from kv_blocks import BlockManager
from paged_guided import PagedGuides
from paged_overlap import StepInFlight, overlappable
from paged_runner import PagedRunner
from paged_sequences import PagedRequest, PagedSequence
from prompt_scores import score_prompts
from sampler import FlagCounts, Flags, SlotConfig, SlotSampler, sequence_key
from scheduler import Scheduler
from text_stream import TextStream, fast_decoder

log = logging.getLogger("llm.paged_fast_core")

CANCEL_POLL_INTERVAL_S = 0.05
DEFAULT_SLOT_LEN = 2048  # without kv_cache_blocks: KV for max_num_seqs x this many tokens (as the slot core had)
BLOCK = 256  # the kv_cache_blocks setting counts blocks of this many tokens, for every core
BLOCK_SIZE = 16  # tokens per paged block (FlashInfer's page size)


def load_checkpoint(checkpoint_dir: str, device: str, dtype: str):
    """(tokenizer, its detokenizer, the model in eval mode on `device`, its end-of-sequence ids)."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=getattr(torch, dtype), local_files_only=True)
    model = model.to(device).eval()
    eos = model.generation_config.eos_token_id or model.config.eos_token_id
    return tokenizer, fast_decoder(tokenizer), model, frozenset([eos] if isinstance(eos, int) else (eos or []))


class PagedFastEngine:
    """core.EngineCore over paged_runner.PagedRunner, kv_blocks.BlockManager, scheduler.Scheduler and
    sampler.SlotSampler."""

    def __init__(
        self,
        checkpoint_dir: str,
        device: str = "cpu",
        dtype: str = "float32",
        max_num_seqs: int = 32,
        kv_cache_blocks: int = 0,
        max_model_len: int | None = None,
        max_prefill_tokens: int = 8192,  # the step's token budget: decode tokens, then prefill chunks
        cuda_graphs: bool = True,  # pure-decode steps replay CUDA graphs (CUDA with flashinfer: paged_graphs.py)
        prefix_caching: bool = True,
        attention: str = "auto",  # paged_runner: flashinfer on CUDA (bf16/fp16), torch_reference otherwise
        async_scheduling: bool = True,  # plan and queue step N+1 before waiting for step N (paged_overlap.py)
    ):
        self.async_scheduling = async_scheduling
        self.tokenizer, self._decoder, model, self.default_eos_ids = load_checkpoint(checkpoint_dir, device, dtype)
        config = model.config
        self.vocab_size = config.vocab_size
        context = min(max_model_len or config.max_position_embeddings, config.max_position_embeddings)
        kv_tokens = kv_cache_blocks * BLOCK if kv_cache_blocks else max_num_seqs * min(context, DEFAULT_SLOT_LEN)
        num_blocks = max(kv_tokens // BLOCK_SIZE, 1)
        self.max_model_len = min(context, num_blocks * BLOCK_SIZE)
        self.prefix_caching = prefix_caching
        graph_batch = max_num_seqs if cuda_graphs else 0
        self.runner = PagedRunner(model, num_blocks, BLOCK_SIZE, attention, self.max_model_len, graph_batch)
        self.blocks = BlockManager(num_blocks, BLOCK_SIZE, enable_prefix_caching=prefix_caching)
        self.scheduler = Scheduler(self.blocks, max_num_seqs, max(max_prefill_tokens, max_num_seqs))
        self.sampler = SlotSampler(max_num_seqs, self.vocab_size, model.device)
        self.device = model.device
        self._guides = PagedGuides(checkpoint_dir, self.vocab_size, self.sampler)
        self.max_num_seqs = max_num_seqs
        self._free_rows = list(range(max_num_seqs))
        self._sequences: dict[int, PagedSequence] = {}  # scheduler seq id -> sequence (those holding a row)
        self._next_seq_id = 0
        self._waiting: deque[PagedRequest] = deque()  # for rows
        self._incoming: queue.SimpleQueue[PagedRequest | None] = queue.SimpleQueue()
        self._active: dict[str, PagedRequest] = {}
        self._flags: Flags | None = None  # what the scheduled sequences need of a step (None: to recompute)
        self._flag_counts = FlagCounts()  # the configs of the sequences holding a row, for _flags
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._failure: BaseException | None = None
        self._cancellations = CancellationPoller()
        # Where the loop's time goes (read by the benchmarks): counts, and seconds spent in each phase.
        self.stats = {"steps": 0, "tokens": 0, "preemptions": 0, "prefill_tokens": 0, "overlapped_steps": 0,
                      "plan_s": 0.0, "launch_s": 0.0, "gpu_wait_s": 0.0, "deliver_s": 0.0}  # fmt: skip
        self._thread = threading.Thread(target=self._run, name="llm-fast-core", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ core.EngineCore
    @property
    def num_active(self) -> int:
        return len(self._active)

    def validate(self, sampling: Sampling) -> None:
        validate_sampling(sampling, self.vocab_size)
        if sampling.n > self.max_num_seqs:
            raise InvalidRequest(
                f"num_return_sequences ({sampling.n}) exceeds the {self.max_num_seqs} sequences this engine "
                "runs at once (max_num_seqs)"
            )

    def submit(self, request_id, prompt, sampling, sink, is_cancelled) -> None:
        if self._failure is not None:
            raise RuntimeError(f"the generation loop has failed ({self._failure}); the model must be reloaded")
        self.validate(sampling)
        if isinstance(prompt, str):
            input_ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        else:
            input_ids = check_prompt_ids(prompt, self.vocab_size)
        eos_ids = check_prompt(input_ids, sampling, self.max_model_len, self.default_eos_ids)
        if sampling.min_tokens < sampling.max_tokens:  # else exactly max_tokens: no end at all
            eos_ids |= frozenset(sampling.stop_token_ids)
        banned, bad_sequences = split_bad_words(sampling.bad_words, self._encode)
        bias = sampling.logit_bias + tuple((token, float("-inf")) for token in sorted(banned))
        seed = random.getrandbits(64) if sampling.seed is None else sampling.seed
        compiled = self._guides.compile(sampling)  # here, so that an invalid guide is refused at once
        request = PagedRequest(request_id, input_ids, sampling, sink, is_cancelled)
        for index in range(sampling.n):
            config = SlotConfig(
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
                guided=compiled is not None,
            )
            with self._lock:
                seq_id, self._next_seq_id = self._next_seq_id, self._next_seq_id + 1
            # every sequence reports the prompt's scores, computed once (sequence 0's prefill)
            prompt_k = sampling.top_logprobs if sampling.prompt_logprobs and index == 0 else -1
            stream = TextStream(self._decoder, sampling.stop)
            sequence = PagedSequence(request, index, seq_id, config, stream, eos_ids, prompt_k)
            if compiled is not None:
                sequence.guide = self._guides.matcher(compiled, eos_ids)
            request.sequences.append(sequence)
        if sampling.prompt_logprobs and len(input_ids) == 1:  # a one-token prompt scores nothing
            for sequence in request.sequences:
                sequence.prompt_k, sequence.prompt_scores = -1, ((), () if sampling.top_logprobs else None)
        with self._lock:
            if request_id in self._active:
                raise InvalidRequest(f"request id {request_id!r} is already in flight")
            self._active[request_id] = request
        self._incoming.put(request)

    def _encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

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
        except BaseException as exc:  # the device failed (out of memory, ...): fail every request, say why
            log.exception("the fast engine core's loop failed")
            self._failure = exc
            for request in list(self._active.values()):
                self._finish_request(request, "error", error=f"the generation loop failed: {exc}")

    def _loop(self) -> None:
        pending: StepInFlight | None = None  # the step in flight: delivered while the next one runs on the device
        while not self._stopping.is_set():
            self._take_incoming(block=pending is None and not self.scheduler.has_work and not self._waiting)
            self._poll_cancellations()
            self._admit()
            done = None
            if pending is not None and not (self.async_scheduling and overlappable(self._step_flags())):
                done, pending = self._complete(pending), None  # the next plan waits for its tokens
            launched = self._launch(pending) if self.scheduler.has_work else None
            if pending is not None:  # overlapped: the next step is queued behind it already
                done = self._complete(pending)
            if done is not None:
                self._deliver(*done)
            pending = launched

    def _take_incoming(self, block: bool) -> None:
        try:
            item = self._incoming.get(timeout=CANCEL_POLL_INTERVAL_S) if block else self._incoming.get_nowait()
            while True:
                if item is not None:
                    self._waiting.append(item)
                item = self._incoming.get_nowait()
        except queue.Empty:
            pass

    def _admit(self) -> None:
        """Waiting requests, first come first served, while sampler rows are free for all n of their sequences:
        rows set up in one batch, sequences handed to the scheduler (which admits them as blocks allow)."""
        admitted: list[PagedSequence] = []
        while self._waiting:
            request = self._waiting[0]
            if not request.done and len(self._free_rows) < request.sampling.n:
                break
            self._waiting.popleft()
            if request.done:  # cancelled while waiting
                continue
            for sequence in request.sequences:
                sequence.row = heapq.heappop(self._free_rows)
                self._sequences[sequence.seq_id] = sequence
                self._flag_counts.add(sequence.config)
                use_cache = sequence.prompt_k < 0
                self.scheduler.add(sequence.seq_id, request.prompt, request.sampling.max_tokens, use_cache)
                admitted.append(sequence)
        if admitted:
            rows = torch.tensor([s.row for s in admitted])  # on the host: setup must not wait for the step in flight
            self.sampler.setup(rows, [s.config for s in admitted], [s.request.prompt for s in admitted])
            self._flags = None

    def _step_flags(self) -> Flags:
        if self._flags is None:
            self._flags = self._flag_counts.flags(self.vocab_size)
        return self._flags

    def _launch(self, previous: StepInFlight | None) -> StepInFlight | None:
        """Plan a step and queue it on the device (forward, sampling, its tokens' copy to the host); the host does
        not wait for it here. `previous`: the step still in flight (overlapped), whose tokens the plan's
        placeholders stand for."""
        started = time.perf_counter()
        plan = self.scheduler.plan()
        if not plan.scheduled:
            return None
        flags = self._step_flags()
        scheduled = [self._sequences[item.seq_id] for item in plan.scheduled]
        scoring = any(s.prompt_k >= 0 for s in scheduled)
        # One pass: the sampled sequences, their sampler rows and positions, the step's token counts.
        sampled, rows_positions, positions = [], [], []
        num_tokens = num_single = 0
        for item, sequence in zip(plan.scheduled, scheduled, strict=True):
            num_new = len(item.token_ids)
            num_tokens += num_new
            num_single += num_new == 1
            if item.sample:
                sampled.append(sequence)
                rows_positions.append(sequence.row)
                positions.append(item.start + num_new - 1)
        planned = time.perf_counter()
        logits = self.runner.step(plan, keep_hidden=scoring, previous=previous.tokens if previous else None)
        if scoring:
            score_prompts(self.runner, plan, scheduled, self.device)
        tokens = logprobs = None
        if sampled:
            rows_positions += positions  # one host-to-device copy for both
            host = torch.frombuffer(array("q", rows_positions), dtype=torch.long)  # cheaper than torch.tensor(list)
            rows, positions_ = host.to(self.device, non_blocking=True).split(len(sampled))
            if flags.guided:
                self._guides.write_masks(sampled)
            tokens, logprobs = self.sampler.sample(logits, rows, positions_, flags)
            self.sampler.advance_rows(rows, tokens, flags)
        step = StepInFlight.launched(plan, sampled, tokens, logprobs, self.scheduler if self.async_scheduling else None)
        self.stats["steps"] += 1
        self.stats["overlapped_steps"] += previous is not None
        self.stats["tokens"] += num_tokens
        self.stats["prefill_tokens"] += num_tokens - num_single
        self.stats["preemptions"] += len(plan.preempted)
        self.stats["plan_s"] += planned - started
        self.stats["launch_s"] += time.perf_counter() - planned
        return step

    def _complete(self, step: StepInFlight):
        """Wait for a launched step; its tokens join the scheduler's sequences (in place of its placeholders)."""
        started = time.perf_counter()
        tokens, logprobs = step.wait()
        self.stats["gpu_wait_s"] += time.perf_counter() - started
        step.complete(tokens, self.scheduler, self._guides)
        return step.sampled, tokens, logprobs

    def _deliver(self, sampled: list[PagedSequence], tokens: list[int], logprobs) -> None:
        """Hand a completed step's tokens to their sequences (a sequence that ended meanwhile drops its token)."""
        started = time.perf_counter()
        for row, (sequence, token) in enumerate(zip(sampled, tokens, strict=True)):
            self._on_token(sequence, token, logprobs, row)
        self.stats["deliver_s"] += time.perf_counter() - started

    def _on_token(self, sequence: PagedSequence, token: int, logprobs, row: int) -> None:
        """Take one generated token; `logprobs` (chosen, top values, top ids), when computed, has it at `row`."""
        if sequence.done:
            return
        sequence.generated += 1
        hit_eos = token in sequence.eos_ids
        if not hit_eos:
            sequence.ids.append(token)
            k = sequence.config.logprobs
            if k >= 0 and logprobs is not None:
                sequence.logprobs.append(logprobs[0][row])
                if k:
                    sequence.top_logprobs.append(tuple(zip(logprobs[2][row][:k], logprobs[1][row][:k], strict=True)))
        text = "" if hit_eos else sequence.stream.push((token,))
        if hit_eos:
            self._finish(sequence, "stop", sequence.stream.finish())
        elif sequence.guide is not None and sequence.guide.refused is not None:  # cannot happen: it was masked
            self._finish(sequence, "error", text, error=f"the grammar refused token {sequence.guide.refused}")
        elif sequence.stream.stopped:
            self._finish(sequence, "stop", text)
        elif sequence.guide is not None and sequence.guide.terminated:  # complete, with no end id to wait for
            self._finish(sequence, "stop", text + sequence.stream.finish())
        elif sequence.generated >= sequence.request.sampling.max_tokens:
            self._finish(sequence, "length", text + sequence.stream.finish())
        elif text:
            sequence.request.sink(self._update(sequence, text))

    def _update(
        self, sequence: PagedSequence, text: str, reason: str | None = None, error: str | None = None
    ) -> Update:
        """The sequence's delta since its last update (and its prompt's scores on its first)."""
        prompt_scores, sequence.prompt_scores = sequence.prompt_scores, None
        ids = tuple(sequence.ids)
        sequence.ids.clear()  # not a new list: fewer objects for the garbage collector
        if not sequence.logprobs and not sequence.top_logprobs and prompt_scores is None:  # most updates
            return Update(text, reason, error, len(sequence.request.prompt), sequence.generated, sequence.index, ids)
        update = Update(
            text, reason, error, len(sequence.request.prompt), sequence.generated, sequence.index,
            ids, tuple(sequence.logprobs), tuple(sequence.top_logprobs), *(prompt_scores or (None, None)),
        )  # fmt: skip
        sequence.logprobs, sequence.top_logprobs = [], []
        return update

    def _poll_cancellations(self) -> None:
        for request in self._cancellations.due(list(self._active.values())):
            if not request.done and request.is_cancelled():
                self._finish_request(request, "cancelled")

    def _finish_request(self, request: PagedRequest, reason: str, error: str | None = None) -> None:
        for sequence in request.sequences:
            self._finish(sequence, reason, error=error)

    def _finish(self, sequence: PagedSequence, reason: str, text: str = "", error: str | None = None) -> None:
        if sequence.done:
            return
        sequence.done = True
        request = sequence.request
        if all(s.done for s in request.sequences):
            request.done = True
            with self._lock:
                self._active.pop(request.request_id, None)
        # Its blocks and row go back now (free before the next step is planned); only the loop thread touches them.
        on_loop = threading.current_thread() is self._thread
        if on_loop and self._sequences.pop(sequence.seq_id, None) is not None:
            self.scheduler.finish(sequence.seq_id)
            heapq.heappush(self._free_rows, sequence.row)
            self._flag_counts.remove(sequence.config)
            self._flags = None
        try:
            request.sink(self._update(sequence, text, reason, error))
        except Exception:  # e.g. the client is gone; the request is over for us either way
            log.exception("could not deliver the end of request %s (%s)", request.request_id, reason)
