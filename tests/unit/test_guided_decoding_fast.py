"""Grammar-constrained decoding in the fast core (paged_fast_core.py, paged_guided.py: torch sampler, xgrammar's
bitmask kernel) on the real SmolLM2, on the CPU (LLMSERVE_TEST_DEVICE=cuda runs it on a GPU): each guide type's
output obeys its grammar and ends "stop", the mask stays with its sequence in a batch (and leaves its sampler row
clean), and an invalid guide is refused at submit by name."""

from __future__ import annotations

import json
import os
import re

import jsonschema
import pytest
from test_guided_decoding_paged import PERSON, Run, chat

from core import InvalidRequest

DEVICE = os.environ.get("LLMSERVE_TEST_DEVICE", "cpu")


@pytest.fixture(scope="module")
def engine(checkpoint_dir):
    from paged_fast_core import PagedFastEngine

    core = PagedFastEngine(str(checkpoint_dir), device=DEVICE, max_num_seqs=4, max_model_len=512)
    yield core
    core.shutdown()


def test_a_json_schema_guide_gives_json_that_validates_and_ends_stop(engine, tokenizer):
    question = chat(tokenizer, "Describe a person called Alice who is 30, as JSON.")
    run = Run(engine, question, max_tokens=80, temperature=0, guide=("json_schema", json.dumps(PERSON)))
    jsonschema.validate(json.loads(run.text()), PERSON)
    assert run.finish() == "stop"


@pytest.mark.parametrize(
    "guide, pattern",
    [
        (("regex", "(yes|no)"), "(yes|no)"),
        (("ebnf_grammar", 'root ::= "Answer: " ("four" | "five") " (" [0-9]+ ")"'), r"Answer: (four|five) \([0-9]+\)"),
    ],
)
def test_regex_and_ebnf_guides(engine, tokenizer, guide, pattern):
    run = Run(engine, chat(tokenizer, "Is 2 + 2 equal to 4?"), max_tokens=20, temperature=0, guide=guide)
    assert re.fullmatch(pattern, run.text()) and run.finish() == "stop"


@pytest.mark.parametrize("limits", [{"max_tokens": 10, "min_tokens": 5}, {"max_tokens": 5, "min_tokens": 5}])
def test_a_complete_grammar_ends_the_sequence_whatever_min_tokens_says(engine, tokenizer, limits):
    run = Run(engine, chat(tokenizer, "Is Paris in France?"), temperature=0, guide=("regex", "(yes|no)"), **limits)
    assert re.fullmatch("(yes|no)", run.text()) and run.finish() == "stop"


def test_json_and_sampled_n_sequences(engine, tokenizer):
    any_object = Run(engine, chat(tokenizer, "List three fruits."), max_tokens=80, temperature=0, guide=("json", ""))
    assert isinstance(json.loads(any_object.text()), dict) and any_object.finish() == "stop"
    colours = Run(
        engine, chat(tokenizer, "Pick a colour."), max_tokens=10, temperature=1.0, seed=3, n=3,
        guide=("regex", "(red|green|blue)"),
    )  # fmt: skip
    for index in range(3):
        assert re.fullmatch("(red|green|blue)", colours.text(index)) and colours.finish(index) == "stop"


def test_the_mask_stays_with_its_sequence_in_a_batch(engine, tokenizer):
    plain_prompt = chat(tokenizer, "Write a short poem about the sea.")
    alone = Run(engine, plain_prompt, max_tokens=40, temperature=0).tokens()
    guided = Run(
        engine, chat(tokenizer, "Describe a person called Bob who is 41, as JSON."), max_tokens=60, temperature=0,
        guide=("json_schema", json.dumps(PERSON)),
    )  # fmt: skip
    together = Run(engine, plain_prompt, max_tokens=40, temperature=0)
    assert together.tokens() == alone
    jsonschema.validate(json.loads(guided.text()), PERSON)
    after = Run(engine, plain_prompt, max_tokens=40, temperature=0)  # a row a guided sequence held is clean again
    assert after.tokens() == alone


@pytest.mark.parametrize("guide", [("json_schema", '{"type": "nope"}'), ("regex", "(ab")])
def test_an_invalid_guide_is_refused_at_submit_by_name(engine, guide):
    with pytest.raises(InvalidRequest, match=r"^guided_decoding_guide: not a valid"):
        Run(engine, "Hi", max_tokens=5, guide=guide)
    assert engine.num_active == 0
