"""Migration 0003: messages carry an assistant turn's tool calls (JSON) and a tool turn's tool_call_id, on SQLite
and PostgreSQL; it downgrades and upgrades again."""

from __future__ import annotations

import asyncio

from alembic import command
from sqlalchemy import inspect

from frontend_api.storage.database import Database, alembic_config, sync_url
from frontend_api.storage.models import Message
from frontend_api.storage.sessions import SessionStore

CALLS = [{"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]


async def message_columns(db: Database) -> set[str]:
    async with db.engine.connect() as connection:
        return await connection.run_sync(lambda sync: {c["name"] for c in inspect(sync).get_columns("messages")})


async def test_tool_calls_and_tool_call_id_round_trip(db: Database):
    assert {"tool_calls", "tool_call_id"} <= await message_columns(db)
    store = SessionStore(db)
    session = await store.create(None)
    await store.append(
        session.id,
        [
            Message(role="user", content="Weather?"),
            Message(role="assistant", content="", finish_reason="tool_calls", tool_calls=CALLS),
            Message(role="tool", content="18 C", tool_call_id="call_1"),
        ],
    )
    stored = await store.recent_messages(session.id, 10)
    assert [(m.role, m.tool_calls, m.tool_call_id) for m in stored] == [
        ("user", None, None),
        ("assistant", CALLS, None),
        ("tool", None, "call_1"),
    ]


async def test_the_migration_downgrades_and_upgrades_again(db: Database):
    config = alembic_config(sync_url(db.url))
    await asyncio.to_thread(command.downgrade, config, "0001")
    await db.engine.dispose()  # the inspector must not see a cached schema
    assert not {"tool_calls", "tool_call_id"} & await message_columns(db)
    await asyncio.to_thread(command.upgrade, config, "head")
    await db.engine.dispose()
    assert {"tool_calls", "tool_call_id"} <= await message_columns(db)
