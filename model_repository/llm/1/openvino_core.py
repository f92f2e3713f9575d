"""The OpenVINO engine core (`engine_core: openvino`), the default on CPU: OpenVINO GenAI's ContinuousBatchingPipeline
(paged KV cache allocated as it is used, prefill chunked into the decode steps, int8 weights) driven by ONE thread.

That thread admits new requests, runs `step()` (one forward pass over every running sequence; OpenVINO computes
on its own thread pool), then hands each sequence its new tokens: incremental detokenization with the Rust
`tokenizers` library, stop strings, and the request's sink. Cancellation frees the request's KV blocks at once.
A request of n sequences is n GenAI requests (openvino_sampling.py says why, and how each sampling input maps to
GenAI). The checkpoint is the OpenVINO IR that build_engines/openvino.py exports. No torch in this process.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import openvino as ov
import openvino_genai as ov_genai
from tokenizers import Tokenizer

from cancellation import CancellationPoller
from core import InvalidRequest, Update, check_prompt, checkpoint_eos_ids, validate_sampling
from openvino_paged_runner import CPU_PROPERTIES
from openvino_sampling import check_sampling, generation_config, sequence_seeds
from text_stream import TextStream

log = logging.getLogger("llm.openvino_core")

CANCEL_POLL_INTERVAL_S = 0.05
BLOCK = 256  # our kv_cache_blocks setting counts blocks of this many tokens, whatever the engine's own block size
OV_BLOCK = 32  # tokens per KV block of OpenVINO's CPU plugin
_FINISHED = {ov_genai.GenerationFinishReason.STOP: "stop", ov_genai.GenerationFinishReason.LENGTH: "length"}


@dataclass(eq=False)
class _Sequence:
    """One of a request's n sequences: one GenAI request."""

    request: _Request
    index: int
    config: ov_genai.GenerationConfig
    stream: TextStream
    handle: ov_genai.GenerationHandle | None = None
    ov_id: int = -1  # the pipeline's request id
    generated: int = 0
    echoed: bool = False  # the prompt's echo (prompt log-probabilities) has been read
    done: bool = False


@dataclass(eq=False)
class _Request:
    request_id: str
    prompt: list[int]
    sink: Callable[[Update], None]
    is_cancelled: Callable[[], bool]
    stop_ids: frozenset[int]
    logprobs: bool
    sequences: list[_Sequence] = field(default_factory=list)
    done: bool = False


