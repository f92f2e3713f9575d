"""How a presented API key is checked (frontend_api/storage/keys.py), on SQLite and PostgreSQL: the database only
ever sees the key's SHA-256, the row is found by that hash, and the final comparison is hmac.compare_digest
(constant time), so neither the query nor the comparison takes longer the more of a key an attacker guessed."""

from __future__ import annotations

import hashlib
import hmac

from sqlalchemy import event, text

from frontend_api.storage import keys
from frontend_api.storage.keys import create_key, find_active_key, revoke_key


async def test_lookup_is_by_hash_and_the_comparison_constant_time(db, monkeypatch):
    created = await create_key(db, "timing")
    digest = hashlib.sha256(created.key.encode()).hexdigest()

    statements: list[tuple[str, str]] = []
    event.listen(
        db.engine.sync_engine,
        "before_cursor_execute",
        lambda _c, _cur, statement, parameters, _ctx, _many: statements.append((statement, repr(parameters))),
    )
    comparisons: list[tuple[str, str]] = []
    real_compare_digest = hmac.compare_digest

    def compare_digest(a, b):  # a spy around the real function
        comparisons.append((a, b))
        return real_compare_digest(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", compare_digest)

    assert (await find_active_key(db, created.key)).name == "timing"
    assert comparisons == [(digest, digest)]
    lookups = [(s, p) for s, p in statements if "api_keys" in s]
    assert lookups and all("api_keys.key_hash = " in s and digest in p for s, p in lookups)
    assert not any(created.key in s or created.key in p for s, p in statements)  # the key never reaches SQL

    wrong = created.key[:-1] + ("A" if created.key[-1] != "A" else "B")
    comparisons.clear()
    assert await find_active_key(db, wrong) is None
    assert comparisons == []  # no row has that hash: nothing to compare, and nothing leaks through timing

    await revoke_key(db, "timing")
    assert await find_active_key(db, created.key) is None


async def test_the_database_holds_no_key(db):
    created = await create_key(db, "stored")
    async with db.engine.connect() as connection:
        rows = (await connection.execute(text("SELECT * FROM api_keys"))).all()
    stored = " ".join(str(value) for row in rows for value in row)
    assert hashlib.sha256(created.key.encode()).hexdigest() in stored
    assert created.key not in stored and created.key[len("sk-llms-") + 4 :] not in stored  # only a short prefix
