"""Chat sessions and their messages. Every query is scoped to the owner (the API key, or no key when auth is
off): a session of another key is indistinguishable from one that does not exist — both read as None."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import ColumnElement, delete, func
from sqlmodel import col, select

from frontend_api.storage.database import Database
from frontend_api.storage.models import ChatSession, Message, now


def _owned_by(owner: int | None) -> ColumnElement[bool]:
    column = col(ChatSession.owner_key_id)
    return column.is_(None) if owner is None else column == owner


class SessionStore:
    def __init__(self, db: Database):
        self.db = db

    async def create(
        self,
        owner: int | None,
        *,
        title: str = "New chat",
        model: str | None = None,
        system_prompt: str | None = None,
        settings: dict[str, Any] | None = None,
    ) -> ChatSession:
        record = ChatSession(
            title=title, model=model, system_prompt=system_prompt, settings=settings or {}, owner_key_id=owner
        )
        async with self.db.session() as session:
            session.add(record)
            await session.commit()
            await session.refresh(record)
        return record

    async def list_sessions(self, owner: int | None, limit: int, offset: int) -> Sequence[ChatSession]:
        query = (
            select(ChatSession)
            .where(_owned_by(owner))
            .order_by(col(ChatSession.updated_at).desc(), col(ChatSession.id))
            .offset(offset)
            .limit(limit)
        )
        async with self.db.session() as session:
            return (await session.exec(query)).all()

    async def get(self, owner: int | None, session_id: str) -> ChatSession | None:
        query = select(ChatSession).where(ChatSession.id == session_id, _owned_by(owner))
        async with self.db.session() as session:
            return (await session.exec(query)).first()

    async def update(self, owner: int | None, session_id: str, values: dict[str, Any]) -> ChatSession | None:
        """Set the given columns (title, model, system_prompt, settings); None if there is no such session."""
        record = await self.get(owner, session_id)
        if record is None:
            return None
        async with self.db.session() as session:
            record = await session.merge(record)
            record.sqlmodel_update(values)
            record.updated_at = now()
            await session.commit()
            await session.refresh(record)
        return record

    async def delete(self, owner: int | None, session_id: str) -> bool:
        async with self.db.session() as session:
            removed = await session.exec(delete(ChatSession).where(col(ChatSession.id) == session_id, _owned_by(owner)))
            await session.commit()
        return bool(removed.rowcount)

    async def messages(self, owner: int | None, session_id: str, limit: int, after: int | None) -> list[Message] | None:
        if await self.get(owner, session_id) is None:
            return None
        query = select(Message).where(Message.session_id == session_id)
        if after is not None:
            query = query.where(col(Message.id) > after)
        async with self.db.session() as session:
            return list((await session.exec(query.order_by(col(Message.id)).limit(limit))).all())

    async def recent_messages(self, session_id: str, limit: int) -> list[Message]:
        """The newest `limit` messages, oldest first (the caller has checked ownership)."""
        query = select(Message).where(Message.session_id == session_id).order_by(col(Message.id).desc()).limit(limit)
        async with self.db.session() as session:
            return list(reversed((await session.exec(query)).all()))

    async def rollback(self, owner: int | None, session_id: str, count: int) -> int | None:
        """Remove the last `count` messages; returns how many were removed (None: no such session)."""
        if await self.get(owner, session_id) is None:
            return None
        newest = (
            select(Message.id).where(Message.session_id == session_id).order_by(col(Message.id).desc()).limit(count)
        )
        async with self.db.session() as session:
            ids = list((await session.exec(newest)).all())
            if ids:
                await session.exec(delete(Message).where(col(Message.id).in_(ids)))
                await self._touch(session, session_id)
                await session.commit()
        return len(ids)

    async def append(self, session_id: str, messages: list[Message]) -> None:
        """Store one turn (the user's messages and the reply) in one transaction: all of it or nothing."""
        async with self.db.session() as session:
            for message in messages:
                message.session_id = session_id
                session.add(message)
            await self._touch(session, session_id)
            await session.commit()

    async def count(self) -> int:
        async with self.db.session() as session:
            return (await session.exec(select(func.count()).select_from(ChatSession))).one()

    @staticmethod
    async def _touch(session, session_id: str) -> None:
        record = await session.get(ChatSession, session_id)
        if record is not None:
            record.updated_at = now()
            session.add(record)
