"""engine_process.EngineProcess: a real engine core (the CPU default, openvino_paged, on the real SmolLM2) in a
child process behaves as the core does in process, and fails loudly, never hanging, when the child does."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path

import pytest

from core import DEFAULT_CORE, Sampling, Update, load_core
from engine_process import EngineProcess, EngineProcessError, python_interpreter

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
OPTIONS = {"max_num_seqs": 4, "max_model_len": 256}


class Request:
    """One submitted request: its updates, and the event of its end (every sequence had its last update)."""

    def __init__(self, engine, sampling: Sampling, prompt=PROMPT, cancel_after: int | None = None):
        self.updates: list[Update] = []
        self.done = threading.Event()
        self._sequences = sampling.n
        self._cancel_after = cancel_after
        engine.submit(f"test-{id(self)}", prompt, sampling, self._sink, self._is_cancelled)

    def _sink(self, update: Update) -> None:
        self.updates.append(update)
        if sum(1 for u in self.updates if u.finish_reason) == self._sequences or update.finish_reason == "error":
            self.done.set()

    def _is_cancelled(self) -> bool:
        return self._cancel_after is not None and len(self.updates) >= self._cancel_after

    def wait(self) -> Request:
        assert self.done.wait(120), "the request did not end in 120 s"
        return self

    def text(self, index: int = 0) -> str:
        return "".join(u.text for u in self.updates if u.index == index)

    def joined(self, index: int = 0) -> Update:
        """The sequence's updates as one (core.Update.then)."""
        updates = [u for u in self.updates if u.index == index]
        joined = updates[0]
        for later in updates[1:]:
            joined = joined.then(later)
        return joined


@pytest.fixture(scope="module")
def checkpoint(core_checkpoint) -> str:
    return str(core_checkpoint(DEFAULT_CORE))


@pytest.fixture(scope="module")
def engine(checkpoint):
    engine = EngineProcess(DEFAULT_CORE, checkpoint_dir=checkpoint, **OPTIONS)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def in_process(checkpoint):
    core = load_core(DEFAULT_CORE)(checkpoint, **OPTIONS)
    yield core
    core.shutdown()


def child_is_gone(engine: EngineProcess) -> bool:
    return engine._process.poll() is not None


def test_greedy_text_and_counts_are_the_in_process_cores(engine, in_process):
    sampling = Sampling(max_tokens=16, temperature=0.0)
    ours, theirs = Request(engine, sampling).wait(), Request(in_process, sampling).wait()
    assert "Paris" in ours.text()
    assert ours.joined() == theirs.joined()
    assert engine.max_model_len == in_process.max_model_len
    assert engine.num_active == 0


def test_n_sequences_with_log_probabilities_arrive_as_in_process(engine, in_process):
    sampling = Sampling(max_tokens=6, min_tokens=6, n=2, seed=3, logprobs=True, top_logprobs=2, prompt_logprobs=True)
    ours, theirs = Request(engine, sampling).wait(), Request(in_process, sampling).wait()
    for index in (0, 1):
        assert ours.joined(index) == theirs.joined(index)
        assert len(ours.joined(index).top_logprobs) == 6
    assert ours.joined(0).prompt_logprobs is not None


@pytest.mark.parametrize(
    "sampling, error",
    [
        (Sampling(max_tokens=0), "invalid request: max_tokens must be at least 1"),
        (Sampling(max_tokens=9000), "invalid request: prompt ("),  # the child tokenizes: the context check
        (Sampling(max_tokens=4, top_p=1.5), "invalid request: top_p must be in (0, 1]"),
    ],
)
def test_a_refused_request_ends_with_the_error_model_py_sends_in_process(engine, in_process, sampling, error):
    request = Request(engine, sampling).wait()
    assert [(u.finish_reason, u.error[: len(error)]) for u in request.updates] == [("error", error)]
    with pytest.raises(ValueError) as refused:  # what the core raises in process, model.py prefixes
        Request(in_process, sampling)
    assert request.updates[0].error == f"invalid request: {refused.value}"
    assert engine.num_active == 0


def test_a_cancelled_request_ends_cancelled_and_frees_the_core(engine):
    request = Request(engine, Sampling(max_tokens=200, min_tokens=200), cancel_after=3).wait()
    assert request.updates[-1].finish_reason == "cancelled"
    assert request.updates[-1].num_output_tokens < 200
    assert engine.num_active == 0


class LatePolls:
    """is_cancelled as Triton's: a round trip (1 ms here), and calling it once the request's final response is sent
    is a crash there (a freed response factory); here it is counted."""

    def __init__(self):
        self.late = 0

    def poller_for(self, request_done: threading.Event):
        def is_cancelled() -> bool:
            if request_done.is_set():
                self.late += 1
            time.sleep(0.001)
            return False

        return is_cancelled


