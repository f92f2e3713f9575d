"""The FastAPI application. `uvicorn --factory frontend_api.server.app:create_app` serves it with settings from the
environment (`LLMSERVE_*`)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.middleware.cors import CORSMiddleware

from frontend_api.api.routers import (
    chat,
    chat_ws,
    completions,
    health,
    metrics,
    models,
    responses,
    sessions,
    system,
    tokenize,
)
from frontend_api.engine.protocol import Engine
from frontend_api.observability.logging import configure_logging
from frontend_api.observability.metrics import Metrics
from frontend_api.observability.middleware import ObservabilityMiddleware
from frontend_api.observability.system import SystemProbe
from frontend_api.openai.tokenization import Tokenizers
from frontend_api.policy.auth import KeyChecks, authenticate, listen_for_revocations, revocation_channel
from frontend_api.policy.limits import Limiter
from frontend_api.server.draining import Drain, DrainMiddleware
from frontend_api.server.error_handlers import install_error_handlers
from frontend_api.server.middleware import BodySizeLimitMiddleware, LoopbackOnlyMiddleware
from frontend_api.server.web_ui import mount_web_ui
from frontend_api.settings import Settings, get_settings
from frontend_api.storage.database import Database, DatabaseUnavailable

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app. Without `engine`, the lifespan connects a TritonEngine to `settings.triton_grpc_url` and
    closes it on shutdown; a given engine is used as is and left open (its owner closes it)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = app.state.database = Database(settings.database_url)
        migrating: asyncio.Task[None] | None = None
        try:
            await database.migrate()
        except DatabaseUnavailable as exc:  # serve stateless chat meanwhile; sessions and keys answer 503
            logger.error(
                "the database is unavailable at start-up (%s); session routes and API-key lookups answer "
                "503 until it is reachable, tried again every few seconds",
                exc,
            )
            migrating = asyncio.create_task(database.migrate_when_reachable())
        limiter = app.state.limiter = Limiter(
            settings, on_refused=app.state.metrics.rate_limited, on_fail_open=app.state.metrics.failed_open
        )
        logger.info("rate limits kept in %s", limiter.backend)
        owned: Engine | None = None
        if app.state.engine is None:
            from frontend_api.engine.triton import TritonEngine  # needs the running loop for its gRPC channel

            owned = app.state.engine = TritonEngine(settings.triton_grpc_url)
            logger.info("inference server at %s (gRPC)", settings.triton_grpc_url)
        app.state.drain.install(app)
        revocations: asyncio.Task[None] | None = None
        if settings.auth and settings.redis_url:  # revocations reach open WebSockets at once, not after the TTL
            revocations = asyncio.create_task(
                listen_for_revocations(settings.redis_url, revocation_channel(settings), app.state.key_checks)
            )
        try:
            yield
        finally:
            if revocations is not None:
                revocations.cancel()
                await asyncio.gather(revocations, return_exceptions=True)
            if migrating is not None:
                migrating.cancel()
            if owned is not None:
                app.state.engine = None
                await owned.close()
            await database.close()
            await limiter.close()
            app.state.tokenizers.close()
            app.state.system_probe.close()

    app = FastAPI(
        title="llmserve",
        summary="OpenAI-compatible API in front of Triton",
        lifespan=lifespan,
        openapi_url="/openapi.json" if settings.api_docs else None,
    )  # None: no /docs or /redoc either
    app.state.settings = settings
    app.state.engine = engine
    app.state.database = None  # the lifespan opens it
    app.state.limiter = None  # the lifespan creates it
    app.state.tokenizers = Tokenizers()
    app.state.started_at = int(time.time())
    app.state.metrics = Metrics()
    app.state.system_probe = SystemProbe()
    app.state.drain = Drain(settings.drain_timeout_s)
    app.state.key_checks = KeyChecks(settings.key_cache_ttl_s)  # open WebSockets re-check their key

    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    app.add_middleware(DrainMiddleware, drain=app.state.drain)  # inside CORS: a browser can read the 503
    if not settings.auth and not settings.allow_unauthenticated_public_bind:
        app.add_middleware(LoopbackOnlyMiddleware)
    if settings.cors_origins:  # closed by default: no CORS headers at all, so browsers keep other origins out
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["*"],
            allow_headers=["*"],
            expose_headers=["Retry-After", "X-Request-ID"],
            max_age=600,
        )
    app.add_middleware(ObservabilityMiddleware, metrics=app.state.metrics)  # outermost: sees every response
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(chat_ws.router)  # authenticates itself: browsers cannot send headers on a WebSocket
    # The API: authenticated when auth is on.
    authenticated = (models, chat, completions, responses, sessions, system, tokenize)
    for router in (module.router for module in authenticated):
        app.include_router(router, dependencies=[Depends(authenticate)])
    mount_web_ui(app, settings.web_dir)  # last: the UI's static files at /, no auth (they hold no data)
    return app
