"""Exception handlers: every error leaves the API as an OpenAI error body ({"error": {"message", "type", "param",
"code"}}), whichever layer raised it.

There is deliberately no handler for bare `Exception`: a bug stays a plain 500 without internals.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from frontend_api.engine.protocol import EngineError
from frontend_api.errors import OpenAIError, describe_validation_errors, error_response
from frontend_api.openai.serving import engine_error_body
from frontend_api.storage.database import DatabaseUnavailable

logger = logging.getLogger(__name__)


async def _openai_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, OpenAIError)
    return error_response(exc.status, exc.message, exc.param, exc.type, exc.code, exc.headers)


def _is_json(content_type: str | None) -> bool:
    media_type = (content_type or "").split(";", 1)[0].strip().lower()
    return media_type == "application/json" or (media_type.startswith("application/") and media_type.endswith("+json"))


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    message, param = describe_validation_errors(exc.errors())
    first = exc.errors()[0] if exc.errors() else {}
    if (
        tuple(first.get("loc", ())) == ("body",)
        and first.get("type") != "missing"
        and not _is_json(request.headers.get("content-type"))
    ):  # FastAPI parses JSON only when it is labelled so
        message = "The request body must be JSON sent with the header Content-Type: application/json."
    return error_response(400, message, param=param)


def _body_parse_error(cause: BaseException | None) -> str:
    """FastAPI's "There was an error parsing the body" (JSON it could not even decode), made specific."""
    if isinstance(cause, UnicodeDecodeError):
        return "The request body is not valid UTF-8; send JSON encoded as UTF-8."
    if isinstance(cause, RecursionError):
        return "The request body is nested too deeply to parse."
    if isinstance(cause, ValueError) and "integer string conversion" in str(cause):
        return "The request body has a number with too many digits."
    return "The request body could not be parsed; send a JSON object."


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    message = str(exc.detail)
    if exc.status_code == 404 and exc.detail == "Not Found":
        message = f"No route for {request.method} {request.url.path}."
    elif exc.status_code == 400 and exc.detail == "There was an error parsing the body":
        message = _body_parse_error(exc.__cause__)
    return error_response(exc.status_code, message, headers=exc.headers)


async def _engine_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, EngineError)
    headers = {"Retry-After": "1"} if exc.status == 503 else None
    return JSONResponse(engine_error_body(exc), status_code=exc.status, headers=headers)


async def _database_unavailable(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, DatabaseUnavailable)
    if request.app.state.settings.auth:  # API keys live there too: nothing authenticated works meanwhile
        message = "The database (sessions and API keys) is unavailable; retry shortly."
    else:
        message = "The session store is unavailable; retry shortly. Chat without session_id still works."
    return error_response(503, message, code="database_unavailable", headers={"Retry-After": "5"})


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(DatabaseUnavailable, _database_unavailable)
    app.add_exception_handler(OpenAIError, _openai_error)
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(EngineError, _engine_error)
