"""The web UI's static serving (frontend_api/server/web_ui.py) on a bare app: built, and not built."""

from __future__ import annotations

from fastapi import FastAPI
from fastapi.testclient import TestClient

from frontend_api.observability.metrics import Metrics
from frontend_api.observability.middleware import ObservabilityMiddleware
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
