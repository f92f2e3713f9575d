"""Stored Responses API answers. Every query is scoped to the owner (the API key, or no key when auth is off): a
response of another key is indistinguishable from one that does not exist — both read as None."""

from __future__ import annotations

from sqlalchemy import ColumnElement, delete
from sqlmodel import col, select

from frontend_api.storage.database import Database
from frontend_api.storage.models import StoredResponse

MAX_CHAIN = 10_000  # responses followed back through previous_response_id (a guard; ids never form a cycle)


class BrokenChain(Exception):
    """An earlier response of a chain is gone (deleted): the conversation cannot be rebuilt."""

    def __init__(self, missing_id: str):
        super().__init__(missing_id)
        self.missing_id = missing_id


def _owned_by(owner: int | None) -> ColumnElement[bool]:
    column = col(StoredResponse.owner_key_id)
    return column.is_(None) if owner is None else column == owner


class ResponseStore:
    def __init__(self, db: Database):
        self.db = db

    async def save(self, record: StoredResponse) -> None:
        async with self.db.session() as session:
            session.add(record)
            await session.commit()

    async def get(self, owner: int | None, response_id: str) -> StoredResponse | None:
        query = select(StoredResponse).where(StoredResponse.id == response_id, _owned_by(owner))
        async with self.db.session() as session:
            return (await session.exec(query)).first()

    async def delete(self, owner: int | None, response_id: str) -> bool:
        statement = delete(StoredResponse).where(col(StoredResponse.id) == response_id, _owned_by(owner))
        async with self.db.session() as session:
            removed = await session.exec(statement)
            await session.commit()
        return bool(removed.rowcount)

    async def chain(self, owner: int | None, response_id: str) -> list[StoredResponse] | None:
        """The response and those it follows, oldest first; None if the response itself is not found. Raises
        BrokenChain when an earlier one has been deleted."""
        records: list[StoredResponse] = []
        next_id: str | None = response_id
        async with self.db.session() as session:
            while next_id is not None and len(records) < MAX_CHAIN:
                query = select(StoredResponse).where(StoredResponse.id == next_id, _owned_by(owner))
                record = (await session.exec(query)).first()
                if record is None:
                    if not records:
                        return None
                    raise BrokenChain(next_id)
                records.append(record)
                next_id = record.previous_response_id
        return list(reversed(records))
