"""The fast core's overlapped loop (async_scheduling, paged_overlap.py) against its synchronous loop, on CPU with the
real SmolLM2: the same tokens, texts, finish reasons and log-probabilities, greedy and seeded, with end-of-sequence,
stop strings and max_tokens endings, n > 1, penalties, admissions while decoding, preemption and cancellation.
A token fed a step late, or a token of a sequence that ended riding along into its output, changes what is compared."""

from __future__ import annotations

import threading

import pytest

PROMPTS = [
    "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n",
    "Once upon a time",
    "def fibonacci(n):",
    "The three primary colours are",
]


def make_pair(checkpoint_dir, **options):
    from paged_fast_core import PagedFastEngine

    return {mode: PagedFastEngine(str(checkpoint_dir), async_scheduling=mode, **options) for mode in (True, False)}


@pytest.fixture(scope="module")
def engines(checkpoint_dir):
    pair = make_pair(checkpoint_dir, max_num_seqs=4, max_model_len=256)
    yield pair
    for engine in pair.values():
        engine.shutdown()


class Run:
    """One request's updates, per sequence index."""

    def __init__(self, engine, prompt, sampling, cancel_after: int = 0, then=None):
        self.updates: list = []
        self.done = threading.Event()
        self.cancelled = False
        self.cancel_after, self.then = cancel_after, then
        engine.submit(f"r-{id(self)}", prompt, sampling, self.sink, lambda: self.cancelled)

    def sink(self, update) -> None:  # on the engine's loop thread
        self.updates.append(update)
        if self.cancel_after and sum(len(u.token_ids) for u in self.updates) >= self.cancel_after:
            self.cancelled = True
        if self.then is not None and update.token_ids:  # admissions while this one decodes
            then, self.then = self.then, None
            then()
        if update.finish_reason and sum(1 for u in self.updates if u.finish_reason) == self.expected:
            self.done.set()

    expected = 1

    def sequences(self) -> dict:
        """index -> (token ids, text, log-probs, top log-probs, finish reason, output tokens, prompt log-probs)"""
        joined: dict = {}
        for u in self.updates:
            joined[u.index] = joined[u.index].then(u) if u.index in joined else u
        return {
            i: (list(u.token_ids), u.text, list(u.logprobs), list(u.top_logprobs), u.finish_reason,
                u.num_output_tokens, u.prompt_logprobs)
            for i, u in joined.items()
        }  # fmt: skip


def run_all(engine, requests) -> list[dict]:
    runs = []
    for prompt, sampling in requests:
        run = Run(engine, prompt, sampling)
        run.expected = sampling.n
        runs.append(run)
    for run in runs:
        assert run.done.wait(300), "a request did not finish in 300 s"
    return [run.sequences() for run in runs]


def assert_same(overlapped: list[dict], synchronous: list[dict]) -> None:
    assert len(overlapped) == len(synchronous)
    for a, b in zip(overlapped, synchronous, strict=True):
        assert a.keys() == b.keys()
        for index in a:
            ids, text, logprobs, top, reason, count, prompt_scores = a[index]
            ids_b, text_b, logprobs_b, top_b, reason_b, count_b, prompt_scores_b = b[index]
            assert (ids, text, reason, count) == (ids_b, text_b, reason_b, count_b)
            assert logprobs == pytest.approx(logprobs_b, abs=1e-4)
            assert (prompt_scores is None) == (prompt_scores_b is None)
            assert prompt_scores is None or list(prompt_scores) == pytest.approx(list(prompt_scores_b), abs=1e-4)
            assert [[t for t, _ in row] for row in top] == [[t for t, _ in row] for row in top_b]
            assert len(logprobs) == (len(ids) if logprobs_b or logprobs else 0)


def both(engines, requests) -> list[dict]:
    before = {mode: engine.stats["overlapped_steps"] for mode, engine in engines.items()}
    overlapped, synchronous = run_all(engines[True], requests), run_all(engines[False], requests)
    assert_same(overlapped, synchronous)
    assert engines[True].stats["overlapped_steps"] > before[True], "the async engine was meant to overlap steps"
    assert engines[False].stats["overlapped_steps"] == before[False] == 0
    return overlapped


