"""The one interface the routers use to talk to an inference engine.

The front-end never branches on the engine: the Triton implementation speaks the TensorRT-LLM ensemble
tensor contract, which both our python-backend `llm` model and the TRT-LLM `ensemble` implement.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class SamplingParams:
    """Per-request generation settings, already validated by the protocol layer."""

    max_tokens: int
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    seed: int | None = None
    min_tokens: int | None = None
    repetition_penalty: float | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    stop: tuple[str, ...] = ()


@dataclass(frozen=True)
class GenerationRequest:
    request_id: str
    engine_model: str  # the Triton model to call
    prompt: str
    params: SamplingParams
    stream: bool = True


@dataclass
class GenerationChunk:
    """One engine response: a text delta, and on the last one the finish reason and token counts."""

    text: str
    finish_reason: str | None = None  # stop | length | cancelled, only on the final chunk
    num_input_tokens: int | None = None
    num_output_tokens: int | None = None


@dataclass(frozen=True)
class EngineModel:
    """A model the engine serves, as discovered from its configuration."""

    id: str  # the OpenAI `model` field
    engine_model: str  # the Triton model name
    tokenizer_dir: str
    max_model_len: int
    metadata: dict[str, str] = field(default_factory=dict)


class EngineError(Exception):
    """The engine rejected a request (bad parameter) or failed; `status` is the HTTP status to return."""

    def __init__(self, message: str, status: int = 500, param: str | None = None):
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


class EngineUnavailable(EngineError):
    def __init__(self, message: str = "The inference server is not ready; retry shortly."):
        super().__init__(message, status=503)


class Engine(Protocol):
    async def ready(self) -> bool: ...

    async def list_models(self) -> list[EngineModel]: ...

    def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationChunk]:
        """Yield chunks until the final one (which has `finish_reason`). Closing the iterator cancels the
        request in the engine."""
        ...

    def abort(self, message: str) -> None:
        """End every open generation with EngineUnavailable(message), and refuse new ones (shutdown)."""
        ...

    async def close(self) -> None: ...
