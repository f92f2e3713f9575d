"""The fast engine core's (paged_fast_core.py) per-request sampling features on CPU with the real SmolLM2 (fp32), against transformers:
log-probabilities, penalties, logit bias, min_tokens, stop ids, bad words, seeds, n sequences, token-id prompts."""

from __future__ import annotations

import threading

import pytest
import torch

CHAT = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
STORY = "Once upon a time"
COUNTING = "The list of numbers: 1, 2, 3,"  # greedy repeats its tokens: the penalties change it
EARLY_EOS = "<|im_start|>user\nSay yes.<|im_end|>\n<|im_start|>assistant\nYes"  # greedy: "." then end


@pytest.fixture(scope="module")
def engine(checkpoint_dir):
    from paged_fast_core import PagedFastEngine

    engine = PagedFastEngine(str(checkpoint_dir), max_num_seqs=4, max_model_len=256)
    yield engine
    engine.shutdown()


@pytest.fixture(scope="module")
def reference(checkpoint_dir):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(checkpoint_dir, dtype=torch.float32, local_files_only=True).eval()


class Run:
    """One submitted request: its updates per sequence index."""

    def __init__(self, engine, prompt, **sampling):
        from core import Sampling

        self.sampling = Sampling(**sampling)
        self.updates: list = []
        self._done = threading.Event()
        engine.submit(f"t-{id(self)}", prompt, self.sampling, self._sink, lambda: False)

    def _sink(self, update):
        self.updates.append(update)
        if sum(1 for u in self.updates if u.finish_reason) == self.sampling.n:
            self._done.set()

    def wait(self) -> Run:
        assert self._done.wait(120), "the engine did not finish the request in 120 s"
        return self

    def of(self, index: int = 0) -> list:
        return [u for u in self.updates if u.index == index]

    def text(self, index: int = 0) -> str:
        return "".join(u.text for u in self.of(index))

    def ids(self, index: int = 0) -> list[int]:
        return [t for u in self.of(index) for t in u.token_ids]

    def last(self, index: int = 0):
        return self.of(index)[-1]


def run(engine, prompt, **sampling):
    return Run(engine, prompt, **sampling).wait()


def prompt_ids(tokenizer, prompt: str) -> list[int]:
    return tokenizer(prompt)["input_ids"]


@torch.inference_mode()
def hf_logprobs(reference, ids: list[int]) -> torch.Tensor:
    """log_softmax of the HF model's logits at every position of `ids`."""
    return reference(torch.tensor([ids])).logits[0].float().log_softmax(dim=-1)


def test_logprobs_and_prompt_logprobs_equal_hf_log_softmax(engine, reference, tokenizer, monkeypatch):
    import prompt_scores

    monkeypatch.setattr(prompt_scores, "PROMPT_LOGPROB_CHUNK", 4)  # the prompt's logits in several chunks
    request = run(
        engine, CHAT, max_tokens=6, min_tokens=6, temperature=0.0, logprobs=True, top_logprobs=5, prompt_logprobs=True
    )
    prompt, generated = prompt_ids(tokenizer, CHAT), request.ids()
    assert len(generated) == 6
    expected = hf_logprobs(reference, prompt + generated)
    logprobs = [lp for u in request.of() for lp in u.logprobs]
    tops = [top for u in request.of() for top in u.top_logprobs]
    assert len(logprobs) == len(tops) == 6
    for step, token in enumerate(generated):
        row = expected[len(prompt) - 1 + step]
        assert logprobs[step] == pytest.approx(row[token].item(), abs=1e-3)
        values, ids = row.topk(5)
        assert [t for t, _ in tops[step]] == ids.tolist()
        assert [v for _, v in tops[step]] == pytest.approx(values.tolist(), abs=1e-3)
        assert token == ids[0].item()  # greedy took the most likely
    first = request.of()[0]
    assert first.prompt_logprobs is not None and len(first.prompt_logprobs) == len(prompt) - 1
    assert all(u.prompt_logprobs is None for u in request.of()[1:])  # once, on the first update
    for position, token in enumerate(prompt[1:]):
        row = expected[position]
        assert first.prompt_logprobs[position] == pytest.approx(row[token].item(), abs=1e-3)
        values, ids = row.topk(5)
        assert [t for t, _ in first.prompt_top_logprobs[position]] == ids.tolist()
        assert [v for _, v in first.prompt_top_logprobs[position]] == pytest.approx(values.tolist(), abs=1e-3)
    one = run(engine, (1,), max_tokens=2, temperature=0.0, prompt_logprobs=True, top_logprobs=2).of()[0]
    assert one.prompt_logprobs == () and one.prompt_top_logprobs == ()  # a one-token prompt has none to score


