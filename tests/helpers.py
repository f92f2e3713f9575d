"""Test helpers shared by the tiers: API keys made the two ways an operator makes them."""

from __future__ import annotations

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
