"""GET /metrics: Prometheus text format. Not authenticated (like /health and /ready): keep the port private or
let the ingress restrict it; it exposes key names and counts, never keys or content."""

import logging

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST

from frontend_api.observability.metrics import Metrics
from frontend_api.storage.database import DatabaseUnavailable
from frontend_api.storage.sessions import SessionStore

router = APIRouter(tags=["health"])
logger = logging.getLogger(__name__)


@router.get("/metrics", response_class=Response, responses={200: {"content": {CONTENT_TYPE_LATEST: {}}}})
async def metrics(request: Request) -> Response:
    registry: Metrics = request.app.state.metrics
    database = request.app.state.database
    if database is not None:
        try:
            registry.sessions_stored.set(await SessionStore(database).count())
        except DatabaseUnavailable:
            logger.warning("cannot count stored sessions: the database is unavailable (the gauge keeps its value)")
    return Response(registry.exposition(), media_type=CONTENT_TYPE_LATEST)
