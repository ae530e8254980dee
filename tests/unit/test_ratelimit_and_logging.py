"""The per-integration token bucket, and secrets kept out of log lines."""

from __future__ import annotations

import pytest

from relay.logging import mask_url_password, redact
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
