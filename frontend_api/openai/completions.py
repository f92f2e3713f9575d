"""POST /v1/completions: the prompt as given (no template), answered as one object or as SSE chunks.

`prompt` may be several prompts (strings or token-id lists): each is one engine request of n sequences, and its
choices are numbered as OpenAI's, index = prompt_index * n + sequence. `echo` puts the prompt in front of each
choice's text (and, with `logprobs`, its tokens' log-probabilities: the first token's is null)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator
from contextlib import aclosing
from dataclasses import dataclass

from frontend_api.engine.protocol import EngineError, GenerationChunk, TopLogprobs
from frontend_api.openai.engine_stream import EngineStream, EventStream, Tallies, Tally, coalesce
from frontend_api.openai.protocol import CompletionRequest
from frontend_api.openai.response_objects import (
    Completion,
    CompletionChoice,
    CompletionChunk,
    CompletionLogprobs,
    Usage,
)
from frontend_api.openai.serving import (
    FINISH_REASONS,
    SSE_DONE,
    LogprobsAsked,
    OpenAIServing,
    Prepared,
    engine_error_body,
    new_id,
    sse_event,
)
from frontend_api.openai.stream_events import ChunkTemplate, completion_choice

NAMES = ("max_tokens", "prompt")


@dataclass
class PromptRun:
    """One prompt of the request: its engine request, the text echo shows, and the token ids its prompt
    log-probabilities are for (when asked)."""

    prepared: Prepared
    text: str
    token_ids: list[int] | None
    stream: EngineStream | None = None
    # The prompt's log-probabilities as the engine sent them (on a sequence's first response; kept for the others)
    prompt_logprobs: tuple[float, ...] | None = None
    prompt_top_logprobs: tuple[TopLogprobs, ...] | None = None

    def saw(self, chunk: GenerationChunk) -> None:
        if chunk.prompt_logprobs is not None:
            self.prompt_logprobs, self.prompt_top_logprobs = chunk.prompt_logprobs, chunk.prompt_top_logprobs


class Streams:
    """The engine streams of a request's prompts, closed together."""

    def __init__(self, runs: list[PromptRun]):
        self.runs = runs

    async def aclose(self) -> None:
        for run in self.runs:
            if run.stream is not None:
                await run.stream.aclose()


async def merge(streams: list[EngineStream]) -> AsyncGenerator[tuple[int, GenerationChunk], None]:
    """(stream number, chunk) of several engine streams as their chunks come (the prompts' choices interleave).
    One stream (one prompt) is read in batches, each coalesced: the tokens that arrived together are one chunk.
    Closing it cancels the reads still pending; the streams themselves are closed by their owner."""
    if len(streams) == 1:
        while batch := await streams[0].batch():
            for chunk in coalesce(batch):
                yield 0, chunk
        return
    pending = {asyncio.ensure_future(anext(stream)): number for number, stream in enumerate(streams)}
    try:
        while pending:
            done, _ = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
            for future in sorted(done, key=pending.__getitem__):
                number = pending.pop(future)
                try:
                    chunk = future.result()
                except StopAsyncIteration:
                    continue
                yield number, chunk
                pending[asyncio.ensure_future(anext(streams[number]))] = number
    finally:
        for future in pending:
            future.cancel()
        await asyncio.gather(*pending, return_exceptions=True)


