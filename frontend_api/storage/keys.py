"""API keys: created once and shown once; only a SHA-256 of each key is stored.

A key is 256 random bits, so a fast hash is the right tool (a password hash protects low-entropy secrets).
The lookup is by hash and the final comparison constant-time: timing reveals nothing about a valid key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, select

from frontend_api.storage.database import Database
from frontend_api.storage.models import ApiKey, now

KEY_PREFIX = "sk-llms-"


class ApiKeyError(ValueError):
    pass


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class CreatedKey:
    record: ApiKey
    key: str  # the only time the plain key exists


MIN_GIVEN_KEY_LENGTH = len(KEY_PREFIX) + 32  # a key chosen by the operator (a Kubernetes Secret): at least 192 bits


async def create_key(
    db: Database,
    name: str,
    rpm: int | None = None,
    tpm: int | None = None,
    max_streams: int | None = None,
    key: str | None = None,
) -> CreatedKey:
    """Store a new key: a random one, or `key` when the operator supplies it (e.g. the Helm chart's admin key)."""
    for value, flag in ((rpm, "--rpm"), (tpm, "--tpm"), (max_streams, "--max-streams")):
        if value is not None and value < 1:
            raise ApiKeyError(f"{flag} must be at least 1")
    if not name or len(name) > 64:
        raise ApiKeyError("--name must have 1 to 64 characters")
    if key is not None and (not key.startswith(KEY_PREFIX) or len(key) < MIN_GIVEN_KEY_LENGTH):
        raise ApiKeyError(
            f"a given key must start with {KEY_PREFIX!r} and have at least {MIN_GIVEN_KEY_LENGTH} "
            f"characters, e.g. {KEY_PREFIX}$(openssl rand -hex 24)"
        )
    key = key or KEY_PREFIX + secrets.token_urlsafe(32)
    record = ApiKey(
        name=name, key_hash=hash_key(key), prefix=key[: len(KEY_PREFIX) + 4], rpm=rpm, tpm=tpm, max_streams=max_streams
    )
    async with db.session() as session:
        session.add(record)
        try:
            await session.commit()
        except IntegrityError:
            raise ApiKeyError(f"a key named {name!r} exists already; choose another --name") from None
        await session.refresh(record)
    return CreatedKey(record, key)


async def list_keys(db: Database) -> list[ApiKey]:
    async with db.session() as session:
        return list(await session.exec(select(ApiKey).order_by(col(ApiKey.id))))


async def revoke_key(db: Database, name: str) -> ApiKey:
    async with db.session() as session:
        record = (await session.exec(select(ApiKey).where(ApiKey.name == name))).first()
        if record is None:
            raise ApiKeyError(f"no key named {name!r} (see `llmserve keys list`)")
        if record.revoked_at is None:
            record.revoked_at = now()
            session.add(record)
            await session.commit()
            await session.refresh(record)
        return record


async def find_active_key(db: Database, presented: str) -> ApiKey | None:
    """The unrevoked key matching `presented`, or None. Looked up on every request (no cache), so that a
    revoked key stops working at once on every replica."""
    digest = hash_key(presented)
    async with db.session() as session:
        record = (await session.exec(select(ApiKey).where(ApiKey.key_hash == digest))).first()
    if record is None or not hmac.compare_digest(record.key_hash, digest) or record.revoked_at is not None:
        return None
    return record


async def key_is_active(db: Database, key_id: int) -> bool:
    """Whether the key with this id exists and is not revoked: the re-check of a key already accepted (an open
    WebSocket; frontend_api/policy/auth.py KeyChecks)."""
    async with db.session() as session:
        row = (await session.exec(select(ApiKey.id, ApiKey.revoked_at).where(ApiKey.id == key_id))).first()
    return row is not None and row[1] is None
