"""Grammar-constrained decoding (guided_decoding_guide_type / guided_decoding_guide) in the paged OpenVINO core on
the real SmolLM2 IR: each guide type's output obeys its grammar and ends "stop", the mask stays with its own
sequence in a batch, log-probabilities stay the raw model's, and an invalid guide is refused at submit by name."""

from __future__ import annotations

import json
import re
import threading

import jsonschema
import pytest

from core import InvalidRequest, Sampling

PERSON = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
}


@pytest.fixture(scope="module")
def engine(openvino_checkpoint):
    from openvino_paged_core import OpenVINOPagedEngine

    core = OpenVINOPagedEngine(str(openvino_checkpoint), max_num_seqs=8, max_model_len=1024)
    yield core
    core.shutdown()


def chat(tokenizer, question: str) -> str:
    return tokenizer.apply_chat_template(
        [{"role": "user", "content": question}], tokenize=False, add_generation_prompt=True
    )


class Run:
    """One submitted request's updates, by sequence index."""

    def __init__(self, engine, prompt, **sampling):
        self.n, self.updates, self.done = sampling.get("n", 1), [], threading.Event()
        engine.submit(f"g-{id(self)}", prompt, Sampling(**sampling), self._sink, lambda: False)

    def _sink(self, update):
        self.updates.append(update)
        if sum(1 for u in self.updates if u.finish_reason) == self.n:
            self.done.set()

    def sequence(self, index: int = 0) -> list:
        assert self.done.wait(180), "no final update in 180 s"
        return [u for u in self.updates if u.index == index]

    def text(self, index: int = 0) -> str:
        return "".join(u.text for u in self.sequence(index))

    def finish(self, index: int = 0) -> str | None:
        return self.sequence(index)[-1].finish_reason

    def tokens(self, index: int = 0) -> list[int]:
        return [t for u in self.sequence(index) for t in u.token_ids]


def test_a_json_schema_guide_gives_json_that_validates_and_ends_stop(engine, tokenizer):
    run = Run(
        engine,
        chat(tokenizer, "Describe a person called Alice who is 30, as JSON."),
        max_tokens=80,
        temperature=0,
        guide=("json_schema", json.dumps(PERSON)),
    )
    value = json.loads(run.text())
    jsonschema.validate(value, PERSON)
    assert run.finish() == "stop"


def test_the_json_guide_gives_an_object(engine, tokenizer):
    run = Run(
        engine, chat(tokenizer, "Give me a list of three fruits."), max_tokens=80, temperature=0, guide=("json", "")
    )
    assert isinstance(json.loads(run.text()), dict) and run.finish() == "stop"


def test_a_regex_guide_is_matched_in_full(engine, tokenizer):
    run = Run(engine, chat(tokenizer, "Is Paris in France?"), max_tokens=10, temperature=0, guide=("regex", "(yes|no)"))
    assert re.fullmatch("(yes|no)", run.text()) and run.finish() == "stop"


def test_an_ebnf_grammar_guide(engine, tokenizer):
    grammar = 'root ::= "The answer is " [0-9]+ "."'
    run = Run(engine, chat(tokenizer, "What is 2 + 2?"), max_tokens=20, temperature=0, guide=("ebnf_grammar", grammar))
    assert re.fullmatch(r"The answer is [0-9]+\.", run.text()) and run.finish() == "stop"


def test_n_sampled_sequences_each_follow_the_grammar(engine, tokenizer):
    run = Run(
        engine,
        chat(tokenizer, "Pick a colour."),
        max_tokens=10,
        temperature=1.0,
        seed=11,
        n=3,
        guide=("regex", "(red|green|blue)"),
    )
    for index in range(3):
        assert re.fullmatch("(red|green|blue)", run.text(index)) and run.finish(index) == "stop"


def test_the_mask_stays_with_its_sequence_in_a_batch(engine, tokenizer):
    plain_prompt = chat(tokenizer, "Write a short poem about the sea.")
    alone = Run(engine, plain_prompt, max_tokens=40, temperature=0)
    alone_tokens = alone.tokens()
    guided = Run(
        engine,
        chat(tokenizer, "Describe a person called Bob who is 41, as JSON."),
        max_tokens=60,
        temperature=0,
        guide=("json_schema", json.dumps(PERSON)),
    )
    together = Run(engine, plain_prompt, max_tokens=40, temperature=0)
    assert together.tokens() == alone_tokens
    jsonschema.validate(json.loads(guided.text()), PERSON)


def test_log_probabilities_are_the_raw_models(engine, tokenizer):
    prompt = chat(tokenizer, "Is Paris in France?")
    plain = Run(engine, prompt, max_tokens=1, temperature=0, logprobs=True, top_logprobs=5)
    guided = Run(
        engine, prompt, max_tokens=5, temperature=0, logprobs=True, top_logprobs=5, guide=("regex", "(maybe|no)")
    )
    first_plain, first_guided = plain.sequence()[0], guided.sequence()[0]
    raw_top = first_plain.top_logprobs[0]
    guided_top = first_guided.top_logprobs[0]  # the same raw distribution, unmasked
    assert [t for t, _ in guided_top] == [t for t, _ in raw_top]
    assert [v for _, v in guided_top] == pytest.approx([v for _, v in raw_top], abs=1e-4)
    token, logprob = first_guided.token_ids[0], first_guided.logprobs[0]
    assert re.fullmatch("(maybe|no)", guided.text())
    assert logprob <= raw_top[0][1] + 1e-6 and logprob < 0  # the raw log-probability, not renormalized to 0
    if token in dict(raw_top):
        assert logprob == pytest.approx(dict(raw_top)[token])


@pytest.mark.parametrize(
    "guide",
    [
        ("json_schema", '{"type": "nope"}'),
        ("json_schema", "not json"),
        ("regex", "(ab"),
        ("ebnf_grammar", "root ::= undefined_rule"),
        ("structural_tag", "{}"),
    ],
)
def test_an_invalid_guide_is_refused_at_submit_by_name(engine, guide):
    with pytest.raises(InvalidRequest, match=r"^guided_decoding_guide: not a valid"):
        Run(engine, "Hi", max_tokens=5, guide=guide)
    assert engine.num_active == 0


@pytest.mark.parametrize(
    "guide, named",
    [
        (("yaml", "x"), "^guided_decoding_guide_type must be one of"),
        (("regex", ""), "^guided_decoding_guide is required"),
        (("json", "{}"), "^guided_decoding_guide must be empty"),
    ],
)
def test_a_malformed_guide_is_refused_by_name(engine, guide, named):
    with pytest.raises(InvalidRequest, match=named):
        Run(engine, "Hi", max_tokens=5, guide=guide)
