"""/v1/responses: OpenAI's Responses API (create, retrieve, delete, input items), served through the chat path;
stored responses are scoped to the calling key, as sessions are."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request, Response

from frontend_api.api.deps import ChatServingDep
from frontend_api.api.http import to_response, with_cancellation
from frontend_api.errors import ErrorResponse
from frontend_api.openai.responses import OpenAIServingResponses, StoredResponses
from frontend_api.openai.responses_objects import InputItemList, ResponseDeleted
from frontend_api.openai.responses_objects import Response as ResponseObject
from frontend_api.openai.responses_protocol import ResponsesRequest
from frontend_api.policy.auth import PrincipalDep
from frontend_api.storage.responses import ResponseStore


async def get_responses_serving(request: Request, chat: ChatServingDep) -> OpenAIServingResponses:
    return OpenAIServingResponses(chat, ResponseStore(request.app.state.database))


async def get_stored_responses(request: Request, principal: PrincipalDep) -> StoredResponses:
    return StoredResponses(ResponseStore(request.app.state.database), principal.key_id)


ResponsesServingDep = Annotated[OpenAIServingResponses, Depends(get_responses_serving)]
StoredResponsesDep = Annotated[StoredResponses, Depends(get_stored_responses)]

router = APIRouter(
    tags=["responses"],
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)


@router.post(
    "/v1/responses",
    response_model=None,
    responses={200: {"model": ResponseObject, "description": "JSON, or text/event-stream when stream is true"}},
)
@with_cancellation
async def create_response(body: ResponsesRequest, raw_request: Request, serving: ResponsesServingDep) -> Response:
    return to_response(await serving.create(body))


@router.get("/v1/responses/{response_id}", response_model=ResponseObject)
async def retrieve_response(response_id: str, stored: StoredResponsesDep) -> dict[str, Any]:
    return await stored.retrieve(response_id)


@router.delete("/v1/responses/{response_id}")
async def delete_response(response_id: str, stored: StoredResponsesDep) -> ResponseDeleted:
    return await stored.delete(response_id)


@router.get("/v1/responses/{response_id}/input_items")
async def list_input_items(
    response_id: str,
    stored: StoredResponsesDep,
    order: Literal["asc", "desc"] = "desc",
    after: Annotated[str | None, Query(description="An item id: list the items after it.")] = None,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
) -> InputItemList:
    return await stored.input_items(response_id, order, after, limit)
