"""What a Segment answer means and when to try again. Pure: no I/O."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from enum import StrEnum
from urllib.parse import urlsplit

from relay.model import EU_MANAGEMENT_API_ENDPOINT, REGION_ENDPOINTS, Region

# The spec: retries after 1, 2, 4, 8, 16, 32, 64 minutes, then a final one 6 hours later.
DEFAULT_SCHEDULE: tuple[float, ...] = (60, 120, 240, 480, 960, 1920, 3840, 6 * 3600)
# A server asking for more than a day is treated as asking for a day.
MAX_SERVER_DELAY = 24 * 3600.0
BODY_EXCERPT_CHARS = 300


class Verdict(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    PERMANENT = "permanent"
    # 400/413: Segment rejects the whole batch for one bad or oversize call; split to find it.
    ISOLATE = "isolate"


@dataclass(frozen=True, slots=True)
class Response:
    """What one POST produced: an HTTP status, or no status and a network error."""

    status: int | None
    body: str = ""
    retry_after: float | None = None
    network_error: str | None = None
    duration_ms: int | None = None


def classify(status: int | None) -> Verdict:
    """2xx delivered; 5xx, 408, 429 and no answer at all retry; 400/413 isolate; other 4xx
    are permanent. Other codes (1xx, 3xx) are not a delivery and are retried."""
    if status is None:
        return Verdict.RETRY
    if 200 <= status < 300:
        return Verdict.DELIVERED
    if status in (400, 413):
        return Verdict.ISOLATE
    if 400 <= status < 500 and status not in (408, 429):
        return Verdict.PERMANENT
    return Verdict.RETRY


@dataclass(frozen=True)
class RetrySchedule:
    """Delays between sends. `attempts` counts sends whose outcome was recorded, the failed one
    included: after send 1 fails the delivery waits delays[0]; after send len(delays)+1 fails it
    is dead. With the default schedule that is 1 first send plus 8 retries."""

    delays: tuple[float, ...] = DEFAULT_SCHEDULE

    @property
    def max_attempts(self) -> int:
        return len(self.delays) + 1

    def delay_after(self, attempts: int) -> float | None:
        """Seconds to wait after the `attempts`-th send failed, or None when retries are spent."""
        if attempts < 1:
            raise ValueError("attempts counts the send that just failed, so it is at least 1")
        if attempts > len(self.delays):
            return None
        return self.delays[attempts - 1]


_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_duration(text: str) -> float:
    """`90`, `90s`, `1m`, `6h`, `250ms` → seconds."""
    match = _DURATION.match(text)
    if not match:
        raise ValueError(f"{text!r} is not a duration like 30s, 1m, 6h")
    return float(match[1]) * _UNIT_SECONDS[match[2] or "s"]


def parse_schedule(text: str) -> tuple[float, ...]:
    """`1m,2m,4m,…,6h` → delays in seconds; an empty text means no retries."""
    parts = [p.strip() for p in text.split(",") if p.strip()]
    return tuple(parse_duration(p) for p in parts)


def server_delay(headers: Mapping[str, str], now: datetime) -> float | None:
    """Seconds the server asked us to wait: Retry-After (seconds or an HTTP date) or Segment's
    X-RateLimit-Reset (seconds), whichever asks for longer."""
    delays = []
    retry_after = headers.get("Retry-After")
    if retry_after:
        try:
            delays.append(float(retry_after))
        except ValueError:
            with contextlib.suppress(TypeError, ValueError):
                delays.append((parsedate_to_datetime(retry_after) - now).total_seconds())
    reset = headers.get("X-RateLimit-Reset")
    if reset:
        with contextlib.suppress(ValueError):
            delays.append(float(reset))
    if not delays:
        return None
    return min(max(max(delays), 0.0), MAX_SERVER_DELAY)


def retry_delay(schedule: RetrySchedule, attempts: int, asked: float | None) -> float | None:
    """The schedule's delay, stretched when the server asked for longer; None when spent."""
    delay = schedule.delay_after(attempts)
    if delay is None:
        return None
    return max(delay, asked or 0.0)


def excerpt(body: str, secret: str) -> str:
    """A short, single-line piece of a response body with the write key blanked out."""
    text = " ".join(body.split())[:BODY_EXCERPT_CHARS]
    return text.replace(secret, "****") if secret else text


def describe_failure(response: Response, endpoint: str, secret: str) -> str:
    """A one-line reason an admin can act on, naming the likely cause in plain words."""
    if response.status is None:
        return f"no answer from {_host(endpoint)}: {response.network_error or 'network error'}"
    body = excerpt(response.body, secret)
    said = f": {body}" if body else ""
    status = response.status
    host = _host(endpoint)
    if status in (404, 405) and endpoint.rstrip("/") == EU_MANAGEMENT_API_ENDPOINT:
        return (
            f"HTTP {status} from {host}, which is Segment's EU management API host, not its "
            f"tracking host: switch the integration's endpoint to "
            f"{REGION_ENDPOINTS[Region.EU][0]}{said}"
        )
    if status in (401, 403):
        return (
            f"HTTP {status} from {host}: Segment refused the write key; it is wrong, revoked, "
            f"or belongs to a workspace in another region (Segment rejects data sent to the "
            f"wrong region){said}"
        )
    if status == 404:
        return (
            f"HTTP 404 from {host}: no tracking API at this endpoint; check the integration's "
            f"region and endpoint{said}"
        )
    if status in (400, 413):
        return (
            f"HTTP {status} from {host}: Segment rejected this event as invalid or too large{said}"
        )
    if status == 429:
        return f"HTTP 429 from {host}: rate limited by Segment{said}"
    return f"HTTP {status} from {host}{said}"


def describe_check(response: Response, endpoint: str, secret: str, msg_id: str) -> tuple[bool, str]:
    """What the answer to a test call means, in plain words; True when Segment accepted it."""
    if response.status is not None and 200 <= response.status < 300:
        return True, (
            f"Segment ({_host(endpoint)}) accepted the test call (HTTP {response.status}). "
            "That does not prove the write key is right: Segment answers 200 to unknown keys "
            "too. To confirm, open this source's debugger in Segment and look for the event "
            f"'Relay Test Event' with messageId {msg_id}."
        )
    return False, describe_failure(response, endpoint, secret)


def _host(endpoint: str) -> str:
    return urlsplit(endpoint).netloc or endpoint
