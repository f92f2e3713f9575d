"""The web chat UI (built from frontend_api/web by `make web`), served at / after the API routes, and the answer to
every request no route takes: 404 for a path nothing serves (whatever the method), 405 naming in `Allow` every method
a known path has.

Why a route of our own rather than a StaticFiles Mount at /: a Mount at / matches every path and method FULL, so the
router never gets to answer 405 for an API path asked with another method (it prefers the FULL match to a PARTIAL
one), and StaticFiles answers 405 to any POST (OpenAI clients read that as "the route exists"). Looking the API's
methods up from inside the Mount by reading `route.methods` off `app.router.routes` does not work either: FastAPI
keeps an included router there as one `_IncludedRouter` node without `methods` (only routes declared on the app itself
have them). So the methods are found the public way, by asking each route whether it would take the path with a given
method (`route.matches`), which every route kind answers, included routers too."""

from __future__ import annotations

import os
import stat
from pathlib import Path
from types import SimpleNamespace

import anyio
from fastapi import FastAPI
from fastapi.responses import PlainTextResponse
from starlette.datastructures import URLPath
from starlette.exceptions import HTTPException
from starlette.responses import Response
from starlette.routing import BaseRoute, Match, NoMatchFound, Router
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

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


# What the request metrics see as the UI's route: one label for every UI file served, like the API's route
# templates; a path that is no file stays "unmatched" with the other 404s.
UI_ROUTE = SimpleNamespace(path_format="/{path}")
# The methods probed for `Allow` (RFC 9110's, less CONNECT and TRACE, which no route here declares).
PROBED_METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


def route_path(scope: Scope) -> str:
    """The path below the server's root_path (uvicorn --root-path), as the routes match it."""
    root, path = scope.get("root_path", ""), scope["path"]
    return path[len(root) :] if root and path.startswith(root) else path


class WebUI(StaticFiles):
    async def get_response(self, path: str, scope: Scope) -> Response:
        response = await super().get_response(path, scope)
        scope["route"] = UI_ROUTE
        response.headers.update(SECURITY_HEADERS)
        # Assets carry a content hash in their names; index.html must be fetched again to find new ones.
        immutable = path.startswith("assets/") and response.status_code == 200
        response.headers["Cache-Control"] = "public, max-age=31536000, immutable" if immutable else "no-cache"
        return response

    async def has(self, scope: Scope) -> bool:
        """Whether this request's path names a file of the UI (or a folder with an index.html), as served."""

        def lookup() -> bool:
            try:
                path = self.get_path(scope)
                _, found = self.lookup_path(path)
                if found is not None and stat.S_ISDIR(found.st_mode):  # html mode serves its index.html
                    _, found = self.lookup_path(os.path.join(path, "index.html"))
            except (OSError, ValueError):  # a name too long, a null byte: no such file
                return False
            return found is not None and stat.S_ISREG(found.st_mode)

        return await anyio.to_thread.run_sync(lookup)


class UnmatchedRequests(BaseRoute):
    """The last route: takes every HTTP request no route before it took with its method. 405 with `Allow` when other
    routes have the path with other methods, else the UI's file (GET/HEAD), else 404; WebSockets go by (the router
    closes an unknown one)."""

    def __init__(self, router: Router, ui: WebUI | None) -> None:
        self.router, self.ui = router, ui

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        return (Match.FULL, {}) if scope["type"] == "http" else (Match.NONE, {})

    def url_path_for(self, name: str, /, **path_params: object) -> URLPath:
        raise NoMatchFound(name, path_params)

    def route_methods(self, scope: Scope) -> list[str]:
        """The methods the other routes take this path with (none: the API has no such path)."""
        others = [route for route in self.router.routes if route is not self]
        return [
            method
            for method in PROBED_METHODS
            if any(route.matches({**scope, "method": method})[0] is Match.FULL for route in others)
        ]

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        methods = self.route_methods(scope)
        if methods:  # the path is the API's; had the method been one of these, its route would have taken it
            allowed = ", ".join(methods)
            message = f"{scope['method']} is not allowed on {route_path(scope)}; it takes {allowed}."
            raise HTTPException(405, message, headers={"Allow": allowed})
        ui_path = await self.ui.has(scope) if self.ui is not None else route_path(scope) == "/"
        if not ui_path:
            raise HTTPException(404)
        if scope["method"] not in ("GET", "HEAD"):
            scope["route"] = UI_ROUTE
            message = (
                f"{scope['method']} is not allowed on {route_path(scope)}, a file of the web UI; it takes GET, HEAD."
            )
            raise HTTPException(405, message, headers={"Allow": "GET, HEAD"})
        if self.ui is not None:
            await self.ui(scope, receive, send)
            return
        scope["route"] = UI_ROUTE
        await PlainTextResponse(NOT_BUILT, status_code=503, headers=SECURITY_HEADERS)(scope, receive, send)


def mount_web_ui(app: FastAPI, directory: Path) -> None:
    """Serve the built UI at / (last, so every API route wins) and answer every request no route takes; without a
    build, / says how to make one."""
    ui = WebUI(directory=directory, html=True) if (directory / "index.html").is_file() else None
    app.router.routes.append(UnmatchedRequests(app.router, ui))
