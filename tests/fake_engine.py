"""FakeEngine: a FAKE inference engine for the fast front-end tests (tests/frontend). It is not a model.

It implements the front-end's `Engine` protocol (frontend_api/engine/protocol.py) in process, so the real app
(routers, limits, sessions, SSE, WebSocket) runs against it without Triton. What the front-end sees is what the
real engines promise by the tensor contract:
- one served model whose tokenizer is the real SmolLM2 one, so chat templates and token counts are real;
- a deterministic reply derived from the prompt, one word per "token": words of the NATO alphabet, starting at
  an offset given by a hash of the prompt (sequence j > 0 of n: of the prompt and j), the n sequences' responses
  interleaved, each response built as the contract's output tensors and read back by the Triton client's parser;
  its output ids are the real tokenizer's ids of the text delta, with deterministic fake log-probabilities
  (fake_logprob, fake_top: the chosen token first), and prompt log-probabilities likewise. A natural reply is REPLY_WORDS words and then end-of-sequence, which
  counts as one more output token (as the real engine counts the EOS it generated), finish `stop`;
- max_tokens ends the reply with finish `length`; min_tokens >= max_tokens generates exactly max_tokens;
- stop strings end it with finish `stop`, the stop string and what follows trimmed, text that might begin a stop
  string held back until it is known not to;
- every chunk carries the token counts; the prompt count is the real tokenizer's (with special tokens);
- it speaks the contract: the request's tensors are built by the Triton client's own encoding
  (frontend_api.engine.triton.input_values -> engine_contract arrays) and read back by the real `llm` model's
  parser and checks (contract_io.parse_request, core.validate_sampling, for what the `openvino` core honours; the
  other inputs by the contract's own reading); an input outside the fake's `capabilities` set to anything but
  its default raises the EngineError 400 a real engine's refusal does, through the Triton client's own error
  mapping, before the first chunk;
- closing the iterator early cancels the request: it is recorded in `cancelled`, and leaves `active`;
- a test may script the next replies instead (`scripted`, e.g. a <tool_call> block): each is sent one real token
  per response (so tags and JSON split across deltas), cut at max_tokens (finish `length`), else finish `stop`.
The app runs in another thread (a uvicorn server): tests read `requests`, `active` and `cancelled` from theirs,
so those are plain containers updated atomically, read with `wait_until`.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import time
from collections.abc import AsyncIterator, Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
from tokenizers import Tokenizer

import engine_contract as contract
from frontend_api.engine.protocol import (
    EngineModel,
    EngineUnavailable,
    GenerationChunk,
    GenerationRequest,
)
from frontend_api.engine.triton import infer_error, input_values, parse_outputs

from contract_io import parse_request  # the `llm` model's own modules (pytest's pythonpath)
from core import InvalidRequest, validate_sampling

MODEL = "SmolLM2-135M-Instruct"  # the id the real stack serves the default model under (tests/stack.py)
ENGINE_MODEL = "llm"
MAX_MODEL_LEN = 8192  # SmolLM2's max_position_embeddings, what `llmserve prepare` configures
REPLY_WORDS = 8
WORDS = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliett kilo lima mike november oscar papa "
    "quebec romeo sierra tango uniform victor whiskey xray yankee zulu"
).split()


def reply_words(prompt: str, count: int) -> list[str]:
    """The fake's words for `prompt`: deterministic, so a test can predict a reply from the prompt it sent."""
    start = int.from_bytes(hashlib.sha256(prompt.encode()).digest()[:4], "big")
    return [WORDS[(start + i) % len(WORDS)] for i in range(count)]


def held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many trailing characters of `text` could be the start of a stop string (not sent yet)."""
    return max((n for stop in stops for n in range(1, len(stop)) if text.endswith(stop[:n])), default=0)


def fake_logprob(token_id: int) -> float:
    """The fake's log-probability of a token: deterministic, in (-2.5, -0.01]."""
    return -((token_id * 7919) % 1000) / 400.0 - 0.01


