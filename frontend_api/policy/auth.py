"""Who is calling: an API key (`Authorization: Bearer sk-llms-...`) when auth is on, else the client address.

The result, a Principal, names the caller for limits, session ownership, logs and metrics (by key name, never
the key itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from frontend_api.errors import OpenAIError
from frontend_api.settings import Settings
from frontend_api.storage.database import Database
from frontend_api.storage.keys import find_active_key, key_is_active

logger = logging.getLogger(__name__)

ANONYMOUS = "anonymous"


@dataclass(frozen=True)
class Principal:
    key_id: int | None  # None when auth is off: sessions then belong to no key
    name: str  # the key's name, or "anonymous"
    limit_id: str  # whose budget a request spends: "key:<id>" or "addr:<client address>"
    rpm: int | None = None
    tpm: int | None = None
    max_streams: int | None = None


def missing_key() -> OpenAIError:
    return OpenAIError(
        401,
        "You didn't provide an API key. Send it as `Authorization: Bearer <key>`.",
        code="missing_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def invalid_key() -> OpenAIError:
    return OpenAIError(
        401,
        "Incorrect API key provided, or the key was revoked.",
        code="invalid_api_key",
        headers={"WWW-Authenticate": "Bearer"},
    )


def bearer_token(connection: HTTPConnection) -> str | None:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    return token.strip() or None if scheme.lower() == "bearer" else None


def anonymous(connection: HTTPConnection, settings: Settings) -> Principal:
    address = connection.client.host if connection.client else "unknown"
    return Principal(
        None,
        ANONYMOUS,
        f"addr:{address}",
        settings.rate_limit_rpm,
        settings.rate_limit_tpm,
        settings.max_streams_per_key,
    )


async def principal_for_key(database: Database, settings: Settings, presented: str) -> Principal:
    record = await find_active_key(database, presented)
    if record is None:
        raise invalid_key()
    return Principal(
        key_id=record.id,
        name=record.name,
        limit_id=f"key:{record.id}",
        rpm=record.rpm or settings.rate_limit_rpm,
        tpm=record.tpm or settings.rate_limit_tpm,
        max_streams=record.max_streams or settings.max_streams_per_key,
    )


async def authenticate(connection: HTTPConnection) -> Principal:
    """The dependency every /v1 route has (HTTP and WebSocket handshakes alike)."""
    settings: Settings = connection.app.state.settings
    if not settings.auth:
        principal = anonymous(connection, settings)
    else:
        token = bearer_token(connection)
        if token is None:
            raise missing_key()
        principal = await principal_for_key(connection.app.state.database, settings, token)
    connection.scope.setdefault("state", {})["principal"] = principal  # for the access log
    return principal


PrincipalDep = Annotated[Principal, Depends(authenticate)]


def revocation_channel(settings: Settings) -> str:
    """The Redis channel `llmserve keys revoke` publishes a revoked key's id on (when redis_url is set)."""
    return f"{settings.redis_key_prefix}:keys:revoked"


class KeyChecks:
    """Re-checks of keys already accepted, for connections that outlive one request (WebSockets check theirs on
    every chat frame and every keepalive tick). A verdict is trusted for `ttl_s` (at most 1 s), so a busy
    socket costs at most one database read per key and second; `forget()` drops one at once (a revocation heard
    on Redis). A revocation made elsewhere is seen within ttl_s everywhere."""

    def __init__(self, ttl_s: float):
        self.ttl_s = ttl_s
        self._verdicts: dict[int, tuple[bool, float]] = {}  # key id -> (active, until)
        self._revoked_listeners: list[Callable[[int], None]] = []

    async def active(self, database: Database, key_id: int) -> bool:
        """Raises DatabaseUnavailable when the store cannot say."""
        now = time.monotonic()
        verdict = self._verdicts.get(key_id)
        if verdict is not None and now < verdict[1]:
            return verdict[0]
        active = await key_is_active(database, key_id)
        if self.ttl_s > 0:
            if len(self._verdicts) > 10_000:
                self._verdicts = {k: v for k, v in self._verdicts.items() if v[1] > now}
            self._verdicts[key_id] = (active, now + self.ttl_s)
        return active

    def forget(self, key_id: int) -> None:
        self._verdicts.pop(key_id, None)

    def on_revoked(self, listener: Callable[[int], None]) -> None:
        self._revoked_listeners.append(listener)

    def off_revoked(self, listener: Callable[[int], None]) -> None:
        with contextlib.suppress(ValueError):
            self._revoked_listeners.remove(listener)

    def revoked(self, key_id: int) -> None:
        """A revocation was announced (Redis): forget the verdict and tell the listeners (open WebSockets)."""
        self.forget(key_id)
        for listener in list(self._revoked_listeners):
            listener(key_id)


async def listen_for_revocations(redis_url: str, channel: str, checks: KeyChecks) -> None:
    """Until cancelled: each key id published on `channel` is revoked in `checks` at once. Reconnects after a
    Redis failure (meanwhile the TTL bounds how long a revoked key lasts)."""
    from redis.asyncio import Redis

    backoff = 1.0
    while True:
        client = Redis.from_url(redis_url)
        try:
            async with client.pubsub() as pubsub:
                await pubsub.subscribe(channel)
                backoff = 1.0
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        with contextlib.suppress(ValueError, TypeError):
                            checks.revoked(int(message["data"]))
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # Redis down or gone: the TTL still bounds revocations; try again
            logger.warning("listening for key revocations on Redis failed (%s); retrying in %g s", exc, backoff)
            await asyncio.sleep(backoff)
            backoff = min(30.0, backoff * 2)
        finally:
            with contextlib.suppress(Exception):
                await client.aclose()


async def announce_revocation(redis_url: str, channel: str, key_id: int) -> int:
    """Publish a revoked key's id; the number of front-end processes that heard it."""
    from redis.asyncio import Redis

    client = Redis.from_url(redis_url)
    try:
        return int(await client.publish(channel, str(key_id)))
    finally:
        await client.aclose()
