"""Every daemon setting, read once from RELAY_* environment variables (or an optional env file
named by RELAY_ENV_FILE), validated at start-up so a bad value stops the process with one line."""

from __future__ import annotations

import os
import re
import socket
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

import pydantic_settings
from pydantic import (
    BeforeValidator,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from relay.errors import SettingsError
from relay.model import ALL_ENDPOINTS
from relay.retry import DEFAULT_SCHEDULE, RetrySchedule, parse_duration, parse_schedule
from relay.segment import MAX_BATCH_EVENTS

ENV_PREFIX = "RELAY_"


def _schedule(value: Any) -> Any:
    if isinstance(value, str):
        return RetrySchedule(parse_schedule(value))
    if isinstance(value, list | tuple):
        return RetrySchedule(tuple(parse_duration(str(v)) for v in value))
    return value


def _seconds(value: Any) -> Any:
    return parse_duration(value) if isinstance(value, str) else value


Seconds = Annotated[float, BeforeValidator(_seconds), Field(gt=0)]


def _default_worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


_TOKEN_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")
MIN_TOKEN_LENGTH = 16


def _check_token(token: SecretStr) -> None:
    if len(token.get_secret_value()) < MIN_TOKEN_LENGTH:
        raise ValueError(f"a token must be at least {MIN_TOKEN_LENGTH} characters")


class Settings(BaseSettings):
    """Daemon settings. Durations accept `30`, `30s`, `5m`, `6h`."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="ignore", frozen=True)

    database_url: str | None = Field(
        None, description="PostgreSQL URL, e.g. postgresql://relay@db:5432/app"
    )
    endpoint_overrides: dict[str, str] = Field(
        default_factory=dict,
        description="JSON object mapping an official Segment base URL to a replacement "
        "(staging proxies, the local sink)",
    )
    retry_schedule: Annotated[RetrySchedule, NoDecode, BeforeValidator(_schedule)] = Field(
        default_factory=lambda: RetrySchedule(DEFAULT_SCHEDULE),
        description="delays between sends after a retryable failure (1m,2m,…,6h)",
    )
    lease_seconds: Seconds = Field(
        300.0,
        description="how long a share may stay unrecorded before another worker may take it over",
    )
    claim_hold_seconds: Seconds = Field(
        1.0,
        description="how long a claim's transaction holds its rows' locks before shares still "
        "sending are handed over to a lease",
    )
    poll_interval_seconds: Seconds = Field(
        1.0, description="how often to look for due work when no notification arrives"
    )
    concurrency: int = Field(
        16, ge=1, le=1024, description="integrations' shares being delivered at once per process"
    )
    concurrency_per_integration: int = Field(
        2, ge=1, le=64, description="requests in flight per integration per process"
    )
    database_pool_size: int = Field(10, ge=2, le=200, description="connections per process")
    claim_limit: int = Field(
        2000, ge=1, description="deliveries claimed per round, all integrations"
    )
    claim_per_integration: int = Field(
        1000, ge=1, description="deliveries claimed per integration per round"
    )
    batch_max_events: int = Field(
        500, ge=1, le=MAX_BATCH_EVENTS, description="events per /v1/batch request (Segment: 2500)"
    )
    rate_limit_per_second: float = Field(
        100.0, gt=0, description="requests per second per integration and process"
    )
    http_timeout_seconds: Seconds = Field(15.0, description="total time for one request")
    http_connect_timeout_seconds: Seconds = Field(5.0, description="time to open a connection")
    shutdown_grace_seconds: Seconds = Field(
        30.0, description="on SIGTERM, how long in-flight sends may finish before release"
    )
    worker_id: str = Field(default_factory=_default_worker_id, description="name in logs")
    retention: Seconds = Field(
        7 * 86400.0, description="delivered/skipped deliveries and their events are purged after"
    )
    failed_retention: Seconds = Field(
        30 * 86400.0, description="dead letters (failed deliveries) are purged after"
    )
    purge_interval_seconds: Seconds = Field(300.0, description="how often retention runs")
    purge_batch: int = Field(1000, ge=1, le=100_000, description="events deleted per statement")
    metrics_per_integration: bool = Field(
        False, description="label delivery and request metrics with the integration id"
    )
    metrics_interval_seconds: Seconds = Field(
        15.0, description="how often the backlog gauges are read from the database"
    )
    stall_seconds: Seconds = Field(
        120.0, description="/healthz fails when the claim loop has not turned for this long"
    )
    http_listen: str = Field(
        "127.0.0.1:8080",
        description="HOST:PORT for the admin API (`relay run`, `relay admin`); off to serve none",
    )
    admin_token: SecretStr | None = Field(
        None, description="Bearer token for the admin API; audit actor 'admin'"
    )
    admin_tokens: dict[str, SecretStr] = Field(
        default_factory=dict,
        description="named Bearer tokens, JSON {name: token}; the name is the audit actor",
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["auto", "json", "console"] = Field(
        "auto", description="auto: console on a terminal, JSON otherwise"
    )

    @model_validator(mode="after")
    def _hold_within_lease(self) -> Settings:
        if self.claim_hold_seconds >= self.lease_seconds:
            raise ValueError(
                f"RELAY_CLAIM_HOLD_SECONDS ({self.claim_hold_seconds:g}) must be shorter than "
                f"RELAY_LEASE_SECONDS ({self.lease_seconds:g})"
            )
        return self

    @field_validator("endpoint_overrides")
    @classmethod
    def _official_bases_only(cls, value: dict[str, str]) -> dict[str, str]:
        cleaned = {}
        for official, replacement in value.items():
            key = official.rstrip("/")
            if key not in ALL_ENDPOINTS:
                raise ValueError(
                    f"{official!r} is not an official Segment endpoint ({', '.join(ALL_ENDPOINTS)})"
                )
            parts = urlsplit(replacement)
            if parts.scheme not in ("http", "https") or not parts.netloc:
                raise ValueError(f"replacement for {official!r} is not an http(s) URL")
            cleaned[key] = replacement.rstrip("/")
        return cleaned

    @field_validator("http_listen")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if value == "off":
            return value
        host, sep, port = value.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > 65535:
            raise ValueError(f"{value!r} is not HOST:PORT (or off)")
        return value

    @field_validator("admin_tokens")
    @classmethod
    def _named_tokens(cls, value: dict[str, SecretStr]) -> dict[str, SecretStr]:
        for name, token in value.items():
            if not _TOKEN_NAME.fullmatch(name):
                raise ValueError(f"token name {name!r} must be 1-64 letters, digits, . _ or -")
            _check_token(token)
        return value

    @field_validator("admin_token")
    @classmethod
    def _strong_token(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _check_token(value)
        return value

    def listen_address(self) -> tuple[str, int] | None:
        if self.http_listen == "off":
            return None
        host, _, port = self.http_listen.rpartition(":")
        return host.strip("[]"), int(port)

    def api_tokens(self) -> dict[str, str]:
        """Audit actor name → token, for the admin API; empty means the API is off."""
        tokens = {name: t.get_secret_value() for name, t in self.admin_tokens.items()}
        if self.admin_token is not None:
            tokens["admin"] = self.admin_token.get_secret_value()
        return tokens

    def base_url(self, endpoint: str) -> str:
        """Where requests for an official endpoint really go."""
        endpoint = endpoint.rstrip("/")
        return self.endpoint_overrides.get(endpoint, endpoint)

    def require_database_url(self) -> str:
        if not self.database_url:
            raise SettingsError(
                "RELAY_DATABASE_URL is not set: give the PostgreSQL URL in RELAY_DATABASE_URL "
                "or --database-url"
            )
        return self.database_url


def load_settings(**overrides: Any) -> Settings:
    """Read the environment (and RELAY_ENV_FILE, if set); CLI flags come in as overrides."""
    given = {k: v for k, v in overrides.items() if v is not None}
    env_file = os.environ.get(f"{ENV_PREFIX}ENV_FILE")
    if env_file and not os.path.isfile(env_file):
        raise SettingsError(f"RELAY_ENV_FILE: no such file {env_file!r}")
    try:
        return Settings(_env_file=env_file, **given)
    except ValidationError as exc:
        raise SettingsError(describe_settings_error(exc)) from None
    except pydantic_settings.SettingsError as exc:
        # Raised (instead of a ValidationError) when a JSON-valued variable does not parse.
        match = re.search(r'field "(\w+)"', str(exc))
        name = f"{ENV_PREFIX}{match[1].upper()}" if match else "a RELAY_* variable"
        raise SettingsError(f"invalid setting {name}: not valid JSON") from None


def describe_settings_error(exc: ValidationError) -> str:
    parts = []
    for error in exc.errors(include_url=False):
        message = error["msg"].removeprefix("Value error, ")
        if error["loc"]:
            parts.append(f"invalid setting {ENV_PREFIX}{str(error['loc'][0]).upper()}: {message}")
        else:  # a rule between settings, which its message names
            parts.append(f"invalid settings: {message}")
    return "; ".join(parts)
