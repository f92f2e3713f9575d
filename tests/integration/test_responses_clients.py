"""The Responses API (POST /v1/responses) against the real stack (Triton + SmolLM2 on CPU) through the clients that
call it: the `openai` SDK (plain, streamed, chained), the OpenAI Agents SDK's default Agent (OpenAIResponsesModel),
with a forced function tool, and LangChain's ChatOpenAI(use_responses_api=True)."""

from __future__ import annotations

import asyncio

import pytest
from openai import AsyncOpenAI

from stack import MODEL

FRANCE = "What is the capital of France?"


def test_the_sdk_gets_paris_as_a_response(client, tokenizer):
    response = client.responses.create(model=MODEL, input=FRANCE, temperature=0, max_output_tokens=20)
    assert response.object == "response" and response.id.startswith("resp_")
    assert "Paris" in response.output_text and response.status == "completed"
    prompt = tokenizer.apply_chat_template(
        [{"role": "user", "content": FRANCE}], tokenize=False, add_generation_prompt=True
    )
    assert response.usage.input_tokens == len(tokenizer(prompt)["input_ids"])
    assert client.responses.retrieve(response.id).output_text == response.output_text


def test_a_streamed_response_equals_the_plain_one_at_temperature_zero(client):
    plain = client.responses.create(model=MODEL, input=FRANCE, temperature=0, max_output_tokens=20, store=False)
    with client.responses.stream(model=MODEL, input=FRANCE, temperature=0, max_output_tokens=20) as stream:
        deltas = [event.delta for event in stream if event.type == "response.output_text.delta"]
        final = stream.get_final_response()
    assert "".join(deltas) == final.output_text == plain.output_text
    assert len(deltas) > 1 and final.usage.output_tokens == plain.usage.output_tokens


def test_a_chained_response_equals_one_given_the_whole_conversation(client):
    """previous_response_id puts the stored exchange before the new input: the same as sending it all."""
    first = client.responses.create(model=MODEL, input="My name is Ada.", temperature=0, max_output_tokens=20)
    second = client.responses.create(
        model=MODEL, input="What is my name?", previous_response_id=first.id, temperature=0, max_output_tokens=20
    )
    conversation = [
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"},
    ]
    whole = client.responses.create(model=MODEL, input=conversation, temperature=0, max_output_tokens=20)
    assert second.usage.input_tokens == whole.usage.input_tokens
    assert second.output_text == whole.output_text


@pytest.fixture
def agents_model(stack):
    from agents import OpenAIResponsesModel, set_tracing_disabled

    set_tracing_disabled(True)
    client = AsyncOpenAI(base_url=stack.api_url, api_key="unused", max_retries=0, timeout=120)
    return OpenAIResponsesModel(model=MODEL, openai_client=client)


def test_the_agents_sdk_default_agent_runs_to_a_final_output(agents_model):
    from agents import Agent, ModelSettings, Runner

    agent = Agent(
        name="Assistant",
        instructions="You answer in one short sentence.",
        model=agents_model,
        model_settings=ModelSettings(temperature=0, max_tokens=30),
    )
    result = asyncio.run(Runner.run(agent, FRANCE))
    assert isinstance(result.final_output, str) and "Paris" in result.final_output


def test_the_agents_sdk_streams_a_run_to_its_final_output(agents_model):
    from agents import Agent, ModelSettings, Runner

    agent = Agent(name="Assistant", model=agents_model, model_settings=ModelSettings(temperature=0, max_tokens=30))

    async def run() -> tuple[list[str], object]:
        result = Runner.run_streamed(agent, FRANCE)
        kinds = [event.data.type async for event in result.stream_events() if event.type == "raw_response_event"]
        return kinds, result.final_output

    kinds, final_output = asyncio.run(run())
    assert kinds[0] == "response.created" and kinds[-1] in ("response.completed", "response.incomplete")
    assert "response.output_text.delta" in kinds and isinstance(final_output, str) and "Paris" in final_output


def test_the_agents_sdk_calls_a_forced_function_tool(agents_model):
    from agents import Agent, ModelSettings, Runner, function_tool

    cities: list[str] = []

    @function_tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        cities.append(city)
        return f"It is sunny in {city}."

    agent = Agent(
        name="Weather",
        instructions="Use the tools to answer.",
        model=agents_model,
        tools=[get_weather],
        tool_use_behavior="stop_on_first_tool",  # the tool's result is the final output
        model_settings=ModelSettings(tool_choice="get_weather", temperature=0, max_tokens=60),
    )
    result = asyncio.run(Runner.run(agent, "What is the weather in Paris?", max_turns=2))
    assert len(cities) == 1 and cities[0].strip()
    assert result.final_output == f"It is sunny in {cities[0]}."


def test_langchain_chat_openai_with_the_responses_api(stack):
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(
        model=MODEL, base_url=stack.api_url, api_key="unused", use_responses_api=True, temperature=0, max_tokens=20
    )
    message = llm.invoke(FRANCE)
    assert "Paris" in message.text
    assert message.usage_metadata["input_tokens"] > 0 and message.usage_metadata["output_tokens"] > 0
