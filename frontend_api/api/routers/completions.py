from fastapi import APIRouter, Request, Response

from frontend_api.api.deps import CompletionServingDep
from frontend_api.api.http import to_response, with_cancellation
from frontend_api.errors import ErrorResponse
from frontend_api.openai.protocol import CompletionRequest
from frontend_api.openai.response_objects import Completion

router = APIRouter(tags=["completions"])


@router.post(
    "/v1/completions",
    response_model=None,
    responses={
        200: {"model": Completion, "description": "JSON, or text/event-stream when stream is true"},
        400: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
@with_cancellation
async def create_completion(body: CompletionRequest, raw_request: Request, serving: CompletionServingDep) -> Response:
    return to_response(await serving.create_completion(body))
