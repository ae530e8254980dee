"""Classification of Segment's answers and the retry schedule, as the spec words them."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from relay.retry import (
    DEFAULT_SCHEDULE,
    Response,
    RetrySchedule,
    Verdict,
    classify,
    describe_failure,
    parse_duration,
    parse_schedule,
    retry_delay,
    server_delay,
)

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (200, Verdict.DELIVERED),
        (204, Verdict.DELIVERED),
        (500, Verdict.RETRY),
        (503, Verdict.RETRY),
        (599, Verdict.RETRY),
        (429, Verdict.RETRY),
        (408, Verdict.RETRY),
        (None, Verdict.RETRY),
        (301, Verdict.RETRY),
        (400, Verdict.ISOLATE),
        (413, Verdict.ISOLATE),
        (401, Verdict.PERMANENT),
        (403, Verdict.PERMANENT),
        (404, Verdict.PERMANENT),
        (405, Verdict.PERMANENT),
        (422, Verdict.PERMANENT),
    ],
)
def test_classification(status: int | None, verdict: Verdict) -> None:
    assert classify(status) is verdict


def test_default_schedule_is_the_documented_one() -> None:
    minutes = [60 * m for m in (1, 2, 4, 8, 16, 32, 64)]
    assert (*minutes, 6 * 3600) == DEFAULT_SCHEDULE


def test_attempts_are_one_first_send_and_eight_retries() -> None:
    schedule = RetrySchedule()
    assert [schedule.delay_after(n) for n in range(1, 9)] == list(DEFAULT_SCHEDULE)
    assert schedule.delay_after(9) is None
    assert schedule.max_attempts == 9


def test_attempts_start_at_one() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        RetrySchedule().delay_after(0)


def test_a_longer_server_delay_stretches_the_schedule_a_shorter_one_does_not() -> None:
    schedule = RetrySchedule()
    assert retry_delay(schedule, 1, 600) == 600
    assert retry_delay(schedule, 1, 5) == 60
    assert retry_delay(schedule, 1, None) == 60
    assert retry_delay(schedule, 9, 600) is None


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"Retry-After": "120"}, 120.0),
        ({"Retry-After": "Mon, 23 Nov 2026 12:05:00 GMT"}, 300.0),
        ({"X-RateLimit-Reset": "30"}, 30.0),
        ({"Retry-After": "10", "X-RateLimit-Reset": "45"}, 45.0),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "-5"}, 0.0),
        ({"Retry-After": "9999999"}, 86400.0),
        ({}, None),
    ],
)
def test_server_delay(headers: dict[str, str], seconds: float | None) -> None:
    assert server_delay(headers, NOW) == seconds


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("90", 90),
        ("90s", 90),
        ("1m", 60),
        ("6h", 21600),
        ("250ms", 0.25),
        ("1.5m", 90),
        ("1d", 86400),
    ],
)
def test_parse_duration(text: str, seconds: float) -> None:
    assert parse_duration(text) == seconds


def test_parse_schedule() -> None:
    assert parse_schedule("1m,2m,4m,8m,16m,32m,64m,6h") == DEFAULT_SCHEDULE
    assert parse_schedule("") == ()
    with pytest.raises(ValueError, match="'later' is not a duration"):
        parse_schedule("1m, later")


def test_wrong_key_or_region_is_named_in_plain_words() -> None:
    text = describe_failure(Response(403, body="forbidden"), "https://api.segment.io", "k")
    assert text.startswith("HTTP 403 from api.segment.io: Segment refused the write key")
    assert "another region" in text
    assert text.endswith(": forbidden")


def test_management_host_404_points_at_the_tracking_host() -> None:
    text = describe_failure(Response(404), "https://eu1.api.segmentapis.com", "k")
    assert "switch the integration's endpoint to https://events.eu1.segmentapis.com" in text


def test_failure_text_never_carries_the_write_key() -> None:
    text = describe_failure(
        Response(401, body="bad key wk_SECRET\n\n here"), "https://x", "wk_SECRET"
    )
    assert "wk_SECRET" not in text
    assert text.endswith("bad key **** here")


def test_failure_excerpt_is_short_and_on_one_line() -> None:
    text = describe_failure(Response(500, body="line\n" * 500), "https://api.segment.io", "k")
    assert "\n" not in text
    assert len(text) < 400


def test_network_failure_says_there_was_no_answer() -> None:
    text = describe_failure(
        Response(None, network_error="timed out after 15s"), "https://api.segment.io", "k"
    )
    assert text == "no answer from api.segment.io: timed out after 15s"
