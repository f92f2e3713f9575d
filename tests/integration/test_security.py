"""What the server tells about itself: no version banners in headers or error bodies (`llmserve serve` turns off
uvicorn's `server` header), on successes, errors, event streams, /metrics and the WebSocket handshake.

Elsewhere: ownership and revocation (test_auth.py), CORS closed by default (test_limits.py), the cross-site
WebSocket refusal (test_websocket.py), keys kept out of logs and metrics (test_auth.py, test_observability.py),
the refused public bind without auth (tests/unit/test_cli.py, test_config.py), hashed keys compared in constant
time (tests/unit/test_key_lookup.py)."""

from __future__ import annotations

import re
import signal
import socket

import httpx
import pytest
from websockets.asyncio.client import connect

from stack import MODEL, start_frontend

BANNER = re.compile(r"uvicorn|starlette|fastapi|python|hypercorn|gunicorn|llmserve/\d|\d+\.\d+\.\d+", re.I)


def responses(stack) -> dict[str, httpx.Response]:
    api = stack.api_url
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    with httpx.Client(timeout=60) as client:
        return {
            "health": client.get(f"{stack.base_url}/health"),
            "ready": client.get(f"{stack.base_url}/ready"),
            "metrics": client.get(f"{stack.base_url}/metrics"),
            "models": client.get(f"{api}/models"),
            "chat": client.post(f"{api}/chat/completions", json=chat),
            "stream": client.post(f"{api}/chat/completions", json={**chat, "stream": True}),
            "400": client.post(f"{api}/chat/completions", json={**chat, "temperature": 9}),
            "404 model": client.post(f"{api}/chat/completions", json={**chat, "model": "nope"}),
            "404 route": client.get(f"{stack.base_url}/nope"),
            "405": client.delete(f"{api}/models"),
            "413": client.post(
                f"{api}/completions", content=b"x" * 1_100_000, headers={"content-type": "application/json"}
            ),
            "invalid JSON": client.post(
                f"{api}/completions", content=b"{", headers={"content-type": "application/json"}
            ),
        }


def test_no_server_banner_in_headers_or_error_bodies(stack):
    answers = responses(stack)
    assert {name: r.status_code for name, r in answers.items()} == {
        "health": 200,
        "ready": 200,
        "metrics": 200,
        "models": 200,
        "chat": 200,
        "stream": 200,
        "400": 400,
        "404 model": 404,
        "404 route": 404,
        "405": 405,
        "413": 413,
        "invalid JSON": 400,
    }
    for name, response in answers.items():
        assert "server" not in response.headers and "x-powered-by" not in response.headers, (name, response.headers)
        for header, value in response.headers.items():
            if header not in ("date", "content-length", "content-type", "x-request-id"):  # metrics: version=0.0.4
                assert not BANNER.search(value), (name, header, value)
        if response.status_code >= 400:
            assert set(response.json()) == {"error"}, name
            assert not BANNER.search(response.json()["error"]["message"]), (name, response.text)


async def test_no_server_banner_on_the_websocket_handshake(stack):
    async with connect(stack.ws_url) as ws:
        headers = ws.response.headers
        assert "server" not in {name.lower() for name in headers}, headers


def host_address() -> str:
    """This host's address on its default route (a UDP socket's connect sends nothing)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.connect(("192.0.2.1", 9))  # TEST-NET-1: only picks the outgoing interface
        address = probe.getsockname()[0]
    assert not address.startswith("127."), f"this test needs a non-loopback interface, found {address}"
    return address


@pytest.mark.parametrize("allowed", [False, True])
async def test_auth_off_answers_on_loopback_only_even_when_bound_elsewhere(stack, tmp_path, allowed):
    """`llmserve serve` refuses the bind (tests/unit); `uvicorn --factory` cannot be stopped from binding, so the
    app refuses what arrives on a non-loopback address unless the operator said otherwise."""
    address = host_address()
    env = {"LLMSERVE_HOME": str(tmp_path), "LLMSERVE_ALLOW_UNAUTHENTICATED_PUBLIC_BIND": str(allowed).lower()}
    server = start_frontend(stack.triton_grpc_port, tmp_path / "public.log", env, host="0.0.0.0")
    try:
        assert httpx.get(f"http://{address}:{server.port}/v1/models", timeout=10).status_code == (
            200 if allowed else 403
        )
        assert httpx.get(f"http://127.0.0.1:{server.port}/v1/models", timeout=10).status_code == 200
        if not allowed:
            refused = httpx.get(f"http://{address}:{server.port}/health", timeout=10)
            assert refused.status_code == 403 and refused.json()["error"]["code"] == "public_bind_without_auth"
            with pytest.raises(Exception, match="403"):
                async with connect(f"ws://{address}:{server.port}/v1/chat/ws"):
                    pass
    finally:
        server.stop(signal.SIGTERM, timeout=30)


def test_api_docs_are_served_unless_turned_off(stack, start_frontend_with):
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(f"{stack.base_url}{path}").status_code == 200, path
    hidden = start_frontend_with({"LLMSERVE_API_DOCS": "false"})
    for path in ("/openapi.json", "/docs", "/redoc"):
        assert httpx.get(f"{hidden.base_url}{path}").status_code == 404, path
    assert httpx.get(f"{hidden.api_url}/models").status_code == 200
