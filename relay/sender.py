"""The HTTP adapter: POST one /v1/batch body to Segment (or whatever the endpoint overrides
point at) and report what came back. Keep-alive connections are pooled per host."""

from __future__ import annotations

import base64
import time
from collections.abc import Callable
from datetime import UTC, datetime

import aiohttp

from relay.retry import Response, server_delay
from relay.segment import USER_AGENT

# Enough of a response body to explain an error; Segment's bodies are tiny.
MAX_BODY_BYTES = 4096


def basic_auth(write_key: str) -> str:
    """Segment's Basic auth: the write key as user name, an empty password (note the colon)."""
    return "Basic " + base64.b64encode(f"{write_key}:".encode()).decode()


class Sender:
    def __init__(
        self,
        *,
        base_url: Callable[[str], str],
        total_timeout: float,
        connect_timeout: float,
        max_connections: int = 100,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._base_url = base_url
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, sock_connect=connect_timeout)
        self._max_connections = max_connections
        self._clock = clock
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> Sender:
        connector = aiohttp.TCPConnector(limit=self._max_connections, keepalive_timeout=30)
        self._session = aiohttp.ClientSession(
            connector=connector, timeout=self._timeout, raise_for_status=False
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def batch_url(self, endpoint: str) -> str:
        return self._base_url(endpoint) + "/v1/batch"

    async def post_batch(self, endpoint: str, write_key: str, body: bytes) -> Response:
        """Never raises for network trouble: no answer is a Response with status None."""
        assert self._session is not None, "use Sender as an async context manager"
        headers = {
            "Authorization": basic_auth(write_key),
            "Content-Type": "application/json",
            "User-Agent": USER_AGENT,
        }
        started = time.monotonic()

        def took() -> int:
            return round((time.monotonic() - started) * 1000)

        try:
            async with self._session.post(
                self.batch_url(endpoint), data=body, headers=headers
            ) as resp:
                raw = await resp.read()
                return Response(
                    status=resp.status,
                    body=raw[:MAX_BODY_BYTES].decode("utf-8", "replace"),
                    retry_after=server_delay(resp.headers, self._clock()),
                    duration_ms=took(),
                )
        except TimeoutError:
            total = self._timeout.total
            error = f"timed out after {total:g}s"
            return Response(status=None, network_error=error, duration_ms=took())
        except aiohttp.ClientError as exc:
            text = str(exc).replace(write_key, "****")
            error = f"{type(exc).__name__}: {text}"
            return Response(status=None, network_error=error, duration_ms=took())
