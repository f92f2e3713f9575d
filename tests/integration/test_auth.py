"""API keys and ownership, on a front-end with auth on and its store in PostgreSQL (the stack's Triton)."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest
from websockets.asyncio.client import connect

from helpers import create_key_with_cli, llmserve_keys
from stack import BIN, MODEL


@pytest.fixture(scope="module")
def secured(start_frontend_with, postgres_database):
    with postgres_database() as database_url:
        env = {
            "LLMSERVE_AUTH": "true",
            "DATABASE_URL": database_url,
            "LLMSERVE_DATABASE_URL": "",
            "LLMSERVE_WS_KEEPALIVE_S": "0.3",
            "LLMSERVE_WS_AUTH_TIMEOUT_S": "1",
        }
        frontend = start_frontend_with(env)
        frontend.env = env
        try:
            yield frontend
        finally:
            frontend.stop()  # before its database is dropped


def keys(frontend, *args: str) -> str:
    return llmserve_keys({**frontend.env, "PATH": str(BIN)}, *args)


CREATED_KEYS: list[str] = []  # every key made in this module: none may ever show in a log or on /metrics


def new_key(frontend, name: str) -> str:
    CREATED_KEYS.append(create_key_with_cli({**frontend.env, "PATH": str(BIN)}, "--name", name))
    return CREATED_KEYS[-1]


@pytest.fixture(scope="module")
def alice(secured) -> str:
    return new_key(secured, "alice")


@pytest.fixture(scope="module")
def bob(secured) -> str:
    return new_key(secured, "bob")


def as_key(frontend, key: str | None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(base_url=frontend.api_url, headers=headers, timeout=120)


@pytest.mark.parametrize("route", ["/models", "/sessions"])
def test_every_v1_route_needs_a_valid_key(secured, alice, route):
    with as_key(secured, None) as nobody, as_key(secured, "sk-llms-wrong") as wrong, as_key(secured, alice) as ok:
        missing = nobody.get(route)
        assert missing.status_code == 401 and missing.json()["error"]["code"] == "missing_api_key"
        assert missing.headers["www-authenticate"] == "Bearer"
        assert wrong.get(route).json()["error"]["code"] == "invalid_api_key"
        assert ok.get(route).status_code == 200
        chat = nobody.post("/chat/completions", json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]})
        assert chat.status_code == 401
    assert httpx.get(f"{secured.base_url}/health").status_code == 200  # probes need no key


def test_keys_cli_shows_a_key_once_and_lists_names_only(secured, alice):
    listing = keys(secured, "list")
    assert "alice" in listing and alice not in listing and alice[:12] in listing


def test_another_keys_session_is_indistinguishable_from_a_missing_one(secured, alice, bob):
    with as_key(secured, alice) as a, as_key(secured, bob) as b:
        session = a.post("/sessions", json={"title": "alice's"}).json()
        a.post(
            "/chat/completions",
            json={
                "model": MODEL,
                "session_id": session["id"],
                "max_tokens": 2,
                "messages": [{"role": "user", "content": "secret plan"}],
            },
        )
        for sid in (session["id"], "sess_00000000000000000000000000000000"):
            answers = [
                b.get(f"/sessions/{sid}"),
                b.patch(f"/sessions/{sid}", json={"title": "mine"}),
                b.get(f"/sessions/{sid}/messages"),
                b.get(f"/sessions/{sid}/export"),
                b.post(f"/sessions/{sid}/rollback", json={"count": 1}),
                b.delete(f"/sessions/{sid}"),
                b.post(
                    "/chat/completions",
                    json={"model": MODEL, "session_id": sid, "messages": [{"role": "user", "content": "x"}]},
                ),
            ]
            assert {r.status_code for r in answers} == {404}
            assert {r.json()["error"]["message"] for r in answers} == {f"No session found with id {sid!r}."}
        assert session["id"] not in [s["id"] for s in b.get("/sessions").json()["data"]]
        # Nothing of alice's was touched.
        stored = a.get(f"/sessions/{session['id']}/messages").json()["data"]
        assert [m["content"] for m in stored][0] == "secret plan" and len(stored) == 2
        assert a.get(f"/sessions/{session['id']}").json()["title"] == "alice's"


def test_a_revoked_key_fails_at_once(secured):
    key = new_key(secured, "carol")
    with as_key(secured, key) as c:
        assert c.get("/models").status_code == 200
        keys(secured, "revoke", "--name", "carol")
        assert c.get("/models").status_code == 401


async def test_websocket_auth_by_first_frame_or_header_never_the_url(secured, alice, bob):
    async with connect(secured.ws_url) as ws:  # a browser: no headers, the key in the first frame
        await ws.send(json.dumps({"type": "auth", "api_key": alice}))
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "chat", "content": "hello", "settings": {"max_tokens": 2}}))
        while (frame := json.loads(await ws.recv()))["type"] != "done":
            pass
        alices_session = frame["session_id"]
        assert json.loads(await ws.recv()) == {"type": "ping"}  # keepalive (0.3 s here)
    async with connect(secured.ws_url, additional_headers={"Authorization": f"Bearer {bob}"}) as ws:
        assert json.loads(await ws.recv())["type"] == "ready"
        await ws.send(json.dumps({"type": "chat", "content": "x", "session_id": alices_session}))
        error = json.loads(await ws.recv())
        assert (error["code"], error["message"]) == (
            "session_not_found",
            f"No session found with id {alices_session!r}.",
        )


@pytest.mark.parametrize(
    ("first_frame", "code"),
    [
        (None, "auth_timeout"),
        ({"type": "auth", "api_key": "sk-llms-wrong"}, "invalid_api_key"),
        ({"type": "chat", "content": "hi"}, "missing_api_key"),
    ],
)
async def test_websocket_without_a_valid_key_is_closed(secured, first_frame, code):
    async with connect(secured.ws_url + "?api_key=ignored") as ws:
        if first_frame is not None:
            await ws.send(json.dumps(first_frame))
        error = json.loads(await asyncio.wait_for(ws.recv(), 5))
        assert (error["type"], error["code"]) == ("error", code)
        await asyncio.wait_for(ws.wait_closed(), 5)
        assert ws.close_code == 1008


def test_every_api_route_in_the_schema_needs_a_key(secured):
    """Walk /openapi.json: every route but the probes answers 401 without a key (no route forgotten)."""
    schema = httpx.get(f"{secured.base_url}/openapi.json", timeout=10).json()
    open_routes = set()
    for path, operations in schema["paths"].items():
        url = secured.base_url + re.sub(r"\{[^}]+\}", "x", path)
        for method in operations:
            response = httpx.request(method.upper(), url, json={}, timeout=30)
            if response.status_code != 401:
                open_routes.add(path)
            else:
                assert response.json()["error"]["code"] == "missing_api_key", (method, path)
    assert open_routes == {"/health", "/ready", "/metrics"}
    assert len(schema["paths"]) >= 12


async def test_a_revoked_key_fails_at_once_on_every_replica(secured, start_frontend_with):
    replica = start_frontend_with(secured.env)  # a second front-end process on the same PostgreSQL database
    try:
        key = new_key(secured, "dave")
        for server in (secured, replica):
            with as_key(server, key) as d:
                assert d.get("/models").status_code == 200
        keys(secured, "revoke", "--name", "dave")
        for server in (secured, replica):  # no cache anywhere: the very next request is refused
            with as_key(server, key) as d:
                refused = d.get("/models")
                assert refused.status_code == 401 and refused.json()["error"]["code"] == "invalid_api_key"
            async with connect(server.ws_url) as ws:
                await ws.send(json.dumps({"type": "auth", "api_key": key}))
                error = json.loads(await asyncio.wait_for(ws.recv(), 5))
                assert (error["type"], error["code"]) == ("error", "invalid_api_key")
                await asyncio.wait_for(ws.wait_closed(), 5)
                assert ws.close_code == 1008
    finally:
        replica.stop()  # before the module's database goes
    assert key not in replica.log()


def test_keys_never_appear_in_logs_or_metrics(secured, alice):
    """Runs last in this module: every key made above, and the wrong ones sent, against the log and /metrics."""
    with as_key(secured, alice) as a:
        chat = {"model": MODEL, "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
        assert a.post("/chat/completions", json=chat).status_code == 200
    metrics = httpx.get(f"{secured.base_url}/metrics", timeout=10).text
    assert 'key_name="alice"' in metrics  # names are there (the check below could not pass vacuously)
    log = secured.log()
    assert '"key_name": "alice"' in log
    for secret in [*CREATED_KEYS, "sk-llms-wrong"]:
        for text in (log, metrics):
            assert secret not in text and secret[8:20] not in text
