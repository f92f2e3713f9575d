"""`llmserve keys create --key-env VAR`: how the Helm chart's post-install Job registers the admin key from its
Secret. Run as the Job runs it, against a real database (a SQLite file here)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

from frontend_api.storage.database import Database
from frontend_api.storage.keys import find_active_key

LLMSERVE = str(Path(sys.executable).parent / "llmserve")
ADMIN_KEY = "sk-llms-" + "a1" * 20


def keys_create(database: Path, key: str | None, name: str = "admin") -> subprocess.CompletedProcess:
    env = {**os.environ, "DATABASE_URL": f"sqlite:///{database}"}
    env.pop("LLMSERVE_ADMIN_KEY", None)
    if key is not None:
        env["LLMSERVE_ADMIN_KEY"] = key
    return subprocess.run(
        [LLMSERVE, "keys", "create", "--name", name, "--key-env", "LLMSERVE_ADMIN_KEY"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


async def active_key_name(database: Path, key: str) -> str | None:
    db = Database(f"sqlite+aiosqlite:///{database}")
    try:
        await db.migrate()  # a Database serves nothing before it has seen the schema at its latest revision
        found = await find_active_key(db, key)
        return found.name if found else None
    finally:
        await db.close()


def test_the_given_key_is_stored_once_and_authenticates(tmp_path):
    database = tmp_path / "keys.db"
    first = keys_create(database, ADMIN_KEY)
    assert first.returncode == 0 and "Stored key 'admin'" in first.stdout, first.stdout + first.stderr
    assert ADMIN_KEY not in first.stdout + first.stderr  # never printed
    assert asyncio.run(active_key_name(database, ADMIN_KEY)) == "admin"
    again = keys_create(database, ADMIN_KEY)  # helm upgrade runs the Job again
    assert again.returncode == 0 and "already stored" in again.stdout
    other = keys_create(database, "sk-llms-" + "b2" * 20)
    assert other.returncode == 1 and "exists with another key" in other.stdout
    assert asyncio.run(active_key_name(database, "sk-llms-" + "b2" * 20)) is None


def test_a_weak_or_missing_key_is_refused(tmp_path):
    database = tmp_path / "keys.db"
    weak = keys_create(database, "sk-llms-short")
    assert weak.returncode == 1 and "at least 40 characters" in weak.stdout
    missing = keys_create(database, None)
    assert missing.returncode == 1 and "empty or unset" in missing.stdout
