"""The `llm` model with its engine core in a child process (`--engine-process`), under the real Triton: the same
answers and refusals as in process, cancellation, the child dying, and shutdown."""

from __future__ import annotations

import asyncio
import os
import signal
import time

import openai
import psutil
import pytest
from openai import OpenAI
from test_engine_contract import PROMPT, final, inputs, run, text

from stack import MODEL, Stack, prepare_repository, running_stack


def engine_processes(stack: Stack) -> list[psutil.Process]:
    """The stack's engine processes (engine_process_child.py, children of Triton's python stub)."""
    family = psutil.Process(stack.process.pid).children(recursive=True)
    return [p for p in family if any("engine_process_child.py" in part for part in p.cmdline())]


def wait_gone(process: psutil.Process, timeout: float = 30) -> bool:
    try:
        process.wait(timeout)
    except psutil.TimeoutExpired:
        return False
    return True


@pytest.fixture(scope="module")
def process_repository(checkpoint_dir, tmp_path_factory):
    return prepare_repository(
        tmp_path_factory.mktemp("build-engine-process"), "--max-num-seqs", "8", "--engine-process"
    )


@pytest.fixture(scope="module")
def process_stack(process_repository, tmp_path_factory):
    with running_stack(process_repository, tmp_path_factory.mktemp("logs-engine-process") / "llmserve.log") as stack:
        yield stack


async def test_the_engine_runs_in_a_child_and_answers_as_in_process(process_stack, stack):
    assert len(engine_processes(process_stack)) == 1 and not engine_processes(stack)
    tensors = dict(max_tokens=24, temperature=0.0)
    (ours, error), (theirs, their_error) = (
        await run(process_stack, inputs(**tensors)),
        await run(stack, inputs(**tensors)),
    )
    assert error is None and their_error is None
    assert "Paris" in text(ours) and text(ours) == text(theirs)
    for name in ("num_input_tokens", "num_output_tokens", "finish_reason"):
        assert final(ours, name) == final(theirs, name)


@pytest.mark.parametrize(
    "extra",
    [
        {"max_tokens": 9000},  # the context: the child tokenizes
        {"embedding_bias_token_ids": [10**7], "embedding_bias_weights": [1.0]},
        {"top_p": 1.5},
    ],
)
async def test_a_refusal_is_the_same_error_as_in_process(process_stack, stack, extra):
    (responses, error), (_, their_error) = await run(process_stack, inputs(**extra)), await run(stack, inputs(**extra))
    assert not responses and error is not None and their_error is not None
    assert error.message() == their_error.message()
    assert "invalid request: " in error.message()


@pytest.mark.parametrize("served", ["process_stack", "stack"])
def test_a_guide_the_engine_refuses_is_a_400_naming_the_field_through_the_openai_api(served, request):
    """Python's re accepts a back-reference, which the front-end checks; the engine's xgrammar refuses it."""
    client = OpenAI(base_url=request.getfixturevalue(served).api_url, api_key="unused", max_retries=0, timeout=120)
    with pytest.raises(openai.BadRequestError) as refused:
        client.completions.create(model=MODEL, prompt="Hi", max_tokens=4, extra_body={"guided_regex": "(a)\\1"})
    assert refused.value.body["param"] == "guided_regex"
    assert refused.value.body["message"].startswith("guided_regex: ")


async def test_a_cancelled_stream_frees_the_engine(process_stack):
    finished_before = process_stack.triton_metric("llm_engine_requests_finished_total", reason="cancelled")
    long_story = PROMPT.replace("What is the capital of France?", "Tell a very long story.")
    responses, error = await run(
        process_stack, inputs(prompt=long_story, max_tokens=2000, min_tokens=2000), stop_after=3
    )
    assert error is None and len(responses) == 3
    deadline = time.monotonic() + 10  # a wait for the event, not a timing check
    while time.monotonic() < deadline:
        if process_stack.triton_metric("llm_engine_requests_finished_total", reason="cancelled") > finished_before:
            break
        await asyncio.sleep(0.05)
    assert process_stack.triton_metric("llm_engine_requests_finished_total", reason="cancelled") == finished_before + 1
    assert process_stack.triton_metric("llm_engine_active_requests") == 0


def test_stopping_the_stack_leaves_no_engine_process(process_stack):
    """Last in this module: it stops the module's stack (its fixture then checks the clean exit)."""
    (child,) = engine_processes(process_stack)
    assert process_stack.stop(signal.SIGTERM) == 0
    assert wait_gone(child), f"the engine process {child.pid} outlived the stack"


async def test_killing_the_engine_process_ends_streams_with_an_error_and_refuses_later_requests(
    process_repository, tmp_path
):
    with running_stack(process_repository, tmp_path / "llmserve.log") as doomed:
        (child,) = engine_processes(doomed)
        long_story = PROMPT.replace("What is the capital of France?", "Tell a very long story.")
        streaming = asyncio.create_task(run(doomed, inputs(prompt=long_story, max_tokens=2000, min_tokens=2000)))
        while doomed.triton_metric("llm_engine_active_requests") < 1 and not streaming.done():
            await asyncio.sleep(0.05)
        os.kill(child.pid, signal.SIGKILL)
        responses, error = await asyncio.wait_for(streaming, 60)
        assert error is not None and "the engine process was killed by SIGKILL" in error.message()
        assert len(responses) < 2000 and doomed.triton_metric("llm_engine_active_requests") == 0
        _, later = await run(doomed, inputs(max_tokens=4))
        assert later is not None and "llm engine failure: the engine process was killed by SIGKILL" in later.message()
        client = OpenAI(base_url=doomed.api_url, api_key="unused", max_retries=0, timeout=120)
        with pytest.raises(openai.InternalServerError):
            client.completions.create(model=MODEL, prompt="Hello", max_tokens=4)
