"""The OpenAPI 3.1 document of the admin API, built from the same pydantic models the routes
validate with, so the two cannot drift (a test also compares it with the router)."""

from __future__ import annotations

from functools import cache
from typing import Any

from pydantic import BaseModel
from pydantic.json_schema import models_json_schema

from relay import __version__
from relay.admin.models import (
    AuditEntry,
    Changed,
    CheckResult,
    DeletedIntegration,
    DiscardRequest,
    EventDeliveries,
    IntegrationCreate,
    IntegrationStats,
    IntegrationUpdate,
    IntegrationView,
    ReplayRequest,
)


class FieldError(BaseModel):
    field: str
    message: str


class Problem(BaseModel):
    """RFC 9457 problem details."""

    type: str
    title: str
    status: int
    detail: str
    instance: str | None = None
    errors: list[FieldError] | None = None


REQUESTS: list[type[BaseModel]] = [
    IntegrationCreate,
    IntegrationUpdate,
    ReplayRequest,
    DiscardRequest,
]
RESPONSES: list[type[BaseModel]] = [
    IntegrationView, DeletedIntegration, CheckResult, IntegrationStats, EventDeliveries, Changed,
    AuditEntry, Problem,
]  # fmt: skip


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


def _ok(schema: dict[str, Any], description: str, status: str = "200") -> dict[str, Any]:
    return {
        status: {"description": description, "content": {"application/json": {"schema": schema}}}
    }


def _problems(*statuses: int) -> dict[str, Any]:
    names = {400: "malformed request", 401: "missing or wrong token", 404: "not found",
             409: "conflicts with the integration's current settings",
             422: "invalid input (see errors)", 405: "method not allowed"}  # fmt: skip
    return {
        str(s): {
            "description": names[s],
            "content": {"application/problem+json": {"schema": _ref(Problem)}},
        }
        for s in (401, *statuses)
    }


def _body(model: type[BaseModel]) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": _ref(model)}}}


def _param(name: str, where: str = "path", schema: dict[str, Any] | None = None) -> dict[str, Any]:
    return {
        "name": name,
        "in": where,
        "required": where == "path",
        "schema": schema or {"type": "string"},
    }


def _list_of(model: type[BaseModel]) -> dict[str, Any]:
    return {"type": "array", "items": _ref(model)}


@cache
def openapi_document() -> dict[str, Any]:
    _, schemas = models_json_schema(
        [(m, "validation") for m in REQUESTS] + [(m, "serialization") for m in RESPONSES],
        ref_template="#/components/schemas/{model}",
    )
    integration_id = _param("id")
    paths: dict[str, Any] = {
        "/integrations": {
            "get": {
                "summary": "List integrations",
                "operationId": "listIntegrations",
                "parameters": [_param("organization_id", "query"), _param("app_id", "query")],
                "responses": {**_ok(_list_of(IntegrationView), "integrations"), **_problems(422)},
            },
            "post": {
                "summary": "Create an integration",
                "operationId": "createIntegration",
                "requestBody": _body(IntegrationCreate),
                "responses": {
                    **_ok(_ref(IntegrationView), "created", "201"),
                    **_problems(400, 422),
                },
            },
        },
        "/integrations/{id}": {
            "parameters": [integration_id],
            "get": {
                "summary": "Show an integration (the write key masked)",
                "operationId": "getIntegration",
                "responses": {
                    **_ok(_ref(IntegrationView), "the integration"),
                    **_problems(404, 400),
                },
            },
            "patch": {
                "summary": "Change an integration; takes effect at the next send",
                "operationId": "updateIntegration",
                "requestBody": _body(IntegrationUpdate),
                "responses": {
                    **_ok(_ref(IntegrationView), "the changed integration"),
                    **_problems(400, 404, 409, 422),
                },
            },
            "delete": {
                "summary": "Delete an integration and its deliveries",
                "operationId": "deleteIntegration",
                "responses": {
                    **_ok(_ref(DeletedIntegration), "deleted"),
                    **_problems(400, 404),
                },
            },
        },
        "/integrations/{id}/test": {
            "parameters": [integration_id],
            "post": {
                "summary": "Send one labelled test track call and report Segment's answer",
                "description": "ok=true only proves the endpoint: Segment answers 200 to a "
                "wrong write key too; its source debugger proves the key.",
                "operationId": "testIntegration",
                "responses": {
                    **_ok(_ref(CheckResult), "what Segment answered"),
                    **_problems(400, 404),
                },
            },
        },
        "/stats": {
            "get": {
                "summary": "Deliveries by status, oldest pending, last error, per integration",
                "operationId": "deliveryStats",
                "parameters": [_param("integration_id", "query")],
                "responses": {
                    **_ok(_list_of(IntegrationStats), "per integration"),
                    **_problems(400, 404, 422),
                },
            },
        },
        "/events/{event_id}/deliveries": {
            "parameters": [_param("event_id")],
            "get": {
                "summary": "One event's deliveries with their attempt history",
                "operationId": "eventDeliveries",
                "responses": {**_ok(_ref(EventDeliveries), "the event"), **_problems(400, 404)},
            },
        },
        "/deliveries/replay": {
            "post": {
                "summary": "Re-queue failed (or skipped) deliveries, attempts reset",
                "operationId": "replayDeliveries",
                "requestBody": _body(ReplayRequest),
                "responses": {**_ok(_ref(Changed), "re-queued"), **_problems(400, 404, 422)},
            },
        },
        "/deliveries/discard": {
            "post": {
                "summary": "Drop pending (or failed) deliveries on purpose; they become skipped",
                "operationId": "discardDeliveries",
                "requestBody": _body(DiscardRequest),
                "responses": {**_ok(_ref(Changed), "discarded"), **_problems(400, 404, 422)},
            },
        },
        "/audit": {
            "get": {
                "summary": "Who changed what, newest first",
                "operationId": "auditLog",
                "parameters": [
                    _param("integration_id", "query"),
                    _param("limit", "query", {"type": "integer", "minimum": 1, "maximum": 1000}),
                ],
                "responses": {**_ok(_list_of(AuditEntry), "entries"), **_problems(400, 422)},
            },
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "operationId": "openapi",
                "security": [],
                "responses": {
                    "200": {"description": "OpenAPI 3.1", "content": {"application/json": {}}}
                },
            },
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "relay admin API",
            "version": __version__,
            "description": "Integrations (Segment destinations) and their deliveries. Write keys "
            "are write-only: responses show their last 4 characters.",
        },
        "servers": [{"url": "/api/v1"}],
        "security": [{"bearerAuth": []}],
        "components": {
            "schemas": schemas["$defs"],
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer"}},
        },
        "paths": paths,
    }
