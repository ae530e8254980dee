"""The admin HTTP API under /api/v1: JSON in and out, Bearer-token auth, and every error as an
RFC 9457 problem document with field-level messages."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, Mapping
from typing import Any, TypeVar

import asyncpg
import orjson
import structlog
from aiohttp import web
from pydantic import BaseModel, Field, ValidationError

from relay.admin.models import (
    DiscardRequest,
    IntegrationCreate,
    IntegrationUpdate,
    ReplayRequest,
    storable_text_error,
)
from relay.admin.openapi import openapi_document
from relay.admin.service import AdminService
from relay.errors import UserError
from relay.sender import Sender

log = structlog.get_logger("relay.admin")

PROBLEM_JSON = "application/problem+json"
M = TypeVar("M", bound=BaseModel)
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]

POOL = web.AppKey("pool", asyncpg.Pool)
TOKENS = web.AppKey("tokens", dict)
SENDER = web.AppKey("sender", Sender)
ACTOR = web.RequestKey("actor", str)


def _json(data: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    if isinstance(data, BaseModel):
        data = data.model_dump(mode="json")
    elif isinstance(data, list):
        data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
    return web.Response(
        body=orjson.dumps(data), status=status, content_type="application/json", headers=headers
    )


def problem(
    status: int,
    title: str,
    detail: str,
    *,
    instance: str | None = None,
    errors: list[dict[str, str]] | None = None,
    headers: Mapping[str, str] | None = None,
) -> web.Response:
    body: dict[str, Any] = {
        "type": "about:blank",
        "title": title,
        "status": status,
        "detail": detail,
    }
    if instance:
        body["instance"] = instance
    if errors:
        body["errors"] = errors
    return web.Response(
        body=orjson.dumps(body), status=status, content_type=PROBLEM_JSON, headers=headers
    )


def _field_errors(exc: ValidationError) -> list[dict[str, str]]:
    return [
        {
            "field": ".".join(str(p) for p in e["loc"]) or "body",
            "message": e["msg"].removeprefix("Value error, "),
        }
        for e in exc.errors(include_url=False)
    ]


@web.middleware
async def problems(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure as application/problem+json; nothing internal leaks out."""
    try:
        return await handler(request)
    except ValidationError as exc:
        errors = _field_errors(exc)
        if any(e["message"].startswith("Invalid JSON") for e in errors):
            return problem(400, "Bad Request", "the body is not valid JSON", instance=request.path)
        detail = "; ".join(f"{e['field']}: {e['message']}" for e in errors)
        return problem(422, "Unprocessable Content", detail, instance=request.path, errors=errors)
    except UserError as exc:
        named = [{"field": exc.field, "message": str(exc)}] if exc.field else None
        title = {404: "Not Found", 409: "Conflict", 422: "Unprocessable Content"}.get(
            exc.status, "Bad Request"
        )
        return problem(exc.status, title, str(exc), instance=request.path, errors=named)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        headers = {
            k: v for k, v in exc.headers.items() if k.lower() in ("allow", "www-authenticate")
        }
        return problem(
            exc.status, exc.reason, exc.text or exc.reason, instance=request.path, headers=headers
        )
    except Exception:
        log.exception("admin_request_failed", path=request.path, method=request.method)
        return problem(500, "Internal Server Error", "the request failed; see the relay's log")


