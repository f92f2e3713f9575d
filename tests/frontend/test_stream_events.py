"""The cheap per-token SSE path: the events spliced from templates are the pydantic models' JSON, the fast
tensor reading is TensorSpec.read, coalescing merges what arrived together (same text, tokens, log-probabilities
and finish, fewer events), and the per-generation histogram tally adds up to per-token observations."""

from __future__ import annotations

import json
from collections import defaultdict

import httpx
import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest

import engine_contract as contract
from frontend_api.engine.protocol import GenerationChunk
from frontend_api.engine.triton_outputs import _READ
from frontend_api.observability.metrics import INTER_TOKEN_BUCKETS, HistogramTally
from frontend_api.openai.engine_stream import coalesce
from frontend_api.openai.response_objects import (
    ChatCompletionChunk,
    ChatCompletionChunkChoice,
    ChoiceLogprobs,
    Completion,
    CompletionChoice,
    CompletionLogprobs,
    DeltaFunctionCall,
    DeltaMessage,
    DeltaToolCall,
    TokenLogprob,
    TopLogprob,
)
from frontend_api.openai.stream_events import ChunkTemplate, chat_choice, completion_choice, tool_call_delta

from fake_engine import MODEL

TEXTS = ["", " bravo", 'quo"te\\ and\nnew line', "é 😀 \u2028"]


def data(event: bytes) -> dict:
    assert event.startswith(b"data: ") and event.endswith(b"\n\n")
    return json.loads(event.removeprefix(b"data: "))


@pytest.mark.parametrize("text", TEXTS)
def test_completion_events_are_the_models_json(text):
    envelope = Completion(id="cmpl-1", created=7, model='m"odel', choices=[])
    template = ChunkTemplate(envelope)
    logprobs = CompletionLogprobs(
        tokens=["a", "b"],
        token_logprobs=[None, -0.5],
        top_logprobs=[None, {"b": -0.5, "c": -9999.0}],
        text_offset=[0, 1],
    )
    for choice, fast in [
        (CompletionChoice(index=3, text=text), completion_choice(3, text)),
        (CompletionChoice(index=0, text=text, logprobs=logprobs), completion_choice(0, text, logprobs.model_dump())),
        (CompletionChoice(index=1, text="", finish_reason="length"), completion_choice(1, "", None, "length")),
    ]:
        model = envelope.model_copy(update={"choices": [choice]})
        assert data(template.event(fast)) == json.loads(model.model_dump_json())


@pytest.mark.parametrize("session_id", [None, "sess-1"])
@pytest.mark.parametrize("text", TEXTS)
def test_chat_events_are_the_models_json(text, session_id):
    envelope = ChatCompletionChunk(id="chatcmpl-1", created=7, model=MODEL, choices=[], session_id=session_id)
    template = ChunkTemplate(envelope)
    top = [TopLogprob(token="x", logprob=-1.0, bytes=[120])]
    logprobs = ChoiceLogprobs(content=[TokenLogprob(token="é", logprob=-0.25, bytes=[195, 169], top_logprobs=top)])
    first_call = DeltaToolCall(
        index=0, id="call_1", type="function", function=DeltaFunctionCall(name="f", arguments="")
    )
    more = DeltaToolCall(index=0, function=DeltaFunctionCall(arguments=text))
    cases = [
        (DeltaMessage(role="assistant", content=""), {"role": "assistant", "content": ""}, None, None),
        (DeltaMessage(content=text), {"content": text}, None, None),
        (DeltaMessage(content=text), {"content": text}, logprobs, None),
        (DeltaMessage(), {}, logprobs, None),  # tokens whose text is held back: logprobs alone
        (DeltaMessage(tool_calls=[first_call]), {"tool_calls": [tool_call_delta(0, "", "call_1", "f")]}, None, None),
        (DeltaMessage(tool_calls=[more]), {"tool_calls": [tool_call_delta(0, text)]}, None, None),
        (DeltaMessage(), {}, None, "stop"),
    ]
    for delta, fast, choice_logprobs, reason in cases:
        choice = ChatCompletionChunkChoice(index=2, delta=delta, logprobs=choice_logprobs, finish_reason=reason)
        model = envelope.model_copy(update={"choices": [choice]})
        dumped = choice_logprobs.model_dump() if choice_logprobs else None
        assert data(template.event(chat_choice(2, fast, dumped, reason))) == json.loads(model.model_dump_json())


def test_the_fast_tensor_reading_is_tensorspec_read():
    samples = {"TYPE_STRING": ["", "hi", "é", ("a", "", "b")], "TYPE_INT32": [0, 7, (), (1, 2, 3)]}
    samples |= {"TYPE_FP32": [0.0, -1.5, (), (-0.5, -2.25)], "TYPE_BOOL": [True, False]}
    for spec in contract.OUTPUTS:
        assert _READ[spec.name](None) == spec.read(None)
        for value in samples.get(spec.triton_type, []):
            if isinstance(value, tuple) != spec.is_list:
                continue
            array = spec.array(value)
            assert _READ[spec.name](array) == spec.read(array), (spec.name, value)
            assert type(_READ[spec.name](array)) is type(spec.read(array))
        empty = np.zeros((1, 0), dtype=spec.numpy_dtype)
        assert _READ[spec.name](empty) == spec.read(empty)


