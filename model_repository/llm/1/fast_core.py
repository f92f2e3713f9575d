"""The fast engine core (`engine_core: fast`): in-flight batching over fast_runner.SlotRunner, an EngineCore (core.py).

ONE thread does everything after `submit`: admit waiting requests (batched prefill into free slots), launch a
decode step, and, while the GPU runs it, hand the previous step's tokens to their requests (incremental
detokenization, stop strings, end of sequence, length) and their sinks. The host is therefore one step behind
the device: a sequence that just finished still rides along in the step already launched, and that step's
token for it is dropped. No thread per request, no per-token allocation on the device.

Every sampling setting is per sequence and acts on the device (sampler.py): seeds, penalties, logit bias, bad words,
min_tokens, stop ids, log-probabilities. A request of n sequences (num_return_sequences) is prefilled once into
n slots (fast_runner copies the KV), each with its own seed stream; each reports Update(index=i), and the request
is over when all n are. Token ids (Update.token_ids) leave out the token that ended a sequence (end-of-sequence,
end_id, stop_token_ids), as its text does; they keep the tokens of a stop string the text is trimmed before.

A guided request (Sampling.guide) has a grammar.GuideMatcher per sequence: while one runs, the loop delivers each
step before launching the next (the next mask needs the token), writes each running slot's bitmask row and the
sampler masks the logits on the device (xgrammar's apply_token_bitmask_inplace).
"""

from __future__ import annotations

import heapq
import logging
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cancellation import CancellationPoller
from core import InvalidRequest, Sampling, TopLogprobs, Update, check_prompt, check_prompt_ids, validate_sampling
from fast_runner import SlotRunner
from sampler import BAD_WORD_SEQUENCES, BAD_WORD_TOKENS, Flags, SlotConfig, sequence_key
from text_stream import TextStream, fast_decoder

if TYPE_CHECKING:  # grammar.py (xgrammar) is imported with the first guided request
    from grammar import GuideMatcher

log = logging.getLogger("llm.fast_core")

CANCEL_POLL_INTERVAL_S = 0.05
DEFAULT_SLOT_LEN = 2048  # tokens of KV cache per sequence when neither kv_cache_blocks nor max_model_len bound it
BLOCK = 256  # the kv_cache_blocks setting counts blocks of this many tokens, for every core


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
    """One of a request's n sequences: its own slot, key (seed stream), text and pending deltas."""

    request: _Request
    index: int
    config: SlotConfig
    stream: TextStream
    eos_ids: frozenset[int]  # the ids that end it (end-of-sequence, end_id, stop_token_ids)
    slot: int = -1
    generated: int = 0
    done: bool = False
    ids: list[int] = field(default_factory=list)  # generated since the last update (end ids left out)
    logprobs: list[float] = field(default_factory=list)
    top_logprobs: list[TopLogprobs] = field(default_factory=list)
    prompt_scores: tuple | None = None  # (prompt_logprobs, prompt_top_logprobs) until the first update
    guide: GuideMatcher | None = None  # its grammar's state (grammar.py), when the request has a guide


def load_checkpoint(checkpoint_dir: str, device: str, dtype: str):
    """(tokenizer, its detokenizer, the model in eval mode on `device`, its end-of-sequence ids)."""
    tokenizer = AutoTokenizer.from_pretrained(checkpoint_dir, local_files_only=True)
    model = AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=getattr(torch, dtype), local_files_only=True)
    model = model.to(device).eval()
    eos = model.generation_config.eos_token_id or model.config.eos_token_id
    return tokenizer, fast_decoder(tokenizer), model, frozenset([eos] if isinstance(eos, int) else (eos or []))


