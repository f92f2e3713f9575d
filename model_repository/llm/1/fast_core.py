"""The fast engine core (`engine_core: fast`): in-flight batching over fast_runner.SlotRunner, an EngineCore (core.py).

ONE thread does everything after `submit`: admit waiting requests (batched prefill into free slots), launch a
decode step, and, while the GPU runs it, hand the previous step's tokens to their requests (incremental
detokenization, stop strings, end of sequence, length) and their sinks. The host is therefore one step behind
the device: a sequence that just finished still rides along in the step already launched, and that step's
token for it is dropped. No thread per request, no per-token allocation on the device.
"""

from __future__ import annotations

import heapq
import logging
import queue
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

from cancellation import CancellationPoller
from core import InvalidRequest, Sampling, Update, check_prompt, validate_sampling
from fast_runner import SlotRunner
from text_stream import TextStream, fast_decoder

log = logging.getLogger("llm.fast_core")

CANCEL_POLL_INTERVAL_S = 0.05
DEFAULT_SLOT_LEN = 2048  # tokens of KV cache per sequence when neither kv_cache_blocks nor max_model_len bound it
BLOCK = 256  # the kv_cache_blocks setting counts blocks of this many tokens, for every core


@dataclass(eq=False)
class _Sequence:
    request_id: str
    prompt: list[int]
    sampling: Sampling
    sink: Callable[[Update], None]
    is_cancelled: Callable[[], bool]
    stream: TextStream
    eos_ids: frozenset[int]
    slot: int = -1
    generated: int = 0
    done: bool = False

    @property
    def greedy(self) -> bool:
        return self.sampling.greedy


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
        self._waiting: deque[_Sequence] = deque()
        self._incoming: queue.SimpleQueue[_Sequence] = queue.SimpleQueue()
        self._active: dict[str, _Sequence] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._failure: BaseException | None = None
        self._cancellations = CancellationPoller()
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
        if 0 < sampling.min_tokens < sampling.max_tokens:
            raise InvalidRequest(
                "min_tokens between 1 and max_tokens-1 is not supported by the fast engine core (it cannot "
                "suppress end-of-sequence per request); min_tokens >= max_tokens generates exactly max_tokens tokens"
            )

    def submit(self, request_id, prompt, sampling, sink, is_cancelled) -> None:
        if self._failure is not None:
            raise RuntimeError(f"the generation loop has failed ({self._failure}); the model must be reloaded")
        self.validate(sampling)
        input_ids = self.tokenizer(prompt, add_special_tokens=True)["input_ids"]
        eos_ids = check_prompt(input_ids, sampling, self.max_model_len, self.default_eos_ids)
        sequence = _Sequence(
            request_id, input_ids, sampling, sink, is_cancelled, TextStream(self._decoder, sampling.stop), eos_ids
        )
        with self._lock:
            if request_id in self._active:
                raise InvalidRequest(f"request id {request_id!r} is already in flight")
            self._active[request_id] = sequence
        self._incoming.put(sequence)

    def shutdown(self) -> None:
        self._stopping.set()
        self._incoming.put(None)  # wake the loop
        self._thread.join(timeout=30)
        for sequence in list(self._active.values()):
            self._finish(sequence, "error", error="the model is being unloaded")

    # ------------------------------------------------------------------ the loop thread
    def _run(self) -> None:
        try:
            self._loop()
        except BaseException as exc:  # the device failed (out of memory, ...): fail every request, say why
            log.exception("the fast engine core's loop failed")
            self._failure = exc
            for sequence in list(self._active.values()):
                self._finish(sequence, "error", error=f"the generation loop failed: {exc}")

    def _loop(self) -> None:
        pending = None  # (sequences, tokens on the host, event) of the step in flight
        while not self._stopping.is_set():
            self._take_incoming(block=not self._running and not self._waiting and pending is None)
            self._poll_cancellations()
            if self._waiting and self._free_slots:
                if pending is not None:  # the prefill's own sync would wait for it anyway
                    self._deliver(*pending)
                    pending = None
                self._prefill()
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

    def _prefill(self) -> None:
        batch, width = [], 0
        while self._waiting and self._free_slots:
            sequence = self._waiting[0]
            if sequence.done:
                self._waiting.popleft()
                continue
            new_width = max(width, len(sequence.prompt))
            if batch and new_width * (len(batch) + 1) > self.max_prefill_tokens:
                break
            self._waiting.popleft()
            sequence.slot = heapq.heappop(self._free_slots)
            batch.append(sequence)
            width = new_width
        if not batch:
            return
        params = [
            (s.sampling.temperature, s.sampling.top_k or self.vocab_size, s.sampling.top_p, s.greedy) for s in batch
        ]
        started = time.perf_counter()
        first = self.runner.prefill([s.slot for s in batch], [s.prompt for s in batch], params)
        self.stats["prefills"] += 1
        self.stats["prefill_s"] += time.perf_counter() - started
        for sequence in batch:
            self._running[sequence.slot] = sequence
        for sequence, token in zip(batch, first, strict=True):
            self._on_token(sequence, token)

    def _launch(self):
        started = time.perf_counter()
        sequences = list(self._running.values())
        batch = max(self._running) + 1
        length = min(max(len(s.prompt) + s.generated for s in sequences) + 3, self.runner.slot_len)
        any_sampling = any(not s.greedy for s in sequences)
        tokens = self.runner.decode(batch, length, any_sampling)[:batch]
        host = torch.empty(batch, dtype=torch.long, pin_memory=tokens.is_cuda)
        host.copy_(tokens, non_blocking=True)
        event = torch.cuda.Event() if tokens.is_cuda else None
        if event is not None:
            event.record()
        self.stats["steps"] += 1
        self.stats["launch_s"] += time.perf_counter() - started
        return sequences, host, event

    def _deliver(self, sequences: list[_Sequence], host: torch.Tensor, event) -> None:
        started = time.perf_counter()
        if event is not None:
            event.synchronize()
        synced = time.perf_counter()
        self.stats["gpu_wait_s"] += synced - started
        tokens = host.tolist()
        for sequence in sequences:
            if not sequence.done:
                self._on_token(sequence, tokens[sequence.slot])
        self.stats["deliver_s"] += time.perf_counter() - synced

    def _on_token(self, sequence: _Sequence, token: int) -> None:
        sequence.generated += 1
        hit_eos = token in sequence.eos_ids
        text = "" if hit_eos else sequence.stream.push((token,))
        if hit_eos:
            self._finish(sequence, "stop", sequence.stream.finish())
        elif sequence.stream.stopped:
            self._finish(sequence, "stop", text)
        elif sequence.generated >= sequence.sampling.max_tokens:
            self._finish(sequence, "length", text + sequence.stream.finish())
        elif text:
            sequence.sink(Update(text, None, None, len(sequence.prompt), sequence.generated))

    def _poll_cancellations(self) -> None:
        for sequence in self._cancellations.due(list(self._active.values())):
            if not sequence.done and sequence.is_cancelled():
                self._finish(sequence, "cancelled")

    def _finish(self, sequence: _Sequence, reason: str, text: str = "", error: str | None = None) -> None:
        if sequence.done:
            return
        sequence.done = True
        with self._lock:
            self._active.pop(sequence.request_id, None)
        if sequence.slot >= 0 and self._running.get(sequence.slot) is sequence:
            del self._running[sequence.slot]
            self.runner.release(sequence.slot)
            heapq.heappush(self._free_slots, sequence.slot)
        update = Update(text, reason, error, len(sequence.prompt), sequence.generated)
        try:
            sequence.sink(update)
        except Exception:  # e.g. the client is gone; the request is over for us either way
            log.exception("could not deliver the end of request %s (%s)", sequence.request_id, reason)
