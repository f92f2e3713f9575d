"""The limiter on its own: the `limits` sliding-window counters in memory and in the real local Redis, the
per-process slot counters, and their release however a generation ends. The engine here is a fake generator
(named so): it provokes a mid-stream failure and a never-started response, which the real engine cannot on cue."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import aclosing

import pytest
import redis.asyncio
from limits import RateLimitItemPerMinute

from frontend_api.engine.protocol import EngineError, GenerationChunk
from frontend_api.errors import OpenAIError
from frontend_api.openai.engine_stream import EngineStream, EventStream
from frontend_api.policy.auth import Principal
from frontend_api.policy.limits import Limiter, seconds_until_room
from frontend_api.settings import Settings

from stack import free_port

REDIS_URL = "redis://127.0.0.1:6379/0"


def settings(**values) -> Settings:
    return Settings(_env_file=None, **values)


def key(name: str = "alice", **limits) -> Principal:
    return Principal(key_id=1, name=name, limit_id=f"key:{uuid.uuid4().hex}", **limits)


async def tpm_used(limiter: Limiter, principal: Principal) -> int:
    """The weighted count of the caller's token window, read from the storage (it may exceed the limit)."""
    item = RateLimitItemPerMinute(principal.tpm)
    previous, previous_ttl, current, _ = await limiter.storage.get_sliding_window(
        item.key_for("tpm", principal.limit_id), item.get_expiry()
    )
    return int(previous * previous_ttl / item.get_expiry()) + current


@pytest.fixture
async def redis_prefix():
    prefix = f"llmserve-test-{uuid.uuid4().hex[:12]}"
    yield prefix
    client = redis.asyncio.Redis.from_url(REDIS_URL)
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.mark.parametrize(
    "window, limit, cost, expected",
    [
        ((0, 0.0, 0, 0.0), 10, 1, 0.0),  # empty: room now
        ((0, 0.0, 10, 90.0), 10, 1, 30.0),  # full current window: room as soon as it ends (9.99 floors to 9)
        ((10, 30.0, 0, 90.0), 10, 1, 0.0),  # the previous window weighs 5: room now
        ((30, 30.0, 0, 90.0), 10, 1, 10.0),  # it weighs 15, and falls below 10 after 10 s
        ((0, 0.0, 20, 90.0), 10, 1, 30.0 + 30.0),  # over budget (completion tokens): decays past the window end
        ((10, 30.0, 5, 90.0), 10, 6, 30.0),  # the current window's 5 alone leave no room for 6
    ],
)
def test_seconds_until_room(window, limit, cost, expected):
    assert seconds_until_room(window, limit, cost, 60) == pytest.approx(expected)


@pytest.mark.rate_window(5)
async def test_rpm_admits_the_limit_then_429_with_retry_after():
    limiter = Limiter(settings())
    caller = key(rpm=3)
    for _ in range(3):
        await (await limiter.admit(caller, 10)).finish(1)
    with pytest.raises(OpenAIError) as refused:
        await limiter.admit(caller, 10)
    error = refused.value
    assert error.status == 429 and error.code == "rate_limit_exceeded" and error.type == "rate_limit_error"
    assert "3 requests per minute" in error.message and "'alice'" in error.message
    assert 1 <= int(error.headers["Retry-After"]) <= 60
    await (await limiter.admit(key(rpm=3), 10)).finish(1)  # another caller has its own budget
    assert limiter.in_flight == 0 and not limiter.streams


@pytest.mark.rate_window(5)
async def test_tpm_charges_prompt_at_admission_and_completion_at_the_end():
    limiter = Limiter(settings())
    caller = key(tpm=100)
    admission = await limiter.admit(caller, 60)
    assert await tpm_used(limiter, caller) == 60
    await admission.finish(30)
    assert await tpm_used(limiter, caller) == 90
    await (await limiter.admit(caller, 10)).finish(0)  # exactly fills the budget
    with pytest.raises(OpenAIError) as refused:
        await limiter.admit(caller, 1)
    assert refused.value.status == 429 and "100 tokens per minute" in refused.value.message
    assert int(refused.value.headers["Retry-After"]) >= 1
    with pytest.raises(OpenAIError) as too_large:
        await limiter.admit(key(tpm=100), 101)
    assert too_large.value.status == 429 and "Request too large" in too_large.value.message
    assert limiter.in_flight == 0


@pytest.mark.rate_window(5)
async def test_completion_tokens_are_charged_past_the_limit():
    limiter = Limiter(settings())
    caller = key(tpm=50)
    await (await limiter.admit(caller, 40)).finish(500)  # a generation may end over budget: it still counts
    assert await tpm_used(limiter, caller) == 540


