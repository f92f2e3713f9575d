"""The sessions API and chat inside a session, against the real stack (SQLite)."""

from __future__ import annotations

import json
import time

import httpx
import pytest

from helpers import new_session, session_messages
from stack import MODEL


@pytest.fixture
def api(stack):
    with httpx.Client(base_url=stack.api_url, timeout=120) as client:
        yield client


def chat(api, session_id: str, content: str, **extra) -> dict:
    body = {
        "model": MODEL,
        "session_id": session_id,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 8,
        "temperature": 0,
        **extra,
    }
    response = api.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_create_list_get_update_delete(api):
    created = new_session(api, title="Trip", system_prompt="Be brief.", settings={"temperature": 0.3})
    assert created["id"].startswith("sess_") and created["object"] == "chat.session"
    assert (created["title"], created["settings"]) == ("Trip", {"temperature": 0.3})
    assert created["id"] in [s["id"] for s in api.get("/sessions", params={"limit": 100}).json()["data"]]
    assert api.get(f"/sessions/{created['id']}").json()["system_prompt"] == "Be brief."
    renamed = api.patch(f"/sessions/{created['id']}", json={"title": "Paris trip"})
    assert renamed.status_code == 200 and renamed.json()["title"] == "Paris trip"
    deleted = api.delete(f"/sessions/{created['id']}")
    assert deleted.json() == {"id": created["id"], "object": "chat.session.deleted", "deleted": True}
    for method, path in (
        ("GET", ""),
        ("PATCH", ""),
        ("DELETE", ""),
        ("GET", "/messages"),
        ("GET", "/export"),
        ("POST", "/rollback"),
    ):
        body = {} if method in ("PATCH", "POST") else None
        response = api.request(method, f"/sessions/{created['id']}{path}", json=body)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "session_not_found"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"title": "x" * 201}, "title"),
        ({"settings": {"temperature": 5}}, "settings.temperature"),
        ({"settings": {"colour": "red"}}, "settings.colour"),
        ({"owner_key_id": 3}, "owner_key_id"),
        ({"title": None}, "title"),
    ],
)
def test_bad_session_fields_are_400_naming_the_field(api, body, param):
    for response in (api.post("/sessions", json=body), api.patch(f"/sessions/{new_session(api)['id']}", json=body)):
        assert response.status_code == 400, response.text
        assert response.json()["error"]["param"] == param


def test_pagination_limits_are_enforced(api):
    assert api.get("/sessions", params={"limit": 0}).status_code == 400
    assert api.get("/sessions", params={"limit": 101}).status_code == 400
    session = new_session(api)
    assert api.get(f"/sessions/{session['id']}/messages", params={"limit": 1001}).status_code == 400
    assert api.post(f"/sessions/{session['id']}/rollback", json={"count": 0}).json()["error"]["param"] == "count"


def test_chat_in_a_session_prepends_history_and_stores_each_turn_once(api):
    session = new_session(api, title="memory")
    first = chat(api, session["id"], "My name is Ada. Say hello.")
    assert first["session_id"] == session["id"]
    second = chat(api, session["id"], "What is my name?")
    without_history = api.post(
        "/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "What is my name?"}], "max_tokens": 1},
    ).json()
    # The stored first turn went into the second prompt.
    assert second["usage"]["prompt_tokens"] > without_history["usage"]["prompt_tokens"] + 10
    stored = session_messages(api, session["id"])
    assert [m["role"] for m in stored] == ["user", "assistant", "user", "assistant"]
    assert stored[0]["content"] == "My name is Ada. Say hello."
    assert stored[1]["content"] == first["choices"][0]["message"]["content"]
    assert stored[3]["finish_reason"] == second["choices"][0]["finish_reason"]
    assert stored[3]["prompt_tokens"] == second["usage"]["prompt_tokens"]
    assert stored[3]["completion_tokens"] == second["usage"]["completion_tokens"]


def test_streamed_reply_is_stored_exactly_once_before_the_stream_ends(api):
    session = new_session(api)
    body = {
        "model": MODEL,
        "session_id": session["id"],
        "stream": True,
        "max_tokens": 6,
        "temperature": 0,
        "messages": [{"role": "user", "content": "Count: one, two,"}],
    }
    text = []
    with api.stream("POST", "/chat/completions", json=body) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert chunk["session_id"] == session["id"]
                text += [c["delta"].get("content", "") for c in chunk["choices"]]
    stored = session_messages(api, session["id"])
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["content"] == "".join(text)


def test_a_cancelled_reply_keeps_the_question_and_the_partial_answer(api, stack):
    session = new_session(api)
    body = {
        "model": MODEL,
        "session_id": session["id"],
        "stream": True,
        "max_tokens": 300,
        "min_tokens": 300,
        "messages": [{"role": "user", "content": "Write a long essay about rivers."}],
    }
    with api.stream("POST", "/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break  # leaving the block closes the connection mid-reply
    deadline = time.monotonic() + 10
    while len(stored := session_messages(api, session["id"])) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert [m["role"] for m in stored] == ["user", "assistant"]
    assert stored[1]["finish_reason"] == "cancelled" and stored[1]["content"]
    while stack.triton_metric("llm_engine_active_requests") > 0 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert stack.triton_metric("llm_engine_active_requests") == 0


def test_session_settings_are_defaults_and_the_request_wins(api):
    session = new_session(api, settings={"max_tokens": 2})
    reply = chat(api, session["id"], "Tell me a long story.", max_tokens=None, min_tokens=None)
    assert reply["usage"]["completion_tokens"] == 2 and reply["choices"][0]["finish_reason"] == "length"
    longer = chat(api, session["id"], "Go on.", max_tokens=4, min_tokens=4)
    assert longer["usage"]["completion_tokens"] == 4


def test_rollback_and_export(api):
    session = new_session(api, title="export me", system_prompt="You are terse.")
    chat(api, session["id"], "Hi")
    chat(api, session["id"], "Hi again")
    rolled = api.post(f"/sessions/{session['id']}/rollback", json={"count": 2}).json()
    assert rolled["removed"] == 2
    assert [m["content"] for m in session_messages(api, session["id"])][0] == "Hi"
    assert len(session_messages(api, session["id"])) == 2
    export = api.get(f"/sessions/{session['id']}/export")
    assert export.status_code == 200
    assert export.headers["content-disposition"] == f'attachment; filename="{session["id"]}.json"'
    body = export.json()
    assert body["object"] == "chat.session.export"
    assert body["session"]["title"] == "export me" and body["session"]["system_prompt"] == "You are terse."
    assert [m["role"] for m in body["messages"]] == ["user", "assistant"]


def test_chat_with_an_unknown_session_is_404_and_stores_nothing(api):
    response = api.post(
        "/chat/completions",
        json={"model": MODEL, "session_id": "sess_nope", "messages": [{"role": "user", "content": "hi"}]},
    )
    assert response.status_code == 404
    assert response.json()["error"] == {
        "message": "No session found with id 'sess_nope'.",
        "type": "invalid_request_error",
        "param": "session_id",
        "code": "session_not_found",
    }
