"""POST /v1/responses (OpenAI's Responses API) through the official `openai` SDK against the real app and FakeEngine:
plain and streamed, chained by previous_response_id, stored (retrieve, delete, input_items), owned by the key, and
bad input refused with a 400 naming the field. tests/integration/test_responses_clients.py asks the real stack."""

from __future__ import annotations

import asyncio
import json
from contextlib import asynccontextmanager

import httpx
import openai
import pytest
from sqlmodel import select

from frontend_api.storage.database import Database
from frontend_api.storage.models import StoredResponse

from fake_engine import MODEL, REPLY_WORDS, reply_words, wait_until
from helpers import create_key_in_database

STREAM_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    *["response.output_text.delta"] * REPLY_WORDS,
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


@asynccontextmanager
async def app_database(app):
    """A session on the app's own database (its SQLite file), to see what was stored."""
    database = Database(app.settings.database_url)
    database.migrated = True
    try:
        async with database.session() as session:
            yield session
    finally:
        await database.close()


def chat_prompt(tokenizer, messages) -> str:
    return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)


def test_a_plain_response_is_the_chat_reply_as_a_response_object(client, app, tokenizer):
    response = client.responses.create(model=MODEL, input="Say something.", instructions="Be brief.")
    prompt = app.engine.requests[-1].prompt
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say something."}]
    assert prompt == chat_prompt(tokenizer, messages)  # instructions first, as a system message
    assert response.id.startswith("resp_") and response.object == "response" and response.status == "completed"
    assert response.model == MODEL and response.instructions == "Be brief." and response.store is True
    [message] = response.output
    assert message.type == "message" and message.role == "assistant" and message.status == "completed"
    assert message.id.startswith("msg_")
    assert [(part.type, part.annotations) for part in message.content] == [("output_text", [])]
    assert response.output_text == " ".join(reply_words(prompt, REPLY_WORDS))
    assert response.usage.input_tokens == len(tokenizer(prompt)["input_ids"])
    assert response.usage.output_tokens == REPLY_WORDS + 1  # the end-of-sequence token counts, as in chat
    assert response.usage.total_tokens == response.usage.input_tokens + response.usage.output_tokens
    assert response.usage.input_tokens_details.cached_tokens == 0
    assert response.usage.output_tokens_details.reasoning_tokens == 0
    assert (response.tools, response.tool_choice, response.parallel_tool_calls) == ([], "auto", True)
    assert response.text.format.type == "text" and response.truncation == "disabled"


def test_max_output_tokens_makes_the_response_incomplete(client, app):
    response = client.responses.create(model=MODEL, input="Hi", max_output_tokens=3, temperature=0.5, top_p=0.9)
    assert app.engine.requests[-1].params.max_tokens == 3
    assert response.status == "incomplete" and response.incomplete_details.reason == "max_output_tokens"
    assert response.output[0].status == "incomplete" and len(response.output_text.split()) == 3
    assert (response.max_output_tokens, response.temperature, response.top_p) == (3, 0.5, 0.9)
    params = app.engine.requests[-1].params
    assert (params.temperature, params.top_p) == (0.5, 0.9)


def test_a_streamed_response_sends_openais_events_and_equals_the_plain_one(client):
    plain = client.responses.create(model=MODEL, input="Tell me more.", store=False)
    with client.responses.stream(model=MODEL, input="Tell me more.") as stream:
        events = list(stream)
        final = stream.get_final_response()
    assert [e.type for e in events] == STREAM_EVENTS
    assert [e.sequence_number for e in events] == list(range(len(events)))
    item_id = events[2].item.id
    deltas = [e for e in events if e.type == "response.output_text.delta"]
    assert {(e.item_id, e.output_index, e.content_index) for e in deltas} == {(item_id, 0, 0)}
    assert "".join(e.delta for e in deltas) == plain.output_text == final.output_text
    assert events[0].response.status == "in_progress" and final.status == "completed"
    assert final.usage.output_tokens == plain.usage.output_tokens and final.output[0].id == item_id
    assert client.responses.retrieve(final.id).output_text == final.output_text  # stored before it ended


