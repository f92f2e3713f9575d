"""The `llm` model's translation between the engine contract's tensors and a core's types (contract_io.py)."""

from __future__ import annotations

import pytest

import engine_contract as contract

from contract_io import parse_request, response_arrays
from core import CORES, InvalidRequest, Sampling, Update


def arrays(**values) -> dict:
    """The input arrays of a request, as Triton hands them to the model (a batch of one)."""
    return {name: contract.INPUTS_BY_NAME[name].array(value) for name, value in values.items()}


@pytest.mark.parametrize("core", sorted(CORES))
def test_a_request_with_only_the_required_inputs_gets_the_contract_defaults(core):
    parsed = parse_request(arrays(text_input="hi", max_tokens=5).get, core)
    assert parsed.prompt == "hi" and not parsed.stream and not parsed.exclude_input_in_output
    assert parsed.sampling == Sampling(max_tokens=5)


@pytest.mark.parametrize("core", sorted(CORES))
def test_every_honoured_input_reaches_the_core(core):
    request = arrays(
        text_input="hi",
        max_tokens=5,
        stream=True,
        temperature=0.5,
        top_p=0.9,
        top_k=3,
        min_tokens=5,
        end_id=2,
        stop_words=["a", "", "b"],
        exclude_input_in_output=True,
        repetition_penalty=1.0,
        presence_penalty=0.0,
        frequency_penalty=0.0,
    )
    parsed = parse_request(request.get, core)
    assert parsed.sampling == Sampling(
        max_tokens=5, temperature=0.5, top_p=pytest.approx(0.9), top_k=3, min_tokens=5, end_id=2, stop=("a", "b")
    )
    assert parsed.stream and parsed.exclude_input_in_output


# For each input some engine does not honour: a request setting it (with what it needs), and the Sampling field
# and value it becomes where it is honoured.
NON_DEFAULT = {
    "seed": ({"seed": 7}, "seed", 7),
    "repetition_penalty": ({"repetition_penalty": 1.25}, "repetition_penalty", 1.25),
    "presence_penalty": ({"presence_penalty": 0.5}, "presence_penalty", 0.5),
    "frequency_penalty": ({"frequency_penalty": 0.5}, "frequency_penalty", 0.5),
    "bad_words": ({"bad_words": ["Paris"]}, "bad_words", ("Paris",)),
    "embedding_bias_token_ids": (
        {"embedding_bias_token_ids": [3, 5], "embedding_bias_weights": [-1.5, 2.0]},
        "logit_bias",
        ((3, -1.5), (5, 2.0)),
    ),
    "embedding_bias_weights": (
        {"embedding_bias_weights": [1.0], "embedding_bias_token_ids": [9]},
        "logit_bias",
        ((9, 1.0),),
    ),
    "num_return_sequences": ({"num_return_sequences": 3}, "n", 3),
    "return_log_probs": ({"return_log_probs": True}, "logprobs", True),
    "num_top_log_probs": ({"num_top_log_probs": 4}, "top_logprobs", 4),
    "return_prompt_log_probs": ({"return_prompt_log_probs": True}, "prompt_logprobs", True),
    "guided_decoding_guide_type": ({"guided_decoding_guide_type": "json"}, "guide", ("json", "")),
    "guided_decoding_guide": (
        {"guided_decoding_guide_type": "regex", "guided_decoding_guide": "(yes|no)"},
        "guide",
        ("regex", "(yes|no)"),
    ),
}


@pytest.mark.parametrize("core", sorted(CORES))
@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_an_input_is_honoured_or_refused_by_name_as_the_contract_says(core, name):
    extra, field, expected = NON_DEFAULT[name]
    request = arrays(text_input="hi", max_tokens=5, **extra)
    needed = [contract.INPUTS_BY_NAME[other] for other in extra]
    if all(core in spec.honoured_by for spec in needed):
        parsed = parse_request(request.get, core)
        assert getattr(parsed.sampling, field) == expected
    else:
        refused = next(spec.name for spec in contract.INPUTS if spec.name in extra and core not in spec.honoured_by)
        with pytest.raises(InvalidRequest, match=f"^{refused} is not supported"):
            parse_request(request.get, core)


def test_every_not_honoured_input_has_a_refusal_case_here():
    assert {spec.name for core in CORES for spec in contract.not_honoured(core)} <= set(NON_DEFAULT)


def test_a_prompt_as_token_ids():
    parsed = parse_request(arrays(input_ids=[1, 2, 3], max_tokens=5).get, "fast")
    assert parsed.prompt == (1, 2, 3)
    with pytest.raises(InvalidRequest, match="^text_input is required"):
        parse_request(arrays(input_ids=[1], text_input="hi", max_tokens=5).get, "fast")


@pytest.mark.parametrize("core", sorted(CORES))
@pytest.mark.parametrize(
    "extra, named",
    [
        ({"text_input": None}, "text_input is required"),
        ({"max_tokens": None}, "max_tokens is required"),
    ],
)
def test_a_missing_required_input_is_refused_by_name(core, extra, named):
    values = {"text_input": "hi", "max_tokens": 5, **extra}
    request = arrays(**{name: value for name, value in values.items() if value is not None})
    with pytest.raises(InvalidRequest, match=named) as refused:
        parse_request(request.get, core)
    assert str(refused.value).startswith(named.split()[0])  # the front-end maps the first word to the `param`


def test_responses_carry_the_counts_ids_and_the_finish_reason_on_the_final_one_only():
    delta = response_arrays(Update("ignored", None, None, 3, 1, index=2, token_ids=(5, 6)), "Hel")
    assert set(delta) == {"text_output", "num_input_tokens", "num_output_tokens", "sequence_index", "output_ids"}
    assert delta["text_output"].tolist() == [[b"Hel"]] and delta["num_input_tokens"].dtype.name == "int32"
    assert delta["sequence_index"].tolist() == [[2]] and delta["output_ids"].tolist() == [[5, 6]]
    final = response_arrays(Update("", "length", None, 3, 2), "lo")
    assert final["finish_reason"].tolist() == [[b"length"]] and final["num_output_tokens"].tolist() == [[2]]


def test_responses_carry_the_log_probabilities_asked_for_flattened_token_major():
    top = (((5, -0.1), (7, -2.0)), ((6, -0.3), (1, -1.5)))
    update = Update("ab", None, None, 3, 2, 0, (5, 6), (-0.1, -0.3), top, (-1.0, -2.0), (((4, -0.5),), ((8, -0.2),)))
    plain = response_arrays(update, "ab", Sampling(max_tokens=4))
    assert "output_log_probs" not in plain and "top_log_probs" not in plain
    assert plain["prompt_log_probs"].tolist() == [[-1.0, -2.0]]  # the first update of a sequence that asked
    arrays_ = response_arrays(update, "ab", Sampling(max_tokens=4, logprobs=True, top_logprobs=2), cum_logprob=-0.4)
    assert arrays_["output_log_probs"].tolist() == [pytest.approx([-0.1, -0.3])]
    assert arrays_["cum_log_probs"].tolist() == [pytest.approx([-0.4])]
    assert arrays_["top_log_prob_ids"].tolist() == [[5, 7, 6, 1]]
    assert arrays_["top_log_probs"].tolist() == [pytest.approx([-0.1, -2.0, -0.3, -1.5])]
    assert arrays_["prompt_top_log_prob_ids"].tolist() == [[4, 8]]
    for name, array in arrays_.items():
        assert array.dtype == contract.OUTPUTS_BY_NAME[name].numpy_dtype, name
