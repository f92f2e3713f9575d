"""Every error leaves the API as an OpenAI error body: {"error": {"message", "type", "param", "code"}}.

The ground floor of the front-end: every layer may raise OpenAIError; nothing here imports another layer.
The handlers that turn exceptions into responses are installed by frontend_api.server.error_handlers.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from fastapi.responses import JSONResponse
from pydantic import BaseModel

SHUTTING_DOWN = "The server is shutting down; retry shortly (another replica may answer)."

_LOCATION_PREFIXES = ("body", "query", "path", "header", "cookie")


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorResponse(BaseModel):
    """The body of every error answer (also documents the error responses in the OpenAPI schema)."""

    error: ErrorDetail


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
    if first.get("type") == "extra_forbidden" and subject == "The request body":
        message = f"Unrecognized request argument supplied: {param}"  # OpenAI's words for a field it does not define
    else:
        message = f"{param}: {str(first.get('msg', 'invalid value')).removeprefix('Value error, ')}"
    if len(errors) > 1:
        message += f" (and {len(errors) - 1} more error{'s' if len(errors) > 2 else ''})"
    return message, param


def model_not_found(model_id: str) -> OpenAIError:
    return OpenAIError(404, f"The model `{model_id}` does not exist.", param="model", code="model_not_found")


def session_not_found(session_id: str) -> OpenAIError:
    return OpenAIError(404, f"No session found with id {session_id!r}.", param="session_id", code="session_not_found")