def test_the_sse_framing_names_each_event(http):
    with http.stream("POST", "/responses", json={"model": MODEL, "input": "Hi", "stream": True}) as response:
        assert response.headers["content-type"].startswith("text/event-stream")
        blocks = response.read().decode().strip().split("\n\n")
    for block in blocks:
        event, data = block.split("\n")
        assert event.startswith("event: ") and data.startswith("data: ")
        assert json.loads(data.removeprefix("data: "))["type"] == event.removeprefix("event: ")
    assert "[DONE]" not in blocks[-1]


def test_a_streamed_max_output_tokens_ends_with_response_incomplete(client):
    events = list(client.responses.create(model=MODEL, input="Hi", max_output_tokens=2, stream=True))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"
    assert events[-2].type == "response.output_item.done" and events[-2].item.status == "incomplete"


def test_previous_response_id_prepends_the_stored_exchange(client, app, tokenizer):
    first = client.responses.create(model=MODEL, input="My name is Ada.", instructions="Be terse.")
    second = client.responses.create(model=MODEL, input="What is my name?", previous_response_id=first.id)
    messages = [  # the first exchange, without its instructions (OpenAI carries them over to no later response)
        {"role": "user", "content": "My name is Ada."},
        {"role": "assistant", "content": first.output_text},
        {"role": "user", "content": "What is my name?"},
    ]
    assert app.engine.requests[-1].prompt == chat_prompt(tokenizer, messages)
    assert second.previous_response_id == first.id
    third = client.responses.create(
        model=MODEL, input=[{"role": "user", "content": "Again?"}], previous_response_id=second.id
    )
    messages += [{"role": "assistant", "content": second.output_text}, {"role": "user", "content": "Again?"}]
    assert app.engine.requests[-1].prompt == chat_prompt(tokenizer, messages)
    assert third.status == "completed"


def test_input_items_messages_and_parts_become_the_chat_messages(client, app, tokenizer):
    items = [
        {"type": "message", "role": "developer", "content": "Rules."},
        {"role": "user", "content": [{"type": "input_text", "text": "Hello"}]},
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Hi!", "annotations": []}],
        },
        {"role": "user", "content": "Bye"},
    ]
    client.responses.create(model=MODEL, input=items)
    expected = [
        {"role": "developer", "content": "Rules."},
        {"role": "user", "content": "Hello"},
        {"role": "assistant", "content": "Hi!"},
        {"role": "user", "content": "Bye"},
    ]
    rendered = app.engine.requests[-1].prompt
    assert "Rules." in rendered and rendered.endswith(chat_prompt(tokenizer, expected[1:]).split("Hello", 1)[1])


def test_retrieve_delete_and_input_items(client, http):
    items = [{"role": "user", "content": "one"}, {"role": "user", "content": "two"}, {"role": "user", "content": "3"}]
    created = client.responses.create(model=MODEL, input=items, metadata={"topic": "test"})
    fetched = client.responses.retrieve(created.id)
    assert fetched.model_dump() == created.model_dump() and fetched.metadata == {"topic": "test"}
    listed = client.responses.input_items.list(created.id, order="asc")
    assert [item.content[0].text for item in listed.data] == ["one", "two", "3"]
    assert all(item.id.startswith("msg_") and item.type == "message" for item in listed.data)
    newest_first = http.get(f"/responses/{created.id}/input_items", params={"limit": 2}).json()
    assert [item["content"][0]["text"] for item in newest_first["data"]] == ["3", "two"]
    assert newest_first["has_more"] is True and newest_first["object"] == "list"
    assert newest_first["first_id"] == newest_first["data"][0]["id"]
    after = http.get(f"/responses/{created.id}/input_items", params={"after": newest_first["last_id"]}).json()
    assert [item["content"][0]["text"] for item in after["data"]] == ["one"] and after["has_more"] is False
    deleted = http.delete(f"/responses/{created.id}")
    assert deleted.json() == {"id": created.id, "object": "response", "deleted": True}
    for method, path in (("GET", ""), ("DELETE", ""), ("GET", "/input_items")):
        response = http.request(method, f"/responses/{created.id}{path}")
        assert response.status_code == 404, (method, path, response.text)
    with pytest.raises(openai.NotFoundError):
        client.responses.retrieve(created.id)


