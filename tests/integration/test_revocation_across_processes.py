"""A key revoked with `llmserve keys revoke` while WebSockets with it are open on two front-end processes that share
one PostgreSQL database (the stack's Triton): each socket refuses its next chat within key_cache_ttl_s (1 s) with
an `invalid_api_key` error frame and close code 1008, before any delta; with REDIS_URL the CLI
announces the revocation and both sockets close at once, without a chat frame. tests/frontend/test_revocation.py
asks the same of two in-process apps."""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from helpers import create_key_with_cli, llmserve_keys
from stack import BIN, MODEL

POLICY_VIOLATION = 1008


@pytest.fixture(scope="module")
def database_url(postgres_database):
    with postgres_database() as url:
        yield url


def cli_env_of(env: dict[str, str]) -> dict[str, str]:
    """The CLI's environment: `env`, PATH, and PYTHONPATH when set (a worktree's code over the installed one)."""
    extra = {"PYTHONPATH": os.environ["PYTHONPATH"]} if os.environ.get("PYTHONPATH") else {}
    return {**env, "PATH": str(BIN), **extra}


def env_of(database_url: str, **extra: str) -> dict[str, str]:
    return {
        "LLMSERVE_AUTH": "true",
        "DATABASE_URL": database_url,
        "LLMSERVE_DATABASE_URL": "",
        "LLMSERVE_WS_KEEPALIVE_S": "30",  # no keepalive tick in these tests: the chat frame (or Redis) must do it
        **extra,
    }


async def open_socket(server, key: str):
    ws = await connect(server.ws_url, additional_headers={"Authorization": f"Bearer {key}"})
    assert json.loads(await asyncio.wait_for(ws.recv(), 10))["type"] == "ready"
    return ws


async def chat_once(ws) -> dict:
    await ws.send(json.dumps({"type": "chat", "content": "hi", "settings": {"max_tokens": 2, "model": MODEL}}))
    while (frame := json.loads(await asyncio.wait_for(ws.recv(), 120)))["type"] in ("delta", "ping"):
        pass
    return frame


async def until_closed(ws, limit_s: float) -> list[dict]:
    frames = []
    try:
        async with asyncio.timeout(limit_s):
            while True:
                frames.append(json.loads(await ws.recv()))
    except ConnectionClosed:
        pass
    return [f for f in frames if f["type"] != "ping"]


async def test_a_revoked_key_is_refused_on_open_websockets_of_both_processes(start_frontend_with, database_url):
    env = env_of(database_url)
    servers = [start_frontend_with(env) for _ in range(2)]
    cli_env = cli_env_of(env)
    key = create_key_with_cli(cli_env, "--name", "erin")
    sockets = [await open_socket(server, key) for server in servers]
    for ws in sockets:
        assert (await chat_once(ws))["type"] == "done"

    llmserve_keys(cli_env, "revoke", "--name", "erin")
    revoked = time.monotonic()
    await asyncio.sleep(1.0)  # key_cache_ttl_s: the longest a verdict is trusted
    for ws in sockets:
        await ws.send(json.dumps({"type": "chat", "content": "after the revocation", "settings": {"max_tokens": 2}}))
        frames = await until_closed(ws, 5)
        assert [(f["type"], f["code"]) for f in frames] == [("error", "invalid_api_key")]
        assert ws.close_code == POLICY_VIOLATION
    print(f"\nboth sockets refused and closed {time.monotonic() - revoked:.2f} s after `keys revoke`")


async def test_with_redis_keys_revoke_closes_open_websockets_at_once(start_frontend_with, database_url):
    env = env_of(
        database_url, REDIS_URL="redis://127.0.0.1:6379/0", LLMSERVE_REDIS_KEY_PREFIX=f"t{uuid.uuid4().hex[:8]}"
    )
    servers = [start_frontend_with(env) for _ in range(2)]
    cli_env = cli_env_of(env)
    key = create_key_with_cli(cli_env, "--name", "frank")
    sockets = [await open_socket(server, key) for server in servers]
    output = llmserve_keys(cli_env, "revoke", "--name", "frank")
    revoked = time.monotonic()
    assert "Announced on Redis to 2 front-end process(es)" in output
    for ws in sockets:
        frames = await until_closed(ws, 5)
        assert frames[-1]["code"] == "invalid_api_key" and ws.close_code == POLICY_VIOLATION
    assert time.monotonic() - revoked < 1.0
