"""The WebSocket chat protocol (/v1/chat/ws), as JSON text frames. Documented in docs/SESSIONS.md.

client -> server
  {"type": "auth", "api_key": "..."}                    first frame, when auth is on and no Authorization header
  {"type": "chat", "content": "...", "session_id"?: "sess_...", "settings"?: {...}, "tools"?: [...],
   "tool_choice"?: ...}                                 tools / tool_choice as the chat route's (docs/API.md)
                                                        settings: model, system_prompt and the sampling fields of a
                                                        session (SessionSettings: temperature, top_p, top_k,
                                                        max_tokens, seed, the penalties, min_tokens, stop,
                                                        stop_token_ids, bad_words, logit_bias; n only 1; no logprobs)
  {"type": "stop"}                                      cancel the running generation (frees the engine slot)
  {"type": "ping"}                                      answered with {"type": "pong"}
server -> client
  {"type": "ready", "protocol": 1}                      after authentication
  {"type": "delta", "content": "..."}                   streamed text (with tools: the text outside tool calls)
  {"type": "tool_call", "index", "id", "name", "arguments"}
                                                        one per tool call of the reply, before its `done`
  {"type": "done", "finish_reason", "usage", "session_id", "stats": {"ttft_ms", "tokens_per_second"}}
  {"type": "error", "code", "message", "param"?}        the connection stays open unless the code says auth
  {"type": "ping"}                                      keepalive every ws_keepalive_s; no answer needed
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter

from frontend_api.openai.protocol import SessionSettings
from frontend_api.openai.tool_protocol import MAX_TOOLS, ToolChoice, ToolDefinition

PROTOCOL_VERSION = 1
MAX_CONTENT_CHARS = 200_000


class _Frame(BaseModel):
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


class ChatSettings(SessionSettings):
    """Per-message settings: the sampling fields a session can store (which fill what is unset), and which
    model and system prompt to use."""

    model: str | None = Field(None, min_length=1)
    system_prompt: str | None = Field(None, max_length=100_000)


class AuthFrame(_Frame):
    type: Literal["auth"]
    api_key: str = Field(min_length=1, max_length=512)


class ChatFrame(_Frame):
    type: Literal["chat"]
    content: str = Field(min_length=1, max_length=MAX_CONTENT_CHARS)
    session_id: str | None = Field(None, min_length=1, max_length=40)
    settings: ChatSettings = Field(default_factory=ChatSettings)
    # Checked again (the tool choice among the tools) with the chat request the frame becomes.
    tools: list[ToolDefinition] | None = Field(None, max_length=MAX_TOOLS)
    tool_choice: ToolChoice | None = None


class StopFrame(_Frame):
    type: Literal["stop"]


class PingFrame(_Frame):
    type: Literal["ping"]


ClientFrame = TypeAdapter(Annotated[AuthFrame | ChatFrame | StopFrame | PingFrame, Field(discriminator="type")])


def error_frame(code: str, message: str, param: str | None = None) -> dict[str, str]:
    frame = {"type": "error", "code": code, "message": message}
    if param:
        frame["param"] = param
    return frame
