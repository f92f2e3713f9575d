"""Every error leaves the API as an OpenAI error body: {"error": {"message", "type", "param", "code"}}.

There is deliberately no handler for bare `Exception`: a bug stays a plain 500 without internals.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from frontend_api.engine.protocol import EngineError, EngineUnavailable
from frontend_api.protocol import ErrorDetail, ErrorResponse
from frontend_api.storage.database import DatabaseUnavailable

logger = logging.getLogger(__name__)

_LOCATION_PREFIXES = ("body", "query", "path", "header", "cookie")


class OpenAIError(Exception):
    """Raise anywhere below a route to answer with this status and an OpenAI error body."""

    def __init__(
        self,
        status: int,
        message: str,
        param: str | None = None,
        type: str | None = None,  # noqa: A002 - the OpenAI field name
        code: str | None = None,
        headers: Mapping[str, str] | None = None,
    ):
        super().__init__(message)
        self.status = status
        self.message = message
        self.param = param
        self.type = type or error_type(status)
        self.code = code
        self.headers = headers


def error_type(status: int) -> str:
    if status >= 500:
        return "server_error"
    return {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}.get(
        status, "invalid_request_error"
    )


def error_body(
    status: int, message: str, param: str | None = None, type: str | None = None, code: str | None = None
) -> dict[str, Any]:
    detail = ErrorDetail(message=message, type=type or error_type(status), param=param, code=code)
    return ErrorResponse(error=detail).model_dump()


def error_response(
    status: int,
    message: str,
    param: str | None = None,
    type: str | None = None,  # noqa: A002
    code: str | None = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    return JSONResponse(error_body(status, message, param, type, code), status_code=status, headers=headers)


def engine_error_body(exc: EngineError) -> dict[str, Any]:
    code = "engine_unavailable" if isinstance(exc, EngineUnavailable) else None
    return error_body(exc.status, exc.message, param=exc.param, code=code)


def describe_validation_errors(errors: Sequence[Any], subject: str = "The request body") -> tuple[str, str | None]:
    """(message, param) for pydantic errors: the first error, named by its dotted field path. `subject` names
    what was validated ("The request body", "A WebSocket frame")."""
    if not errors:
        return "Invalid request.", None
    first = errors[0]
    loc = list(first.get("loc", ()))
    if first.get("type") == "json_invalid":
        reason = (first.get("ctx") or {}).get("error", "")
        return f"{subject} is not valid JSON{': ' + str(reason) if reason else ''}.", None
    if loc and loc[0] in _LOCATION_PREFIXES:
        loc = loc[1:]
    if not loc:
        if first.get("type") == "missing":
            return f"{subject} is missing; send a JSON object.", None
        if first.get("type") in ("union_tag_invalid", "union_tag_not_found"):  # a frame's "type" discriminator
            return f"type: {first.get('msg')}", "type"
        return f"{subject} must be a JSON object.", None
    param = ".".join(str(part) for part in loc)
    message = f"{param}: {str(first.get('msg', 'invalid value')).removeprefix('Value error, ')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return message, param


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
    if tuple(first.get("loc", ())) == ("body",) and first.get("type") != "missing" \
            and not _is_json(request.headers.get("content-type")):  # FastAPI parses JSON only when it is labelled so
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


def model_not_found(model_id: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{model_id}` does not exist.", param="model", code="model_not_found")
