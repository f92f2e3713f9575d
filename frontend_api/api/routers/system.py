"""GET /v1/system: the front-end host's CPU, memory and GPUs, uptime and version (authenticated like /v1)."""

import time
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from fastapi import APIRouter, Request

router = APIRouter(tags=["system"])


def _version() -> str:
    try:
        return version("llmserve")
    except PackageNotFoundError:  # run from a source tree that was not installed
        return "unknown"


@router.get("/v1/system")
async def system(request: Request) -> dict[str, Any]:
    figures = await request.app.state.system_probe.snapshot()
    return {
        "object": "system",
        "version": _version(),
        "uptime_s": int(time.time()) - request.app.state.started_at,
        **figures,
    }