class FastEngine:
    """core.EngineCore over fast_runner.SlotRunner."""

    def __init__(
        self,
        checkpoint_dir: str,
        device: str = "cpu",
        dtype: str = "float32",
        max_num_seqs: int = 32,
        kv_cache_blocks: int = 0,
        max_model_len: int | None = None,
        max_prefill_tokens: int = 8192,
        cuda_graphs: bool = True,
        prefix_caching: bool = False,
    ):
        if prefix_caching:
            raise ValueError("the fast engine core has no prefix cache; prefix_caching needs the openvino core")
        self.tokenizer, self._decoder, model, self.default_eos_ids = load_checkpoint(checkpoint_dir, device, dtype)
        config = model.config
        self.vocab_size = config.vocab_size
        context = max_model_len or config.max_position_embeddings
        slot_len = kv_cache_blocks * BLOCK // max_num_seqs if kv_cache_blocks else min(context, DEFAULT_SLOT_LEN)
        self.max_model_len = min(context, slot_len - 1)  # the host lags a step: one spare position per slot
        self.runner = SlotRunner(model, max_num_seqs, slot_len, cuda_graphs=cuda_graphs)
        self.max_prefill_tokens = max_prefill_tokens
        self._free_slots = list(range(max_num_seqs))
        self._running: dict[int, _Sequence] = {}  # slot -> sequence
        self._waiting: deque[_Request] = deque()
        self._incoming: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._active: dict[str, _Request] = {}
        self._flags: Flags | None = None  # what the running sequences need of a step (None: to recompute)
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._failure: BaseException | None = None
        self._cancellations = CancellationPoller()
        self._checkpoint_dir = checkpoint_dir
        self._guides = None  # grammar.Guides, made by the first guided request (it loads xgrammar)
        self._host_bitmask: torch.Tensor | None = None  # the grammar rows written for a guided step
        # Where the loop's time goes (read by the benchmarks): counts, and seconds spent in each phase.
        self.stats = {"steps": 0, "prefills": 0, "prefill_s": 0.0, "launch_s": 0.0, "gpu_wait_s": 0.0, "deliver_s": 0.0}
        self._thread = threading.Thread(target=self._run, name="llm-fast-core", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ core.EngineCore
    @property
    def num_active(self) -> int:
        return len(self._active)

    def validate(self, sampling: Sampling) -> None:
        validate_sampling(sampling, self.vocab_size)
        if sampling.n > self.runner.num_slots:
            raise InvalidRequest(
                f"num_return_sequences ({sampling.n}) exceeds the {self.runner.num_slots} sequences this engine "
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
        banned, bad_sequences = self._bad_words(sampling.bad_words)
        bias = sampling.logit_bias + tuple((token, float("-inf")) for token in sorted(banned))
        seed = random.getrandbits(64) if sampling.seed is None else sampling.seed
        compiled = self._compile_guide(sampling)  # here, so that an invalid guide is refused at once
        request = _Request(request_id, input_ids, sampling, sink, is_cancelled)
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
            stream = TextStream(self._decoder, sampling.stop)
            sequence = _Sequence(request, index, config, stream, eos_ids)
            if compiled is not None:
                sequence.guide = self._guides.matcher(compiled, eos_ids)  # type: ignore[union-attr]
            request.sequences.append(sequence)
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

            self._guides = Guides(Path(self._checkpoint_dir), self.vocab_size)
        return self._guides.compile(*sampling.guide)

    def _write_guides(self, sequences: list[_Sequence]) -> None:
        """Each sequence's row of the sampler's bitmask: its grammar's allowed tokens, or all (-1) without one,
        as the matchers stand after every token delivered so far (the step must not run ahead of them)."""
        if self._host_bitmask is None:
            device = self.runner.sampler.bitmask
            self._host_bitmask = torch.empty(device.shape, dtype=torch.int32, pin_memory=device.is_cuda)
        host = self._host_bitmask
        for sequence in sequences:
            if sequence.guide is None:
                host[sequence.slot] = -1
            else:
                sequence.guide.fill(host, sequence.slot)
        self.runner.sampler.bitmask.copy_(host, non_blocking=True)

    def _bad_words(self, bad_words: tuple[str, ...]) -> tuple[set[int], tuple[tuple[int, ...], ...]]:
        """(single-token ids to ban, multi-token sequences to ban by prefix match) of bad words, each as written
        and after a space (as vLLM bans them)."""
        single, multi = set(), []
        for word in bad_words:
            for variant in dict.fromkeys((word, " " + word.lstrip(" "))):
                ids = tuple(self.tokenizer(variant, add_special_tokens=False)["input_ids"])
                if len(ids) == 1:
                    single.add(ids[0])
                elif len(ids) > BAD_WORD_TOKENS:
                    raise InvalidRequest(f"bad_words: {variant!r} is {len(ids)} tokens, more than {BAD_WORD_TOKENS}")
                elif ids and ids not in multi:
                    multi.append(ids)
        if len(multi) > BAD_WORD_SEQUENCES:
            raise InvalidRequest(
                f"bad_words: more than {BAD_WORD_SEQUENCES} multi-token words (with their spaced forms)"
            )
        return single, tuple(multi)

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
        pending = None  # (sequences, tokens on the host, event) of the step in flight
        while not self._stopping.is_set():
            self._take_incoming(block=not self._running and not self._waiting and pending is None)
            self._poll_cancellations()
            if self._can_admit():
                if pending is not None:  # the prefill's own sync would wait for it anyway
                    self._deliver(*pending)
                    pending = None
                self._prefill()
            if pending is not None and any(s.guide is not None for s in self._running.values()):
                self._deliver(*pending)  # a grammar's next mask needs the token of the step in flight
                pending = None
            launched = self._launch() if self._running else None
            if pending is not None:
                self._deliver(*pending)  # overlaps with the step just launched
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

    def _can_admit(self) -> bool:
        """Whether the next waiting request (cancelled ones dropped) has the free slots for its n sequences."""
        while self._waiting and self._waiting[0].done:
            self._waiting.popleft()
        return bool(self._waiting) and len(self._free_slots) >= self._waiting[0].sampling.n

    def _prefill(self) -> None:
        batch: list[_Request] = []
        width = 0
        while self._can_admit():
            request = self._waiting[0]
            new_width = max(width, len(request.prompt))
            if batch and new_width * (len(batch) + 1) > self.max_prefill_tokens:
                break
            self._waiting.popleft()
            for sequence in request.sequences:
                sequence.slot = heapq.heappop(self._free_slots)
            batch.append(request)
            width = new_width
        if not batch:
            return
        sequences = [s for r in batch for s in r.sequences]
        prompt_k = [r.sampling.top_logprobs if r.sampling.prompt_logprobs else -1 for r in batch]
        started = time.perf_counter()
        if any(s.guide is not None for s in sequences):
            self._write_guides(sequences)
        out = self.runner.prefill(
            [r.prompt for r in batch], [[s.slot for s in r.sequences] for r in batch], [s.config for s in sequences],
            prompt_k,
        )  # fmt: skip
        self.stats["prefills"] += 1
        self.stats["prefill_s"] += time.perf_counter() - started
        for request, scores, k in zip(batch, out.prompt_logprobs, prompt_k, strict=True):
            for sequence in request.sequences:
                sequence.prompt_scores = None if scores is None else (tuple(scores[0]), top_pairs(scores, k))
                self._running[sequence.slot] = sequence
        self._flags = None
        for row, (sequence, token) in enumerate(zip(sequences, out.tokens, strict=True)):
            self._on_token(sequence, token, out.logprobs, row)

    def _launch(self):
        started = time.perf_counter()
        sequences = list(self._running.values())
        batch = max(self._running) + 1
        length = min(max(len(s.request.prompt) + s.generated for s in sequences) + 3, self.runner.slot_len)
        if self._flags is None:
            self._flags = Flags.of((s.config for s in sequences), self.vocab_size)
        if self._flags.guided:
            self._write_guides(sequences)
        tokens, logprobs = self.runner.decode(batch, length, self._flags)
        on_device = [tokens[:batch]] + ([t[:batch] for t in logprobs if t is not None] if logprobs else [])
        hosts = [torch.empty(t.shape, dtype=t.dtype, pin_memory=t.is_cuda) for t in on_device]
        for host, tensor in zip(hosts, on_device, strict=True):
            host.copy_(tensor, non_blocking=True)
        event = torch.cuda.Event() if tokens.is_cuda else None
        if event is not None:
            event.record()
        self.stats["steps"] += 1
        self.stats["launch_s"] += time.perf_counter() - started
        return sequences, hosts, event

    def _deliver(self, sequences: list[_Sequence], hosts: list[torch.Tensor], event) -> None:
        started = time.perf_counter()
        if event is not None:
            event.synchronize()
        synced = time.perf_counter()
        self.stats["gpu_wait_s"] += synced - started
        tokens, *rest = (host.tolist() for host in hosts)
        logprobs = (rest + [None, None])[:3] if rest else None
        for sequence in sequences:
            if not sequence.done:
                self._on_token(sequence, tokens[sequence.slot], logprobs, sequence.slot)
        self.stats["deliver_s"] += time.perf_counter() - synced

    def _on_token(self, sequence: _Sequence, token: int, logprobs, row: int) -> None:
        """Take one generated token; `logprobs` (chosen, top values, top ids), when computed, has it at `row`."""
        sequence.generated += 1
        refused = sequence.guide is not None and not sequence.guide.accept(token)  # cannot happen: it was masked
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
        elif refused:
            self._finish(sequence, "error", text, error=f"the grammar refused token {token}")
        elif sequence.stream.stopped:
            self._finish(sequence, "stop", text)
        elif sequence.guide is not None and sequence.guide.terminated:  # complete, with no end id to wait for
            self._finish(sequence, "stop", text + sequence.stream.finish())
        elif sequence.generated >= sequence.request.sampling.max_tokens:
            self._finish(sequence, "length", text + sequence.stream.finish())
        elif text:
            sequence.request.sink(self._update(sequence, text))

    def _update(self, sequence: _Sequence, text: str, reason: str | None = None, error: str | None = None) -> Update:
        """The sequence's delta since its last update (and its prompt's scores on its first)."""
        prompt_scores, sequence.prompt_scores = sequence.prompt_scores, None
        update = Update(
            text, reason, error, len(sequence.request.prompt), sequence.generated, sequence.index,
            tuple(sequence.ids), tuple(sequence.logprobs), tuple(sequence.top_logprobs),
            *(prompt_scores or (None, None)),
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
        if sequence.slot >= 0 and self._running.get(sequence.slot) is sequence:
            del self._running[sequence.slot]
            self._flags = None
            self.runner.release(sequence.slot)
            heapq.heappush(self._free_slots, sequence.slot)
        try:
            request.sink(self._update(sequence, text, reason, error))
        except Exception:  # e.g. the client is gone; the request is over for us either way
            log.exception("could not deliver the end of request %s (%s)", request.request_id, reason)


def top_pairs(scores, k: int) -> tuple[TopLogprobs, ...] | None:
    """host_logprobs' (chosen, top values, top ids) -> per token its k ((id, log-probability), ...), or None."""
    if not k:
        return None
    return tuple(tuple(zip(ids[:k], values[:k], strict=True)) for values, ids in zip(scores[1], scores[2], strict=True))
