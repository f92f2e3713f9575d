"""`Annotated` dependencies: the app-wide objects live on `app.state` (set by `create_app` and its lifespan).

The dependencies are `async def` although none of them awaits: FastAPI runs a plain `def` dependency in its
thread pool, a thread hand-off (two context switches) per dependency and request for a getattr."""

from typing import Annotated

from fastapi import Depends, Request
from starlette.datastructures import State

from frontend_api.engine.protocol import Engine, EngineUnavailable
from frontend_api.openai.chat import OpenAIServingChat
from frontend_api.openai.completions import OpenAIServingCompletion
from frontend_api.openai.serving import OpenAIServing
from frontend_api.openai.tokenization import Tokenizers
from frontend_api.policy.auth import Principal, PrincipalDep
from frontend_api.policy.limits import Limiter
from frontend_api.settings import Settings
from frontend_api.storage.database import Database
from frontend_api.storage.sessions import SessionStore


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


def get_engine(state: State) -> Engine:
    engine = getattr(state, "engine", None)
    if engine is None:  # the lifespan has not created it (yet), or has closed it
        raise EngineUnavailable()
    return engine


async def get_app_engine(request: Request) -> Engine:
    return get_engine(request.app.state)


async def get_database(request: Request) -> Database:
    return request.app.state.database


async def get_session_store(request: Request) -> SessionStore:
    return SessionStore(request.app.state.database)


async def get_tokenizers(request: Request) -> Tokenizers:
    return request.app.state.tokenizers


async def get_limiter(request: Request) -> Limiter:
    return request.app.state.limiter


SettingsDep = Annotated[Settings, Depends(get_settings)]
EngineDep = Annotated[Engine, Depends(get_app_engine)]
DatabaseDep = Annotated[Database, Depends(get_database)]
SessionStoreDep = Annotated[SessionStore, Depends(get_session_store)]
TokenizersDep = Annotated[Tokenizers, Depends(get_tokenizers)]
LimiterDep = Annotated[Limiter, Depends(get_limiter)]


async def get_serving(
    engine: EngineDep,
    tokenizers: TokenizersDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    limiter: LimiterDep,
) -> OpenAIServing:
    return OpenAIServing(engine, tokenizers, settings, principal, limiter)


def chat_serving(state: State, principal: Principal) -> OpenAIServingChat:
    """The chat serving object of one caller: for HTTP requests (below) and for each WebSocket connection."""
    return OpenAIServingChat(
        get_engine(state), state.tokenizers, state.settings, principal, state.limiter, SessionStore(state.database)
    )


async def get_chat_serving(request: Request, principal: PrincipalDep) -> OpenAIServingChat:
    return chat_serving(request.app.state, principal)


async def get_completion_serving(request: Request, principal: PrincipalDep) -> OpenAIServingCompletion:
    # From app.state directly, as chat's: each sub-dependency costs FastAPI a resolution per request.
    state = request.app.state
    return OpenAIServingCompletion(get_engine(state), state.tokenizers, state.settings, principal, state.limiter)


async def get_started_at(request: Request) -> int:
    return request.app.state.started_at


ServingDep = Annotated[OpenAIServing, Depends(get_serving)]
ChatServingDep = Annotated[OpenAIServingChat, Depends(get_chat_serving)]
CompletionServingDep = Annotated[OpenAIServingCompletion, Depends(get_completion_serving)]
StartedAtDep = Annotated[int, Depends(get_started_at)]