def chunk(index: int, text: str, ids=(), logprobs=(), count=None, finish=None, prompt=None) -> GenerationChunk:
    return GenerationChunk(
        text, finish, 5, count, index, tuple(ids), tuple(logprobs), (), None, prompt and tuple(prompt), None
    )


def test_coalesce_merges_each_sequence_and_keeps_what_cannot_merge_apart():
    batch = [
        chunk(0, "a", [1], [-0.1], 1, prompt=[-0.3]),
        chunk(1, "x", [7], [-0.7], 1),
        chunk(0, "b", [2], [-0.2], 2),
        chunk(0, "", [], [], 3, finish="stop"),
        chunk(1, "y", [8], [-0.8], 2, finish="length"),
        chunk(0, "late", [9], [-0.9], 4),  # after a finish: kept apart
    ]
    merged = coalesce(batch)
    assert [(c.index, c.text, c.token_ids, c.logprobs, c.num_output_tokens, c.finish_reason) for c in merged] == [
        (0, "ab", (1, 2), (-0.1, -0.2), 3, "stop"),
        (1, "xy", (7, 8), (-0.7, -0.8), 2, "length"),
        (0, "late", (9,), (-0.9,), 4, None),
    ]
    assert merged[0].prompt_logprobs == (-0.3,)
    # a second prompt-logprobs chunk, or tokens without logprobs after tokens with them, start a new chunk
    assert len(coalesce([chunk(0, "a", [1], [-0.1]), chunk(0, "b", [2], [-0.2], prompt=[-0.5])])) == 2
    assert len(coalesce([chunk(0, "a", [1], [-0.1]), chunk(0, "b", [2], [])])) == 2
    assert coalesce([batch[0]]) == [batch[0]]


def test_the_histogram_tally_adds_what_per_token_observations_would():
    amounts = [0.0005, 0.001, 0.0011, 0.02, 0.3, 7.0, 0.0, 100.0]
    exposed = []
    for tallied in (False, True):
        registry = CollectorRegistry()
        child = Histogram("gap", "", ["model"], buckets=INTER_TOKEN_BUCKETS, registry=registry).labels("m")
        tally = HistogramTally(child)
        for amount in amounts:
            if tallied:
                tally.observe(amount, 2)
            else:
                child.observe(amount)
                child.observe(amount)
        tally.flush()
        tally.flush()  # a second flush adds nothing
        exposed.append([line for line in generate_latest(registry).decode().splitlines() if "created" not in line])
    assert exposed[0] == exposed[1]


def sse(http: httpx.Client, route: str, body: dict) -> list[dict]:
    with http.stream("POST", f"/{route}", json={"model": MODEL, "stream": True} | body) as response:
        assert response.status_code == 200
        lines = [line for line in response.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "data: [DONE]"
    return [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]


def per_choice(events: list[dict], route: str) -> dict[int, tuple[str, list, list]]:
    """Each choice's text, log-probabilities (tokens and values) and finish reasons, over all its events."""
    texts: dict[int, str] = defaultdict(str)
    logprobs: dict[int, list] = defaultdict(list)
    finishes: dict[int, list] = defaultdict(list)
    for event in events:
        for choice in event["choices"]:
            index = choice["index"]
            if route == "completions":
                texts[index] += choice["text"]
                if choice["logprobs"]:
                    lp = choice["logprobs"]
                    logprobs[index] += list(zip(lp["tokens"], lp["token_logprobs"], lp["text_offset"], strict=True))
            else:
                texts[index] += choice["delta"].get("content") or ""
                if choice["logprobs"]:
                    logprobs[index] += [
                        (t["token"], t["logprob"], t["top_logprobs"]) for t in choice["logprobs"]["content"]
                    ]
            if choice["finish_reason"]:
                finishes[index].append(choice["finish_reason"])
    return {i: (texts[i], logprobs[i], finishes[i]) for i in texts}


@pytest.mark.parametrize(
    "route,body",
    [
        ("completions", {"prompt": "The sky is", "max_tokens": 24, "logprobs": 2, "n": 2}),
        (
            "chat/completions",
            {
                "messages": [{"role": "user", "content": "Hi"}],
                "max_tokens": 24,
                "logprobs": True,
                "top_logprobs": 2,
                "n": 2,
            },
        ),
    ],
)
def test_tokens_that_arrive_together_are_one_event_with_the_same_content(start_app, route, body):
    usage = {"stream_options": {"include_usage": True}}
    with httpx.Client(base_url=start_app(reply_words=64).api_url, timeout=30) as http:
        one_by_one = sse(http, route, body | usage)
    # An engine that has every token ready at once (as a socket holds them for a front-end that fell behind)
    with httpx.Client(base_url=start_app(reply_words=64, engine_step_s=0.0).api_url, timeout=30) as http:
        bursts = sse(http, route, body | usage)
    assert per_choice(bursts, route) == per_choice(one_by_one, route)
    assert {i: len(c[0].split()) for i, c in per_choice(bursts, route).items()} == {0: 24, 1: 24}
    assert bursts[-1]["usage"]["completion_tokens"] == one_by_one[-1]["usage"]["completion_tokens"] == 48
    # Each choice's 24 tokens come in at most two events: the first (read before the burst) and the rest.
    carrying = defaultdict(int)
    for event in bursts:
        for choice in event["choices"]:
            carrying[choice["index"]] += bool(choice["logprobs"])
    assert dict(carrying) in ({0: 2, 1: 1}, {0: 2, 1: 2}, {0: 1, 1: 1}), (dict(carrying), len(bursts))
