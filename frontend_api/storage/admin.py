"""The storage interface of administration tools (`llmserve keys ...`): API keys on a migrated database.

Tools outside the front-end use this module only, never the tables or the database object themselves.
"""

from __future__ import annotations

import hmac
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from frontend_api.storage.database import Database, DatabaseUnavailable
from frontend_api.storage.keys import ApiKeyError, CreatedKey, create_key, hash_key, list_keys, revoke_key
from frontend_api.storage.models import ApiKey

__all__ = ["ApiKey", "ApiKeyError", "CreatedKey", "DatabaseUnavailable", "KeyAdmin", "key_admin"]


class KeyAdmin:
    def __init__(self, database: Database):
        self._db = database

    async def create(
        self, name: str, rpm: int | None, tpm: int | None, max_streams: int | None, key: str | None = None
    ) -> CreatedKey:
        """A new key (a given `key`, or a random one); raises ApiKeyError for a taken name or a bad value."""
        return await create_key(self._db, name, rpm, tpm, max_streams, key=key)

    async def list(self) -> list[ApiKey]:
        return await list_keys(self._db)

    async def find(self, name: str) -> ApiKey | None:
        return next((k for k in await list_keys(self._db) if k.name == name), None)

    async def revoke(self, name: str) -> ApiKey:
        return await revoke_key(self._db, name)

    @staticmethod
    def is_key_of(record: ApiKey, key: str) -> bool:
        return hmac.compare_digest(record.key_hash, hash_key(key))


@asynccontextmanager
async def key_admin(database_url: str) -> AsyncIterator[KeyAdmin]:
    """Open the database, bring its schema up to date, and close it afterwards. Raises DatabaseUnavailable."""
    database = Database(database_url)
    try:
        await database.migrate()
        yield KeyAdmin(database)
    finally:
        await database.close()