def test_repetition_penalty_equals_hf_generate(engine, reference, tokenizer):
    max_tokens = 24
    request = run(engine, STORY, max_tokens=max_tokens, min_tokens=max_tokens, temperature=0.0, repetition_penalty=1.5)
    ids = torch.tensor([prompt_ids(tokenizer, STORY)])
    out = reference.generate(
        ids, max_new_tokens=max_tokens, min_new_tokens=max_tokens, do_sample=False, repetition_penalty=1.5,
        eos_token_id=None, pad_token_id=0,
    )  # fmt: skip
    assert request.ids() == out[0, ids.shape[1] :].tolist()
    plain = run(engine, STORY, max_tokens=max_tokens, min_tokens=max_tokens, temperature=0.0)
    assert plain.ids() != request.ids(), "the penalty changed nothing: the test cannot tell"


@torch.inference_mode()
def reference_penalised_greedy(reference, prompt: list[int], steps: int, presence: float, frequency: float):
    """OpenAI's presence/frequency penalties over generated tokens, step by step with the HF model."""
    ids, generated = list(prompt), []
    for _ in range(steps):
        logits = reference(torch.tensor([ids])).logits[0, -1].float()
        counts = torch.bincount(torch.tensor(generated, dtype=torch.long), minlength=logits.shape[0]).float()
        logits = logits - presence * (counts > 0).float() - frequency * counts
        token = int(logits.argmax())
        ids.append(token), generated.append(token)
    return generated


def test_presence_and_frequency_penalties_equal_a_reference(engine, reference, tokenizer):
    steps = 20
    plain = run(engine, COUNTING, max_tokens=steps, min_tokens=steps, temperature=0.0).ids()
    for presence, frequency in ((1.5, 0.0), (0.0, 1.5), (0.5, 1.0)):
        request = run(
            engine, COUNTING, max_tokens=steps, min_tokens=steps, temperature=0.0,
            presence_penalty=presence, frequency_penalty=frequency,
        )  # fmt: skip
        expected = reference_penalised_greedy(reference, prompt_ids(tokenizer, COUNTING), steps, presence, frequency)
        assert request.ids() == expected, (presence, frequency)
        assert expected != plain, f"{presence, frequency} changed nothing: the test cannot tell"


def test_logit_bias_against_the_greedy_first_token_changes_the_answer(engine):
    plain = run(engine, CHAT, max_tokens=6, temperature=0.0)
    first = plain.ids()[0]
    biased = run(engine, CHAT, max_tokens=6, temperature=0.0, logit_bias=((first, -100.0),))
    assert biased.ids()[0] != first and biased.text() != plain.text()
    favoured = run(engine, CHAT, max_tokens=3, min_tokens=3, temperature=0.0, logit_bias=((7042, 100.0),))
    assert favoured.ids() == [7042, 7042, 7042]  # " Paris"


def test_min_tokens_masks_the_end_until_then(engine):
    assert run(engine, EARLY_EOS, max_tokens=10, temperature=0.0).last().num_output_tokens < 5
    request = run(engine, EARLY_EOS, max_tokens=10, min_tokens=5, temperature=0.0)
    assert request.last().num_output_tokens >= 5


def test_stop_token_ids_end_the_sequence_without_the_token(engine, tokenizer):
    plain = run(engine, CHAT, max_tokens=8, min_tokens=8, temperature=0.0)
    stop = plain.ids()[3]
    request = run(engine, CHAT, max_tokens=8, temperature=0.0, stop_token_ids=(stop,))
    assert request.ids() == plain.ids()[:3] and request.last().finish_reason == "stop"
    assert request.text() == tokenizer.decode(plain.ids()[:3], skip_special_tokens=True)
    floor = run(engine, CHAT, max_tokens=8, min_tokens=5, temperature=0.0, stop_token_ids=(stop,))
    assert len(floor.ids()) >= 5  # min_tokens masks stop ids too


def test_bad_words_are_never_generated(engine, tokenizer):
    from core import InvalidRequest, Sampling

    plain = run(engine, CHAT, max_tokens=10, temperature=0.0)
    assert "Paris" in plain.text() and "capital of" in plain.text()
    request = run(engine, CHAT, max_tokens=10, temperature=0.0, bad_words=("Paris",))  # one token, both spellings
    assert "Paris" not in request.text() and not {7042, 38634} & set(request.ids())
    banned = tokenizer(" capital of", add_special_tokens=False)["input_ids"]
    assert len(banned) == 2  # a multi-token word: its last token is banned right after the others
    request = run(engine, CHAT, max_tokens=10, temperature=0.0, bad_words=("capital of",))
    assert "capital of" not in request.text() and request.text() != plain.text()
    ids = request.ids()
    assert not any(ids[i : i + 2] == banned for i in range(len(ids) - 1))
    with pytest.raises(InvalidRequest, match="^bad_words"):
        sampling = Sampling(max_tokens=4, bad_words=("a b c d e f g h i j",))
        engine.submit("long", CHAT, sampling, lambda u: None, lambda: False)


