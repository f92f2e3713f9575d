"""Tables, and the public shapes the API returns (SQLModel's Base/Create/Public families).

Times are Unix seconds (as OpenAI's `created`); message order is the message id.
"""

from __future__ import annotations

import time
import uuid
from typing import Any, Literal

from pydantic import ConfigDict
from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Text
from sqlmodel import Field, SQLModel


def now() -> int:
    return int(time.time())


def new_session_id() -> str:
    return f"sess_{uuid.uuid4().hex}"


# ----------------------------------------------------------------------------------------------- API keys


class ApiKey(SQLModel, table=True):
    __tablename__ = "api_keys"

    id: int | None = Field(default=None, primary_key=True)
    name: str = Field(max_length=64, unique=True)
    key_hash: str = Field(max_length=64, unique=True)  # sha256 hex of the key; the key itself is never stored
    prefix: str = Field(max_length=16)  # the first characters, to recognise a key in `keys list`
    rpm: int | None = None
    tpm: int | None = None
    max_streams: int | None = None
    created_at: int = Field(default_factory=now, sa_type=BigInteger)
    revoked_at: int | None = Field(default=None, sa_type=BigInteger)


# ----------------------------------------------------------------------------------------------- sessions


class SessionSettings(SQLModel):
    """Generation defaults stored with a session; a request's own values win."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = Field(None, ge=-1, le=2**31 - 1)
    max_tokens: int | None = Field(None, ge=1, le=2**31 - 1)
    repetition_penalty: float | None = Field(None, gt=0)


class SessionBase(SQLModel):
    title: str = Field("New chat", max_length=200)
    model: str | None = Field(None, max_length=200, description="Default model for chats in this session.")
    system_prompt: str | None = Field(None, max_length=100_000)


class ChatSession(SessionBase, table=True):
    __tablename__ = "sessions"

    id: str = Field(default_factory=new_session_id, primary_key=True, max_length=40)
    owner_key_id: int | None = Field(
        default=None, sa_column=Column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True, nullable=True)
    )
    settings: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: int = Field(default_factory=now, sa_type=BigInteger)
    updated_at: int = Field(default_factory=now, sa_type=BigInteger, index=True)


class SessionCreate(SessionBase):
    model_config = ConfigDict(extra="forbid")

    settings: SessionSettings = Field(default_factory=SessionSettings)


class SessionUpdate(SQLModel):
    model_config = ConfigDict(extra="forbid")

    title: str = Field(None, max_length=200)  # may be left out, never null (the schema says so too)
    model: str | None = Field(None, max_length=200)
    system_prompt: str | None = Field(None, max_length=100_000)
    settings: SessionSettings | None = None


class SessionPublic(SessionBase):
    id: str
    object: Literal["chat.session"] = "chat.session"
    settings: dict[str, Any]
    created_at: int
    updated_at: int


# ----------------------------------------------------------------------------------------------- messages


class MessageBase(SQLModel):
    role: str = Field(max_length=16)
    content: str = Field(sa_column=Column(Text, nullable=False))
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    finish_reason: str | None = Field(None, max_length=16)


class Message(MessageBase, table=True):
    __tablename__ = "messages"

    id: int | None = Field(default=None, primary_key=True)
    session_id: str = Field(
        sa_column=Column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True, nullable=False)
    )
    created_at: int = Field(default_factory=now, sa_type=BigInteger)


class MessagePublic(MessageBase):
    id: int
    object: Literal["chat.session.message"] = "chat.session.message"
    created_at: int


class SessionExport(SQLModel):
    """Everything about one session: `llmserve` can re-import nothing yet, but people can read and archive it."""

    object: Literal["chat.session.export"] = "chat.session.export"
    exported_at: int
    session: SessionPublic
    messages: list[MessagePublic]
