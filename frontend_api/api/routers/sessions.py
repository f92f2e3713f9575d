"""/v1/sessions: chat sessions and their stored messages, scoped to the calling key."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query, Response

from frontend_api.api.deps import SessionStoreDep
from frontend_api.api.session_models import (
    MessageList,
    MessagePublic,
    RollbackRequest,
    RollbackResult,
    SessionCreate,
    SessionDeleted,
    SessionExport,
    SessionList,
    SessionPublic,
    SessionUpdate,
)
from frontend_api.errors import ErrorResponse, session_not_found
from frontend_api.policy.auth import PrincipalDep
from frontend_api.storage.models import ChatSession, Message, now

INT64_MAX = 2**63 - 1  # what the databases' integers hold; a larger offset would fail in the driver

router = APIRouter(
    tags=["sessions"],
    responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse}, 503: {"model": ErrorResponse}},
)


def public(record: ChatSession | None, session_id: str) -> SessionPublic:
    """The API's view of a stored session; a 404 when storage found none."""
    if record is None:
        raise session_not_found(session_id)
    return SessionPublic.model_validate(record, from_attributes=True)


def found(rows: list[Message] | None, session_id: str) -> list[MessagePublic]:
    if rows is None:
        raise session_not_found(session_id)
    return [MessagePublic.model_validate(m, from_attributes=True) for m in rows]


@router.post("/v1/sessions", status_code=201)
async def create_session(body: SessionCreate, principal: PrincipalDep, store: SessionStoreDep) -> SessionPublic:
    record = await store.create(
        principal.key_id,
        title=body.title,
        model=body.model,
        system_prompt=body.system_prompt,
        settings=body.settings.model_dump(exclude_none=True),
    )
    return public(record, record.id)


@router.get("/v1/sessions")
async def list_sessions(
    principal: PrincipalDep,
    store: SessionStoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
) -> SessionList:
    rows = await store.list_sessions(principal.key_id, limit + 1, offset)
    return SessionList(data=[public(r, r.id) for r in rows[:limit]], has_more=len(rows) > limit)


@router.get("/v1/sessions/{session_id}")
async def get_session(session_id: str, principal: PrincipalDep, store: SessionStoreDep) -> SessionPublic:
    return public(await store.get(principal.key_id, session_id), session_id)


@router.patch("/v1/sessions/{session_id}")
async def update_session(
    session_id: str, body: SessionUpdate, principal: PrincipalDep, store: SessionStoreDep
) -> SessionPublic:
    values = body.model_dump(exclude_unset=True)
    if "settings" in values:
        values["settings"] = body.settings.model_dump(exclude_none=True) if body.settings else {}
    return public(await store.update(principal.key_id, session_id, values), session_id)


@router.delete("/v1/sessions/{session_id}")
async def delete_session(session_id: str, principal: PrincipalDep, store: SessionStoreDep) -> SessionDeleted:
    if not await store.delete(principal.key_id, session_id):
        raise session_not_found(session_id)
    return SessionDeleted(id=session_id)


@router.get("/v1/sessions/{session_id}/messages")
async def list_messages(
    session_id: str,
    principal: PrincipalDep,
    store: SessionStoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[
        int | None, Query(ge=0, le=INT64_MAX, description="Only messages with a larger id (pagination).")
    ] = None,
) -> MessageList:
    data = found(await store.messages(principal.key_id, session_id, limit + 1, after), session_id)
    return MessageList(data=data[:limit], has_more=len(data) > limit)


@router.post("/v1/sessions/{session_id}/rollback")
async def rollback_session(
    session_id: str, body: RollbackRequest, principal: PrincipalDep, store: SessionStoreDep
) -> RollbackResult:
    removed = await store.rollback(principal.key_id, session_id, body.count)
    if removed is None:
        raise session_not_found(session_id)
    return RollbackResult(removed=removed, session=public(await store.get(principal.key_id, session_id), session_id))


@router.get("/v1/sessions/{session_id}/export", response_model=SessionExport)
async def export_session(session_id: str, principal: PrincipalDep, store: SessionStoreDep) -> Response:
    session = public(await store.get(principal.key_id, session_id), session_id)
    messages = found(await store.messages(principal.key_id, session_id, limit=1_000_000, after=None), session_id)
    export = SessionExport(exported_at=now(), session=session, messages=messages)
    return Response(
        export.model_dump_json(indent=2),
        media_type="application/json",
        headers={"Content-Disposition": f'attachment; filename="{session_id}.json"'},
    )