def test_a_seed_repeats_alone_differs_from_another_and_ignores_the_batch(engine):
    sampling = {"max_tokens": 16, "min_tokens": 16, "temperature": 1.0}
    first = run(engine, STORY, seed=1234, **sampling).ids()
    assert run(engine, STORY, seed=1234, **sampling).ids() == first
    assert run(engine, STORY, seed=99, **sampling).ids() != first
    others = [
        Run(engine, CHAT, max_tokens=20, temperature=0.7, top_k=30),
        Run(engine, "def fibonacci(n):", max_tokens=12, temperature=0.0, presence_penalty=0.5),
    ]
    seeded = Run(engine, STORY, seed=1234, **sampling)  # in the same steps as the others
    others.append(Run(engine, "The three primary colours are", max_tokens=8, temperature=1.2, logprobs=True))
    assert seeded.wait().ids() == first
    for other in others:
        other.wait()


def test_top_k_top_p_sampling_with_a_seed_repeats_and_stays_in_the_top_k(engine, reference, tokenizer):
    sampling = {"max_tokens": 8, "min_tokens": 8, "temperature": 1.0, "top_k": 3, "top_p": 0.9, "seed": 5}
    first = run(engine, STORY, **sampling).ids()
    assert run(engine, STORY, **sampling).ids() == first
    expected = hf_logprobs(reference, prompt_ids(tokenizer, STORY) + first)
    start = len(prompt_ids(tokenizer, STORY)) - 1
    for step, token in enumerate(first):
        assert token in expected[start + step].topk(3).indices.tolist()


def test_n_sequences_each_finish_with_their_own_seed_stream(engine):
    request = run(engine, STORY, max_tokens=10, min_tokens=10, temperature=1.0, n=4, seed=3, logprobs=True)
    assert {u.index for u in request.updates} == {0, 1, 2, 3}
    assert all(request.last(i).finish_reason == "length" and len(request.ids(i)) == 10 for i in range(4))
    assert sum(1 for u in request.updates if u.finish_reason) == 4
    assert len({tuple(request.ids(i)) for i in range(4)}) > 1, "the n sequences must have their own seed streams"
    assert all(len([lp for u in request.of(i) for lp in u.logprobs]) == 10 for i in range(4))
    assert engine.num_active == 0


def test_n_sequences_wait_for_enough_free_sampler_rows(engine):
    busy = [Run(engine, STORY, max_tokens=20, min_tokens=20, temperature=0.0) for _ in range(3)]
    request = Run(engine, CHAT, max_tokens=6, min_tokens=6, temperature=1.0, n=4).wait()  # needs all 4 rows
    assert sorted(u.index for u in request.updates if u.finish_reason) == [0, 1, 2, 3]
    assert all(b.wait().last().num_output_tokens == 20 for b in busy)
    assert engine.num_active == 0


def test_a_prompt_of_token_ids_equals_its_text(engine, tokenizer):
    ids = tuple(prompt_ids(tokenizer, CHAT))
    assert (
        run(engine, ids, max_tokens=8, temperature=0.0).text()
        == run(engine, CHAT, max_tokens=8, temperature=0.0).text()
    )


@pytest.mark.parametrize(
    "prompt, sampling, named",
    [
        (CHAT, {"top_logprobs": 21}, "num_top_log_probs"),
        (CHAT, {"n": 0}, "num_return_sequences"),
        (CHAT, {"n": 17}, "num_return_sequences"),
        (CHAT, {"n": 5}, "num_return_sequences"),  # more than the engine's 4 sequences (max_num_seqs)
        (CHAT, {"logit_bias": ((10**6, 1.0),)}, "embedding_bias_token_ids"),
        (CHAT, {"logit_bias": ((5, 101.0),)}, "embedding_bias_weights"),
        (CHAT, {"stop_token_ids": (-1,)}, "stop_token_ids"),
        (CHAT, {"repetition_penalty": 0.0}, "repetition_penalty"),
        (CHAT, {"presence_penalty": 2.5}, "presence_penalty"),
        ((1, 2, 10**6), {}, "input_ids"),
    ],
)
def test_bad_input_is_refused_naming_the_input(engine, prompt, sampling, named):
    from core import InvalidRequest, Sampling

    with pytest.raises(InvalidRequest, match=f"^{named}"):
        engine.submit("bad", prompt, Sampling(max_tokens=4, **sampling), lambda u: None, lambda: False)
    assert engine.num_active == 0
