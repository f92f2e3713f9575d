"""PostgreSQL unreachable (through a TCP proxy we cut, in front of the real server): the front-end starts anyway,
/ready names the database, session routes answer 503 `database_unavailable`, stateless chat goes on; with auth on
every key lookup answers 503; once the database is back the schema is migrated and sessions work, no restart."""

from __future__ import annotations

import asyncio
import json
import time

import httpx
import pytest
from websockets.asyncio.client import connect

from helpers import create_key_in_database
from stack import MODEL, TcpProxy

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "Say hi."}], "max_tokens": 3}


@pytest.fixture
def proxied_postgres(postgres_database):
    """(proxy, URL through the proxy, direct URL) of a fresh database; the proxy starts cut (not listening)."""
    with postgres_database() as database_url:
        target = httpx.URL(database_url)
        proxy = TcpProxy(target.host, target.port or 5432)
        try:
            yield proxy, str(target.copy_with(port=proxy.port)), database_url
        finally:
            proxy.cut()


def database_error(reply: httpx.Response) -> str:
    assert reply.status_code == 503 and reply.headers["retry-after"] == "5", reply.text
    error = reply.json()["error"]
    assert error["code"] == "database_unavailable" and error["type"] == "server_error"
    return error["message"]


def wait_ready(base_url: str, timeout: float = 30) -> float:
    started = time.monotonic()
    while httpx.get(f"{base_url}/ready", timeout=30).status_code != 200:
        assert time.monotonic() - started < timeout, "not ready after the database came back"
        time.sleep(0.1)
    return time.monotonic() - started


async def ws_chat_error(server) -> dict:
    async with connect(server.ws_url) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "chat", "content": "hi", "settings": {"max_tokens": 2}}))
        frame = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "ping"}))
        assert json.loads(await ws.recv()) == {"type": "pong"}  # the connection stays usable
    return frame


def test_down_at_start_then_back(start_frontend_with, proxied_postgres):
    proxy, proxied_url, _ = proxied_postgres
    server = start_frontend_with({"LLMSERVE_DATABASE_URL": "", "DATABASE_URL": proxied_url}, wait_for="/health")
    http = httpx.Client(base_url=server.base_url, timeout=60)
    ready = http.get("/ready")
    assert ready.status_code == 503 and ready.json()["error"]["message"] == "Not ready: the database does not answer."
    assert "Chat without session_id still works" in database_error(http.post("/v1/sessions", json={}))
    database_error(http.get("/v1/sessions"))
    database_error(http.post("/v1/chat/completions", json={**CHAT, "session_id": "sess_whatever"}))
    assert http.post("/v1/chat/completions", json=CHAT).status_code == 200  # stateless chat works
    assert asyncio.run(ws_chat_error(server))["code"] == "database_unavailable"  # a WebSocket chat is a session

    proxy.restore()
    print(f"\ndatabase back -> /ready 200 in {wait_ready(server.base_url):.1f} s (migrated at first contact)")
    session = http.post("/v1/sessions", json={"title": "after the outage"})
    assert session.status_code == 201, session.text
    reply = http.post("/v1/chat/completions", json={**CHAT, "session_id": session.json()["id"]})
    assert reply.status_code == 200
    assert len(http.get(f"/v1/sessions/{session.json()['id']}/messages").json()["data"]) == 2
    assert "the database is unavailable at start-up" in server.log() and "reachable again" in server.log()


async def ws_auth_failure(server, key: str) -> tuple[dict, int]:
    async with connect(server.ws_url) as ws:
        await ws.send(json.dumps({"type": "auth", "api_key": key}))
        frame = json.loads(await ws.recv())
        await ws.wait_closed()
        return frame, ws.close_code


def test_down_mid_run_with_auth_on(start_frontend_with, proxied_postgres):
    proxy, proxied_url, database_url = proxied_postgres
    proxy.restore()
    key = asyncio.run(create_key_in_database(database_url, "outage"))
    server = start_frontend_with({"LLMSERVE_AUTH": "true", "LLMSERVE_DATABASE_URL": "", "DATABASE_URL": proxied_url})
    http = httpx.Client(base_url=server.base_url, timeout=60, headers={"Authorization": f"Bearer {key}"})
    session_id = http.post("/v1/sessions", json={"title": "kept"}).json()["id"]

    proxy.cut()
    assert http.get("/ready").status_code == 503
    # Every authenticated request needs a key lookup: 503 (not 401: the key may well be valid).
    assert "API keys" in database_error(http.post("/v1/chat/completions", json=CHAT))
    database_error(http.get(f"/v1/sessions/{session_id}"))
    database_error(http.get("/v1/models", headers={"Authorization": "Bearer sk-llms-wrong"}))
    frame, close_code = asyncio.run(ws_auth_failure(server, key))
    assert frame["code"] == "database_unavailable" and close_code == 1013, (frame, close_code)  # not 1008: retry
    assert http.get("/health").status_code == 200

    proxy.restore()
    print(f"\ndatabase back -> /ready 200 in {wait_ready(server.base_url):.1f} s")
    assert http.get(f"/v1/sessions/{session_id}").json()["title"] == "kept"
    assert http.post("/v1/chat/completions", json=CHAT).status_code == 200
