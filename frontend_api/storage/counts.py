"""Counts read at metrics scrape time."""

from __future__ import annotations

from sqlalchemy import func
from sqlmodel import select

from frontend_api.storage.database import Database
from frontend_api.storage.models import ChatSession


async def count_sessions(database: Database) -> int:
    """Stored chat sessions (all owners). Raises DatabaseUnavailable when the database cannot be reached."""
    async with database.session() as session:
        return (await session.exec(select(func.count()).select_from(ChatSession))).one()
