import asyncio

from fastapi import APIRouter, Request

from frontend_api.api.deps import DatabaseDep, EngineDep
from frontend_api.errors import ErrorResponse, OpenAIError

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process is up, whatever the state of the inference server."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"model": ErrorResponse}})
async def ready(engine: EngineDep, database: DatabaseDep, request: Request) -> dict[str, str]:
    """Readiness: the inference server is up and serves at least one model, the database answers, and the
    server is not shutting down."""
    if request.app.state.drain.draining:
        raise OpenAIError(
            503, "Not ready: the server is shutting down.", code="not_ready", headers={"Retry-After": "5"}
        )
    engine_ready, database_ready = await asyncio.gather(engine.ready(), database.ping())
    if not (engine_ready and database_ready):
        problems = [
            *([] if engine_ready else ["the inference server is not ready"]),
            *([] if database_ready else ["the database does not answer"]),
        ]
        raise OpenAIError(503, f"Not ready: {' and '.join(problems)}.", code="not_ready", headers={"Retry-After": "1"})
    return {"status": "ready", "engine": "ready", "database": "ready"}
