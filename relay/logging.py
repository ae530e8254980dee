"""structlog configuration: JSON lines off a terminal, readable columns on one, and secrets
masked by key name in every line."""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import MutableMapping
from typing import Any, Literal

import orjson
import structlog

SENSITIVE_KEYS = frozenset(
    {"write_key", "writekey", "authorization", "admin_token", "token", "password", "secret"}
)
_URL_PASSWORD = re.compile(r"(://[^:/@\s]+:)[^@\s]+@")


def redact(
    _logger: Any, _name: str, event_dict: MutableMapping[str, Any]
) -> MutableMapping[str, Any]:
    """Mask values under secret-sounding keys and passwords inside URLs."""
    for key, value in event_dict.items():
        if key.lower() in SENSITIVE_KEYS:
            event_dict[key] = "****"
        elif isinstance(value, str) and "://" in value:
            event_dict[key] = mask_url_password(value)
    return event_dict


def mask_url_password(text: str) -> str:
    return _URL_PASSWORD.sub(r"\1****@", text)


def _json(obj: Any, **_kw: Any) -> str:
    return orjson.dumps(obj, default=str).decode()


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    renderer: Any = (
        structlog.dev.ConsoleRenderer()
        if console
        else structlog.processors.JSONRenderer(serializer=_json)
    )
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    if not console:
        processors.append(structlog.processors.dict_tracebacks)
    processors.append(renderer)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
