"""The behaviour every engine core of the `llm` model shares (core.EngineCore), in process with the real SmolLM2.

Parametrized over the registry (core.CORES): a new core runs these by being registered.
"""

from __future__ import annotations

import threading

import pytest

import engine_contract

from core import CORES, EngineCore, InvalidRequest, Sampling, load_core

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module", params=sorted(CORES))
def engine(request, core_checkpoint):
    core = load_core(request.param)(str(core_checkpoint(request.param)), max_num_seqs=4, max_model_len=256)
    yield core
    core.shutdown()


class Request:
    """One submitted request: every update its sink received, and the event of its final update."""

    def __init__(self, engine, sampling: Sampling, prompt: str = PROMPT, cancel_after: int | None = None):
        self.updates, self.done = [], threading.Event()
        self._cancel_after = cancel_after
        engine.submit(f"test-{id(self)}", prompt, sampling, self._sink, self._is_cancelled)

    def _sink(self, update) -> None:
        self.updates.append(update)
        if update.finish_reason:
            self.done.set()

    def _is_cancelled(self) -> bool:
        return self._cancel_after is not None and len(self.updates) >= self._cancel_after

    def wait(self) -> Request:
        assert self.done.wait(120), "the core did not finish the request in 120 s"
        return self

    @property
    def text(self) -> str:
        return "".join(u.text for u in self.updates)

    @property
    def last(self):
        return self.updates[-1]


def test_every_registered_core_is_an_engine_core_the_contract_knows(engine):
    assert isinstance(engine, EngineCore)
    assert set(CORES) == set(engine_contract.LLM_CORES)  # the launcher offers exactly the registered cores


def test_greedy_stream_names_paris_and_reports_counts(engine, tokenizer):
    request = Request(engine, Sampling(max_tokens=12, temperature=0.0)).wait()
    assert "Paris" in request.text
    assert len(request.updates) > 2, "the core must stream several updates"
    assert [u.finish_reason for u in request.updates[:-1]] == [None] * (len(request.updates) - 1)
    assert request.last.finish_reason == "stop"
    assert request.last.num_input_tokens == len(tokenizer(PROMPT)["input_ids"])
    assert 0 < request.last.num_output_tokens <= 12


def test_min_tokens_equal_to_max_tokens_generates_exactly_max_tokens(engine):
    request = Request(engine, Sampling(max_tokens=20, min_tokens=20, temperature=0.0)).wait()
    assert request.last.num_output_tokens == 20
    assert request.last.finish_reason == "length"


def test_stop_words_trim_the_output(engine):
    request = Request(engine, Sampling(max_tokens=12, temperature=0.0, stop=("Paris",))).wait()
    assert "Paris" not in request.text
    assert request.text.startswith("The capital of France is")
    assert request.last.finish_reason == "stop"


@pytest.mark.parametrize(
    "sampling, named",
    [
        ({"min_tokens": -1}, "min_tokens"),
        ({"top_p": 1.5}, "top_p"),
        ({"temperature": -1.0}, "temperature"),
        ({"top_k": -1}, "top_k"),
        ({"end_id": 10**9}, "end_id"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": 9000}, "context"),
    ],
)
def test_what_the_core_cannot_honour_is_refused_at_submit(engine, sampling, named):
    sampling = {"max_tokens": 8, **sampling}
    with pytest.raises(InvalidRequest, match=named):
        Request(engine, Sampling(**sampling))
    assert engine.num_active == 0


def test_a_request_id_in_flight_is_refused(engine):
    done, checked = threading.Event(), threading.Event()
    sink = lambda u: u.finish_reason and done.set()  # noqa: E731
    engine.submit("twice", PROMPT, Sampling(max_tokens=50, min_tokens=50), sink, checked.is_set)
    with pytest.raises(InvalidRequest, match="already in flight"):
        engine.submit("twice", PROMPT, Sampling(max_tokens=5), lambda u: None, lambda: False)
    checked.set()  # cancel the first one: its id is free again once it ends
    assert done.wait(120)


def test_a_cancelled_request_ends_cancelled_and_frees_the_core(engine):
    request = Request(engine, Sampling(max_tokens=200, min_tokens=200), cancel_after=3).wait()
    assert request.last.finish_reason == "cancelled"
    assert request.last.num_output_tokens < 200
    assert engine.num_active == 0
