"""What a session chat sends to the model: system prompt kept, newest turns first, within the context and the
message cap (real tokenizer and chat template of the default model, a real SQLite store)."""

from __future__ import annotations

import pytest

from frontend_api.engine.protocol import EngineModel
from frontend_api.openai.protocol import ChatMessage
from frontend_api.openai.session_turns import SessionTurn
from frontend_api.openai.tokenization import Tokenizers
from frontend_api.storage.database import Database
from frontend_api.storage.models import Message
from frontend_api.storage.sessions import SessionStore


@pytest.fixture
async def store(tmp_path):
    database = Database(f"sqlite+aiosqlite:///{tmp_path / 'db.sqlite'}")
    await database.migrate()
    yield SessionStore(database)
    await database.close()


@pytest.fixture
async def tokenizers():
    tokenizers = Tokenizers()
    yield tokenizers
    tokenizers.close()


async def a_session_with_turns(store: SessionStore, turns: int, system_prompt: str | None = "Be kind."):
    session = await store.create(None, system_prompt=system_prompt)
    for i in range(turns):
        await store.append(
            session.id,
            [
                Message(role="user", content=f"question {i} " + "word " * 40),
                Message(role="assistant", content=f"answer {i} " + "word " * 40),
            ],
        )
    return session


def model(checkpoint_dir, max_model_len: int) -> EngineModel:
    return EngineModel(id="m", engine_model="llm", tokenizer_dir=str(checkpoint_dir), max_model_len=max_model_len)


async def test_everything_fits_in_a_large_context(store, tokenizers, checkpoint_dir):
    session = await a_session_with_turns(store, 3)
    turn = SessionTurn(store, session, [ChatMessage(role="user", content="new")])
    engine_model = model(checkpoint_dir, 8192)
    messages, prompt, prompt_tokens = await turn.conversation(tokenizers, engine_model, max_history=20, reserve=100)
    assert prompt_tokens == await tokenizers.count_tokens(engine_model, prompt)  # counted once, handed on
    assert [m.role for m in messages] == ["system"] + ["user", "assistant"] * 3 + ["user"]
    assert "Be kind." in prompt and "question 0" in prompt and prompt.count("new") == 1


async def test_the_message_cap_keeps_the_newest(store, tokenizers, checkpoint_dir):
    session = await a_session_with_turns(store, 5)
    turn = SessionTurn(store, session, [ChatMessage(role="user", content="new")])
    messages, _, _ = await turn.conversation(tokenizers, model(checkpoint_dir, 8192), max_history=3, reserve=100)
    assert [m.content.split(" ")[0:2] for m in messages[1:-1]] == [["answer", "3"], ["question", "4"], ["answer", "4"]]


async def test_oldest_turns_are_dropped_to_fit_the_context_and_the_system_prompt_stays(
    store, tokenizers, checkpoint_dir
):
    session = await a_session_with_turns(store, 6)
    turn = SessionTurn(store, session, [ChatMessage(role="user", content="new")])
    engine_model = model(checkpoint_dir, 400)
    messages, prompt, prompt_tokens = await turn.conversation(tokenizers, engine_model, max_history=20, reserve=100)
    assert messages[0].content == "Be kind." and messages[-1].content == "new"
    kept = messages[1:-1]
    assert 0 < len(kept) < 12 and kept[-1].content.startswith("answer 5")  # the newest survive
    assert prompt_tokens == await tokenizers.count_tokens(engine_model, prompt) <= 400 - 100


async def test_a_request_system_message_replaces_the_stored_prompt_for_that_request(store, tokenizers, checkpoint_dir):
    session = await a_session_with_turns(store, 1)
    turn = SessionTurn(
        store, session, [ChatMessage(role="system", content="Be terse."), ChatMessage(role="user", content="new")]
    )
    messages, prompt, _ = await turn.conversation(tokenizers, model(checkpoint_dir, 8192), max_history=20, reserve=10)
    assert "Be kind." not in prompt and "Be terse." in prompt
    await turn.record("reply", "stop")
    await turn.record("reply", "stop")  # stored once, however often it is called
    stored = await store.messages(None, session.id, 10, None)
    assert [(m.role, m.content) for m in stored[-2:]] == [("user", "new"), ("assistant", "reply")]
    assert len(stored) == 4  # the system message of a request is not stored


async def test_a_cancelled_turn_without_text_stores_only_the_question(store, checkpoint_dir):
    session = await a_session_with_turns(store, 0)
    await SessionTurn(store, session, [ChatMessage(role="user", content="hello?")]).record("", "cancelled")
    assert [(m.role, m.finish_reason) for m in await store.messages(None, session.id, 10, None)] == [("user", None)]
