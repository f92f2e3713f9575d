"""The web UI's static serving (frontend_api/server/web_ui.py) on a bare app: built, and not built."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI
from fastapi.testclient import TestClient

from frontend_api.observability.metrics import Metrics
from frontend_api.observability.middleware import ObservabilityMiddleware
from frontend_api.server.error_handlers import install_error_handlers
from frontend_api.server.web_ui import CONTENT_SECURITY_POLICY, mount_web_ui


def app_with_api(web_dir) -> FastAPI:
    app = FastAPI()

    @app.get("/v1/models")
    async def models() -> dict[str, str]:
        return {"object": "list"}

    mount_web_ui(app, web_dir)  # after the API, as create_app does
    return app


def test_a_built_ui_is_served_at_the_root_with_its_security_headers_and_the_api_still_answers(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>ui</title>")
    (tmp_path / "assets" / "index-abc123.js").write_text("console.log(1)")
    client = TestClient(app_with_api(tmp_path))

    page = client.get("/")
    assert page.status_code == 200 and "<title>ui</title>" in page.text
    assert page.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
    assert "script-src 'self'" in CONTENT_SECURITY_POLICY and "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
    assert page.headers["cache-control"] == "no-cache" and page.headers["x-content-type-options"] == "nosniff"
    asset = client.get("/assets/index-abc123.js")
    assert asset.status_code == 200 and "immutable" in asset.headers["cache-control"]
    assert client.get("/v1/models").json() == {"object": "list"}
    assert client.get("/nothing-here").status_code == 404
    assert client.get("/../pyproject.toml").status_code == 404


def test_without_a_build_the_root_says_how_to_build_it(tmp_path):
    client = TestClient(app_with_api(tmp_path / "dist"))
    page = client.get("/")
    assert page.status_code == 503 and "make web" in page.text and "npm run build" in page.text
    assert client.get("/v1/models").status_code == 200


def test_ui_files_count_under_one_route_label_and_missing_files_as_unmatched(tmp_path):
    (tmp_path / "assets").mkdir()
    (tmp_path / "index.html").write_text("<!doctype html><title>ui</title>")
    (tmp_path / "assets" / "index-abc123.js").write_text("console.log(1)")
    app, metrics = app_with_api(tmp_path), Metrics()
    app.add_middleware(ObservabilityMiddleware, metrics=metrics)
    client = TestClient(app)
    for path in ("/", "/assets/index-abc123.js", "/v1/models", "/nothing-here"):
        client.get(path)

    def count(route: str, status: str) -> float | None:
        return metrics.registry.get_sample_value(
            "llmserve_http_requests_total", {"method": "GET", "route": route, "status": status}
        )

    assert count("/{path}", "200") == 2 and count("/v1/models", "200") == 1
    assert count("unmatched", "404") == 1 and count("/{path}", "404") is None


def app_with_routers(web_dir) -> FastAPI:
    """Routes included from APIRouters, as create_app includes them: FastAPI keeps each included router as one node
    of app.router.routes (without `methods`), which a test declaring routes on the app itself does not see."""
    app = FastAPI()
    install_error_handlers(app)  # OpenAI error bodies, as create_app installs them
    api, sessions = APIRouter(), APIRouter()

    @api.get("/v1/models")
    async def models() -> dict[str, str]:
        return {"object": "list"}

    @api.post("/v1/chat/completions")
    async def chat() -> dict[str, str]:
        return {"object": "chat.completion"}

    for method in ("get", "patch", "delete"):  # one path, three routes: Allow must name all three
        getattr(sessions, method)("/v1/sessions/{session_id}")(lambda session_id: {"id": session_id})
    app.include_router(api)
    app.include_router(sessions)
    mount_web_ui(app, web_dir)
    return app


METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


@pytest.mark.parametrize("built", [True, False])
def test_unknown_paths_are_404_for_every_method_and_known_paths_405_naming_all_their_methods(tmp_path, built):
    (tmp_path / "dist" / "assets").mkdir(parents=True)
    if built:
        (tmp_path / "dist" / "index.html").write_text("<!doctype html><title>ui</title>")
        (tmp_path / "dist" / "assets" / "index-abc123.js").write_text("console.log(1)")
    client = TestClient(app_with_routers(tmp_path / "dist"))
    for method in METHODS:
        for path in ("/v1/nope", "/nope", "/v1/models/x/y/z/..x", "/v1/chat/completions/extra"):
            missing = client.request(method, path)
            assert missing.status_code == 404, (method, path, missing.text)
            if method != "HEAD":
                error = missing.json()["error"]
                assert error["message"] == f"No route for {method} {path}." and error["type"] == "invalid_request_error"
                assert set(error) == {"message", "type", "param", "code"}
    for method in set(METHODS) - {"GET"}:
        wrong = client.request(method, "/v1/models")
        assert wrong.status_code == 405 and wrong.headers["allow"] == "GET", (method, wrong.headers)
    wrong = client.get("/v1/chat/completions")
    assert wrong.status_code == 405 and wrong.headers["allow"] == "POST"
    assert wrong.json()["error"]["message"] == "GET is not allowed on /v1/chat/completions; it takes POST."
    session = client.put("/v1/sessions/abc")
    assert session.status_code == 405 and session.headers["allow"] == "GET, PATCH, DELETE"
    assert client.post("/v1/chat/completions").status_code == 200 and client.get("/v1/models").status_code == 200
    assert client.delete("/v1/sessions/abc").json() == {"id": "abc"}
    page = client.get("/")
    assert page.status_code == (200 if built else 503) and page.headers["content-security-policy"]
    assert client.get("/assets/index-abc123.js").status_code == (200 if built else 404)
    assert client.get("/assets").status_code == 404  # a folder without index.html is no page
    root = client.post("/")
    assert root.status_code == 405 and root.headers["allow"] == "GET, HEAD", root.text


def test_a_websocket_to_an_unknown_path_is_closed_not_an_error(tmp_path):
    (tmp_path / "index.html").write_text("<!doctype html><title>ui</title>")
    client = TestClient(app_with_routers(tmp_path))
    with pytest.raises(Exception) as refused, client.websocket_connect("/v1/nope"):
        pass
    assert type(refused.value).__name__ == "WebSocketDisconnect"
