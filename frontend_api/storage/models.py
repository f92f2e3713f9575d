"""The tables (the API's shapes of sessions and messages are the API's own: frontend_api/api/session_models.py).

Times are Unix seconds (as OpenAI's `created`); message order is the message id.
"""

from __future__ import annotations

import time
import uuid
from typing import Any

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


class ChatSession(SQLModel, table=True):
    __tablename__ = "sessions"

    title: str = Field("New chat", max_length=200)
    model: str | None = Field(None, max_length=200)  # the default model for chats in this session
    system_prompt: str | None = Field(None, max_length=100_000)
    id: str = Field(default_factory=new_session_id, primary_key=True, max_length=40)
    owner_key_id: int | None = Field(
        default=None, sa_column=Column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True, nullable=True)
    )
    settings: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: int = Field(default_factory=now, sa_type=BigInteger)
    updated_at: int = Field(default_factory=now, sa_type=BigInteger, index=True)


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
    session_id: str = Field(sa_column=Column(ForeignKey("sessions.id", ondelete="CASCADE"), index=True, nullable=False))
    created_at: int = Field(default_factory=now, sa_type=BigInteger)
    # An assistant turn's tool calls, as the API's [{"id", "type": "function", "function": {"name", "arguments"}}]
    # (its content is then the text outside them, often ""); a tool turn's result answers `tool_call_id`.
    tool_calls: list[dict[str, Any]] | None = Field(default=None, sa_column=Column(JSON, nullable=True))
    tool_call_id: str | None = Field(default=None, max_length=256)


# ----------------------------------------------------------------------------------------------- stored responses


class StoredResponse(SQLModel, table=True):
    """A Responses API answer kept for GET /v1/responses/{id} and for chaining (previous_response_id). The chain
    is followed through previous_response_id; each row keeps only its own request's input items."""

    __tablename__ = "responses"

    id: str = Field(primary_key=True, max_length=64)
    owner_key_id: int | None = Field(
        default=None, sa_column=Column(ForeignKey("api_keys.id", ondelete="CASCADE"), index=True, nullable=True)
    )
    model: str = Field(max_length=200)
    previous_response_id: str | None = Field(None, max_length=64)
    instructions: str | None = Field(None, sa_column=Column(Text, nullable=True))
    input_items: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    output_items: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    response: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    created_at: int = Field(default_factory=now, sa_type=BigInteger)