def fake_top(token_id: int, k: int, vocab_size: int) -> list[tuple[int, float]]:
    """The fake's k likeliest tokens at a position where `token_id` was chosen: that token first, then others."""
    logprob = fake_logprob(token_id)
    return [(token_id, logprob)] + [((token_id + 131 * r) % vocab_size, logprob - 0.5 * r) for r in range(1, k)]


ALL_INPUTS = frozenset(spec.name for spec in contract.INPUTS)
_DELTAS_KEPT = 4096  # distinct text deltas whose tensors are kept (the words' are a few dozen)


def _frozen(array: np.ndarray) -> np.ndarray:
    array.flags.writeable = False  # shared between responses: nobody may change it
    return array


@functools.cache
def _count_array(generated: int) -> np.ndarray:
    """The num_output_tokens tensor of a count (the same few hundred counts for every request)."""
    return _frozen(contract.NUM_OUTPUT_TOKENS.array(generated))


class FakeEngine:
    """A fake `Engine` (see the module docstring). `token_delay_s` paces the words and `reply_words` sets how long
    a natural reply is, for tests that need a generation still running when they act (disconnect, stop);
    `engine_step_s` paces them as an independent engine instead, in bursts when the front-end lags (`_pace`).
    `capabilities` are the contract inputs the fake honours (it refuses the others in-band, as the real engines
    do); the model declares them unless `declare_capabilities` is false (a model config without the parameter)."""

    def __init__(
        self,
        tokenizer_dir: Path,
        token_delay_s: float = 0.0,
        reply_words: int = REPLY_WORDS,
        capabilities: Iterable[str] = ALL_INPUTS,
        declare_capabilities: bool = True,
        engine_step_s: float | None = None,
    ):
        self.tokenizer_dir = Path(tokenizer_dir)
        self.token_delay_s = token_delay_s
        self.engine_step_s = engine_step_s
        self.reply_words = reply_words
        self.capabilities = frozenset(capabilities)
        self.declare_capabilities = declare_capabilities
        self._tokenizer = Tokenizer.from_file(str(self.tokenizer_dir / "tokenizer.json"))
        self.vocab_size = self._tokenizer.get_vocab_size()
        self.requests: list[GenerationRequest] = []  # every request generate() was called with
        self.active: set[str] = set()  # request ids being generated now
        self.cancelled: list[str] = []  # request ids whose iterator was closed before the final chunk
        self.closed = False
        self._abort_message: str | None = None
        self.scripted: list[str] = []  # the next replies' texts, in order (instead of the words)
        self._deltas: dict[str, tuple[list[int], np.ndarray, np.ndarray]] = {}  # see _delta

    @property
    def model(self) -> EngineModel:
        return EngineModel(
            id=MODEL,
            engine_model=ENGINE_MODEL,
            tokenizer_dir=str(self.tokenizer_dir),
            max_model_len=MAX_MODEL_LEN,
            capabilities=self.capabilities if self.declare_capabilities else None,
        )

    async def ready(self) -> bool:
        return not self.closed

    async def list_models(self) -> list[EngineModel]:
        if self.closed:
            raise EngineUnavailable()
        return [self.model]

    def abort(self, message: str) -> None:
        self._abort_message = message

    async def close(self) -> None:
        self.closed = True

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        self.requests.append(request)
        if self._abort_message is not None:
            raise EngineUnavailable(self._abort_message)
        if request.engine_model != ENGINE_MODEL:  # the Triton client calls an unloaded model unavailable
            raise EngineUnavailable("The model is not loaded on the inference server; retry shortly.")
        values = self._reject_what_the_engine_cannot_honour(request)
        max_tokens, stops = int(values["max_tokens"]), tuple(values["stop_words"])
        n, k = int(values["num_return_sequences"]), int(values["num_top_log_probs"])
        logprobs = bool(values["return_log_probs"])
        logprobs_asked = logprobs or k > 0 or bool(values["return_prompt_log_probs"])
        exact = int(values["min_tokens"]) >= max_tokens  # no end-of-sequence
        prompt_ids = list(values["input_ids"]) or self._tokenizer.encode(request.prompt, add_special_tokens=True).ids
        prompt = request.prompt if values["text_input"] is not None else self._tokenizer.decode(prompt_ids)
        length = max_tokens if exact else min(self.reply_words, max_tokens)
        # Sequence 0's words are the prompt's (what a test predicts); the others' differ.
        words = [reply_words(prompt if j == 0 else f"{prompt}#{j}", length) for j in range(n)]
        cum = [0.0] * n

        prompt_count = _frozen(contract.NUM_INPUT_TOKENS.array(len(prompt_ids)))
        sequence_index = [_frozen(contract.SEQUENCE_INDEX.array(j)) for j in range(n)]

        def chunk(j: int, text: str, generated: int, finish: str | None = None, first: bool = False) -> GenerationChunk:
            """Sequence j's response as the engine's output tensors, read back by the Triton client's parser."""
            ids, text_array, ids_array = self._delta(text)
            arrays = {
                contract.TEXT_OUTPUT.name: text_array,
                contract.NUM_INPUT_TOKENS.name: prompt_count,
                contract.NUM_OUTPUT_TOKENS.name: _count_array(generated),
                contract.SEQUENCE_INDEX.name: sequence_index[j],
                contract.OUTPUT_IDS.name: ids_array,
            }
            if finish:
                arrays[contract.FINISH_REASON.name] = contract.FINISH_REASON.array(finish)
            if logprobs:
                cum[j] += sum(fake_logprob(t) for t in ids)
                arrays[contract.OUTPUT_LOG_PROBS.name] = contract.OUTPUT_LOG_PROBS.array([fake_logprob(t) for t in ids])
                arrays[contract.CUM_LOG_PROBS.name] = contract.CUM_LOG_PROBS.array(cum[j])
            if k:
                tops = [pair for t in ids for pair in fake_top(t, k, self.vocab_size)]
                arrays[contract.TOP_LOG_PROBS.name] = contract.TOP_LOG_PROBS.array([lp for _, lp in tops])
                arrays[contract.TOP_LOG_PROB_IDS.name] = contract.TOP_LOG_PROB_IDS.array([i for i, _ in tops])
            if first and values["return_prompt_log_probs"]:
                rest = prompt_ids[1:]
                arrays[contract.PROMPT_LOG_PROBS.name] = contract.PROMPT_LOG_PROBS.array(
                    [fake_logprob(t) for t in rest]
                )
                if k:
                    tops = [pair for t in rest for pair in fake_top(t, k, self.vocab_size)]
                    arrays[contract.PROMPT_TOP_LOG_PROBS.name] = contract.PROMPT_TOP_LOG_PROBS.array(
                        [lp for _, lp in tops]
                    )
                    arrays[contract.PROMPT_TOP_LOG_PROB_IDS.name] = contract.PROMPT_TOP_LOG_PROB_IDS.array(
                        [i for i, _ in tops]
                    )
            return parse_outputs(arrays.get, k, logprobs_asked)

        self.active.add(request.request_id)
        finished = False
        try:
            if self.scripted:  # one token per response, one sequence
                ids = self._tokenizer.encode(self.scripted.pop(0), add_special_tokens=False).ids
                pieces = [self._tokenizer.decode(ids[:i]) for i in range(len(ids) + 1)]
                for generated in range(1, min(len(ids), max_tokens) + 1):
                    await asyncio.sleep(self.token_delay_s)
                    finish = "length" if generated == max_tokens else None
                    yield chunk(0, pieces[generated][len(pieces[generated - 1]) :], generated, finish, generated == 1)
                if len(ids) < max_tokens:
                    yield chunk(0, "", len(ids) + 1, "stop", not ids)
                finished = True
                return
            texts, sent, done = [""] * n, [0] * n, [False] * n
            started = time.monotonic()
            for generated in range(1, length + 2):  # the words, then the end-of-sequence
                await self._pace(started, generated)
                if self._abort_message is not None:
                    raise EngineUnavailable(self._abort_message)
                for j in range(n):  # the sequences' responses interleave
                    if done[j]:
                        continue
                    first = generated == 1
                    if generated > length:  # the natural end: end-of-sequence, counted as one more output token
                        done[j] = True
                        yield chunk(j, texts[j][sent[j] :], generated, "stop", first)
                        continue
                    word = words[j][generated - 1]
                    texts[j] += word if not texts[j] else f" {word}"
                    text = texts[j]
                    hits = [text.index(stop) for stop in stops if stop in text]
                    if hits:
                        done[j] = True
                        yield chunk(j, text[sent[j] : min(hits)], generated, "stop", first)
                        continue
                    if generated == max_tokens:
                        done[j] = True
                        yield chunk(j, text[sent[j] :], generated, "length", first)
                        continue
                    ready = len(text) - held_back(text, stops)
                    yield chunk(j, text[sent[j] : ready], generated, None, first)
                    sent[j] = ready
                if all(done):
                    break
            finished = True
        finally:
            self.active.discard(request.request_id)
            if not finished:
                self.cancelled.append(request.request_id)

    async def _pace(self, started: float, generated: int) -> None:
        """Wait for the next word. By default `token_delay_s` (0: one word per turn of the server's loop, which
        then serves the others). With `engine_step_s`, as an engine in another process: word i is due at
        started + i x step, and the words already due when the fake gets to run are sent at once, without
        yielding in between (what a socket holds for a front-end that fell behind)."""
        if self.engine_step_s is None:
            await asyncio.sleep(self.token_delay_s)
        elif (wait := started + (generated - 1) * self.engine_step_s - time.monotonic()) > 0:
            await asyncio.sleep(wait)

    def _delta(self, text: str) -> tuple[list[int], np.ndarray, np.ndarray]:
        """A text delta's token ids and its two output tensors, made once per distinct delta: the fake is the load
        source of bench/frontend_fake_sse.py, its own cost is not the front-end's (the tensors are read-only)."""
        if (known := self._deltas.get(text)) is None:
            if len(self._deltas) >= _DELTAS_KEPT:
                self._deltas.clear()
            ids = self._tokenizer.encode(text, add_special_tokens=False).ids if text else []
            known = ids, _frozen(contract.TEXT_OUTPUT.array([text])), _frozen(contract.OUTPUT_IDS.array(ids))
            self._deltas[text] = known
        return known

    def _reject_what_the_engine_cannot_honour(self, request: GenerationRequest) -> dict[str, Any]:
        """The real engine's checks over the request as the contract carries it (see the module docstring): an
        input outside `capabilities` set to anything but its default, then the `llm` model's own parser and checks
        for what the openvino core honours, then the contract's ranges. Returns every input's value."""
        arrays = {spec.name: spec.array(value) for spec, value in input_values(request)}
        values = {spec.name: spec.read(arrays.get(spec.name)) for spec in contract.INPUTS}
        try:
            for spec in contract.INPUTS:
                if spec.name not in self.capabilities and values[spec.name] != spec.default:
                    raise InvalidRequest(f"{spec.name} is not supported by the fake engine")
            hidden = {spec.name for spec in contract.not_honoured(contract.OPENVINO)}  # read below, not parsed
            parsed = parse_request(lambda name: None if name in hidden else arrays.get(name), contract.OPENVINO)
            validate_sampling(parsed.sampling, self.vocab_size)
            if not 1 <= values["num_return_sequences"] <= contract.MAX_RETURN_SEQUENCES:
                raise InvalidRequest(f"num_return_sequences must be from 1 to {contract.MAX_RETURN_SEQUENCES}")
            if not 0 <= values["num_top_log_probs"] <= contract.MAX_TOP_LOG_PROBS:
                raise InvalidRequest(f"num_top_log_probs must be from 0 to {contract.MAX_TOP_LOG_PROBS}")
            for name in ("input_ids", "stop_token_ids", "embedding_bias_token_ids"):
                if any(not 0 <= i < self.vocab_size for i in values[name]):
                    raise InvalidRequest(f"{name} must be token ids in [0, {self.vocab_size})")
            if len(values["embedding_bias_token_ids"]) != len(values["embedding_bias_weights"]):
                raise InvalidRequest("embedding_bias_token_ids and embedding_bias_weights must have the same length")
        except InvalidRequest as exc:
            raise infer_error(f"invalid request: {exc}") from None
        return values


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0, what: str = "the condition") -> None:
    """Poll `condition` (state the app's thread changes) until it holds; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout_s} s")
        time.sleep(0.01)
