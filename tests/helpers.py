"""Test helpers shared by the tiers: API keys made the two ways an operator makes them, sessions and their
messages over the API, and WebSocket chat frames."""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
from collections.abc import Mapping

from frontend_api.storage.database import Database
from frontend_api.storage.keys import create_key

from stack import BIN

# The sync drivers people write in a URL -> the async ones the front-end's Database runs on (as Settings does).
_ASYNC_DRIVERS = {
    "postgresql://": "postgresql+psycopg://",
    "postgres://": "postgresql+psycopg://",
    "sqlite://": "sqlite+aiosqlite://",
}


def llmserve_keys(env: Mapping[str, str], *args: str) -> str:
    """`llmserve keys ARGS` with exactly `env` as its environment (the caller adds PATH or os.environ when it wants
    them); its output. Fails the test when the command fails."""
    result = subprocess.run(
        [str(BIN / "llmserve"), "keys", *args], env=dict(env), capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def create_key_with_cli(env: Mapping[str, str], *args: str) -> str:
    """`llmserve keys create ARGS` (--name, --rpm, ...): the key it shows once."""
    return re.search(r"sk-llms-\S+", llmserve_keys(env, "create", *args)).group(0)


async def create_key_in_database(
    database_url: str, name: str, *, rpm: int | None = None, tpm: int | None = None, max_streams: int | None = None
) -> str:
    """A key stored through the storage layer (what `llmserve keys create` does inside), migrating the database
    first; the plain key."""
    for sync, driver in _ASYNC_DRIVERS.items():
        if database_url.startswith(sync):
            database_url = driver + database_url[len(sync) :]
    database = Database(database_url)
    try:
        await database.migrate()
        return (await create_key(database, name, rpm, tpm, max_streams)).key
    finally:
        await database.close()


def new_session(api, **fields) -> dict:
    """POST /v1/sessions with `api` (an httpx client on .../v1); the created session."""
    response = api.post("/sessions", json=fields)
    assert response.status_code == 201, response.text
    return response.json()


def session_messages(api, session_id: str) -> list[dict]:
    response = api.get(f"/sessions/{session_id}/messages")
    assert response.status_code == 200, response.text
    return response.json()["data"]


async def receive(ws, timeout: float = 120) -> dict:
    """The next WebSocket chat frame that is not a keepalive."""
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), timeout))
        if frame["type"] != "ping":
            return frame


async def until_done(ws) -> tuple[str, dict]:
    """The streamed text of one reply and its `done` frame (or whatever frame ended the deltas)."""
    text = []
    while (frame := await receive(ws))["type"] == "delta":
        text.append(frame["content"])
    return "".join(text), frame
