"""ReadyReader (frontend_api/openai/ready_reader.py): the consumer's task steps the engine's iterator itself, tells
the items ready without waiting from those not yet there, and loses, repeats or blocks on nothing: a read left
pending finishes with the same item, a cancellation reaches the iterator as it would reach an awaited one."""

from __future__ import annotations

import asyncio

import pytest

from frontend_api.openai.ready_reader import ReadyReader


async def test_ready_items_are_polled_and_a_waiting_read_finishes_with_its_item():
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def source():
        yield "a"
        yield "b"  # ready at once after "a"
        yield await gate  # waits for the future
        yield "d"

    reader = ReadyReader(source())
    assert await reader.next() == "a"
    assert reader.poll() == "b"
    assert reader.poll() is None  # waiting for `gate`: the read is kept
    assert reader.poll() is None  # still waiting: polling again neither repeats nor loses it
    asyncio.get_running_loop().call_later(0.01, gate.set_result, "c")
    assert await reader.next() == "c"
    assert reader.poll() == "d"
    with pytest.raises(StopAsyncIteration):
        reader.poll()


async def test_a_read_whose_future_is_done_is_ready_to_poll():
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()

    async def source():
        yield await gate

    reader = ReadyReader(source())
    assert reader.poll() is None
    gate.set_result("x")  # arrived while the consumer was busy elsewhere
    assert reader.poll() == "x"


async def test_a_read_that_gives_up_its_turn_gets_it_before_its_item():
    turns = []

    async def source():
        await asyncio.sleep(0)  # one turn of the loop for the others
        yield "a"

    async def other():
        turns.append("other")

    reader = ReadyReader(source())
    assert reader.poll() is None  # not ready: it asked for a turn of the loop
    asyncio.get_running_loop().create_task(other())
    assert await reader.next() == "a"
    assert turns == ["other"]  # the loop ran the others before the read went on


async def test_the_iterators_error_comes_out_of_poll_and_next():
    async def failing_at_once():
        yield "a"
        raise ValueError("engine broke")

    reader = ReadyReader(failing_at_once())
    assert await reader.next() == "a"
    with pytest.raises(ValueError, match="engine broke"):
        reader.poll()

    async def failing_later():
        await asyncio.sleep(0.01)
        raise ValueError("later")
        yield  # an async generator

    reader = ReadyReader(failing_later())
    assert reader.poll() is None
    with pytest.raises(ValueError, match="later"):
        await reader.next()


async def test_cancelling_a_pending_read_cancels_its_future_and_runs_its_cleanup():
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    cleaned = []

    async def source():
        try:
            yield await gate
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # a cleanup that awaits (as a gRPC stream's may)
            cleaned.append("cancelled")
            raise

    generator = source()
    reader = ReadyReader(generator)
    assert reader.poll() is None
    await reader.cancel()
    assert gate.cancelled() and cleaned == ["cancelled"]
    await generator.aclose()  # the generator is over: closing it is a no-op
    await reader.cancel()  # nothing pending: a no-op


async def test_cancelling_a_read_after_a_bare_yield_runs_its_cleanup():
    cleaned = []

    async def source():
        try:
            await asyncio.sleep(0)
            yield "never"
        finally:
            cleaned.append("done")

    reader = ReadyReader(source())
    assert reader.poll() is None
    await reader.cancel()
    assert cleaned == ["done"]


async def test_cancelling_the_task_that_awaits_a_pending_read_reaches_the_iterator():
    gate: asyncio.Future[str] = asyncio.get_running_loop().create_future()
    seen = []

    async def source():
        try:
            yield await gate
        except asyncio.CancelledError:
            seen.append("cancelled in the iterator")
            raise

    reader = ReadyReader(source())
    assert reader.poll() is None
    task = asyncio.get_running_loop().create_task(reader.next())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert seen == ["cancelled in the iterator"] and gate.cancelled()
