"""Logging set-up: JSON lines (python-json-logger) or plain text on stderr, each record stamped with the id of
the request it belongs to. uvicorn's loggers go through the same handler; its access log is off, since the
access lines come from ObservabilityMiddleware (one per request, with more fields)."""

from __future__ import annotations

import logging
import sys

from pythonjsonlogger.core import RESERVED_ATTRS
from pythonjsonlogger.json import JsonFormatter

from frontend_api.observability.context import current_request

ACCESS_LOGGER = "llmserve.access"
_HANDLER_NAME = "llmserve"


class RequestIdFilter(logging.Filter):
    """Adds `request_id` to records logged while a request is handled."""

    def filter(self, record: logging.LogRecord) -> bool:
        context = current_request()
        if context is not None and not hasattr(record, "request_id"):
            record.request_id = context.request_id
        return True


def _formatter(log_format: str) -> logging.Formatter:
    if log_format == "json":
        # uvicorn passes a `color_message` extra (ANSI codes): not a field worth keeping
        return JsonFormatter(
            "{levelname}{name}{message}",
            style="{",
            timestamp="time",
            rename_fields={"levelname": "level", "name": "logger"},
            reserved_attrs=[*RESERVED_ATTRS, "color_message"],
        )
    return logging.Formatter(
        "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s", defaults={"request_id": "-"}
    )


def configure_logging(level: str, log_format: str) -> None:
    """Idempotent: replaces the handler a previous call installed, leaves other handlers (pytest's) alone."""
    handler = logging.StreamHandler(sys.stderr)
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(_formatter(log_format))
    handler.addFilter(RequestIdFilter())
    root = logging.getLogger()
    for old in [h for h in root.handlers if h.get_name() == _HANDLER_NAME]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error"):  # through our handler, not uvicorn's own
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    access = logging.getLogger("uvicorn.access")
    access.handlers.clear()
    access.propagate = False
    access.disabled = True
