"""A token bucket per integration: caps requests per second so one process never floods a
Segment workspace (Segment asks for at most ~1,000 requests/s per workspace)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field


@dataclass
class TokenBucket:
    rate: float
    burst: float
    clock: Callable[[], float] = time.monotonic
    _tokens: float = field(init=False)
    _stamp: float = field(init=False)

    def __post_init__(self) -> None:
        self._tokens = self.burst
        self._stamp = self.clock()

    def reserve(self) -> float:
        """Take one token; returns how long to wait before using it (0 when one was free)."""
        now = self.clock()
        self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
        self._stamp = now
        self._tokens -= 1.0
        return 0.0 if self._tokens >= 0 else -self._tokens / self.rate


class RateLimiter:
    """One bucket per key, created on first use."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self._rate = rate
        self._clock = clock
        self._buckets: dict[str, TokenBucket] = {}

    async def acquire(self, key: str) -> None:
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = TokenBucket(self._rate, max(1.0, self._rate), self._clock)
            self._buckets[key] = bucket
        wait = bucket.reserve()
        if wait > 0:
            await asyncio.sleep(wait)
