"""The per-integration token bucket, and secrets kept out of log lines."""

from __future__ import annotations

import json
import logging
import secrets
from collections.abc import Iterator
from typing import Literal

import pytest
import structlog
from aiohttp.http_exceptions import BadHttpMessage

from relay.logging import configure_logging, mask_url_password, redact
from relay.ratelimit import TokenBucket


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_bucket_allows_a_burst_then_paces_at_the_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=2, clock=clock)
    assert [bucket.reserve() for _ in range(2)] == [0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.reserve() == pytest.approx(0.2)


def test_bucket_refills_over_time_up_to_the_burst() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=10, burst=2, clock=clock)
    bucket.reserve()
    bucket.reserve()
    clock.now = 10.0
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, pytest.approx(0.1)]


def test_secret_keys_are_masked() -> None:
    line = redact(None, "info", {"event": "x", "write_key": "wk", "Authorization": "Basic abc"})
    assert line == {"event": "x", "write_key": "****", "Authorization": "****"}


def test_passwords_in_urls_are_masked() -> None:
    assert mask_url_password("postgresql://relay:s3cret@db:5432/app") == (
        "postgresql://relay:****@db:5432/app"
    )
    assert redact(None, "info", {"url": "postgresql://u:p@h/d"}) == {
        "url": "postgresql://u:****@h/d"
    }
    assert mask_url_password("postgresql://relay@db/app") == "postgresql://relay@db/app"


@pytest.fixture
def restore_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield
    structlog.reset_defaults()
    root.handlers, root.level = handlers, level


@pytest.mark.parametrize("fmt", ["json", "console"])
@pytest.mark.usefixtures("restore_logging")
def test_tracebacks_never_show_local_variables(
    fmt: Literal["json", "console"], capsys: pytest.CaptureFixture[str]
) -> None:
    configure_logging("info", fmt)
    secret = secrets.token_hex(12)  # made at run time: source lines are printed for context

    def fail() -> None:
        write_key = secret
        raise RuntimeError(f"failed for {len(write_key)}-character key")

    try:
        fail()
    except RuntimeError:
        structlog.get_logger().exception("round_failed")
    logging.getLogger("aiohttp.server").exception("stdlib too", exc_info=RuntimeError("x"))
    err = capsys.readouterr().err
    assert "round_failed" in err
    assert "stdlib too" in err
    assert secret not in err


@pytest.mark.usefixtures("restore_logging")
def test_a_malformed_client_request_is_one_warning_line(capsys: pytest.CaptureFixture[str]) -> None:
    configure_logging("info", "json")
    error = BadHttpMessage("Invalid header value char")
    logging.getLogger("aiohttp.server").error("Error handling request", exc_info=error)
    [line] = capsys.readouterr().err.splitlines()
    record = json.loads(line)
    assert record["level"] == "warning"
    assert record["event"] == "bad HTTP request from a client: Invalid header value char"
    assert "exception" not in record
