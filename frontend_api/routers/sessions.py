"""/v1/sessions: chat sessions and their stored messages, scoped to the calling key."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Response
from pydantic import BaseModel, ConfigDict, Field

from frontend_api.auth import PrincipalDep
from frontend_api.deps import SessionStoreDep
from frontend_api.protocol import ErrorResponse
from frontend_api.storage.models import (
    ChatSession,
    MessagePublic,
    SessionCreate,
    SessionExport,
    SessionPublic,
    SessionUpdate,
    now,
)

INT64_MAX = 2**63 - 1  # what the databases' integers hold; a larger offset would fail in the driver

router = APIRouter(tags=["sessions"], responses={400: {"model": ErrorResponse}, 404: {"model": ErrorResponse},
                                                  503: {"model": ErrorResponse}})  # fmt: skip


class SessionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SessionPublic]
    has_more: bool


class MessageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[MessagePublic]
    has_more: bool


class SessionDeleted(BaseModel):
    id: str
    object: Literal["chat.session.deleted"] = "chat.session.deleted"
    deleted: bool = True


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(1, ge=1, le=10_000, description="How many of the newest messages to remove.")


class RollbackResult(BaseModel):
    object: Literal["chat.session.rollback"] = "chat.session.rollback"
    removed: int
    session: SessionPublic


def public(record: ChatSession) -> SessionPublic:
    return SessionPublic.model_validate(record, from_attributes=True)


@router.post("/v1/sessions", status_code=201)
async def create_session(body: SessionCreate, principal: PrincipalDep, store: SessionStoreDep) -> SessionPublic:
    return public(await store.create(principal.key_id, body))


@router.get("/v1/sessions")
async def list_sessions(
    principal: PrincipalDep,
    store: SessionStoreDep,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    offset: Annotated[int, Query(ge=0, le=INT64_MAX)] = 0,
) -> SessionList:
    rows = await store.list(principal.key_id, limit + 1, offset)
    return SessionList(data=[public(r) for r in rows[:limit]], has_more=len(rows) > limit)


@router.get("/v1/sessions/{session_id}")
async def get_session(session_id: str, principal: PrincipalDep, store: SessionStoreDep) -> SessionPublic:
    return public(await store.get(principal.key_id, session_id))


@router.patch("/v1/sessions/{session_id}")
async def update_session(
    session_id: str, body: SessionUpdate, principal: PrincipalDep, store: SessionStoreDep
) -> SessionPublic:
    return public(await store.update(principal.key_id, session_id, body))


@router.delete("/v1/sessions/{session_id}")
async def delete_session(session_id: str, principal: PrincipalDep, store: SessionStoreDep) -> SessionDeleted:
    await store.delete(principal.key_id, session_id)
    return SessionDeleted(id=session_id)


@router.get("/v1/sessions/{session_id}/messages")
async def list_messages(
    session_id: str,
    principal: PrincipalDep,
    store: SessionStoreDep,
    limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    after: Annotated[int | None, Query(ge=0, le=INT64_MAX, description="Only messages with a larger id (pagination).")] = None,
) -> MessageList:
    rows = await store.messages(principal.key_id, session_id, limit + 1, after)
    data = [MessagePublic.model_validate(m, from_attributes=True) for m in rows[:limit]]
    return MessageList(data=data, has_more=len(rows) > limit)


@router.post("/v1/sessions/{session_id}/rollback")
async def rollback_session(
    session_id: str, body: RollbackRequest, principal: PrincipalDep, store: SessionStoreDep
) -> RollbackResult:
    removed = await store.rollback(principal.key_id, session_id, body.count)
    return RollbackResult(removed=removed, session=public(await store.get(principal.key_id, session_id)))


@router.get("/v1/sessions/{session_id}/export", response_model=SessionExport)
async def export_session(session_id: str, principal: PrincipalDep, store: SessionStoreDep) -> Response:
    record = await store.get(principal.key_id, session_id)
    messages = await store.messages(principal.key_id, session_id, limit=1_000_000, after=None)
    export = SessionExport(exported_at=now(), session=public(record),
                           messages=[MessagePublic.model_validate(m, from_attributes=True) for m in messages])  # fmt: skip
    return Response(export.model_dump_json(indent=2), media_type="application/json",
                    headers={"Content-Disposition": f'attachment; filename="{session_id}.json"'})  # fmt: skip
