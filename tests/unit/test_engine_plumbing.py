"""The pieces between an engine core and Triton's senders: response merging and bounded cancellation polling."""

from __future__ import annotations

import threading
import time


def test_merge_joins_deltas_per_writer_and_keeps_the_final_outcome():
    from core import Update
    from response_queue import merge

    a, b = object(), object()
    items = [
        (a, Update("Hel", None, None, 3, 1)),
        (b, Update("x", None, None, 5, 1)),
        (a, Update("lo", None, None, 3, 2)),
        (a, Update("!", "length", None, 3, 3)),
    ]
    merged = merge(items)
    assert list(merged) == [a, b]
    assert merged[a] == Update("Hello!", "length", None, 3, 3)
    assert merged[b] == Update("x", None, None, 5, 1)


def test_response_queue_delivers_everything_in_order_from_one_thread():
    from core import Update
    from response_queue import ResponseQueue

    received, threads, done = [], set(), threading.Event()

    def writer(update):
        received.append(update)
        threads.add(threading.current_thread().name)
        if update.finish_reason:
            done.set()

    responses = ResponseQueue()
    sink = responses.sink_for(writer)
    for i in range(200):
        sink(Update(str(i % 10), None, None, 1, i + 1))
    sink(Update("", "stop", None, 1, 200))
    assert done.wait(5)
    responses.close()
    assert "".join(u.text for u in received) == "".join(str(i % 10) for i in range(200))
    assert received[-1].finish_reason == "stop" and received[-1].num_output_tokens == 200
    assert threads == {"llm-responses"}


def test_cancellation_poller_bounds_the_checks_and_covers_everyone():
    from cancellation import CancellationPoller

    poller = CancellationPoller(rate=100.0)
    items = list(range(50))
    time.sleep(0.05)  # credit for ~5 checks
    first = poller.due(items)
    assert 1 <= len(first) <= 10
    seen = set(first)
    deadline = time.monotonic() + 3
    while len(seen) < len(items) and time.monotonic() < deadline:
        time.sleep(0.01)
        seen.update(poller.due(items))
    assert seen == set(items)  # round robin reaches every request, about len(items) / rate seconds
    assert poller.due([]) == []
