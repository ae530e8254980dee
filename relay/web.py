"""The relay's HTTP server (`relay run`, `relay admin`): /metrics, /healthz and /readyz without
authentication, and the admin API under /api/v1 when a token is configured (never otherwise)."""

from __future__ import annotations

import asyncpg
import orjson
import structlog
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.admin.api import admin_app
from relay.config import Settings
from relay.errors import SettingsError
from relay.metrics import REGISTRY
from relay.sender import Sender
from relay.store import SCHEMA_VERSION
from relay.worker import DATABASE_ERRORS, Worker

log = structlog.get_logger("relay.web")

READY_TIMEOUT = 2.0
POOL = web.AppKey("pool", asyncpg.Pool)
WORKER = web.AppKey("worker", Worker)


def _json(body: dict[str, object], status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(body), status=status, content_type="application/json")


async def metrics(_request: web.Request) -> web.Response:
    response = web.Response(body=generate_latest(REGISTRY))
    response.headers["Content-Type"] = CONTENT_TYPE_LATEST
    return response


async def healthz(request: web.Request) -> web.Response:
    """Liveness: the process answers and its claim loop is not stuck."""
    worker = request.app.get(WORKER)
    if worker is None:
        return _json({"status": "ok", "worker": None})
    health = worker.health()
    return _json(health, 200 if health["status"] == "ok" else 503)


async def readyz(request: web.Request) -> web.Response:
    """Readiness: the database answers and holds the schema version this relay needs."""
    try:
        found = await request.app[POOL].fetchval(
            "SELECT version FROM relay.schema_version", timeout=READY_TIMEOUT
        )
    except DATABASE_ERRORS as exc:
        reason = f"database unreachable: {type(exc).__name__}"
        return _json({"status": "unready", "reason": reason}, 503)
    if found != SCHEMA_VERSION:
        reason = f"schema version {found}, this relay needs {SCHEMA_VERSION}: run relay migrate"
        return _json({"status": "unready", "reason": reason}, 503)
    return _json({"status": "ready", "schema_version": found})


async def start_http(
    settings: Settings, pool: asyncpg.Pool, sender: Sender, worker: Worker | None
) -> web.AppRunner | None:
    """Serve on RELAY_HTTP_LISTEN (None when it is off); the caller cleans the runner up."""
    address = settings.listen_address()
    if address is None:
        return None
    app = web.Application()
    app[POOL] = pool
    if worker is not None:
        app[WORKER] = worker
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    tokens = settings.api_tokens()
    if tokens:
        app.add_subapp("/api/v1", admin_app(pool, tokens, sender))
        log.info("admin_api_enabled", token_names=sorted(tokens))
    else:
        log.warning(
            "admin_api_disabled",
            reason="no RELAY_ADMIN_TOKEN or RELAY_ADMIN_TOKENS: the admin API is off",
        )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    host, port = address
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as exc:  # not the database's fault, whatever the errno says
        await runner.cleanup()
        reason = (exc.strerror or str(exc)).lower()
        raise SettingsError(
            f"invalid setting RELAY_HTTP_LISTEN: cannot listen on {settings.http_listen} "
            f"({reason}); give a free HOST:PORT, or off"
        ) from None
    bound = runner.addresses[0]
    log.info("http_listening", url=f"http://{bound[0]}:{bound[1]}")
    return runner
