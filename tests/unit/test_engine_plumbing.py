"""The pieces between an engine core and Triton's senders: response merging and bounded cancellation polling."""

from __future__ import annotations

import threading
import time


def test_merge_joins_deltas_per_writer_and_sequence_and_keeps_the_final_outcome():
    from core import Update
    from response_queue import merge

    a, b = object(), object()
    items = [
        (a, Update("Hel", None, None, 3, 1, token_ids=(1,), logprobs=(-0.5,), prompt_logprobs=(-1.0,))),
        (b, Update("x", None, None, 5, 1)),
        (a, Update("y", None, None, 3, 1, index=1, token_ids=(9,))),
        (a, Update("lo", None, None, 3, 2, token_ids=(2,), logprobs=(-0.25,))),
        (a, Update("!", "length", None, 3, 3, token_ids=(3,), logprobs=(-1.0,))),
    ]
    merged = merge(items)
    assert list(merged) == [(a, 0), (b, 0), (a, 1)]
    assert merged[(a, 0)] == Update(
        "Hello!", "length", None, 3, 3, 0, (1, 2, 3), (-0.5, -0.25, -1.0), (), prompt_logprobs=(-1.0,)
    )
    assert merged[(b, 0)] == Update("x", None, None, 5, 1)
    assert merged[(a, 1)] == Update("y", None, None, 3, 1, index=1, token_ids=(9,))


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
