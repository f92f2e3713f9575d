"""Auth on: a key made through the storage layer is let in, a missing or wrong one is a 401, and each key sees only
its own sessions. tests/integration/test_auth.py asks the same of the real stack, keys made by the CLI."""

from __future__ import annotations

import asyncio
import json

import httpx
import openai
import pytest
from websockets.asyncio.client import connect

from fake_engine import MODEL
from helpers import create_key_in_database

HI = [{"role": "user", "content": "Hi"}]


@pytest.fixture
def secured(start_app):
    return start_app(auth=True)


def as_key(app, key: str | None) -> httpx.Client:
    return httpx.Client(base_url=app.api_url, headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=30)


def test_a_stored_key_is_let_in_through_the_sdk(secured):
    key = asyncio.run(create_key_in_database(secured.database_url, "alice"))
    client = openai.OpenAI(base_url=secured.api_url, api_key=key, max_retries=0, timeout=30)
    assert [m.id for m in client.models.list().data] == [MODEL]
    assert client.chat.completions.create(model=MODEL, messages=HI, max_tokens=2).choices[0].finish_reason == "length"


@pytest.mark.parametrize(("key", "code"), [(None, "missing_api_key"), ("sk-llms-not-a-key", "invalid_api_key")])
@pytest.mark.parametrize("route", ["/models", "/sessions"])
def test_a_missing_or_wrong_key_is_401(secured, key, code, route):
    response = as_key(secured, key).get(route)
    assert response.status_code == 401, response.text
    assert response.json()["error"]["code"] == code and response.json()["error"]["type"] == "authentication_error"
    assert response.headers["www-authenticate"] == "Bearer"


def test_the_sdk_sees_a_wrong_key_as_an_authentication_error(secured):
    client = openai.OpenAI(base_url=secured.api_url, api_key="sk-llms-wrong", max_retries=0, timeout=30)
    with pytest.raises(openai.AuthenticationError):
        client.chat.completions.create(model=MODEL, messages=HI)
    assert secured.engine.requests == []


def test_another_keys_session_is_a_404(secured):
    alice, bob = (asyncio.run(create_key_in_database(secured.database_url, name)) for name in ("alice", "bob"))
    session = as_key(secured, alice).post("/sessions", json={"title": "mine"}).json()
    assert as_key(secured, alice).get(f"/sessions/{session['id']}").status_code == 200
    response = as_key(secured, bob).get(f"/sessions/{session['id']}")
    assert response.status_code == 404 and response.json()["error"]["code"] == "session_not_found"
    assert as_key(secured, bob).get("/sessions").json()["data"] == []


async def test_websocket_auth_by_first_frame(secured):
    key = await create_key_in_database(secured.database_url, "carol")
    async with connect(secured.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "api_key": key}))
        assert json.loads(await ws.recv()) == {"type": "ready", "protocol": 1}
    async with connect(secured.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "api_key": key + "x"}))
        frame = json.loads(await ws.recv())
        await ws.wait_closed()
    assert frame["type"] == "error" and frame["code"] == "invalid_api_key" and ws.close_code == 1008
