"""Storage tests run against both databases we support: a SQLite file and the local PostgreSQL (a fresh
database per test, dropped afterwards). PostgreSQL unreachable is a failure, not a skip."""

from __future__ import annotations

import pytest

from frontend_api.settings import Settings
from frontend_api.storage.database import Database


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A fresh, empty database, as the server would spell its URL (async driver)."""
    if request.param == "sqlite":
        yield Settings(database_url=f"sqlite:///{tmp_path / 'llmserve.db'}").database_url
        return
    with request.getfixturevalue("postgres_database")() as url:
        yield Settings(database_url=url).database_url


@pytest.fixture
async def db(database_url):
    database = Database(database_url)
    await database.migrate()
    yield database
    await database.close()
