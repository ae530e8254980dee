"""A local Segment-compatible tracking API, for demos, staging and tests.

It behaves as Segment documents: /v1/track and /v1/batch, Basic-auth or body write keys, 400 for
invalid JSON and for oversize calls (32 KB) or batches (500 KB), and a 200 that silently drops
what Segment silently drops (batches over 2,500 events, messageIds over 100 characters, calls
without an identity or an event name). It records what it accepted, counts duplicate
messageIds, and can be told to fail (any status, 429 with Retry-After, slow answers).

Control API (no auth; bind it to localhost): GET /_sink/stats, GET /_sink/calls,
POST /_sink/faults, DELETE /_sink/faults, POST /_sink/reset.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import orjson
from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from relay.model import describe_validation_error
from relay.segment import MAX_BATCH_BYTES, MAX_BATCH_EVENTS, MAX_CALL_BYTES, MAX_MESSAGE_ID_LENGTH


class Fault(BaseModel):
    """Answer matching requests with `status` (after `delay` seconds), `times` times
    (-1: until cleared). Matches every request unless narrowed to one write key or to batches
    holding one messageId."""

    model_config = ConfigDict(extra="forbid")

    status: int = Field(500, ge=100, le=599)
    times: int = Field(1, ge=-1)
    delay: float = Field(0.0, ge=0)
    retry_after: float | None = Field(None, ge=0)
    rate_limit_reset: float | None = Field(None, ge=0)
    write_key: str | None = None
    message_id: str | None = None
    body: str | None = None

    def matches(self, write_key: str, message_ids: set[str]) -> bool:
        if self.write_key is not None and self.write_key != write_key:
            return False
        return self.message_id is None or self.message_id in message_ids


@dataclass
class Received:
    """One accepted call, as recorded."""

    call: dict[str, Any]
    key_hint: str
    received_at: float
    duplicate: bool

    def as_json(self) -> dict[str, Any]:
        return {
            "write_key": self.key_hint,
            "received_at": self.received_at,
            "duplicate": self.duplicate,
            "call": self.call,
        }


@dataclass(frozen=True)
class RequestInfo:
    """How one request authenticated and described itself (never the key itself)."""

    path: str
    status: int
    events: int
    key_hint: str
    basic_auth: bool
    basic_auth_has_colon: bool
    body_write_key_matches: bool
    content_type: str
    user_agent: str
    received_at: float


@dataclass
class Sink:
    """The server's state. `write_keys` empty: any key is accepted. `lenient_keys`: unknown keys
    get Segment's silent 200 instead of a 401."""

    write_keys: set[str] = field(default_factory=set)
    lenient_keys: bool = False
    record_path: Path | None = None
    received: list[Received] = field(default_factory=list)
    requests: list[RequestInfo] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)
    counts: Counter[str] = field(default_factory=Counter)
    dropped: Counter[str] = field(default_factory=Counter)
    _seen: set[str] = field(default_factory=set)
    _record: BinaryIO | None = None

    # -- what tests and the demo read -------------------------------------------------------

    def calls(self, key_hint: str | None = None) -> list[dict[str, Any]]:
        return [r.call for r in self.received if key_hint is None or r.key_hint == key_hint]

    def stats(self) -> dict[str, Any]:
        unique = len(self._seen)
        return {
            "requests": self.counts["requests"],
            "accepted": len(self.received),
            "unique_message_ids": unique,
            "duplicates": len(self.received) - unique,
            "rejected": self.counts["rejected"],
            "faults_served": self.counts["faults_served"],
            "dropped": dict(self.dropped),
            "by_event": dict(Counter(r.call.get("event") for r in self.received)),
            "by_write_key": dict(Counter(r.key_hint for r in self.received)),
        }

    def add_fault(self, fault: Fault) -> None:
        self.faults.append(fault)

    def reset(self) -> None:
        self.received.clear()
        self.requests.clear()
        self.faults.clear()
        self.counts.clear()
        self.dropped.clear()
        self._seen.clear()

    # -- the HTTP application ---------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=8 * MAX_BATCH_BYTES)
        app.router.add_post("/v1/batch", self._batch)
        app.router.add_post("/v1/track", self._track)
        app.router.add_get("/_sink/stats", self._stats)
        app.router.add_get("/_sink/calls", self._calls)
        app.router.add_post("/_sink/faults", self._add_fault)
        app.router.add_delete("/_sink/faults", self._clear_faults)
        app.router.add_post("/_sink/reset", self._reset)
        app.router.add_get("/healthz", self._health)
        app.on_cleanup.append(self._close_record)
        return app

    async def _batch(self, request: web.Request) -> web.Response:
        return await self._ingest(request, batch=True)

    async def _track(self, request: web.Request) -> web.Response:
        return await self._ingest(request, batch=False)

    async def _ingest(self, request: web.Request, *, batch: bool) -> web.Response:
        self.counts["requests"] += 1
        arrived = time.monotonic()
        raw = await request.read()
        payload: Any = None
        with contextlib.suppress(orjson.JSONDecodeError):
            payload = orjson.loads(raw)
        response = await self._answer(request, raw, payload, batch)
        self.requests.append(_request_info(request, payload, response.status, batch, arrived))
        return response

    async def _answer(
        self, request: web.Request, raw: bytes, payload: Any, batch: bool
    ) -> web.Response:
        limit = MAX_BATCH_BYTES if batch else MAX_CALL_BYTES
        if len(raw) > limit:
            return self._reject(400, f"request is {len(raw)} bytes, over the {limit} byte limit")
        if payload is None and raw.strip() != b"null":
            return self._reject(400, "invalid JSON")
        if not isinstance(payload, dict):
            return self._reject(400, "body must be a JSON object")
        if batch:
            calls = payload.get("batch")
            if not isinstance(calls, list) or not all(isinstance(c, dict) for c in calls):
                return self._reject(400, "batch must be an array of objects")
        else:
            calls = [{"type": "track", **payload}]
        # A call re-encoded compactly is never longer than its span of the body, so only a body
        # over the per-call limit can hold an oversize call.
        if len(raw) > MAX_CALL_BYTES and any(
            len(orjson.dumps(call)) > MAX_CALL_BYTES for call in calls
        ):
            return self._reject(400, f"a call is over the {MAX_CALL_BYTES} byte limit")

        write_key = _write_key(request, payload)
        if self.write_keys and write_key not in self.write_keys and not self.lenient_keys:
            return self._reject(401, "unknown write key")

        fault = self._take_fault(write_key, calls) if self.faults else None
        if fault is not None:
            response = await self._serve_fault(fault)
            if not 200 <= fault.status < 300:
                return response

        if self.write_keys and write_key not in self.write_keys:
            self.dropped["unknown_write_key"] += len(calls)
        elif len(calls) > MAX_BATCH_EVENTS:
            self.dropped["batch_over_2500_events"] += len(calls)
        else:
            self._accept(calls, _hint(write_key))
        return web.json_response({"success": True})

    def _accept(self, calls: list[dict[str, Any]], key_hint: str) -> None:
        now = time.time()
        for call in calls:
            reason = _drop_reason(call)
            if reason:
                self.dropped[reason] += 1
                continue
            msg_id = call["messageId"]
            duplicate = msg_id in self._seen
            self._seen.add(msg_id)
            received = Received(call, key_hint, now, duplicate)
            self.received.append(received)
            if self._record is None and self.record_path is not None:
                self._record = self.record_path.open("ab")
            if self._record is not None:
                self._record.write(orjson.dumps(received.as_json()) + b"\n")
        if self._record is not None:
            self._record.flush()

    def _take_fault(self, write_key: str, calls: list[dict[str, Any]]) -> Fault | None:
        message_ids = {str(c.get("messageId")) for c in calls}
        for fault in self.faults:
            if fault.matches(write_key, message_ids):
                if fault.times > 0:
                    fault.times -= 1
                    if fault.times == 0:
                        self.faults.remove(fault)
                return fault
        return None

    async def _serve_fault(self, fault: Fault) -> web.Response:
        self.counts["faults_served"] += 1
        if fault.delay:
            await asyncio.sleep(fault.delay)
        headers = {}
        if fault.retry_after is not None:
            headers["Retry-After"] = f"{fault.retry_after:g}"
        if fault.rate_limit_reset is not None:
            headers["X-RateLimit-Reset"] = f"{fault.rate_limit_reset:g}"
        if 200 <= fault.status < 300:  # a slow success: the calls are accepted after the delay
            return web.json_response({"success": True}, status=fault.status, headers=headers)
        body = fault.body if fault.body is not None else f"injected fault {fault.status}"
        return web.Response(status=fault.status, text=body, headers=headers)

    def _reject(self, status: int, message: str) -> web.Response:
        self.counts["rejected"] += 1
        return web.json_response({"success": False, "error": message}, status=status)

    async def _stats(self, _request: web.Request) -> web.Response:
        return web.json_response(self.stats())

    async def _calls(self, request: web.Request) -> web.Response:
        hint = request.query.get("write_key")
        return web.json_response(
            [r.as_json() for r in self.received if hint is None or r.key_hint == hint],
            dumps=lambda v: orjson.dumps(v).decode(),
        )

    async def _add_fault(self, request: web.Request) -> web.Response:
        try:
            fault = Fault.model_validate_json(await request.read())
        except ValidationError as exc:
            return web.json_response({"error": describe_validation_error(exc)}, status=422)
        self.add_fault(fault)
        return web.json_response({"faults": len(self.faults)}, status=201)

    async def _clear_faults(self, _request: web.Request) -> web.Response:
        self.faults.clear()
        return web.json_response({"faults": 0})

    async def _reset(self, _request: web.Request) -> web.Response:
        self.reset()
        return web.json_response({"reset": True})

    async def _health(self, _request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def _close_record(self, _app: web.Application) -> None:
        if self._record is not None:
            self._record.close()
            self._record = None


def _write_key(request: web.Request, payload: dict[str, Any]) -> str:
    header = request.headers.get("Authorization", "")
    if header.startswith("Basic "):
        try:
            user = base64.b64decode(header[6:], validate=True).decode()
        except (binascii.Error, UnicodeDecodeError):
            user = ""
        return user.split(":", 1)[0]
    key = payload.get("writeKey")
    return key if isinstance(key, str) else ""


def _request_info(
    request: web.Request, payload: Any, status: int, batch: bool, arrived: float
) -> RequestInfo:
    header = request.headers.get("Authorization", "")
    decoded = ""
    if header.startswith("Basic "):
        with contextlib.suppress(binascii.Error, UnicodeDecodeError):
            decoded = base64.b64decode(header[6:], validate=True).decode()
    body = payload if isinstance(payload, dict) else {}
    key = _write_key(request, body)
    calls = body.get("batch") if batch else [body]
    return RequestInfo(
        path=request.path,
        status=status,
        events=len(calls) if isinstance(calls, list) else 0,
        key_hint=_hint(key),
        basic_auth=bool(decoded),
        basic_auth_has_colon=decoded.endswith(":"),
        body_write_key_matches=bool(key) and body.get("writeKey") == key,
        content_type=request.headers.get("Content-Type", ""),
        user_agent=request.headers.get("User-Agent", ""),
        received_at=arrived,
    )


def _hint(write_key: str) -> str:
    """How the sink names a write key in what it shows: its last 4 characters."""
    return f"…{write_key[-4:]}" if write_key else ""


def _drop_reason(call: dict[str, Any]) -> str | None:
    """Why Segment would accept this call with a 200 and then drop it, if it would."""
    msg_id = call.get("messageId")
    if not isinstance(msg_id, str) or not msg_id:
        return "no_message_id"
    if len(msg_id) > MAX_MESSAGE_ID_LENGTH:
        return "message_id_over_100_chars"
    if not call.get("userId") and not call.get("anonymousId"):
        return "no_user_or_anonymous_id"
    if call.get("type") == "track" and not call.get("event"):
        return "track_without_event"
    return None


async def start_sink(
    sink: Sink, host: str = "127.0.0.1", port: int = 0
) -> tuple[web.AppRunner, str]:
    """Serve `sink` in the running loop; returns the runner (to clean up) and its base URL."""
    # A stand-in server: on shutdown, do not wait for slow answers it was told to give.
    runner = web.AppRunner(sink.app(), access_log=None, shutdown_timeout=1.0)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    bound_port = runner.addresses[0][1]
    return runner, f"http://{host}:{bound_port}"
