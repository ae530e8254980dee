"""The relay's HTTP server (`relay run`, `relay admin`): the admin API under /api/v1 when a token
is configured. The admin API is never open: with no token it is not mounted at all."""

from __future__ import annotations

import asyncpg
import structlog
from aiohttp import web

from relay.admin.api import admin_app
from relay.config import Settings
from relay.sender import Sender

log = structlog.get_logger("relay.web")


async def start_http(
    settings: Settings, pool: asyncpg.Pool, sender: Sender
) -> web.AppRunner | None:
    """Serve on RELAY_HTTP_LISTEN (None when it is off); the caller cleans the runner up."""
    address = settings.listen_address()
    if address is None:
        return None
    app = web.Application()
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
    await web.TCPSite(runner, host, port).start()
    bound = runner.addresses[0]
    log.info("http_listening", url=f"http://{bound[0]}:{bound[1]}")
    return runner
