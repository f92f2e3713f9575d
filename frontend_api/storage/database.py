"""The database: an async SQLAlchemy engine, sessions, and schema migrations (Alembic) at start-up."""

from __future__ import annotations

import asyncio
import fcntl
import logging
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from sqlalchemy import event, text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

logger = logging.getLogger(__name__)
MIGRATIONS = Path(__file__).parent / "migrations"
_alembic_lock = threading.Lock()  # Alembic's `context` is a module global: one migration per process at a time
MIGRATE_RETRY_S = 2.0  # a database unreachable at start-up is tried again this often


class DatabaseUnavailable(Exception):
    """The database cannot be reached; session routes answer 503, stateless chat goes on."""


def _sqlite_pragmas(dbapi_connection, _record) -> None:
    # WAL lets readers run beside the one writer; foreign keys make ON DELETE CASCADE work; wait on a lock
    # rather than failing at once when two processes write.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.close()


def alembic_config(sync_url: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", sync_url.replace("%", "%%"))
    return config


def sync_url(url: str) -> str:
    """The same database through a synchronous driver (Alembic runs synchronously, in a thread)."""
    parsed = make_url(url)
    if parsed.drivername == "sqlite+aiosqlite":
        parsed = parsed.set(drivername="sqlite")
    return parsed.render_as_string(hide_password=False)


class Database:
    def __init__(self, url: str):
        self.url = url
        parsed = make_url(url)
        self.is_sqlite = parsed.get_backend_name() == "sqlite"
        if self.is_sqlite and parsed.database and parsed.database != ":memory:":
            Path(parsed.database).parent.mkdir(parents=True, exist_ok=True)
        options = (
            {}
            if self.is_sqlite
            else {"pool_pre_ping": True, "pool_size": 10, "max_overflow": 20, "connect_args": {"connect_timeout": 5}}
        )
        self.engine: AsyncEngine = create_async_engine(url, **options)
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, class_=AsyncSession, expire_on_commit=False)
        self.migrated = False  # the schema is known to be at the latest revision

    def migrate_sync(self) -> None:
        """Bring the schema to the latest revision. Idempotent; concurrent callers take turns: PostgreSQL under an
        advisory lock (migrations/env.py), a SQLite file under a lock file beside it."""
        config = alembic_config(sync_url(self.url))
        database = make_url(self.url).database
        with _alembic_lock:
            if not self.is_sqlite or not database or database == ":memory:":
                command.upgrade(config, "head")
                return
            with open(f"{database}.migrate-lock", "w") as lock:
                fcntl.flock(lock, fcntl.LOCK_EX)
                command.upgrade(config, "head")

    async def migrate(self) -> None:
        try:
            await asyncio.to_thread(self.migrate_sync)
        except (SQLAlchemyError, OSError) as exc:
            raise DatabaseUnavailable(f"cannot migrate the database schema: {exc}") from exc
        self.migrated = True

    async def migrate_when_reachable(self) -> None:
        """Retry the migration until the database answers (started when it was unreachable at start-up)."""
        while True:
            await asyncio.sleep(MIGRATE_RETRY_S)
            try:
                await self.migrate()
            except DatabaseUnavailable as exc:
                logger.debug("database still unreachable: %s", exc)
                continue
            logger.warning("the database is reachable again; schema migrated, sessions and keys served")
            return

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A unit of work; a database failure inside becomes DatabaseUnavailable."""
        if not self.migrated:  # unreachable since start-up: the schema may not exist yet
            raise DatabaseUnavailable("the database has not been reachable since start-up")
        try:
            async with self._sessions() as session:
                yield session
        except (SQLAlchemyError, OSError) as exc:
            logger.warning("database error: %s", exc.__class__.__name__)
            raise DatabaseUnavailable(str(exc)) from exc

    async def ping(self) -> bool:
        """The database answers, and its schema has been migrated."""
        if not self.migrated:
            return False
        try:
            async with self.engine.connect() as connection:
                await asyncio.wait_for(connection.execute(text("SELECT 1")), timeout=5)
            return True
        except (SQLAlchemyError, OSError, TimeoutError):
            return False

    async def close(self) -> None:
        await self.engine.dispose()
