"""Stored responses (the Responses API) on SQLite and PostgreSQL, with the schema made by migration 0002: scoped to
the owner, chained through previous_response_id, gone with their API key (ON DELETE CASCADE)."""

from __future__ import annotations

import asyncio

import pytest
from alembic import command
from sqlalchemy import delete, inspect
from sqlmodel import select

from frontend_api.storage.database import Database, alembic_config, sync_url
from frontend_api.storage.keys import create_key
from frontend_api.storage.models import ApiKey, StoredResponse
from frontend_api.storage.responses import BrokenChain, ResponseStore


def record(response_id: str, owner: int | None, previous: str | None = None) -> StoredResponse:
    return StoredResponse(
        id=response_id,
        owner_key_id=owner,
        model="m",
        previous_response_id=previous,
        instructions="Be brief.",
        input_items=[{"id": f"msg_{response_id}", "type": "message", "role": "user", "content": []}],
        output_items=[{"id": f"out_{response_id}", "type": "message", "role": "assistant", "content": []}],
        response={"id": response_id, "object": "response", "metadata": {"ünïcode": "✓"}},
    )


async def test_the_migration_creates_the_responses_table(db: Database):
    async with db.engine.connect() as connection:
        columns = await connection.run_sync(lambda sync: {c["name"] for c in inspect(sync).get_columns("responses")})
        keys = await connection.run_sync(lambda sync: inspect(sync).get_foreign_keys("responses"))
    assert columns == {
        "id",
        "owner_key_id",
        "model",
        "previous_response_id",
        "instructions",
        "input_items",
        "output_items",
        "response",
        "created_at",
    }
    assert [(k["referred_table"], k["options"].get("ondelete")) for k in keys] == [("api_keys", "CASCADE")]


async def test_responses_are_scoped_to_their_owner(db: Database):
    store = ResponseStore(db)
    alice = (await create_key(db, "alice")).record.id
    await store.save(record("resp_a", alice))
    await store.save(record("resp_open", None))
    stored = await store.get(alice, "resp_a")
    assert stored is not None and stored.response["metadata"] == {"ünïcode": "✓"}  # JSON round-trips
    assert stored.input_items[0]["id"] == "msg_resp_a" and stored.instructions == "Be brief."
    assert await store.get(None, "resp_a") is None  # auth off sees only ownerless responses
    assert await store.get(alice, "resp_open") is None
    assert await store.get(alice + 1, "resp_a") is None
    assert await store.delete(None, "resp_a") is False
    assert await store.delete(alice, "resp_a") is True
    assert await store.get(alice, "resp_a") is None


async def test_a_chain_is_followed_back_oldest_first(db: Database):
    store = ResponseStore(db)
    await store.save(record("resp_1", None))
    await store.save(record("resp_2", None, previous="resp_1"))
    await store.save(record("resp_3", None, previous="resp_2"))
    chain = await store.chain(None, "resp_3")
    assert chain is not None and [r.id for r in chain] == ["resp_1", "resp_2", "resp_3"]
    assert await store.chain(None, "resp_missing") is None
    assert await store.chain(7, "resp_3") is None  # another owner's chain is not found
    await store.delete(None, "resp_2")
    with pytest.raises(BrokenChain) as broken:
        await store.chain(None, "resp_3")
    assert broken.value.missing_id == "resp_2"


async def test_responses_go_with_their_api_key(db: Database):
    store = ResponseStore(db)
    key = (await create_key(db, "temp")).record.id
    await store.save(record("resp_k", key))
    async with db.session() as session:
        await session.exec(delete(ApiKey).where(ApiKey.id == key))
        await session.commit()
        left = (await session.exec(select(StoredResponse))).all()
    assert left == []


async def test_the_migration_downgrades_and_upgrades_again(db: Database):
    config = alembic_config(sync_url(db.url))

    async def tables() -> set[str]:
        await db.engine.dispose()  # the inspector must not see a cached schema
        async with db.engine.connect() as connection:
            return await connection.run_sync(lambda sync: set(inspect(sync).get_table_names()))

    await asyncio.to_thread(command.downgrade, config, "0001")
    assert "responses" not in await tables() and "sessions" in await tables()
    await asyncio.to_thread(command.upgrade, config, "head")
    assert "responses" in await tables()
