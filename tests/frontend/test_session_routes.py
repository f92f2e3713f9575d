"""/v1/sessions CRUD, and chat in a session: the stored history goes into the prompt and each turn is stored once.
tests/integration/test_sessions_api.py asks the same of the real stack."""

from __future__ import annotations

import json

from fake_engine import MODEL, wait_until
from helpers import new_session, session_messages


def chat(http, session_id: str, content: str, **extra) -> dict:
    body = {"model": MODEL, "session_id": session_id, "messages": [{"role": "user", "content": content}], **extra}
    response = http.post("/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return response.json()


def test_create_list_get_update_delete(http):
    created = new_session(http, title="Trip", system_prompt="Be brief.", settings={"temperature": 0.3})
    assert created["id"].startswith("sess_") and created["object"] == "chat.session"
    assert (created["title"], created["settings"]) == ("Trip", {"temperature": 0.3})
    assert [s["id"] for s in http.get("/sessions").json()["data"]] == [created["id"]]
    assert http.get(f"/sessions/{created['id']}").json()["system_prompt"] == "Be brief."
    renamed = http.patch(f"/sessions/{created['id']}", json={"title": "Paris trip"})
    assert renamed.status_code == 200 and renamed.json()["title"] == "Paris trip"
    deleted = http.delete(f"/sessions/{created['id']}")
    assert deleted.json() == {"id": created["id"], "object": "chat.session.deleted", "deleted": True}
    for method, path in (("GET", ""), ("PATCH", ""), ("DELETE", ""), ("GET", "/messages"), ("GET", "/export")):
        response = http.request(method, f"/sessions/{created['id']}{path}", json={} if method == "PATCH" else None)
        assert response.status_code == 404, (method, path, response.text)
        assert response.json()["error"]["code"] == "session_not_found"


def test_a_bad_session_field_is_400_naming_it(http):
    response = http.post("/sessions", json={"settings": {"temperature": 5}})
    assert response.status_code == 400 and response.json()["error"]["param"] == "settings.temperature"


def test_chat_in_a_session_prepends_the_history_and_stores_each_turn_once(http, app):
    session = new_session(http, title="memory", system_prompt="You are terse.")
    first = chat(http, session["id"], "My name is Ada.")
    assert first["session_id"] == session["id"]
    second = chat(http, session["id"], "What is my name?", max_tokens=2)
    prompt = app.engine.requests[-1].prompt  # what the engine was asked: system prompt, the stored turn, the question
    assert prompt.index("You are terse.") < prompt.index("My name is Ada.") < prompt.index("What is my name?")
    assert first["choices"][0]["message"]["content"] in prompt
    stored = session_messages(http, session["id"])
    assert [(m["role"], m["content"]) for m in stored] == [
        ("user", "My name is Ada."),
        ("assistant", first["choices"][0]["message"]["content"]),
        ("user", "What is my name?"),
        ("assistant", second["choices"][0]["message"]["content"]),
    ]
    assert [m["finish_reason"] for m in stored] == [None, "stop", None, "length"]
    assert stored[3]["prompt_tokens"] == second["usage"]["prompt_tokens"]
    assert stored[3]["completion_tokens"] == second["usage"]["completion_tokens"] == 2


def test_a_streamed_reply_is_stored_before_the_stream_ends(http):
    session = new_session(http)
    body = {
        "model": MODEL,
        "session_id": session["id"],
        "stream": True,
        "max_tokens": 4,
        "messages": [{"role": "user", "content": "Count."}],
    }
    text = []
    with http.stream("POST", "/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {"):
                chunk = json.loads(line[6:])
                assert chunk["session_id"] == session["id"]
                text += [c["delta"].get("content") or "" for c in chunk["choices"]]
            elif line == "data: [DONE]":  # the turn is stored before the client hears the end
                assert [m["content"] for m in session_messages(http, session["id"])] == ["Count.", "".join(text)]


def test_a_reply_cut_off_keeps_the_question_and_the_partial_answer(http, app):
    session = new_session(http)
    body = {
        "model": MODEL,
        "session_id": session["id"],
        "stream": True,
        "max_tokens": 2000,
        "min_tokens": 2000,
        "messages": [{"role": "user", "content": "Write a long essay."}],
    }
    with http.stream("POST", "/chat/completions", json=body) as response:
        for line in response.iter_lines():
            if line.startswith("data: {") and json.loads(line[6:])["choices"][0]["delta"].get("content"):
                break  # leaving the block closes the connection mid-reply
    wait_until(lambda: len(session_messages(http, session["id"])) == 2, what="the cut-off turn stored")
    stored = session_messages(http, session["id"])
    assert stored[1]["finish_reason"] == "cancelled" and stored[1]["content"]
    wait_until(lambda: app.engine.active == set(), what="the engine freed")
    assert app.engine.cancelled == [app.engine.requests[-1].request_id]


def test_chat_with_an_unknown_session_is_404_and_reaches_no_engine(http, app):
    response = http.post(
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
    assert app.engine.requests == []
