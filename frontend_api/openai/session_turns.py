"""Chat inside a stored session: the history goes in front of the new messages, and the turn is stored.

What is stored (documented in docs/SESSIONS.md):
- a completed reply: the request's user/assistant messages and the reply, in one transaction, exactly once,
  before the client sees the end of the reply;
- a reply that did not complete (stop, client gone, engine failure): the request's messages and, if any text
  was produced, the partial reply with finish_reason "cancelled" or "error", so the conversation reads as the
  user saw it.
System messages of a request apply to that request only; a session's standing instruction is its system_prompt.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from frontend_api.engine.protocol import EngineModel
from frontend_api.errors import session_not_found
from frontend_api.openai.protocol import ChatCompletionRequest, ChatMessage
from frontend_api.openai.response_objects import Usage
from frontend_api.openai.tokenization import Tokenizers
from frontend_api.openai.tool_parsers import ParsedToolCall
from frontend_api.openai.tool_protocol import ToolCallIn
from frontend_api.storage.models import ChatSession, Message
from frontend_api.storage.sessions import SessionStore

DEFAULT_REPLY_RESERVE = 512  # tokens kept free for the reply when the request sets no max_tokens
_background: set[asyncio.Task[Any]] = set()


async def run_shielded(coroutine: Coroutine[Any, Any, Any]) -> None:
    """Finish a write even if the request that started it is being cancelled (client gone, stop)."""
    task = asyncio.ensure_future(coroutine)
    _background.add(task)
    task.add_done_callback(_background.discard)
    await asyncio.shield(task)


def with_session_defaults(request: ChatCompletionRequest, session: ChatSession) -> ChatCompletionRequest:
    """The session's stored settings fill what the request leaves unset."""
    updates = {name: value for name, value in session.settings.items() if getattr(request, name, None) is None}
    if request.max_completion_tokens is not None:
        updates.pop("max_tokens", None)
    return request.model_copy(update=updates) if updates else request


@dataclass
class SessionTurn:
    store: SessionStore
    session: ChatSession
    new_messages: list[ChatMessage]
    stored: bool = False

    @property
    def session_id(self) -> str:
        return self.session.id

    async def conversation(
        self,
        tokenizers: Tokenizers,
        model: EngineModel,
        max_history: int,
        reserve: int,
        tools: list[dict[str, Any]] | None = None,
    ) -> tuple[list[ChatMessage], str, int | None]:
        """(messages, rendered prompt, its token count if it was counted): system prompt, then the newest stored
        turns that fit the context with `reserve` tokens left for the reply, then the new messages. Oldest turns
        are dropped first."""
        history = [
            ChatMessage(
                role=m.role,
                content=m.content,
                tool_calls=[ToolCallIn.model_validate(call) for call in m.tool_calls] if m.tool_calls else None,
                tool_call_id=m.tool_call_id,
            )
            for m in await self.store.recent_messages(self.session.id, max_history)
        ]
        system: list[ChatMessage] = []
        if self.session.system_prompt and not any(m.role in ("system", "developer") for m in self.new_messages):
            system = [ChatMessage(role="system", content=self.session.system_prompt)]
        budget = model.max_model_len - reserve
        for start in range(len(history) + 1):
            messages = system + history[start:] + self.new_messages
            prompt = await tokenizers.render_chat(model, messages, tools)
            if start == len(history):  # nothing left to drop: the caller counts (and refuses it if too long)
                return messages, prompt, None
            if (prompt_tokens := await tokenizers.count_tokens(model, prompt)) <= budget:
                return messages, prompt, prompt_tokens
        raise AssertionError("unreachable")

    async def record(
        self,
        reply: str,
        finish_reason: str,
        usage: Usage | None = None,
        tool_calls: list[ParsedToolCall] | None = None,
        call_ids: dict[tuple[int, int], str] | None = None,
    ) -> None:
        """Store the turn once (see the module docstring for what is stored when). The reply's tool calls are
        stored with it (their ids: `call_ids[(0, i)]`), and the request's tool results as tool turns."""
        if self.stored:
            return
        self.stored = True
        session_id = self.session.id
        rows = [
            Message(
                session_id=session_id,
                role=m.role,
                content=m.content or "",
                finish_reason=None,
                tool_calls=[call.model_dump() for call in m.tool_calls] if m.tool_calls else None,
                tool_call_id=m.tool_call_id,
            )
            for m in self.new_messages
            if m.role in ("user", "assistant", "tool")
        ]
        calls = [
            {"id": (call_ids or {})[(0, i)], "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for i, c in enumerate(tool_calls or ())
        ]
        if reply or calls or finish_reason in ("stop", "length", "tool_calls"):
            rows.append(
                Message(
                    session_id=session_id,
                    role="assistant",
                    content=reply,
                    finish_reason=finish_reason,
                    prompt_tokens=usage.prompt_tokens if usage else None,
                    completion_tokens=usage.completion_tokens if usage else None,
                    tool_calls=calls or None,
                )
            )
        await run_shielded(self.store.append(session_id, rows))


async def open_turn(
    store: SessionStore, owner: int | None, request: ChatCompletionRequest
) -> tuple[SessionTurn, ChatCompletionRequest]:
    assert request.session_id is not None
    session = await store.get(owner, request.session_id)
    if session is None:
        raise session_not_found(request.session_id)
    return SessionTurn(store, session, list(request.messages)), with_session_defaults(request, session)


def reply_reserve(request: ChatCompletionRequest, default_max_tokens: int | None, max_model_len: int) -> int:
    requested = request.max_completion_tokens or request.max_tokens or default_max_tokens
    return requested or min(DEFAULT_REPLY_RESERVE, max_model_len // 4)
