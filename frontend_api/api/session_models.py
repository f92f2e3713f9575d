"""The shapes of /v1/sessions: what clients send and what they get back (the tables are storage's own)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from frontend_api.openai.protocol import SessionSettings


class SessionBase(BaseModel):
    title: str = Field("New chat", max_length=200)
    model: str | None = Field(None, max_length=200, description="Default model for chats in this session.")
    system_prompt: str | None = Field(None, max_length=100_000)


class SessionCreate(SessionBase):
    model_config = ConfigDict(extra="forbid")

    settings: SessionSettings = Field(default_factory=SessionSettings)


class SessionUpdate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(None, max_length=200)  # type: ignore[assignment]  # may be left out, never null
    model: str | None = Field(None, max_length=200)
    system_prompt: str | None = Field(None, max_length=100_000)
    settings: SessionSettings | None = None


class SessionPublic(SessionBase):
    id: str
    object: Literal["chat.session"] = "chat.session"
    settings: dict[str, Any]
    created_at: int
    updated_at: int


class SessionList(BaseModel):
    object: Literal["list"] = "list"
    data: list[SessionPublic]
    has_more: bool


class SessionDeleted(BaseModel):
    id: str
    object: Literal["chat.session.deleted"] = "chat.session.deleted"
    deleted: bool = True


class MessagePublic(BaseModel):
    role: str
    content: str
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = None
    tool_calls: list[dict[str, Any]] | None = None  # an assistant turn's tool calls, as the chat answer's
    tool_call_id: str | None = None  # a tool turn's: the call it answers
    id: int
    object: Literal["chat.session.message"] = "chat.session.message"
    created_at: int


class MessageList(BaseModel):
    object: Literal["list"] = "list"
    data: list[MessagePublic]
    has_more: bool


class RollbackRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    count: int = Field(1, ge=1, le=10_000, description="How many of the newest messages to remove.")


class RollbackResult(BaseModel):
    object: Literal["chat.session.rollback"] = "chat.session.rollback"
    removed: int
    session: SessionPublic


class SessionExport(BaseModel):
    """Everything about one session: `llmserve` can re-import nothing yet, but people can read and archive it."""

    object: Literal["chat.session.export"] = "chat.session.export"
    exported_at: int
    session: SessionPublic
    messages: list[MessagePublic]
