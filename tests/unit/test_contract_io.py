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


# A value other than the default for each input some engine does not honour.
NON_DEFAULT = {"seed": 7, "repetition_penalty": 1.3, "presence_penalty": 0.5, "frequency_penalty": 0.5,
               "bad_words": ["Paris"]}  # fmt: skip


@pytest.mark.parametrize("core", sorted(CORES))
@pytest.mark.parametrize("name", sorted(NON_DEFAULT))
def test_an_input_is_honoured_or_refused_by_name_as_the_contract_says(core, name):
    request = arrays(text_input="hi", max_tokens=5, **{name: NON_DEFAULT[name]})
    if core in contract.INPUTS_BY_NAME[name].honoured_by:
        parsed = parse_request(request.get, core)
        assert getattr(parsed.sampling, name) == NON_DEFAULT[name]
    else:
        with pytest.raises(InvalidRequest, match=f"^{name} is not supported"):
            parse_request(request.get, core)


def test_every_not_honoured_input_has_a_refusal_case_here():
    assert {spec.name for core in CORES for spec in contract.not_honoured(core)} <= set(NON_DEFAULT)


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


def test_responses_carry_the_counts_and_the_finish_reason_on_the_final_one_only():
    delta = response_arrays(Update("ignored", None, None, 3, 1), "Hel")
    assert set(delta) == {"text_output", "num_input_tokens", "num_output_tokens"}
    assert delta["text_output"].tolist() == [[b"Hel"]] and delta["num_input_tokens"].dtype.name == "int32"
    final = response_arrays(Update("", "length", None, 3, 2), "lo")
    assert final["finish_reason"].tolist() == [[b"length"]] and final["num_output_tokens"].tolist() == [[2]]