def test_is_cancelled_is_never_called_once_a_request_has_had_its_last_update(engine):
    polls = LatePolls()
    requests = []
    for number in range(48):
        done = threading.Event()
        updates: list[Update] = []
        sink = lambda u, done=done, updates=updates: (updates.append(u), u.finish_reason and done.set())  # noqa: E731
        engine.submit(f"late-{number}", PROMPT, Sampling(max_tokens=3, min_tokens=3), sink, polls.poller_for(done))
        requests.append(done)
    for done in requests:
        assert done.wait(120)
    time.sleep(0.2)  # polls that are due after the last end (the poller wakes every 50 ms)
    assert polls.late == 0
    assert engine.num_active == 0


def test_killing_the_child_ends_requests_in_flight_and_refuses_later_ones(checkpoint):
    engine = EngineProcess(DEFAULT_CORE, checkpoint_dir=checkpoint, **OPTIONS)
    try:
        long = Request(engine, Sampling(max_tokens=200, min_tokens=200))
        while not long.updates:  # generating
            time.sleep(0.01)
        os.kill(engine._process.pid, signal.SIGKILL)
        long.wait()
        assert long.updates[-1].finish_reason == "error"
        assert "the engine process was killed by SIGKILL" in long.updates[-1].error
        assert engine.num_active == 0
        with pytest.raises(EngineProcessError, match="killed by SIGKILL"):
            Request(engine, Sampling(max_tokens=4))
    finally:
        engine.shutdown()


def test_shutdown_ends_what_is_in_flight_and_leaves_no_child(checkpoint):
    engine = EngineProcess(DEFAULT_CORE, checkpoint_dir=checkpoint, **OPTIONS)
    long = Request(engine, Sampling(max_tokens=200, min_tokens=200))
    engine.shutdown()
    assert child_is_gone(engine)
    assert engine._process.returncode == 0
    assert long.done.is_set() and long.updates[-1].finish_reason == "error"
    assert long.updates[-1].error == "the model is being unloaded"


def test_a_core_that_cannot_load_fails_the_start_with_its_reason(tmp_path):
    missing = tmp_path / "no-checkpoint"
    with pytest.raises(EngineProcessError, match=f"the {DEFAULT_CORE} engine core did not load: .*no-checkpoint"):
        EngineProcess(DEFAULT_CORE, checkpoint_dir=str(missing), **OPTIONS)


def test_an_unknown_core_is_refused_before_a_process_starts():
    with pytest.raises(ValueError, match="engine_core must be one of"):
        EngineProcess("nonesuch", checkpoint_dir="unused")


def test_the_interpreter_is_this_environments_python_when_sys_executable_is_a_stub(monkeypatch):
    real = python_interpreter()
    assert Path(real).name.startswith("python")
    monkeypatch.setattr(sys, "executable", "/opt/tritonserver/backends/python/triton_python_backend_stub")
    chosen = Path(python_interpreter())
    assert chosen.parent == Path(sys.prefix) / "bin" and chosen.name.startswith("python")


def test_batches_already_sent_are_delivered_together_one_update_per_sequence():
    """Three engine steps' batches waiting on the socket become one delivery: each sequence's three deltas one
    update (one Triton response, not three), in order, with the last step's counts."""
    import socket as socket_module
    from multiprocessing.connection import Connection

    import engine_process_wire as wire
    from engine_process import drain
    from response_queue import merge

    ours, theirs = socket_module.socketpair()
    parent, child = Connection(ours.detach()), Connection(theirs.detach())
    for step, text in enumerate(("a", "b", "c")):
        batch = [wire.pack(key, False, Update(text + str(key), num_output_tokens=step + 1, token_ids=(step,)))
                 for key in (1, 2)]  # fmt: skip
        wire.send(child, batch)
    wire.send(child, (wire.STOPPED,))
    batch, stopped = drain(parent)
    assert stopped and len(batch) == 6
    merged = merge((item[0], Update(*item[2:])) for item in batch)
    assert [(key, u.text, u.token_ids, u.num_output_tokens) for (key, _), u in merged.items()] == [
        (1, "a1b1c1", (0, 1, 2), 3),
        (2, "a2b2c2", (0, 1, 2), 3),
    ]
    wire.send(child, [wire.pack(1, True, Update("d", "stop"))])
    assert drain(parent) == ([(1, True, "d", "stop", None, 0, 0, 0, ())], False)  # one message: no wait for more
