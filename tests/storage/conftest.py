"""Storage tests run against both databases we support: a SQLite file and the local PostgreSQL (a fresh
database per test, dropped afterwards). PostgreSQL unreachable is a failure, not a skip."""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest

from frontend_api.settings import Settings
from frontend_api.storage.database import Database

POSTGRES_ADMIN_URL = os.environ.get("LLMSERVE_TEST_POSTGRES", "postgresql://postgres@127.0.0.1:5432/test")


@pytest.fixture(scope="session")
def postgres_admin():
    try:
        connection = psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        pytest.fail(f"PostgreSQL is needed for the storage tests ({POSTGRES_ADMIN_URL}; set "
                    f"LLMSERVE_TEST_POSTGRES to another server): {exc}")  # fmt: skip
    with connection:
        yield connection


@pytest.fixture(params=["sqlite", "postgresql"])
def database_url(request, tmp_path) -> str:
    """A fresh, empty database, as the server would spell its URL (async driver)."""
    if request.param == "sqlite":
        yield Settings(database_url=f"sqlite:///{tmp_path / 'llmserve.db'}").database_url
        return
    admin = request.getfixturevalue("postgres_admin")
    name = f"llmserve_test_{uuid.uuid4().hex[:12]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    yield Settings(database_url=f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}").database_url
    admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture
async def db(database_url):
    database = Database(database_url)
    await database.migrate()
    yield database
    await database.close()
