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
from aiohttp.http_exceptions import BadHttpMessage

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


class _ClientProtocolErrors(logging.Filter):
    """aiohttp logs a malformed client request with a traceback; one warning line is enough."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], BadHttpMessage):
            record.msg = f"bad HTTP request from a client: {record.exc_info[1].message}"
            record.args = ()
            record.exc_info = None
            record.levelno, record.levelname = logging.WARNING, "WARNING"
        return True


def configure_logging(
    level: str = "info", fmt: Literal["auto", "json", "console"] = "auto"
) -> None:
    """One configuration for structlog and for the standard library's loggers (aiohttp,
    asyncpg), so every line has the same format and goes through redaction."""
    console = fmt == "console" or (fmt == "auto" and sys.stderr.isatty())
    # Tracebacks never show local variables: they would print tokens and write keys.
    renderer: Any = (
        structlog.dev.ConsoleRenderer(
            exception_formatter=structlog.dev.RichTracebackFormatter(show_locals=False)
        )
        if console
        else structlog.processors.JSONRenderer(serializer=_json)
    )
    shared: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        redact,
    ]
    if not console:
        shared.append(
            structlog.processors.ExceptionRenderer(
                structlog.tracebacks.ExceptionDictTransformer(show_locals=False)
            )
        )
    numeric = logging.getLevelNamesMapping()[level.upper()]
    structlog.configure(
        processors=[*shared, renderer],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=[structlog.stdlib.ExtraAdder(), *shared],
        )
    )
    handler.addFilter(_ClientProtocolErrors())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(max(numeric, logging.INFO))
