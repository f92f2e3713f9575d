"""Sessions, messages and API keys on SQLite and PostgreSQL, with the schema made by the Alembic migrations."""

from __future__ import annotations

import subprocess
import sys

import pytest
from sqlalchemy import inspect

from frontend_api.storage.database import Database, DatabaseUnavailable
from frontend_api.storage.keys import ApiKeyError, create_key, find_active_key, hash_key, list_keys, revoke_key
from frontend_api.storage.models import Message
from frontend_api.storage.sessions import SessionStore


async def test_migrations_create_the_schema_and_are_idempotent(db: Database):
    await db.migrate()  # a second start-up, or a second replica, changes nothing
    async with db.engine.connect() as connection:
        tables = await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))
    assert {"api_keys", "sessions", "messages", "alembic_version"} <= tables


def test_replicas_migrating_at_once_do_not_collide(database_url, tmp_path):
    """Three processes (replicas starting together) migrate one fresh database at the same moment."""
    code = "import sys; from frontend_api.storage.database import Database; Database(sys.argv[1]).migrate_sync()"
    processes = [subprocess.Popen([sys.executable, "-c", code, database_url], stderr=subprocess.PIPE) for _ in range(3)]
    errors = [p.communicate(timeout=120)[1].decode() for p in processes]
    assert [p.returncode for p in processes] == [0, 0, 0], errors


async def test_keys_are_stored_as_hashes_and_revocation_is_immediate(db: Database):
    created = await create_key(db, "alice", rpm=10)
    assert created.key.startswith("sk-llms-") and len(created.key) > 40
    assert created.record.key_hash == hash_key(created.key) and created.key not in created.record.key_hash
    found = await find_active_key(db, created.key)
    assert found is not None and found.name == "alice" and found.rpm == 10
    assert await find_active_key(db, created.key[:-1] + "x") is None
    await revoke_key(db, "alice")
    assert await find_active_key(db, created.key) is None
    assert [k.name for k in await list_keys(db)] == ["alice"]
    with pytest.raises(ApiKeyError, match="exists already"):
        await create_key(db, "alice")
    with pytest.raises(ApiKeyError, match="no key named"):
        await revoke_key(db, "bob")


async def test_sessions_are_scoped_to_their_owner(db: Database):
    store = SessionStore(db)
    alice = (await create_key(db, "alice")).record.id
    bob = (await create_key(db, "bob")).record.id
    mine = await store.create(alice, title="mine", settings={"temperature": 0.5})
    assert mine.settings == {"temperature": 0.5}
    for owner in (bob, None):  # another key, and no key, both see nothing
        assert await store.get(owner, mine.id) is None
        assert await store.delete(owner, mine.id) is False
        assert await store.update(owner, mine.id, {"title": "theirs"}) is None
        assert await store.messages(owner, mine.id, 10, None) is None
        assert await store.rollback(owner, mine.id, 1) is None
        assert await store.list_sessions(owner, 10, 0) == []
    assert (await store.get(alice, mine.id)).title == "mine"


async def test_turns_rollback_update_and_cascade(db: Database):
    store = SessionStore(db)
    session = await store.create(None)
    for i in range(3):
        await store.append(
            session.id,
            [
                Message(role="user", content=f"q{i}"),
                Message(role="assistant", content=f"a{i}", finish_reason="stop", prompt_tokens=5, completion_tokens=2),
            ],
        )
    assert [m.content for m in await store.recent_messages(session.id, 3)] == ["a1", "q2", "a2"]
    page = await store.messages(None, session.id, limit=2, after=None)
    assert [m.content for m in page] == ["q0", "a0"]
    assert [m.content for m in await store.messages(None, session.id, 10, after=page[-1].id)][0] == "q1"
    assert await store.rollback(None, session.id, 2) == 2
    assert [m.content for m in await store.messages(None, session.id, 10, None)] == ["q0", "a0", "q1", "a1"]
    updated = await store.update(None, session.id, {"title": "renamed", "settings": {"top_k": 5}})
    assert (updated.title, updated.settings) == ("renamed", {"top_k": 5})
    assert await store.count() == 1
    assert await store.delete(None, session.id) is True
    assert await store.count() == 0
    async with db.session() as s:  # messages went with their session (ON DELETE CASCADE)
        from sqlmodel import select

        assert (await s.exec(select(Message))).all() == []


async def test_unicode_and_long_content_round_trip(db: Database):
    store = SessionStore(db)
    session = await store.create(None, title="日本語 ✓")
    text = "é🙂中" * 20_000
    await store.append(session.id, [Message(role="user", content=text)])
    assert (await store.messages(None, session.id, 1, None))[0].content == text


async def test_unreachable_database_is_reported_as_unavailable():
    database = Database("postgresql+psycopg://postgres@127.0.0.1:1/none")
    try:
        assert await database.ping() is False
        with pytest.raises(DatabaseUnavailable):
            await database.migrate()
        with pytest.raises(DatabaseUnavailable):
            await SessionStore(database).count()
    finally:
        await database.close()
