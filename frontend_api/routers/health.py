from fastapi import APIRouter

from frontend_api.deps import EngineDep
from frontend_api.engine.protocol import EngineUnavailable
from frontend_api.protocol import ErrorResponse

router = APIRouter(tags=["health"])


@router.get("/health")
async def health() -> dict[str, str]:
    """Liveness: the process is up, whatever the state of the inference server."""
    return {"status": "ok"}


@router.get("/ready", responses={503: {"model": ErrorResponse}})
async def ready(engine: EngineDep) -> dict[str, str]:
    """Readiness: the inference server is up and serves at least one model."""
    if not await engine.ready():
        raise EngineUnavailable("The inference server is not ready.")
    return {"status": "ready"}
