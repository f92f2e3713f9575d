"""`llmserve keys ...` and `llmserve config show`: administration against the configured database."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime

from frontend_api.settings import public_view
from frontend_api.storage.admin import ApiKeyError, DatabaseUnavailable, KeyAdmin, key_admin
from llmserve.settings import LauncherSettings


def _when(timestamp: int | None) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m-%d %H:%M UTC") if timestamp else "-"


def _limit(value: int | None) -> str:
    return "default" if value is None else str(value)


async def _keys(settings: LauncherSettings, action: str, args) -> int:
    try:
        async with key_admin(settings.database_url) as keys:
            if action == "create" and args.key_env:
                return await _create_given_key(keys, args)
            if action == "create":
                created = await keys.create(args.name, args.rpm, args.tpm, args.max_streams)
                print(f"Created key {created.record.name!r}. This is the only time it is shown; store it now:\n")
                print(f"    {created.key}\n")
                print("Clients send it as `Authorization: Bearer <key>`; serve with --auth (or auth = true).")
            elif action == "list":
                rows = await keys.list()
                print(f"{'NAME':24} {'PREFIX':14} {'RPM':>8} {'TPM':>9} {'STREAMS':>8}  {'CREATED':20}  STATUS")
                for key in rows:
                    status = f"revoked {_when(key.revoked_at)}" if key.revoked_at else "active"
                    print(
                        f"{key.name:24} {key.prefix + '…':14} {_limit(key.rpm):>8} {_limit(key.tpm):>9} "
                        f"{_limit(key.max_streams):>8}  {_when(key.created_at):20}  {status}"
                    )
                if not rows:
                    print("(no keys; create one with `llmserve keys create --name NAME`)")
            else:
                revoked = await keys.revoke(args.name)
                print(f"Revoked key {revoked.name!r}: requests with it fail from now on, on every replica.")
                await _announce(settings, revoked.id)
            return 0
    except ApiKeyError as exc:
        print(f"llmserve keys {action}: {exc}")
        return 1
    except DatabaseUnavailable as exc:
        print(f"llmserve keys {action}: cannot reach the database ({exc}). Check DATABASE_URL / database_url.")
        return 1


async def _announce(settings: LauncherSettings, key_id: int | None) -> None:
    """With redis_url set, tell the front-ends at once (open WebSockets close now); without, or if Redis fails,
    they notice within key_cache_ttl_s on the next chat frame or keepalive tick."""
    if not settings.redis_url or key_id is None:
        return
    from frontend_api.policy.auth import announce_revocation, revocation_channel

    try:
        heard = await announce_revocation(settings.redis_url, revocation_channel(settings), key_id)
        print(f"Announced on Redis to {heard} front-end process(es): their open WebSockets with it close now.")
    except Exception as exc:  # the revocation stands; open sockets see it within key_cache_ttl_s
        print(f"Could not announce the revocation on Redis ({exc}); open WebSockets notice it within a second.")


async def _create_given_key(keys: KeyAdmin, args) -> int:
    """`keys create --key-env VAR`: store the key in $VAR (never printed). Idempotent for deployments: the same
    name with the same key again is a success, with another key an error."""
    key = os.environ.get(args.key_env, "")
    if not key:
        print(f"llmserve keys create: --key-env {args.key_env}: that variable is empty or unset")
        return 1
    existing = await keys.find(args.name)
    if existing is not None:
        if not keys.is_key_of(existing, key) or existing.revoked_at is not None:
            print(
                f"llmserve keys create: a key named {args.name!r} exists with another key (or revoked); "
                "revoke it and choose another --name"
            )
            return 1
        print(f"Key {args.name!r} is already stored.")
        return 0
    created = await keys.create(args.name, args.rpm, args.tpm, args.max_streams, key=key)
    print(f"Stored key {created.record.name!r} from ${args.key_env} ({created.record.prefix}…).")
    return 0


def run_keys(settings: LauncherSettings, args) -> int:
    return asyncio.run(_keys(settings, args.keys_command, args))


def _toml_value(value) -> str:
    return json.dumps(value, ensure_ascii=False)  # JSON strings, numbers, booleans and lists are valid TOML


def run_config_show(settings: LauncherSettings) -> int:
    print(
        "# effective llmserve configuration (flags > LLMSERVE_* / DATABASE_URL / REDIS_URL > config file "
        "> defaults); secrets masked"
    )
    for name, value in public_view(settings).items():
        print(f"# {name} = (unset)" if value is None else f"{name} = {_toml_value(value)}")
    return 0
