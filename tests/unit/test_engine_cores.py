"""The behaviour every engine core of the `llm` model shares (core.EngineCore), in process with the real SmolLM2.

Parametrized over the registry (core.CORES): a new core runs these by being registered.
"""

from __future__ import annotations

import threading

import pytest

import engine_contract

from core import CORES, EngineCore, InvalidRequest, Prompt, Sampling, load_core

PROMPT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
EARLY_EOS = "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\nYes"  # greedy: "." then the end


def refused_unless_honoured(engine, sampling: Sampling, *inputs: str) -> bool:
    """Whether the engine's core does not honour these contract inputs (engine_contract's `honoured_by`), in which
    case it must refuse `sampling` by the first such input's name; a core that honours them runs the case."""
    name = next(name for name, path in CORES.items() if path.endswith(":" + type(engine).__name__))
    missing = [i for i in inputs if name not in engine_contract.INPUTS_BY_NAME[i].honoured_by]
    if missing:
        with pytest.raises(InvalidRequest, match=f"^{missing[0]}"):
            Request(engine, sampling)
        assert engine.num_active == 0
    return bool(missing)


@pytest.fixture(scope="module", params=sorted(CORES))
def engine(request, core_checkpoint):
    core = load_core(request.param)(str(core_checkpoint(request.param)), max_num_seqs=4, max_model_len=256)
    yield core
    core.shutdown()


class Request:
    """One submitted request: every update its sink received, and the event of its final update."""

    def __init__(self, engine, sampling: Sampling, prompt: Prompt = PROMPT, cancel_after: int | None = None):
        self.updates, self.done = [], threading.Event()
        self._cancel_after = cancel_after
        engine.submit(f"test-{id(self)}", prompt, sampling, self._sink, self._is_cancelled)

        self._sequences = sampling.n

    def _sink(self, update) -> None:
        self.updates.append(update)
        if sum(1 for u in self.updates if u.finish_reason) == self._sequences:  # every sequence has ended
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


def test_a_seed_repeats_its_sample(engine):
    sampling = Sampling(max_tokens=12, min_tokens=12, temperature=1.0, seed=42)
    if refused_unless_honoured(engine, sampling, "seed"):
        return
    assert Request(engine, sampling).wait().text == Request(engine, sampling).wait().text


def test_min_tokens_below_max_tokens_masks_the_end(engine):
    if refused_unless_honoured(engine, Sampling(max_tokens=10, min_tokens=5), "min_tokens"):
        return
    assert Request(engine, Sampling(max_tokens=10, temperature=0.0), EARLY_EOS).wait().last.num_output_tokens < 5
    request = Request(engine, Sampling(max_tokens=10, min_tokens=5, temperature=0.0), EARLY_EOS).wait()
    assert request.last.num_output_tokens >= 5


def test_a_prompt_of_token_ids_generates_what_its_text_does(engine, tokenizer):
    ids = tuple(tokenizer(PROMPT)["input_ids"])
    sampling = Sampling(max_tokens=8, temperature=0.0)
    assert not refused_unless_honoured(engine, sampling, "input_ids")  # every core reads token-id prompts
    assert Request(engine, sampling, ids).wait().text == Request(engine, sampling).wait().text


def test_n_sequences_each_end_and_say_their_index(engine):
    sampling = Sampling(max_tokens=6, temperature=1.0, n=3)
    if refused_unless_honoured(engine, sampling, "num_return_sequences"):
        return
    request = Request(engine, sampling).wait()
    assert {u.index for u in request.updates} == {0, 1, 2}
    assert sorted(u.index for u in request.updates if u.finish_reason) == [0, 1, 2]
    assert engine.num_active == 0


def test_log_probabilities_align_with_the_token_ids(engine):
    sampling = Sampling(max_tokens=6, min_tokens=6, temperature=0.0, logprobs=True, top_logprobs=3)
    if refused_unless_honoured(engine, sampling, "return_log_probs", "num_top_log_probs"):
        return
    request = Request(engine, sampling)
    updates = request.wait().updates
    assert sum(len(u.token_ids) for u in updates) == 6
    for update in updates:
        assert len(update.logprobs) == len(update.top_logprobs) == len(update.token_ids)
        for token, logprob, top in zip(update.token_ids, update.logprobs, update.top_logprobs, strict=True):
            assert len(top) == 3 and top[0][0] == token and top[0][1] == pytest.approx(logprob, abs=1e-4)
            assert logprob <= 0 and [lp for _, lp in top] == sorted((lp for _, lp in top), reverse=True)


@pytest.mark.parametrize(
    "sampling, named",
    [
        ({"n": 0}, "num_return_sequences"),
        ({"top_logprobs": 21}, "num_top_log_probs"),
        ({"logit_bias": ((10**7, 1.0),)}, "embedding_bias_token_ids"),
        ({"logit_bias": ((3, -101.0),)}, "embedding_bias_weights"),
    ],
)
def test_out_of_range_feature_values_are_refused_by_name(engine, sampling, named):
    with pytest.raises(InvalidRequest, match=f"^{named}"):
        Request(engine, Sampling(max_tokens=4, **sampling))
    assert engine.num_active == 0
