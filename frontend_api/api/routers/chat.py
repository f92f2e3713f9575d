from fastapi import APIRouter, Request, Response

from frontend_api.api.deps import ChatServingDep
from frontend_api.api.http import to_response, with_cancellation
from frontend_api.errors import ErrorResponse
from frontend_api.openai.protocol import ChatCompletionRequest
from frontend_api.openai.response_objects import ChatCompletion

router = APIRouter(tags=["chat"])


@router.post(
    "/v1/chat/completions",
    response_model=None,
    responses={
        200: {"model": ChatCompletion, "description": "JSON, or text/event-stream when stream is true"},
        400: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        503: {"model": ErrorResponse},
    },
)
@with_cancellation
async def create_chat_completion(
    body: ChatCompletionRequest, raw_request: Request, serving: ChatServingDep
) -> Response:
    return to_response(await serving.create_chat_completion(body))