def test_greedy_with_end_of_sequence_stop_strings_and_max_tokens(engines, tokenizer):
    from core import Sampling

    requests = [(PROMPTS[0], Sampling(max_tokens=40, temperature=0.0))]  # ends at end-of-sequence
    requests += [(PROMPTS[0], Sampling(max_tokens=30, temperature=0.0, stop=("Paris",)))]
    requests += [(p, Sampling(max_tokens=5 + 4 * i, temperature=0.0)) for i, p in enumerate(PROMPTS[1:])]
    outputs = both(engines, requests)
    reasons = [seqs[0][4] for seqs in outputs]
    assert reasons == ["stop", "stop", "length", "length", "length"]
    for seqs, (_, sampling) in zip(outputs[2:], requests[2:], strict=True):
        ids, text, *_ = seqs[0]
        count = seqs[0][5]
        assert len(ids) == count == sampling.max_tokens  # no token past max_tokens
        assert text == tokenizer.decode(ids, skip_special_tokens=True)
    assert "Paris" not in outputs[1][0][1]


def test_seeded_sampling_penalties_n_and_logprobs(engines):
    from core import Sampling

    common = {"max_tokens": 16, "temperature": 0.9, "top_p": 0.9}
    requests = [
        (PROMPTS[1], Sampling(**common, seed=1, n=2, logprobs=True, top_logprobs=3)),
        (PROMPTS[2], Sampling(**common, seed=2, presence_penalty=0.5, frequency_penalty=0.5, min_tokens=8)),
        (PROMPTS[3], Sampling(**common, seed=3, repetition_penalty=1.3, top_k=20, bad_words=(" the",))),
        (PROMPTS[0], Sampling(max_tokens=6, temperature=0.0, prompt_logprobs=True, logprobs=True)),
    ]
    outputs = both(engines, requests)
    assert outputs[3][0][6], "the prompt's log-probs were meant to be scored"
    assert outputs[0][0][0] != outputs[0][1][0], "n=2 was meant to draw two different sequences"
    assert len(outputs[0][0][2]) == len(outputs[0][0][0]) > 0  # log-probs for every token


def test_admissions_while_decoding(engines):
    """Requests submitted from a running request's sink join a batch whose next step is already queued."""
    from core import Sampling

    results = {}
    for mode, engine in engines.items():
        late: list = []

        def admit(engine=engine, late=late):
            for p in PROMPTS[1:]:
                late.append(Run(engine, p, Sampling(max_tokens=12, temperature=0.0)))

        first = Run(engine, PROMPTS[0], Sampling(max_tokens=24, min_tokens=24, temperature=0.0), then=admit)
        assert first.done.wait(300) and all(run.done.wait(300) for run in late)
        results[mode] = [first.sequences()] + [run.sequences() for run in late]
    assert_same(results[True], results[False])


def test_cancellation_mid_stream_frees_everything(engines):
    from core import Sampling

    for mode, engine in engines.items():
        greedy = Sampling(max_tokens=40, min_tokens=40, temperature=0.0)
        [reference] = run_all(engine, [(PROMPTS[1], greedy)])
        cancelled = Run(engine, PROMPTS[1], greedy, cancel_after=4)
        other = Run(engine, PROMPTS[2], Sampling(max_tokens=12, min_tokens=12, temperature=0.0))
        assert cancelled.done.wait(300) and other.done.wait(300)
        ids, *_ = cancelled.sequences()[0]
        reason = cancelled.sequences()[0][4]
        assert reason == "cancelled", mode
        assert ids == reference[0][0][: len(ids)] and 4 <= len(ids) < 40
        assert len(other.sequences()[0][0]) == 12
        assert engine.num_active == 0  # a request leaves before its last update
        assert engine.scheduler.blocks.num_free == engine.scheduler.blocks.num_blocks
        assert sorted(engine._free_rows) == list(range(engine.max_num_seqs))


def test_preemption_when_blocks_run_out(checkpoint_dir):
    """16 blocks of 16 tokens for 4 sequences of ~60-85 tokens, 8 tokens a step: chunked prefill and preemption while
    a step is in flight (a preempted sequence's placeholder is replaced before its recompute)."""
    from core import Sampling

    pair = make_pair(checkpoint_dir, max_num_seqs=4, kv_cache_blocks=1, max_prefill_tokens=8)
    try:
        requests = [(p, Sampling(max_tokens=80, min_tokens=80, temperature=0.0)) for p in PROMPTS[1:]]
        requests.append((PROMPTS[0], Sampling(max_tokens=48, min_tokens=40, temperature=0.7, seed=5)))
        both(pair, requests)
        assert all(engine.stats["preemptions"] > 0 for engine in pair.values()), "the cache was meant to run out"
    finally:
        for engine in pair.values():
            engine.shutdown()
