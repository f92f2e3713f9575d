"""Asyncio load generators: the OpenAI endpoint with SSE, and Triton gRPC directly, with the same prompts.

Every request asks for exactly `output_tokens` tokens (min_tokens = max_tokens; on the OpenAI endpoint also
ignore_eos, the name llama.cpp's and vLLM's servers know, which ours ignores) and records when it started,
when its first text arrived and when it ended, so that both targets are measured the same way.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass

import numpy as np

# A word that BPE tokenizers (SmolLM2's, Llama's) encode as one token after a space: prompts of n tokens.
PROMPT_WORD = " hello"


def make_prompt(input_tokens: int, index: int) -> str:
    """A prompt of about `input_tokens` tokens, distinct per request (no prefix-cache hits across requests)."""
    return f"{index}:" + PROMPT_WORD * max(input_tokens - 2, 1)


@dataclass
class RequestResult:
    start: float
    end: float
    first_token: float | None = None
    output_tokens: int = 0
    error: str | None = None


async def openai_completion(client, base_url: str, model: str, prompt: str, output_tokens: int) -> RequestResult:
    """One streamed /v1/completions request (SSE)."""
    import httpx

    body = {
        "model": model,
        "prompt": prompt,
        "max_tokens": output_tokens,
        "min_tokens": output_tokens,
        "ignore_eos": True,
        "temperature": 0.0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    result = RequestResult(start=time.perf_counter(), end=0.0)
    try:
        async with client.stream("POST", f"{base_url}/completions", json=body) as response:
            if response.status_code != 200:
                result.error = f"HTTP {response.status_code}: {(await response.aread())[:200]!r}"
            else:
                async for line in response.aiter_lines():
                    if not line.startswith("data: ") or line == "data: [DONE]":
                        continue
                    chunk = json.loads(line[6:])
                    if chunk.get("usage"):
                        result.output_tokens = chunk["usage"]["completion_tokens"]
                    if result.first_token is None and chunk.get("choices") and chunk["choices"][0].get("text"):
                        result.first_token = time.perf_counter()
    except httpx.HTTPError as exc:
        result.error = f"{type(exc).__name__}: {exc}"
    result.end = time.perf_counter()
    return result


def triton_inputs(prompt: str, output_tokens: int):
    import tritonclient.grpc as grpcclient

    def tensor(name, value, datatype, dtype):
        array = np.array([[value]], dtype=dtype)
        t = grpcclient.InferInput(name, list(array.shape), datatype)
        t.set_data_from_numpy(array)
        return t

    return [
        tensor("text_input", prompt.encode(), "BYTES", np.object_),
        tensor("max_tokens", output_tokens, "INT32", np.int32),
        tensor("min_tokens", output_tokens, "INT32", np.int32),
        tensor("temperature", 0.0, "FP32", np.float32),
        tensor("stream", True, "BOOL", np.bool_),
    ]


async def triton_stream(client, model: str, prompt: str, output_tokens: int) -> RequestResult:
    """One decoupled streaming request over Triton gRPC (the engine contract's tensors)."""

    async def requests():
        yield {"model_name": model, "inputs": triton_inputs(prompt, output_tokens)}

    result = RequestResult(start=time.perf_counter(), end=0.0)
    async for response, error in client.stream_infer(requests()):
        if error is not None:
            result.error = str(error)
            continue
        if result.first_token is None and response.as_numpy("text_output")[0][0]:
            result.first_token = time.perf_counter()
        result.output_tokens = int(response.as_numpy("num_output_tokens")[0][0])
    result.end = time.perf_counter()
    return result


async def run_level(
    target: str,
    url: str,
    model: str,
    concurrency: int,
    num_requests: int,
    input_tokens: int,
    output_tokens: int,
    first_index: int = 0,
    on_done=None,
    keepalive: bool = True,
) -> list[RequestResult]:
    """`concurrency` workers send `num_requests` requests in all, each as soon as its previous one ends.

    keepalive=False: a new connection per OpenAI request (llama.cpp's server closes a connection after its 5th
    request without saying so, and the 6th, sent at once on it, fails with "Server disconnected")."""
    if target == "openai":
        import httpx

        idle = concurrency + 8 if keepalive else 0
        limits = httpx.Limits(max_connections=concurrency + 8, max_keepalive_connections=idle)
        client = httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits)
        close = client.aclose

        def send(prompt):
            return openai_completion(client, url, model, prompt, output_tokens)
    elif target == "triton":
        import tritonclient.grpc.aio as aiogrpc

        triton_client = aiogrpc.InferenceServerClient(url)
        close = triton_client.close

        def send(prompt):
            return triton_stream(triton_client, model, prompt, output_tokens)
    else:
        raise ValueError(f"target must be openai or triton, not {target!r}")

    results: list[RequestResult] = []
    counter = iter(range(first_index, first_index + num_requests))

    async def worker():
        for index in counter:
            results.append(await send(make_prompt(input_tokens, index)))
            if on_done is not None:
                on_done()

    try:
        await asyncio.gather(*(worker() for _ in range(concurrency)))
    finally:
        await close()
    return results
