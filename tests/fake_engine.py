"""FakeEngine: a FAKE inference engine for the fast front-end tests (tests/frontend). It is not a model.

It implements the front-end's `Engine` protocol (frontend_api/engine/protocol.py) in process, so the real app
(routers, limits, sessions, SSE, WebSocket) runs against it without Triton. What the front-end sees is what the
real engines promise by the tensor contract:
- one served model whose tokenizer is the real SmolLM2 one, so chat templates and token counts are real;
- a deterministic reply derived from the prompt, one word per "token": words of the NATO alphabet, starting at
  an offset given by a hash of the prompt. A natural reply is REPLY_WORDS words and then end-of-sequence, which
  counts as one more output token (as the real engine counts the EOS it generated), finish `stop`;
- max_tokens ends the reply with finish `length`; min_tokens >= max_tokens generates exactly max_tokens;
- stop strings end it with finish `stop`, the stop string and what follows trimmed, text that might begin a stop
  string held back until it is known not to;
- every chunk carries the token counts; the prompt count is the real tokenizer's (with special tokens);
- it speaks the contract: the request's tensors are built by the Triton client's own encoding
  (frontend_api.engine.triton.input_values -> engine_contract arrays) and read back by the real `llm` model's
  parser and checks (contract_io.parse_request, core.validate_sampling, for the default `openvino` core), so what
  the real engine refuses (penalties, bad_words) raises the same EngineError 400 naming
  the field, through the Triton client's own error mapping, before the first chunk;
- closing the iterator early cancels the request: it is recorded in `cancelled`, and leaves `active`.
The app runs in another thread (a uvicorn server): tests read `requests`, `active` and `cancelled` from theirs,
so those are plain containers updated atomically, read with `wait_until`.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from tokenizers import Tokenizer

import engine_contract as contract
from frontend_api.engine.protocol import (
    EngineModel,
    EngineUnavailable,
    GenerationChunk,
    GenerationRequest,
)
from frontend_api.engine.triton import infer_error, input_values

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


class FakeEngine:
    """A fake `Engine` (see the module docstring). `token_delay_s` paces the words and `reply_words` sets how long
    a natural reply is, for tests that need a generation still running when they act (disconnect, stop)."""

    def __init__(self, tokenizer_dir: Path, token_delay_s: float = 0.0, reply_words: int = REPLY_WORDS):
        self.tokenizer_dir = Path(tokenizer_dir)
        self.token_delay_s = token_delay_s
        self.reply_words = reply_words
        self._tokenizer = Tokenizer.from_file(str(self.tokenizer_dir / "tokenizer.json"))
        self.requests: list[GenerationRequest] = []  # every request generate() was called with
        self.active: set[str] = set()  # request ids being generated now
        self.cancelled: list[str] = []  # request ids whose iterator was closed before the final chunk
        self.closed = False
        self._abort_message: str | None = None

    @property
    def model(self) -> EngineModel:
        return EngineModel(
            id=MODEL, engine_model=ENGINE_MODEL, tokenizer_dir=str(self.tokenizer_dir), max_model_len=MAX_MODEL_LEN
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
        self._reject_what_the_engine_cannot_honour(request)
        params = request.params
        exact = params.min_tokens is not None and params.min_tokens >= params.max_tokens  # no end-of-sequence
        words = reply_words(request.prompt, params.max_tokens if exact else min(self.reply_words, params.max_tokens))
        prompt_tokens = len(self._tokenizer.encode(request.prompt, add_special_tokens=True).ids)

        def chunk(text: str, generated: int, finish: str | None = None) -> GenerationChunk:
            return GenerationChunk(text, finish, num_input_tokens=prompt_tokens, num_output_tokens=generated)

        self.active.add(request.request_id)
        finished = False
        try:
            text, sent = "", 0
            for generated, word in enumerate(words, start=1):
                await asyncio.sleep(self.token_delay_s)  # also lets the server loop serve others between words
                if self._abort_message is not None:
                    raise EngineUnavailable(self._abort_message)
                text += word if not text else f" {word}"
                hits = [text.index(stop) for stop in params.stop if stop in text]
                if hits:
                    finished = True
                    yield chunk(text[sent : min(hits)], generated, "stop")
                    return
                ready = len(text) - held_back(text, params.stop)
                if generated == params.max_tokens:
                    finished = True
                    yield chunk(text[sent:], generated, "length")
                    return
                yield chunk(text[sent:ready], generated)
                sent = ready
            finished = True  # the natural end: the end-of-sequence token, counted as one more output token
            yield chunk(text[sent:], len(words) + 1, "stop")
        finally:
            self.active.discard(request.request_id)
            if not finished:
                self.cancelled.append(request.request_id)

    def _reject_what_the_engine_cannot_honour(self, request: GenerationRequest) -> None:
        """The real engine's checks over the request as the contract carries it (see the module docstring)."""
        arrays = {spec.name: spec.array(value) for spec, value in input_values(request)}
        try:
            parsed = parse_request(arrays.get, contract.OPENVINO)
            validate_sampling(parsed.sampling, self._tokenizer.get_vocab_size())
        except InvalidRequest as exc:
            raise infer_error(f"invalid request: {exc}") from None


def wait_until(condition: Callable[[], bool], timeout_s: float = 5.0, what: str = "the condition") -> None:
    """Poll `condition` (state the app's thread changes) until it holds; fail the test after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} did not hold within {timeout_s} s")
        time.sleep(0.01)