def test_store_false_is_not_retrievable_nor_chainable(client, http):
    response = client.responses.create(model=MODEL, input="Hi", store=False)
    assert response.store is False
    assert http.get(f"/responses/{response.id}").status_code == 404
    chained = http.post("/responses", json={"model": MODEL, "input": "x", "previous_response_id": response.id})
    assert chained.status_code == 400 and chained.json()["error"]["param"] == "previous_response_id"


def test_another_keys_response_is_a_404_and_not_chainable(start_app):
    secured = start_app(auth=True)
    alice, bob = (asyncio.run(create_key_in_database(secured.database_url, name)) for name in ("alice", "bob"))
    as_alice, as_bob = (
        openai.OpenAI(base_url=secured.api_url, api_key=key, max_retries=0, timeout=30) for key in (alice, bob)
    )
    mine = as_alice.responses.create(model=MODEL, input="secret")
    assert as_alice.responses.retrieve(mine.id).id == mine.id
    with pytest.raises(openai.NotFoundError):
        as_bob.responses.retrieve(mine.id)
    with pytest.raises(openai.NotFoundError):
        as_bob.responses.input_items.list(mine.id)
    with pytest.raises(openai.NotFoundError):
        as_bob.responses.delete(mine.id)
    with pytest.raises(openai.BadRequestError) as refused:
        as_bob.responses.create(model=MODEL, input="what was it?", previous_response_id=mine.id)
    assert refused.value.body["param"] == "previous_response_id"
    assert refused.value.body["code"] == "previous_response_not_found"
    assert as_alice.responses.retrieve(mine.id).id == mine.id  # bob's delete changed nothing


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"input": [{"type": "image_generation_call", "id": "x"}]}, "input[0].type"),
        ({"input": [{"role": "user", "content": [{"type": "input_image", "image_url": "x"}]}]}, "input[0].content[0]"),
        ({"input": [{"role": "tool", "content": "x"}]}, "input[0].role"),
        ({"input": [{"role": "user", "content": "x", "colour": "red"}]}, "input[0].colour"),
        ({"input": "Hi", "previous_response_id": "resp_missing"}, "previous_response_id"),
        ({"input": "Hi", "frequency_penalty": 1}, "frequency_penalty"),
        ({"input": "Hi", "reasoning": {"effort": "low"}}, "reasoning"),
        ({"input": "Hi", "truncation": "auto"}, "truncation"),
        ({"input": "Hi", "include": ["message.output_text.logprobs"]}, "include"),
        ({"input": "Hi", "background": True}, "background"),
        ({"input": "Hi", "temperature": 3}, "temperature"),
        ({"input": "Hi", "max_output_tokens": 100000}, "max_output_tokens"),
        ({"input": "Hi", "tools": [{"type": "web_search"}]}, "tools.0.type"),
        ({"input": "Hi", "text": {"format": {"type": "yaml"}}}, "text.format"),
        ({"input": "Hi", "tool_choice": "required"}, "tool_choice"),
        ({"input": ""}, "input"),
        ({"input": []}, "input"),
        ({}, "input"),
    ],
)
def test_bad_input_is_a_400_naming_the_field(http, app, body, param):
    response = http.post("/responses", json={"model": MODEL, **body})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["param"] == param and error["type"] == "invalid_request_error", error
    assert error["message"] and not error["message"].startswith(("messages", "response_format")), error
    assert app.engine.requests == []


def test_an_unknown_model_is_a_404(client):
    with pytest.raises(openai.NotFoundError):
        client.responses.create(model="no-such-model", input="Hi")