class OpenAIServingCompletion(OpenAIServing):
    param_names = {
        "num_top_log_probs": "logprobs",
        "return_log_probs": "logprobs",
        "return_prompt_log_probs": "echo",
    }

    async def create_completion(self, request: CompletionRequest) -> Completion | AsyncIterator[str | bytes]:
        model = await self.resolve_model(request.model)
        prompts = request.prompts
        echo_logprobs = bool(request.echo and request.logprobs is not None)
        asked = LogprobsAsked(output=request.logprobs is not None, top=request.logprobs or 0, prompt=echo_logprobs)
        await self.check_token_ids(model, {"prompt": [i for p in prompts if not isinstance(p, str) for i in p]})
        response_id = new_id("cmpl")
        runs: list[PromptRun] = []
        for number, prompt in enumerate(prompts):
            if isinstance(prompt, str):
                text = prompt
                # Prompt log-probabilities are for the tokens the engine sees: send the prompt as its token ids.
                ids = await self.tokenizers.encode(model, prompt) if echo_logprobs else None
            else:
                text, ids = await self.tokenizers.decode(model, prompt), list(prompt)
            request_id = response_id if len(prompts) == 1 else f"{response_id}-{number}"
            prepared = await self.prepare(
                request, model, text, request.max_tokens, NAMES, "cmpl", None, None, ids, asked, request_id
            )
            runs.append(PromptRun(prepared, text, ids))
        streams = Streams(runs)
        try:
            for run in runs:
                run.stream = await self.start(run.prepared)
        except BaseException:
            await streams.aclose()
            raise
        if request.stream:
            return EventStream(self._stream(request, response_id, streams), streams)
        try:
            results = []
            for run in runs:
                assert run.stream is not None
                results.append((run.prepared, await self.collect(run.stream, request.choices_per_prompt)))
        finally:
            await streams.aclose()
        for run, (_, tallies) in zip(runs, results, strict=True):
            for _, tally in tallies.items():
                if tally.prompt_logprobs is not None:
                    run.prompt_logprobs, run.prompt_top_logprobs = tally.prompt_logprobs, tally.prompt_top_logprobs
        reasons, usage = await self.finish_all(results)
        choices = []
        for number, (run, (_, tallies)) in enumerate(zip(runs, results, strict=True)):
            for sequence, tally in tallies.items():
                text = (run.text if request.echo else "") + tally.text
                logprobs = await self._logprobs(request, run, tally, first=True, offset=0)
                choices.append(
                    CompletionChoice(
                        index=number * request.choices_per_prompt + sequence,
                        text=text,
                        logprobs=logprobs,
                        finish_reason=reasons[number][sequence],
                    )
                )
        return self._completion(request, response_id, runs[0].prepared, choices, usage)

    async def _logprobs(
        self, request: CompletionRequest, run: PromptRun, part: Tally, first: bool, offset: int
    ) -> CompletionLogprobs | None:
        """The logprobs of a choice's tokens in `part` (a whole tally, or one chunk's), with the echoed prompt's in
        front when `first` (its first part)."""
        if request.logprobs is None:
            return None
        ids: list[int] = []
        logprobs: list[float | None] = []
        top: list = []
        if first and request.echo and run.token_ids:
            ids = list(run.token_ids)
            given = list(part.prompt_logprobs or run.prompt_logprobs or ())[: len(ids) - 1]
            logprobs = [None, *given, *[None] * (len(ids) - 1 - len(given))]
            given_top = list(part.prompt_top_logprobs or run.prompt_top_logprobs or ())
            top = [None, *(given_top[i] if i < len(given_top) else () for i in range(len(ids) - 1))]
        if len(part.logprobs) == len(part.token_ids):
            ids += part.token_ids
            logprobs += part.logprobs
            top += [part.top_logprobs[i] if i < len(part.top_logprobs) else () for i in range(len(part.token_ids))]
        return await self.completion_logprobs(run.prepared.model, ids, logprobs, top, offset)

    async def _stream(
        self, request: CompletionRequest, response_id: str, streams: Streams
    ) -> AsyncGenerator[bytes, None]:
        n = request.choices_per_prompt
        runs = streams.runs
        first = runs[0].prepared
        template = ChunkTemplate(self._completion(request, response_id, first, []))
        offsets: dict[int, int] = {}  # choice index -> characters sent so far (logprobs' text_offset)
        finished: set[int] = set()
        results: list[tuple[Prepared, Tallies]] = []
        try:
            try:
                for run in runs:
                    results.append((run.prepared, Tallies(n)))
                streams_ = [run.stream for run in runs if run.stream is not None]
                async with aclosing(merge(streams_)) as chunks:
                    async for number, chunk in chunks:
                        run, tallies = runs[number], results[number][1]
                        run.saw(chunk)
                        tally = tallies.add(chunk)
                        index = number * n + chunk.index
                        opening = tally.chunks == 1
                        text = (run.text if opening and request.echo else "") + chunk.text
                        logprobs = None
                        if request.logprobs is not None:
                            part = Tally()
                            part.add(chunk)
                            found = await self._logprobs(request, run, part, opening, offsets.get(index, 0))
                            logprobs = found.model_dump() if found is not None else None
                            offsets[index] = offsets.get(index, 0) + len(text)
                        if text or (logprobs is not None and logprobs["tokens"]):
                            yield template.event(completion_choice(index, text, logprobs))
                        if chunk.finish_reason in FINISH_REASONS and index not in finished:
                            finished.add(index)
                            yield template.event(completion_choice(index, "", None, chunk.finish_reason))
                reasons, usage = await self.finish_all(results)
                for number, run_reasons in enumerate(reasons):
                    for sequence, reason in enumerate(run_reasons):
                        if (index := number * n + sequence) not in finished:
                            yield template.event(completion_choice(index, "", None, reason))
                if request.include_usage:
                    yield sse_event(self._completion(request, response_id, first, [], usage))
            except EngineError as exc:
                yield sse_event(engine_error_body(exc))
            yield SSE_DONE
        finally:
            await streams.aclose()

    @staticmethod
    def _completion(
        request: CompletionRequest,
        response_id: str,
        prepared: Prepared,
        choices: list[CompletionChoice],
        usage: Usage | None = None,
    ) -> CompletionChunk:
        return Completion(id=response_id, created=prepared.created, model=request.model, choices=choices, usage=usage)
