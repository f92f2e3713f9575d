"""The web chat UI (built from frontend_api/web by `make web`), served at / after the API routes."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Scope

# Defence in depth against injected model output: only the UI's own scripts and styles run, nothing is framed,
# and the page talks to its own origin only ('self' covers ws:// and wss:// to it).
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CONTENT_SECURITY_POLICY,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
NOT_BUILT = """The web UI is not built, so there is nothing to show at /.
Build it with `make web` (or: cd frontend_api/web && npm ci && npm run build) and restart the server;
`make serve` builds it for you. The API is unaffected: see /v1/models, /health and the README.
"""


# What the request metrics see as this mount's route (a Mount sets none): one label for every UI file served, like
# the API's route templates; a path that is no file stays "unmatched" with the other 404s.
UI_ROUTE = SimpleNamespace(path_format="/{path}")


class WebUI(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        if response.status_code != 404:
            scope["route"] = UI_ROUTE
        response.headers.update(SECURITY_HEADERS)
        # Assets carry a content hash in their names; index.html must be fetched again to find new ones.
        immutable = path.startswith("assets/") and response.status_code == 200
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable" if immutable else "no-cache"
        return response


def mount_web_ui(app: FastAPI, directory: Path) -> None:
    """Serve the built UI at / (mounted last, so every API route wins); without a build, / says how to make one."""
    if (directory / "index.html").is_file():
        app.mount("/", WebUI(directory=directory, html=True), name="web")
        return

    @app.get("/", include_in_schema=False)
    async def web_ui_not_built() -> PlainTextResponse:
        return PlainTextResponse(NOT_BUILT, status_code=503)
