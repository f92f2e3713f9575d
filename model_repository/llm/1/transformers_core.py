"""The `transformers` engine core: transformers continuous batching (paged KV cache) plus one dispatcher.

Threads: transformers runs the generation loop in its own thread; ONE dispatcher thread here takes every
output from that loop, turns tokens into text and hands it to the request's sink, and polls cancellations.
No thread per request, no per-request queue: the cost per token is one dict lookup and one incremental decode.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from transformers import ContinuousBatchingConfig, GenerationConfig

from cancellation import CancellationPoller
from core import InvalidRequest, Sampling, Update, load_checkpoint, tokenize_prompt, validate_sampling
from text_stream import TextStream

log = logging.getLogger("llm.transformers_core")

CANCEL_POLL_INTERVAL_S = 0.05
PAGE_SIZE = 256  # tokens per KV-cache block (transformers' default)


@dataclass
class _Active:
    sink: Callable[[Update], None]
    is_cancelled: Callable[[], bool]
    stream: TextStream
    eos_ids: frozenset[int]
    num_input_tokens: int
    num_output_tokens: int = 0
    started: float = field(default_factory=time.monotonic)


class TransformersEngine:
    """core.EngineCore over transformers' continuous batching manager."""

    def __init__(
        self,
        checkpoint_dir: str,
        device: str = "cpu",
        dtype: str = "float32",
        max_num_seqs: int = 32,
        kv_cache_blocks: int = 0,
        max_model_len: int | None = None,
    ):
        self.tokenizer, self._decoder, self.model, self.default_eos_ids = load_checkpoint(checkpoint_dir, device, dtype)
        config = self.model.config
        self.vocab_size = config.vocab_size
        self.max_model_len = max_model_len or config.max_position_embeddings

        # Sampling processors exist only if the generation config asks for them at creation time; we create them
        # with placeholder values and pass every request's own values (per_request_processors).
        generation_config = GenerationConfig(
            do_sample=True,
            temperature=0.5,
            top_p=0.5,
            top_k=2,
            max_new_tokens=16,
            eos_token_id=sorted(self.default_eos_ids) or None,
            pad_token_id=config.pad_token_id,
        )
        if not kv_cache_blocks and device == "cpu":
            # transformers sizes an automatic cache from *all* free memory, which on a CPU is the whole host's RAM.
            # Ours: 1,024 tokens per sequence on average, and at least one full-context sequence.
            kv_cache_blocks = max(4 * max_num_seqs, -(-self.max_model_len // PAGE_SIZE))
        cb_config = ContinuousBatchingConfig(
            per_request_processors=True,
            max_requests_per_batch=max_num_seqs,
            page_size=PAGE_SIZE,
            num_blocks=kv_cache_blocks or None,
            allow_block_sharing=True,
        )
        self._manager = self.model.init_continuous_batching(
            generation_config=generation_config, continuous_batching_config=cb_config
        )
        self._active: dict[str, _Active] = {}
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._cancellations = CancellationPoller()
        # Threads inherit daemon-ness from their creator: starting the generation loop from a daemon thread makes
        # it a daemon too, so the stub process can exit if Triton dies without calling finalize().
        starter = threading.Thread(target=self._manager.start, daemon=True)
        starter.start()
        starter.join()
        self._dispatcher = threading.Thread(target=self._dispatch_loop, name="llm-dispatcher", daemon=True)
        self._dispatcher.start()

    # ------------------------------------------------------------------ core.EngineCore
    @property
    def num_active(self) -> int:
        return len(self._active)

    def validate(self, sampling: Sampling) -> None:
        validate_sampling(sampling, self.vocab_size)

    def submit(
        self,
        request_id: str,
        prompt: str,
        sampling: Sampling,
        sink: Callable[[Update], None],
        is_cancelled: Callable[[], bool],
    ) -> None:
        """Queue a request. `sink` is called from the dispatcher thread; its last call has a finish_reason."""
        failure = self._manager.background_thread_status.fatal_error
        if failure is not None:
            raise RuntimeError(f"the generation loop has failed ({failure}); the model must be reloaded")
        self.validate(sampling)
        input_ids, eos_ids = tokenize_prompt(self.tokenizer, prompt, sampling, self.max_model_len, self.default_eos_ids)
        greedy = sampling.temperature == 0 or sampling.top_k == 1
        with self._lock:
            if request_id in self._active:
                raise InvalidRequest(f"request id {request_id!r} is already in flight")
            self._active[request_id] = _Active(
                sink=sink,
                is_cancelled=is_cancelled,
                stream=TextStream(self._decoder, sampling.stop),
                eos_ids=eos_ids,
                num_input_tokens=len(input_ids),
            )
        self._manager.add_request(
            input_ids,
            request_id=request_id,
            max_new_tokens=sampling.max_tokens,
            streaming=True,
            eos_token_id=sorted(eos_ids) if eos_ids else -1,
            # Greedy is top_k=1 (the loop samples for everyone; a one-token distribution samples its argmax).
            temperature=1.0 if greedy else float(sampling.temperature),
            # A top_k past the vocabulary keeps every token (as vLLM); passed on, it indexes past the logits.
            top_k=1 if greedy else min(int(sampling.top_k or self.vocab_size), self.vocab_size),
            top_p=1.0 if greedy else float(sampling.top_p),
        )

    def shutdown(self) -> None:
        self._stopping.set()
        self._dispatcher.join(timeout=5)
        self._manager.stop(block=True, timeout=10)
        with self._lock:
            pending = list(self._active)
        for request_id in pending:
            self._finish(request_id, "error", error="the model is being unloaded")

    # ------------------------------------------------------------------ dispatcher thread
    def _dispatch_loop(self) -> None:
        next_poll = time.monotonic()
        while not self._stopping.is_set():
            try:
                output = self._manager.output_router.output_queue.get(timeout=CANCEL_POLL_INTERVAL_S)
            except queue.Empty:
                output = None
            if output is not None:
                try:
                    self._on_output(output)
                except Exception:  # one request's failure must not stop the dispatcher for everyone
                    log.exception("dispatching output of request %s failed", output.request_id)
                    self._finish(output.request_id, "error", error="internal error while streaming the output")
            if time.monotonic() >= next_poll:
                next_poll = time.monotonic() + CANCEL_POLL_INTERVAL_S
                try:
                    self._poll_cancellations()
                    self._check_engine_alive()
                except Exception:
                    log.exception("polling cancellations failed")

    def _on_output(self, output) -> None:
        request = self._active.get(output.request_id)
        if request is None:  # finished by us already (stop string, cancellation); late tokens are dropped
            return
        if output.error:
            self._finish(output.request_id, "error", error=output.error)
            return
        new_tokens = output.generated_tokens[request.num_output_tokens :]
        request.num_output_tokens = len(output.generated_tokens)
        finished = output.is_finished()
        hit_eos = bool(new_tokens) and new_tokens[-1] in request.eos_ids
        text_tokens = new_tokens[:-1] if hit_eos else new_tokens
        text = request.stream.push(text_tokens) if text_tokens else ""
        if request.stream.stopped:
            self._manager.cancel_request(output.request_id)
            self._finish(output.request_id, "stop", text)
        elif finished:
            self._finish(output.request_id, "stop" if hit_eos else "length", text + request.stream.finish())
        elif text:
            request.sink(Update(text, None, None, request.num_input_tokens, request.num_output_tokens))

    def _poll_cancellations(self) -> None:
        with self._lock:
            active = list(self._active.items())
        for request_id, request in self._cancellations.due(active):
            if request.is_cancelled():
                self._manager.cancel_request(request_id)
                self._finish(request_id, "cancelled")

    def _check_engine_alive(self) -> None:
        error = self._manager.background_thread_status.fatal_error
        if error is not None and self._active:
            for request_id in list(self._active):
                self._finish(request_id, "error", error=f"the generation loop failed: {error}")

    def _finish(self, request_id: str, reason: str, text: str = "", error: str | None = None) -> None:
        with self._lock:
            request = self._active.pop(request_id, None)
        if request is None:
            return
        update = Update(text, reason, error, request.num_input_tokens, request.num_output_tokens)
        try:
            request.sink(update)
        except Exception:  # e.g. the client is gone; the request is over for us either way
            log.exception("could not deliver the end of request %s (%s)", request_id, reason)