async def test_stream_cap_per_key_and_release():
    limiter = Limiter(settings())
    caller = key(max_streams=2)
    held = [await limiter.admit(caller, 1) for _ in range(2)]
    with pytest.raises(OpenAIError) as refused:
        await limiter.admit(caller, 1)
    assert refused.value.status == 429 and refused.value.code == "too_many_streams"
    assert "2 at a time" in refused.value.message and refused.value.headers["Retry-After"]
    other = await limiter.admit(key(max_streams=2), 1)  # caps are per key
    await held[0].finish(0)
    await held[0].finish(0)  # finishing twice releases once
    assert limiter.streams[caller.limit_id] == 1
    held.append(await limiter.admit(caller, 1))
    for admission in (*held, other):
        await admission.finish(0)
    assert limiter.in_flight == 0 and not limiter.streams


async def test_global_in_flight_cap_is_503():
    limiter = Limiter(settings(max_in_flight=2))
    held = [await limiter.admit(key(), 1), await limiter.admit(key(), 1)]
    with pytest.raises(OpenAIError) as refused:
        await limiter.admit(key(), 1)
    assert refused.value.status == 503 and refused.value.code == "server_overloaded"
    assert refused.value.headers["Retry-After"] == "1"
    for admission in held:
        await admission.finish(0)
    await (await limiter.admit(key(), 1)).finish(0)
    assert limiter.in_flight == 0


@pytest.mark.rate_window(5)
async def test_a_rate_limited_request_holds_no_slot():
    limiter = Limiter(settings())
    caller = key(rpm=1, max_streams=1)
    await (await limiter.admit(caller, 1)).finish(0)
    with pytest.raises(OpenAIError):
        await limiter.admit(caller, 1)
    assert limiter.in_flight == 0 and not limiter.streams


@pytest.mark.rate_window(5)
async def test_two_limiters_share_one_redis_budget(redis_prefix):
    """Two front-end processes each have a Limiter; with Redis they spend one budget."""
    one, two = (Limiter(settings(redis_url=REDIS_URL, redis_key_prefix=redis_prefix)) for _ in range(2))
    caller = key(rpm=4, tpm=1000)
    try:
        for limiter in (one, two, one, two):
            await (await limiter.admit(caller, 100)).finish(50)
        for limiter in (one, two):
            with pytest.raises(OpenAIError) as refused:
                await limiter.admit(caller, 1)
            assert refused.value.status == 429 and "4 requests per minute" in refused.value.message
        assert await tpm_used(two, caller) == 600
        memory = Limiter(settings())  # without Redis, a process has a budget of its own
        await (await memory.admit(caller, 1)).finish(0)
    finally:
        await one.close()
        await two.close()


async def test_redis_down_fails_closed_with_503():
    limiter = Limiter(settings(redis_url=f"redis://127.0.0.1:{free_port()}/0"))
    try:
        with pytest.raises(OpenAIError) as refused:
            await limiter.admit(key(rpm=5), 1)
        assert refused.value.status == 503 and refused.value.code == "rate_limiter_unavailable"
        assert limiter.in_flight == 0
        await (await limiter.admit(key(), 1)).finish(0)  # callers without rate limits never touch Redis
    finally:
        await limiter.close()


async def fake_engine(chunks: list[GenerationChunk], fail: bool = False, hang: bool = False):
    for chunk in chunks:
        yield chunk
    if fail:
        raise EngineError("fake engine failure")
    if hang:
        await asyncio.Event().wait()


def chunk(text: str, produced: int) -> GenerationChunk:
    return GenerationChunk(text, num_input_tokens=5, num_output_tokens=produced)


async def test_engine_stream_releases_once_on_completion_error_and_cancellation():
    limiter = Limiter(settings())
    caller = key(tpm=1000, max_streams=5)

    async def consume(stream: EngineStream) -> None:
        async with aclosing(stream):
            async for _ in stream:
                pass

    async def open_stream(**behaviour) -> EngineStream:
        stream = EngineStream(fake_engine([chunk("a", 1), chunk("b", 2)], **behaviour), await limiter.admit(caller, 10))
        await stream.receive_first()
        return stream

    await consume(await open_stream())
    assert limiter.in_flight == 0 and await tpm_used(limiter, caller) == 12
    with pytest.raises(EngineError):
        await consume(await open_stream(fail=True))
    assert limiter.in_flight == 0 and await tpm_used(limiter, caller) == 24
    task = asyncio.create_task(consume(await open_stream(hang=True)))
    await asyncio.sleep(0.05)
    assert limiter.in_flight == 1
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert limiter.in_flight == 0 and await tpm_used(limiter, caller) == 36  # the tokens it produced still count
    assert not limiter.streams


async def response_body(stream: EngineStream) -> AsyncIterator[str]:
    async with aclosing(stream):  # as serving_chat's _stream does
        async for part in stream:
            yield part.text


async def test_a_response_body_closed_before_it_started_frees_the_slot():
    """The client leaves before the streaming response reads its body: closing a generator that never started
    does not run its `finally`, so the response's EventStream closes the engine stream itself."""
    limiter = Limiter(settings())
    stream = EngineStream(fake_engine([chunk("a", 1)]), await limiter.admit(key(max_streams=1), 1))
    body = EventStream(response_body(stream), stream)
    assert limiter.in_flight == 1
    await body.aclose()
    assert limiter.in_flight == 0 and not limiter.streams
