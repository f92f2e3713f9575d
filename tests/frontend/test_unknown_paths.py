"""Routing of the whole app (create_app, real HTTP): a path nothing serves is a 404 in OpenAI's error shape whatever
the method; a known path asked with another method a 405 whose `Allow` names every method it has; the web UI keeps
`/` and its assets. With the UI built (a small build in tmp_path, and the real `make web` build when there is one),
and without it. The UI has no client-side routes (no router, no history API): a path that is no file is a 404."""

from __future__ import annotations

from pathlib import Path

import httpx
import pytest

METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")
UNKNOWN = ("/nope", "/v1/nope", "/v1/responses/x/y", "/v1/chat/completions/extra", "/tokenize/x", "/sessions/abc")


def small_build(folder: Path) -> Path:
    (folder / "assets").mkdir(parents=True)
    (folder / "index.html").write_text('<!doctype html><title>ui</title><script src="./assets/index-abc.js"></script>')
    (folder / "assets" / "index-abc.js").write_text("console.log(1)")
    return folder


# The `make web` build itself is served by the real stack in tests/integration/test_tokenize_and_routing.py.
@pytest.fixture(params=["small build", "not built"])
def served(request, start_app, tmp_path):
    """(app, the path of one UI asset, or None when the UI is not built)."""
    if request.param == "small build":
        return start_app(web_dir=small_build(tmp_path / "dist")), "/assets/index-abc.js"
    return start_app(web_dir=tmp_path / "no-build"), None


def test_an_unknown_path_is_a_404_in_openais_shape_for_every_method(served):
    app, _ = served
    with httpx.Client(base_url=app.base_url, timeout=30) as client:
        for path in UNKNOWN:
            for method in METHODS:
                response = client.request(method, path)
                assert response.status_code == 404, (method, path, response.status_code, response.text)
                if method != "HEAD":
                    assert response.json() == {
                        "error": {
                            "message": f"No route for {method} {path}.",
                            "type": "invalid_request_error",
                            "param": None,
                            "code": None,
                        }
                    }


def test_a_known_path_with_another_method_is_a_405_naming_all_its_methods(served):
    app, _ = served
    with httpx.Client(base_url=app.base_url, timeout=30) as client:
        models = client.delete("/v1/models")
        assert models.status_code == 405 and models.headers["allow"] == "GET", models.headers
        assert models.json()["error"]["message"] == "DELETE is not allowed on /v1/models; it takes GET."
        assert client.get("/v1/chat/completions").headers["allow"] == "POST"
        assert client.get("/tokenize").headers["allow"] == "POST"
        session = client.put("/v1/sessions/abc")  # three routes share this path
        assert session.status_code == 405 and session.headers["allow"] == "GET, PATCH, DELETE"
        assert client.post("/health").headers["allow"] == "GET"
        assert client.get("/v1/models").status_code == 200  # and the right method still answers


def test_the_web_ui_keeps_the_root_and_its_assets(served):
    app, asset = served
    with httpx.Client(base_url=app.base_url, timeout=30) as client:
        page = client.get("/")
        if asset is None:
            assert page.status_code == 503 and "make web" in page.text
        else:
            assert page.status_code == 200 and "<!doctype html>" in page.text.lower()
            assert asset.removeprefix("/") in page.text  # the page names the asset served below
            script = client.get(asset)
            assert script.status_code == 200 and "immutable" in script.headers["cache-control"]
            assert client.head(asset).status_code == 200
        assert page.headers["content-security-policy"].startswith("default-src 'self'")
        posted = client.post("/")
        assert posted.status_code == 405 and posted.headers["allow"] == "GET, HEAD"