@web.middleware
async def bearer_auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Constant-time comparison against every configured token; the token's name becomes the
    actor in the audit log. The OpenAPI document is public."""
    if request.path.endswith("/openapi.json"):
        return await handler(request)
    header = request.headers.get("Authorization", "")
    scheme, _, presented = header.partition(" ")
    actor = None
    if scheme.lower() == "bearer" and presented:
        for name, token in request.app[TOKENS].items():
            if hmac.compare_digest(presented.encode(), token.encode()):
                actor = name
    if actor is None:
        return problem(
            401,
            "Unauthorized",
            "send Authorization: Bearer <token> with a token from RELAY_ADMIN_TOKEN(S)",
            instance=request.path,
            headers={"WWW-Authenticate": 'Bearer realm="relay"'},
        )
    request[ACTOR] = actor
    return await handler(request)


def _service(request: web.Request) -> AdminService:
    return AdminService(request.app[POOL], request[ACTOR])


async def _body(request: web.Request, model: type[M]) -> M:
    return model.model_validate_json(await request.read())


def _path(request: web.Request, name: str) -> str:
    value = request.match_info[name]
    error = storable_text_error(value)
    if error:
        raise UserError(f"{name} {error}", field=name)
    return value


class ListQuery(BaseModel):
    organization_id: str | None = None
    app_id: str | None = None


class StatsQuery(BaseModel):
    integration_id: str | None = None


class AuditQuery(BaseModel):
    integration_id: str | None = None
    limit: int = Field(50, ge=1, le=1000)


def _query(request: web.Request, model: type[M]) -> M:
    values = dict(request.query)
    for key, value in values.items():
        error = storable_text_error(value)
        if error:
            raise UserError(f"{key} {error}", field=key)
    return model.model_validate(values)


async def list_integrations(request: web.Request) -> web.Response:
    query = _query(request, ListQuery)
    return _json(await _service(request).list_integrations(query.organization_id, query.app_id))


async def create_integration(request: web.Request) -> web.Response:
    view = await _service(request).create(await _body(request, IntegrationCreate))
    return _json(view, 201, {"Location": f"{request.path}/{view.id}"})


async def get_integration(request: web.Request) -> web.Response:
    return _json(await _service(request).get(_path(request, "id")))


async def update_integration(request: web.Request) -> web.Response:
    integration_id = _path(request, "id")
    patch = await _body(request, IntegrationUpdate)
    return _json(await _service(request).update(integration_id, patch))


async def delete_integration(request: web.Request) -> web.Response:
    return _json(await _service(request).delete(_path(request, "id")))


async def check_integration(request: web.Request) -> web.Response:
    return _json(await _service(request).check(_path(request, "id"), request.app[SENDER]))


async def stats(request: web.Request) -> web.Response:
    return _json(await _service(request).stats(_query(request, StatsQuery).integration_id))


async def event_deliveries(request: web.Request) -> web.Response:
    return _json(await _service(request).event_deliveries(_path(request, "event_id")))


async def replay(request: web.Request) -> web.Response:
    return _json(await _service(request).replay(await _body(request, ReplayRequest)))


async def discard(request: web.Request) -> web.Response:
    return _json(await _service(request).discard(await _body(request, DiscardRequest)))


async def audit(request: web.Request) -> web.Response:
    query = _query(request, AuditQuery)
    return _json(await _service(request).audit_log(query.integration_id, query.limit))


async def openapi(_request: web.Request) -> web.Response:
    return _json(openapi_document())


ROUTES: list[tuple[str, str, Handler]] = [
    ("GET", "/integrations", list_integrations),
    ("POST", "/integrations", create_integration),
    ("GET", "/integrations/{id}", get_integration),
    ("PATCH", "/integrations/{id}", update_integration),
    ("DELETE", "/integrations/{id}", delete_integration),
    ("POST", "/integrations/{id}/test", check_integration),
    ("GET", "/stats", stats),
    ("GET", "/events/{event_id}/deliveries", event_deliveries),
    ("POST", "/deliveries/replay", replay),
    ("POST", "/deliveries/discard", discard),
    ("GET", "/audit", audit),
    ("GET", "/openapi.json", openapi),
]


def admin_app(pool: asyncpg.Pool, tokens: Mapping[str, str], sender: Sender) -> web.Application:
    """The /api/v1 sub-application. `tokens` maps a name (the audit actor) to its secret."""
    app = web.Application(middlewares=[problems, bearer_auth], client_max_size=1024 * 1024)
    app[POOL] = pool
    app[TOKENS] = dict(tokens)
    app[SENDER] = sender
    for method, path, handler in ROUTES:
        app.router.add_route(method, path, handler)
    return app
