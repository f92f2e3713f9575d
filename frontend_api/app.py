"""The FastAPI application. `uvicorn --factory frontend_api.app:create_app` serves it with settings from the
environment (`LLMSERVE_*`)."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI
from starlette.middleware.cors import CORSMiddleware

from frontend_api.auth import authenticate
from frontend_api.engine.protocol import Engine
from frontend_api.errors import install_error_handlers
from frontend_api.limits import Limiter
from frontend_api.middleware import BodySizeLimitMiddleware
from frontend_api.observability.logging import configure_logging
from frontend_api.observability.metrics import Metrics
from frontend_api.observability.middleware import ObservabilityMiddleware
from frontend_api.observability.system import SystemProbe
from frontend_api.routers import chat, chat_ws, completions, health, metrics, models, sessions, system
from frontend_api.settings import Settings, get_settings
from frontend_api.storage.database import Database
from frontend_api.tokenization import Tokenizers

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app. Without `engine`, the lifespan connects a TritonEngine to `settings.triton_grpc_url` and
    closes it on shutdown; a given engine is used as is and left open (its owner closes it)."""
    settings = settings or get_settings()
    configure_logging(settings.log_level, settings.log_format)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        database = app.state.database = Database(settings.database_url)
        await database.migrate()
        limiter = app.state.limiter = Limiter(settings, on_refused=app.state.metrics.rate_limited)
        logger.info("rate limits kept in %s", limiter.backend)
        owned: Engine | None = None
        if app.state.engine is None:
            from frontend_api.engine.triton import TritonEngine  # needs the running loop for its gRPC channel

            owned = app.state.engine = TritonEngine(settings.triton_grpc_url)
            logger.info("inference server at %s (gRPC)", settings.triton_grpc_url)
        try:
            yield
        finally:
            if owned is not None:
                app.state.engine = None
                await owned.close()
            await database.close()
            await limiter.close()
            app.state.tokenizers.close()
            app.state.system_probe.close()

    app = FastAPI(title="llmserve", summary="OpenAI-compatible API in front of Triton", lifespan=lifespan)
    app.state.settings = settings
    app.state.engine = engine
    app.state.database = None  # the lifespan opens it
    app.state.limiter = None  # the lifespan creates it
    app.state.tokenizers = Tokenizers()
    app.state.started_at = int(time.time())
    app.state.metrics = Metrics()
    app.state.system_probe = SystemProbe()

    install_error_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware, max_bytes=settings.max_request_bytes)
    if settings.cors_origins:  # closed by default: no CORS headers at all, so browsers keep other origins out
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["*"],
                           allow_headers=["*"], expose_headers=["Retry-After", "X-Request-ID"], max_age=600)  # fmt: skip
    app.add_middleware(ObservabilityMiddleware, metrics=app.state.metrics)  # outermost: sees every response
    app.include_router(health.router)
    app.include_router(metrics.router)
    app.include_router(chat_ws.router)  # authenticates itself: browsers cannot send headers on a WebSocket
    # The API: authenticated when auth is on.
    for router in (models.router, chat.router, completions.router, sessions.router, system.router):
        app.include_router(router, dependencies=[Depends(authenticate)])
    return app
