"""Alembic environment: run synchronously on the URL that frontend_api.storage.database passes in."""

from alembic import context
from sqlalchemy import create_engine, pool, text
from sqlmodel import SQLModel

from frontend_api.storage import models  # noqa: F401 - registers the tables on SQLModel.metadata

# Any 64-bit number of our own: replicas starting together take turns instead of racing on CREATE TABLE.
POSTGRES_MIGRATION_LOCK = 0x6C6C6D7365727665


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url, "Database.migrate sets sqlalchemy.url"
    engine = create_engine(url, poolclass=pool.NullPool)
    with engine.connect() as connection:
        context.configure(
            connection=connection,
            target_metadata=SQLModel.metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            if connection.dialect.name == "postgresql":
                connection.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": POSTGRES_MIGRATION_LOCK})
            context.run_migrations()
    engine.dispose()


run_migrations_online()
