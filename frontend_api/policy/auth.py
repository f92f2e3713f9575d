"""Who is calling: an API key (`Authorization: Bearer sk-llms-...`) when auth is on, else the client address.

The result, a Principal, names the caller for limits, session ownership, logs and metrics (by key name, never
the key itself).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends
from starlette.requests import HTTPConnection

from frontend_api.errors import OpenAIError
from frontend_api.settings import Settings
from frontend_api.storage.database import Database
from frontend_api.storage.keys import find_active_key

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