class OpenVINOEngine:
    """core.EngineCore over openvino_genai.ContinuousBatchingPipeline."""

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
            raise ValueError(f"the openvino engine core runs on the CPU, not {device!r}; use engine_core fast")
        checkpoint = Path(checkpoint_dir)
        if not (checkpoint / "openvino_model.xml").is_file():
            raise ValueError(f"{checkpoint} holds no OpenVINO model (openvino_model.xml); run `llmserve prepare`")
        self.tokenizer = Tokenizer.from_file(str(checkpoint / "tokenizer.json"))
        config = json.loads((checkpoint / "config.json").read_text())
        self.vocab_size = int(config["vocab_size"])
        context = int(config.get("max_position_embeddings") or 2048)
        self.max_model_len = min(max_model_len or context, context)
        self.default_eos_ids = checkpoint_eos_ids(checkpoint)

        scheduler = ov_genai.SchedulerConfig()
        scheduler.max_num_seqs = max_num_seqs
        scheduler.dynamic_split_fuse = True  # long prompts are prefilled in chunks between decode steps
        # Off by default: a cached prompt's KV blocks (written by whichever request came first) change the logits
        # enough that the same seed samples different text (measured: 4 of 4 seeded reruns differed, 0 without).
        scheduler.enable_prefix_caching = self.prefix_caching = prefix_caching
        scheduler.cache_size = 0  # with num_kv_blocks 0: KV blocks are allocated as sequences grow
        scheduler.num_kv_blocks = kv_cache_blocks * BLOCK // OV_BLOCK
        self.pipeline = ov_genai.ContinuousBatchingPipeline(str(checkpoint), scheduler, "CPU", CPU_PROPERTIES)

        self._incoming: queue.SimpleQueue[_Request | None] = queue.SimpleQueue()
        self._running: dict[int, _Sequence] = {}  # OpenVINO's request id -> sequence
        self._active: dict[str, _Request] = {}
        self._next_id = 0
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._failure: BaseException | None = None
        self._cancellations = CancellationPoller()
        self._thread = threading.Thread(target=self._run, name="llm-openvino-core", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------ core.EngineCore
    @property
    def num_active(self) -> int:
        return len(self._active)

    def submit(self, request_id, prompt, sampling, sink, is_cancelled) -> None:
        if self._failure is not None:
            raise RuntimeError(f"the generation loop has failed ({self._failure}); the model must be reloaded")
        validate_sampling(sampling, self.vocab_size)
        check_sampling(sampling, self.vocab_size, self.prefix_caching)
        if isinstance(prompt, str):
            input_ids = self.tokenizer.encode(prompt, add_special_tokens=True).ids
        else:  # token ids: GenAI would read out of bounds (or assert inside step()) on an id outside the vocabulary
            input_ids = [int(i) for i in prompt]
            if any(not 0 <= i < self.vocab_size for i in input_ids):
                raise InvalidRequest(f"input_ids must be token ids in [0, {self.vocab_size})")
        eos_ids = check_prompt(input_ids, sampling, self.max_model_len, self.default_eos_ids)
        # No stop ids at all when min_tokens >= max_tokens (exactly max_tokens tokens), else the end-of-sequence ids
        # and the request's own.
        exact = sampling.min_tokens >= sampling.max_tokens
        stop_ids = frozenset() if exact else eos_ids | frozenset(sampling.stop_token_ids)
        request = _Request(request_id, input_ids, sink, is_cancelled, stop_ids, sampling.logprobs)
        for index, seed in enumerate(sequence_seeds(sampling.seed, sampling.n)):
            echo = sampling.prompt_logprobs and index == 0  # the prompt's log-probabilities once, on sequence 0
            config = generation_config(sampling, stop_ids, seed, echo)
            stream = TextStream(self.tokenizer, sampling.stop)
            request.sequences.append(_Sequence(request, index, config, stream, echoed=not echo))
        with self._lock:
            if request_id in self._active:
                raise InvalidRequest(f"request id {request_id!r} is already in flight")
            self._active[request_id] = request
        self._incoming.put(request)

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
            log.exception("the openvino engine core's loop failed")
            self._failure = exc
            for request in list(self._active.values()):
                self._finish_request(request, "error", error=f"the generation loop failed: {exc}")

    def _loop(self) -> None:
        while not self._stopping.is_set():
            # A cancelled request's KV blocks are freed by the next step: step while anything is unfinished.
            unfinished = self.pipeline.has_non_finished_requests()
            self._admit(block=not self._running and not unfinished)
            self._poll_cancellations()
            if self._running or unfinished:
                self.pipeline.step()
            self._deliver()

    def _admit(self, block: bool) -> None:
        try:
            item = self._incoming.get(timeout=CANCEL_POLL_INTERVAL_S) if block else self._incoming.get_nowait()
            while True:
                if item is not None and not item.done:
                    ids = ov.Tensor(np.array([item.prompt], dtype=np.int64))
                    for sequence in item.sequences:
                        sequence.ov_id, self._next_id = self._next_id, self._next_id + 1
                        sequence.handle = self.pipeline.add_request(sequence.ov_id, ids, sequence.config)
                        self._running[sequence.ov_id] = sequence
                item = self._incoming.get_nowait()
        except queue.Empty:
            pass

    def _deliver(self) -> None:
        for sequence in list(self._running.values()):
            handle = sequence.handle
            assert handle is not None
            if sequence.done:  # its request ended (a stop string of another sequence does not end it: cancelled)
                continue
            if handle.get_status() == ov_genai.GenerationStatus.IGNORED:
                self._finish_request(sequence.request, "error", error="the KV cache cannot hold this request's prompt")
                continue
            if not handle.can_read():
                continue
            for output in handle.read().values():  # one sequence per GenAI request
                self._on_tokens(sequence, output)

    def _on_tokens(self, sequence: _Sequence, output) -> None:
        request = sequence.request
        tokens = list(output.generated_ids)
        logprobs = list(output.generated_log_probs) if request.logprobs or not sequence.echoed else []
        prompt_logprobs = None
        if not sequence.echoed:  # echo: the first read starts with the prompt and its log-probabilities
            sequence.echoed = True
            n = len(request.prompt)
            prompt_logprobs = tuple(logprobs[1:n])  # GenAI puts a placeholder 1.0 for the first prompt token
            tokens, logprobs = tokens[n:], logprobs[n:] if request.logprobs else []
        sequence.generated += len(tokens)
        reason = _FINISHED.get(output.finish_reason)
        text_tokens = tokens
        if reason == "stop" and tokens and tokens[-1] in request.stop_ids:
            text_tokens = tokens[:-1]  # the stop token is not part of the text
        text = sequence.stream.push(text_tokens) if text_tokens else ""
        update = Update(
            text,
            index=sequence.index,
            num_input_tokens=len(request.prompt),
            num_output_tokens=sequence.generated,
            token_ids=tuple(tokens),
            logprobs=tuple(logprobs),
            prompt_logprobs=prompt_logprobs,
        )
        if sequence.stream.stopped:
            self._finish_sequence(sequence, "stop", update)
        elif reason is not None:
            update.text += sequence.stream.finish()
            self._finish_sequence(sequence, reason, update)
        elif text or tokens or prompt_logprobs is not None:
            self._send(request, update)

    def _poll_cancellations(self) -> None:
        for request in self._cancellations.due(list(self._active.values())):
            if not request.done and request.is_cancelled():
                self._finish_request(request, "cancelled")

    def _finish_request(self, request: _Request, reason: str, error: str | None = None) -> None:
        """End every sequence of the request still going (cancelled, error)."""
        for sequence in request.sequences:
            update = Update("", index=sequence.index, num_input_tokens=len(request.prompt))
            self._finish_sequence(sequence, reason, update, error)

    def _finish_sequence(self, sequence: _Sequence, reason: str, update: Update, error: str | None = None) -> None:
        if sequence.done:
            return
        sequence.done = True
        request = sequence.request
        if sequence.handle is not None:
            if reason in ("stop", "cancelled", "error") and sequence.handle.get_status() == (
                ov_genai.GenerationStatus.RUNNING
            ):
                sequence.handle.cancel()  # frees its KV blocks; a stop string ended it before the engine did
            self._running.pop(sequence.ov_id, None)
        if all(s.done for s in request.sequences):
            request.done = True
            with self._lock:
                self._active.pop(request.request_id, None)
        update.finish_reason, update.error, update.num_output_tokens = reason, error, sequence.generated
        self._send(request, update, final=True)

    @staticmethod
    def _send(request: _Request, update: Update, final: bool = False) -> None:
        try:
            request.sink(update)
        except Exception:  # e.g. the client is gone; the request is over for us either way
            if not final:
                raise
            log.exception("could not deliver the end of request %s (%s)", request.request_id, update.finish_reason)