def test_a_failure_mid_stream_is_an_error_event_then_response_failed(start_app):
    app = start_app(token_delay_s=0.05)
    with httpx.Client(base_url=app.api_url, timeout=30) as http:
        with http.stream("POST", "/responses", json={"model": MODEL, "input": "Hi", "stream": True}) as response:
            lines = response.iter_lines()
            kinds = []
            for line in lines:
                if line.startswith("event: "):
                    kinds.append(line.removeprefix("event: "))
                    if kinds[-1] == "response.output_text.delta":
                        app.engine.abort("Triton went away")
    assert kinds[-2:] == ["error", "response.failed"], kinds


@pytest.mark.parametrize("stream", [True, False])
async def test_a_client_that_leaves_cancels_the_generation_and_nothing_is_stored(start_app, stream):
    app = start_app(token_delay_s=0.01, reply_words=2000)
    body = {"model": MODEL, "input": "A very long story.", "stream": stream, "max_output_tokens": 2000}
    async with httpx.AsyncClient(base_url=app.api_url, timeout=30) as http:
        if stream:
            async with http.stream("POST", "/responses", json=body) as response:
                async for line in response.aiter_lines():
                    if line == "event: response.output_text.delta":
                        break
        else:
            waiting = asyncio.create_task(http.post("/responses", json=body))
            while not app.engine.active:  # generating: then the client goes away
                await asyncio.sleep(0.01)
            waiting.cancel()
            await asyncio.gather(waiting, return_exceptions=True)
    wait_until(lambda: app.engine.cancelled == [app.engine.requests[0].request_id], what="the engine request cancelled")
    assert app.engine.active == set()
    async with app_database(app) as db:
        assert (await db.exec(select(StoredResponse))).all() == []


@pytest.mark.rate_window(5)
def test_the_chat_paths_limits_apply(start_app):
    app = start_app(rate_limit_rpm=2)
    client = openai.OpenAI(base_url=app.api_url, api_key="unused", max_retries=0, timeout=30)
    client.responses.create(model=MODEL, input="one")
    client.responses.create(model=MODEL, input="two", stream=True).close()
    with pytest.raises(openai.RateLimitError) as refused:
        client.responses.create(model=MODEL, input="three")
    assert refused.value.body["code"] == "rate_limit_exceeded"
    assert len(app.engine.requests) == 2


def test_every_field_of_the_sdks_request_is_known():
    """A field the installed `openai` SDK sends to /v1/responses is declared (honoured or refused), never
    unrecognized."""
    from openai.types.responses import response_create_params

    from frontend_api.openai.responses_protocol import ResponsesRequest

    sent = set(response_create_params.ResponseCreateParamsBase.__annotations__) | {"stream"}
    assert sent <= set(ResponsesRequest.model_fields), sent - set(ResponsesRequest.model_fields)


def test_stored_responses_are_served_while_the_engine_is_gone(app, client, http):
    response = client.responses.create(model=MODEL, input="Hi")
    app.server.config.app.state.engine = None  # as between the engine's loss and its return
    assert http.post("/responses", json={"model": MODEL, "input": "Hi"}).status_code == 503
    assert client.responses.retrieve(response.id).output_text == response.output_text
    assert len(client.responses.input_items.list(response.id).data) == 1
    client.responses.delete(response.id)


def test_with_the_database_down_only_store_false_is_served(start_app):
    app = start_app(database_url="postgresql://llmserve@127.0.0.1:1/none")  # nothing listens there
    with httpx.Client(base_url=app.api_url, timeout=30) as http:
        refused = http.post("/responses", json={"model": MODEL, "input": "Hi"})
        assert refused.status_code == 503 and refused.json()["error"]["code"] == "database_unavailable"
        assert refused.json()["error"]["param"] == "store" and app.engine.requests == []  # refused before generating
        served = http.post("/responses", json={"model": MODEL, "input": "Hi", "store": False})
        assert served.status_code == 200 and served.json()["status"] == "completed"
