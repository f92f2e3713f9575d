"""A key revoked while WebSockets with it are open: two front-end apps on one PostgreSQL database (as two replicas,
or two worker processes, would be), the key revoked in the database as `llmserve keys revoke` does from a third
process. Each open socket refuses the next chat within key_cache_ttl_s (1 s) with an `invalid_api_key` error
frame and close code 1008; an idle socket is closed at its next keepalive tick; a reply already being generated
finishes first; with Redis the revocation is announced and every socket closes at once."""

from __future__ import annotations

import asyncio
import json
import time
import uuid

import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from frontend_api.policy.auth import announce_revocation, revocation_channel
from frontend_api.storage.database import Database
from frontend_api.storage.keys import revoke_key

from fake_engine import MODEL
from helpers import create_key_in_database, receive, until_done

POLICY_VIOLATION = 1008
REDIS_URL = "redis://127.0.0.1:6379/0"


@pytest.fixture
def pg(postgres_database):
    with postgres_database() as url:
        yield url


def async_url(url: str) -> str:
    return url.replace("postgresql://", "postgresql+psycopg://", 1)


async def revoke(database_url: str, name: str) -> int:
    database = Database(async_url(database_url))
    try:
        await database.migrate()  # a no-op here, as for `llmserve keys`: it marks the schema as there
        record = await revoke_key(database, name)
        assert record.id is not None
        return record.id
    finally:
        await database.close()


def chat(content: str = "hi", **settings) -> str:
    return json.dumps({"type": "chat", "content": content, "settings": {"max_tokens": 3, **settings}})


async def open_socket(app, key: str):
    ws = await connect(app.ws_url, additional_headers={"Authorization": f"Bearer {key}"})
    assert await receive(ws, 10) == {"type": "ready", "protocol": 1}
    return ws


async def closed_after(ws, limit_s: float) -> tuple[list[dict], int | None]:
    """Frames received until the server closes (keepalive pings left out), and the close code."""
    frames = []
    try:
        async with asyncio.timeout(limit_s):
            while True:
                frame = json.loads(await ws.recv())
                if frame["type"] != "ping":
                    frames.append(frame)
    except ConnectionClosed:
        pass
    return frames, ws.close_code


def sessions(app, key: str) -> list[dict]:
    return httpx.get(f"{app.api_url}/sessions", headers={"Authorization": f"Bearer {key}"}).json()["data"]


async def test_a_revoked_key_is_refused_on_open_sockets_of_both_replicas_within_a_second(start_app, pg):
    replicas = [start_app(database_url=pg, auth=True, ws_keepalive_s=30) for _ in range(2)]  # no keepalive check
    key = await create_key_in_database(async_url(pg), "alice")
    sockets = [await open_socket(app, key) for app in replicas]
    for ws in sockets:
        await ws.send(chat())
        _, done = await until_done(ws)
        assert done["finish_reason"] == "length"
    before = len(sessions(replicas[0], key))

    await revoke(pg, "alice")
    revoked_at = time.monotonic()
    for app in replicas:  # HTTP: at once
        response = httpx.get(f"{app.api_url}/models", headers={"Authorization": f"Bearer {key}"})
        assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    await asyncio.sleep(max(0.0, revoked_at + 1.0 - time.monotonic()))  # the key_cache_ttl_s bound
    for ws in sockets:
        await ws.send(chat("another chat, after the revocation"))
        frames, code = await closed_after(ws, 5)
        assert [f["type"] for f in frames] == ["error"] and frames[0]["code"] == "invalid_api_key"
        assert code == POLICY_VIOLATION
    print(f"\nrefused {time.monotonic() - revoked_at:.2f} s after the revocation")

    # no session was created for the refused chats (counted with a fresh key's view of the database: none)
    database = Database(async_url(pg))
    try:
        await database.migrate()
        from sqlmodel import select

        from frontend_api.storage.models import ChatSession

        async with database.session() as session:
            count = len(list(await session.exec(select(ChatSession))))
    finally:
        await database.close()
    assert count == before == 2
    with pytest.raises(Exception):  # noqa: B017 - a new handshake with the key is refused too
        await open_socket(replicas[1], key)


async def test_an_idle_socket_is_closed_at_its_next_keepalive_tick(start_app, pg):
    app = start_app(database_url=pg, auth=True, ws_keepalive_s=0.3)
    key = await create_key_in_database(async_url(pg), "idle")
    ws = await open_socket(app, key)
    await revoke(pg, "idle")
    started = time.monotonic()
    frames, code = await closed_after(ws, 5)
    waited = time.monotonic() - started
    assert frames and frames[-1]["code"] == "invalid_api_key" and code == POLICY_VIOLATION
    assert waited <= 0.3 + 1.0 + 1.0  # keepalive + TTL + a loaded host's slack


async def test_a_reply_already_generating_finishes_then_the_socket_closes(start_app, pg):
    app = start_app(token_delay_s=0.05, reply_words=200, database_url=pg, auth=True, ws_keepalive_s=0.3)
    key = await create_key_in_database(async_url(pg), "streamer")
    ws = await open_socket(app, key)
    await ws.send(chat("a long story", max_tokens=40, model=MODEL))
    assert (await receive(ws))["type"] == "delta"
    await revoke(pg, "streamer")
    frames, code = await closed_after(ws, 20)
    kinds = [f["type"] for f in frames]
    assert kinds[-2:] == ["done", "error"] and set(kinds[:-2]) <= {"delta"}
    assert frames[-2]["finish_reason"] == "length" and frames[-2]["usage"]["completion_tokens"] == 40
    assert frames[-1]["code"] == "invalid_api_key" and code == POLICY_VIOLATION


async def test_with_redis_the_revocation_reaches_every_open_socket_at_once(start_app, pg):
    prefix = f"test-{uuid.uuid4().hex[:8]}"
    fields = {
        "database_url": pg,
        "auth": True,
        "ws_keepalive_s": 30,
        "redis_url": REDIS_URL,
        "redis_key_prefix": prefix,
    }
    replicas = [start_app(**fields) for _ in range(2)]
    key = await create_key_in_database(async_url(pg), "bob")
    sockets = [await open_socket(app, key) for app in replicas]
    await asyncio.sleep(0.3)  # the listeners have subscribed
    key_id = await revoke(pg, "bob")
    started = time.monotonic()
    heard = await announce_revocation(REDIS_URL, revocation_channel(replicas[0].settings), key_id)
    assert heard == 2
    for ws in sockets:
        frames, code = await closed_after(ws, 5)
        assert frames[-1]["code"] == "invalid_api_key" and code == POLICY_VIOLATION
    assert time.monotonic() - started < 1.0  # neither a chat frame nor a keepalive tick (30 s) was needed
