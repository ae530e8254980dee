"""`relay integrations …`, `relay deliveries …` and `relay audit`: argument parsing and output
for the admin service. Human tables by default, --json for scripts."""

from __future__ import annotations

import argparse
import getpass
import sys
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeVar

import orjson
from pydantic import BaseModel, ValidationError

from relay import eventloop
from relay.admin.models import (
    CheckResult,
    DiscardRequest,
    EventPatch,
    IntegrationCreate,
    IntegrationUpdate,
    IntegrationView,
    ReplayRequest,
)
from relay.config import Settings, load_settings
from relay.errors import UsageError
from relay.model import EventType

if TYPE_CHECKING:
    from relay.admin.service import AdminService

# The database, HTTP and service modules are imported by the handlers that use them: `--help`
# and argument errors stay fast.

T = TypeVar("T")
EVENTS = [e.value for e in EventType]
EVENT_LIST = ", ".join(repr(e) for e in EVENTS)
FMT = argparse.RawDescriptionHelpFormatter


def cli_actor() -> str:
    """Who the audit log names for CLI changes."""
    try:
        return f"cli:{getpass.getuser()}"
    except (KeyError, OSError):
        return "cli"


def _with_service(args: argparse.Namespace, work: Callable[[AdminService], Awaitable[T]]) -> T:
    from relay.admin.service import AdminService
    from relay.daemon import check_schema
    from relay.store import create_pool

    settings = load_settings(database_url=args.database_url)
    url = settings.require_database_url()

    async def go() -> T:
        pool = await create_pool(url, max_size=2)
        try:
            await check_schema(pool)
            return await work(AdminService(pool, cli_actor()))
        finally:
            await pool.close()

    return eventloop.run(go())


def validate(model: type[BaseModel], values: dict[str, Any], options: dict[str, str]) -> Any:
    """Validate with pydantic, naming the command-line option at fault in one line."""
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = str(error["loc"][0]) if error["loc"] else ""
        message = error["msg"].removeprefix("Value error, ")
        option = options.get(field, "--" + field.replace("_", "-") if field else "input")
        raise UsageError(f"invalid {option}: {message}") from None


def _read_key(value: str | None) -> str | None:
    """`--write-key -` reads the key from standard input, keeping it out of shell history."""
    if value == "-":
        return sys.stdin.readline().strip()
    return value


def _emit(args: argparse.Namespace, data: Any, human: Callable[[], str]) -> None:
    if getattr(args, "json", False):
        if isinstance(data, BaseModel):
            data = data.model_dump(mode="json")
        elif isinstance(data, list):
            data = [d.model_dump(mode="json") if isinstance(d, BaseModel) else d for d in data]
        print(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode())
    else:
        print(human())


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = ["  ".join(h.upper().ljust(w) for h, w in zip(headers, widths, strict=True))]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in cells]
    return "\n".join(line.rstrip() for line in lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, datetime):
        return value.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    return str(value)


def age(seconds: float | None) -> str:
    """A duration in its two largest units: 45s, 4m05s, 3h07m, 2d04h."""
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def show_integration(view: IntegrationView) -> str:
    lines = [
        f"{view.id}  {view.name}",
        f"  organization  {view.organization_id}",
        f"  app           {view.app_id}",
        f"  status        {view.status.value}",
        f"  region        {view.region.value}",
        f"  endpoint      {view.endpoint}",
        f"  write key     {view.write_key_hint}",
        "  messageIds    "
        + (f"<event id>.{view.message_id_suffix}" if view.message_id_suffix else "<event id>"),
    ]
    if view.rate_limited_until:
        lines.append(f"  rate limited  until {_cell(view.rate_limited_until)}")
    lines.append("")
    lines.append(
        table(
            ["event", "enabled", "sent as"],
            [[e.value, "yes" if s.enabled else "no", s.sent_as] for e, s in view.events.items()],
        )
    )
    return "\n".join(lines)


def list_integrations(views: list[IntegrationView]) -> str:
    if not views:
        return "no integrations"
    return table(
        ["id", "organization", "app", "name", "region", "status", "key", "events"],
        [
            [
                v.id,
                v.organization_id,
                v.app_id,
                v.name,
                v.region.value,
                v.status.value,
                v.write_key_hint,
                ", ".join(
                    e.value if s.sent_as == e.value else f"{e.value}→{s.sent_as or 'off'}"
                    for e, s in v.events.items()
                ),
            ]
            for v in views
        ],
    )


# -- handlers --------------------------------------------------------------------------------


def _event_settings(renames: list[str], disables: list[str]) -> dict[str, dict[str, Any]]:
    result: dict[str, dict[str, Any]] = {}
    for item in renames:
        event, sep, name = item.partition("=")
        if not sep:
            raise UsageError(f"--rename {item!r}: write it as EVENT=NEW_NAME")
        if event not in EVENTS:
            raise UsageError(f"--rename: unknown event {event!r}; events are {EVENT_LIST}")
        result.setdefault(event, {})["rename"] = name
    for event in disables:
        if event not in EVENTS:
            raise UsageError(f"--disable: unknown event {event!r}; events are {EVENT_LIST}")
        result.setdefault(event, {})["enabled"] = False
    return result


def _create(args: argparse.Namespace) -> int:
    new = validate(
        IntegrationCreate,
        {
            "organization_id": args.organization_id,
            "app_id": args.app_id,
            "write_key": _read_key(args.write_key),
            "region": args.region,
            "endpoint": args.endpoint,
            "name": args.name,
            "events": _event_settings(args.rename, args.disable),
        },
        {"events": "--rename/--disable"},
    )
    view = _with_service(args, lambda s: s.create(new))
    _emit(args, view, lambda: view.id)
    return 0


def _list(args: argparse.Namespace) -> int:
    views = _with_service(args, lambda s: s.list_integrations(args.organization_id, args.app_id))
    _emit(args, views, lambda: list_integrations(views))
    return 0


def _show(args: argparse.Namespace) -> int:
    view = _with_service(args, lambda s: s.get(args.id))
    _emit(args, view, lambda: show_integration(view))
    return 0


def _update_with(args: argparse.Namespace, values: dict[str, Any]) -> int:
    patch = validate(IntegrationUpdate, values, {"events": "EVENT/NEW_NAME"})
    view = _with_service(args, lambda s: s.update(args.id, patch))
    _emit(args, view, lambda: show_integration(view))
    return 0


def _update(args: argparse.Namespace) -> int:
    values = {
        "name": args.name,
        "write_key": _read_key(args.write_key),
        "region": args.region,
        "endpoint": args.endpoint,
    }
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        raise UsageError("nothing to change: give --name, --write-key, --region or --endpoint")
    return _update_with(args, values)


def _event_patch(args: argparse.Namespace, patch: dict[str, Any]) -> int:
    validate(EventPatch, patch, {"rename": "NEW_NAME"})
    return _update_with(args, {"events": {args.event: patch}})


def _rename_event(args: argparse.Namespace) -> int:
    rename = None if args.new_name == args.event else args.new_name
    return _event_patch(args, {"rename": rename})


def _set_status(status: str) -> Callable[[argparse.Namespace], int]:
    return lambda args: _update_with(args, {"status": status})


def _delete(args: argparse.Namespace) -> int:
    result = _with_service(args, lambda s: s.delete(args.id))
    _emit(
        args,
        result,
        lambda: (
            f"deleted {result.id} with {result.dropped_deliveries} deliveries "
            f"({result.dropped_pending} pending)"
        ),
    )
    return 0


def _check(args: argparse.Namespace) -> int:
    from relay.sender import Sender

    settings: Settings = load_settings(database_url=args.database_url)

    async def probe(service: AdminService) -> CheckResult:
        async with Sender(
            base_url=settings.base_url,
            total_timeout=settings.http_timeout_seconds,
            connect_timeout=settings.http_connect_timeout_seconds,
        ) as sender:
            return await service.check(args.id, sender)

    result = _with_service(args, probe)
    _emit(args, result, lambda: result.message)
    return 0 if result.ok else 1


def _stats(args: argparse.Namespace) -> int:
    stats = _with_service(args, lambda s: s.stats(args.integration))
    _emit(
        args,
        stats,
        lambda: (
            table(
                [
                    "integration",
                    "status",
                    "pending",
                    "due",
                    "scheduled",
                    "delivered",
                    "skipped",
                    "failed",
                    "oldest pending",
                    "last error",
                ],
                [
                    [
                        s.integration_id,
                        s.status.value,
                        s.pending,
                        s.due,
                        s.scheduled,
                        s.delivered,
                        s.skipped,
                        s.failed,
                        age(s.oldest_pending_age_seconds),
                        (f"{_cell(s.last_error_at)} {s.last_error}" if s.last_error else None),
                    ]
                    for s in stats
                ],
            )
            if stats
            else "no integrations"
        ),
    )
    return 0


def _show_event(args: argparse.Namespace) -> int:
    found = _with_service(args, lambda s: s.event_deliveries(args.event_id))

    def human() -> str:
        lines = [
            f"{found.event_id}  {found.event_type}  {found.organization_id}/{found.app_id}  "
            f"occurred {_cell(found.occurred_at)}"
        ]
        if not found.deliveries:
            lines.append("  no deliveries (no integration existed for its app when it was written)")
        for d in found.deliveries:
            lines.append("")
            lines.append(
                f"  {d.integration_id} ({d.integration_name})  {d.status.value}  "
                f"attempts {d.attempts}  messageId {d.message_id}"
            )
            if d.status.value == "pending" and d.next_attempt_at:
                lines.append(f"    next attempt {_cell(d.next_attempt_at)}")
            if d.last_error and not d.history:
                lines.append(f"    {d.last_error}")
            for a in d.history:
                took = f"{a.duration_ms} ms" if a.duration_ms is not None else "-"
                code = f"HTTP {a.status_code}" if a.status_code else "no answer"
                lines.append(
                    f"    #{a.attempt}  {_cell(a.at)}  {a.outcome:<9}  {code:<9}  {took:>7}"
                    + (f"  {a.error}" if a.error else "")
                )
        return "\n".join(lines)

    _emit(args, found, human)
    return 0


def _replay(args: argparse.Namespace) -> int:
    request = validate(
        ReplayRequest,
        {
            "integration_id": args.integration,
            "status": args.status,
            "since": args.since,
            "event_ids": args.event or None,
        },
        {"integration_id": "--integration", "event_ids": "--event"},
    )
    changed = _with_service(args, lambda s: s.replay(request))
    _emit(args, changed, lambda: f"re-queued {changed.count} {args.status} deliveries")
    return 0


def _discard(args: argparse.Namespace) -> int:
    request = validate(
        DiscardRequest,
        {"integration_id": args.integration, "status": args.status},
        {"integration_id": "--integration"},
    )
    changed = _with_service(args, lambda s: s.discard(request))
    _emit(
        args,
        changed,
        lambda: (
            f"discarded {changed.count} {args.status} deliveries (now skipped; "
            f"`relay deliveries replay --status skipped` brings them back)"
        ),
    )
    return 0


def _audit(args: argparse.Namespace) -> int:
    entries = _with_service(args, lambda s: s.audit_log(args.integration, args.limit))
    _emit(
        args,
        entries,
        lambda: (
            table(
                ["at", "actor", "action", "integration", "details"],
                [
                    [e.at, e.actor, e.action, e.integration_id, orjson.dumps(e.details).decode()]
                    for e in entries
                ],
            )
            if entries
            else "no changes recorded"
        ),
    )
    return 0


# -- parsers ---------------------------------------------------------------------------------


def register(commands: Any, database: Callable[[argparse.ArgumentParser], None]) -> None:
    """Add the admin command groups to the `relay` parser."""

    def command(
        group: Any,
        name: str,
        handler: Callable[[argparse.Namespace], int],
        help: str,
        description: str,
        epilog: str | None = None,
        with_json: bool = True,
    ) -> argparse.ArgumentParser:
        p: argparse.ArgumentParser = group.add_parser(
            name, help=help, description=description, epilog=epilog, formatter_class=FMT
        )
        database(p)
        if with_json:
            p.add_argument("--json", action="store_true", help="print JSON instead of text")
        p.set_defaults(handler=handler)
        return p

    integrations = commands.add_parser(
        "integrations",
        help="create, inspect and change integrations (Segment destinations)",
        description="An integration connects one organization's app to one Segment source: "
        "its write key, region and endpoint, status (active or paused) and per-event settings. "
        "Changes take effect at the next send; running workers need no restart. Every change "
        "is recorded in the audit log (`relay audit`). Write keys are never shown: reads give "
        "their last 4 characters.",
        epilog=f"events: {EVENT_LIST}\n\nexit status: 0 done, 1 not found or test failed, "
        "2 invalid input",
        formatter_class=FMT,
    )
    group = integrations.add_subparsers(dest="action", metavar="ACTION", required=True)

    p = command(
        group,
        "create",
        _create,
        "create an integration and print its id",
        "Create an integration. Events of the organization+app inserted from now on are "
        "delivered to it. The first integration of an app sends event ids as messageIds; any "
        "further one appends a fixed suffix (Segment dedupes messageIds across workspaces).",
        epilog="example:\n  relay integrations create --organization-id org_1 --app-id app_1 "
        "--region eu --write-key - \\\n      --rename 'Response Submitted=survey_responded' "
        "--disable 'Flow Dismissed' < key.txt",
    )
    p.add_argument("--organization-id", required=True, metavar="ORG")
    p.add_argument("--app-id", required=True, metavar="APP")
    _key_option(p, required=True)
    p.add_argument("--region", required=True, choices=["global", "eu"])
    _endpoint_option(p)
    p.add_argument("--name", metavar="NAME", help="a label for people (default: Segment (REGION))")
    p.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="EVENT=NAME",
        help="send EVENT under another name (repeatable)",
    )
    p.add_argument(
        "--disable",
        action="append",
        default=[],
        metavar="EVENT",
        help="do not send EVENT (repeatable)",
    )

    p = command(
        group,
        "list",
        _list,
        "list integrations",
        "List integrations, optionally of one organization or app.",
    )
    p.add_argument("--organization-id", metavar="ORG")
    p.add_argument("--app-id", metavar="APP")

    p = command(
        group,
        "show",
        _show,
        "show one integration",
        "Show an integration: settings, masked key, and how each event is sent.",
    )
    p.add_argument("id", metavar="ID")

    p = command(
        group,
        "update",
        _update,
        "change name, write key, region or endpoint",
        "Change an integration. A new --region without --endpoint takes that region's default "
        "endpoint; an --endpoint must belong to the (new or current) region. Pending "
        "deliveries use the new settings at their next send.",
    )
    p.add_argument("id", metavar="ID")
    p.add_argument("--name", metavar="NAME")
    _key_option(p, required=False)
    p.add_argument("--region", choices=["global", "eu"])
    _endpoint_option(p)

    for name, handler, text in (
        ("rename-event", _rename_event, "send an event under another name"),
        ("enable-event", lambda a: _event_patch(a, {"enabled": True}), "send an event again"),
        (
            "disable-event",
            lambda a: _event_patch(a, {"enabled": False}),
            "stop sending an event (its deliveries become skipped)",
        ),
    ):
        p = command(
            group,
            name,
            handler,
            text,
            f"{text[0].upper()}{text[1:]}. Renaming an event to its own name removes the "
            "rename. Names are at most 200 printable characters and must differ from the "
            "names the other events are sent as.",
        )
        p.add_argument("id", metavar="ID")
        p.add_argument("event", choices=EVENTS, metavar="EVENT", help=EVENT_LIST)
        if name == "rename-event":
            p.add_argument("new_name", metavar="NEW_NAME")

    for name, status, text in (
        ("pause", "paused", "hold this integration's events; nothing is lost"),
        ("resume", "active", "deliver again, starting with what was held"),
    ):
        p = command(group, name, _set_status(status), text, f"{text[0].upper()}{text[1:]}.")
        p.add_argument("id", metavar="ID")

    p = command(
        group,
        "delete",
        _delete,
        "delete an integration and its deliveries",
        "Delete an integration with all its deliveries (pending ones are dropped). "
        "The audit log keeps the record.",
    )
    p.add_argument("id", metavar="ID")

    p = command(
        group,
        "test",
        _check,
        "send one test track call and say what Segment answered",
        "Send one track call named 'Relay Test Event' (anonymousId relay-test) through the "
        "integration's endpoint and say in plain words what Segment answered: a refused key, "
        "a wrong region or host, or success. Segment answers 200 even to a wrong write key, so "
        "a success only proves the endpoint; the source's debugger in Segment proves the key.",
        epilog="exit status: 0 Segment accepted the call, 1 it did not (or no integration)",
    )
    p.add_argument("id", metavar="ID")

    deliveries = commands.add_parser(
        "deliveries",
        help="backlog, dead letters, history; replay or discard",
        description="Each event has one delivery per integration of its app: pending, "
        "delivered, skipped (event disabled, or discarded) or failed (dead letter).",
        formatter_class=FMT,
    )
    group = deliveries.add_subparsers(dest="action", metavar="ACTION", required=True)
    p = command(
        group,
        "stats",
        _stats,
        "counts by status, oldest pending, last error",
        "Per integration: deliveries by status (pending split into due now and "
        "scheduled), the age of the oldest pending one and the latest error.",
    )
    p.add_argument("--integration", metavar="ID")
    p = command(
        group,
        "show",
        _show_event,
        "one event's deliveries and attempt history",
        "Every delivery of one event with its messageId and each attempt: time, "
        "outcome, HTTP status, duration and error.",
    )
    p.add_argument("event_id", metavar="EVENT_ID")
    p = command(
        group,
        "replay",
        _replay,
        "re-queue dead letters (attempts reset)",
        "Re-queue one integration's failed deliveries (or skipped ones) with their attempt "
        "count reset, e.g. after fixing a write key. Delivered events are never replayed: "
        "Segment would drop them as duplicates.",
        epilog="example:\n  relay deliveries replay --integration int_1 --since 2026-11-23T08:00Z",
    )
    p.add_argument("--integration", required=True, metavar="ID")
    p.add_argument("--status", choices=["failed", "skipped"], default="failed")
    p.add_argument("--since", metavar="TIME", help="only those changed since (ISO 8601 with zone)")
    p.add_argument(
        "--event",
        action="append",
        default=[],
        metavar="EVENT_ID",
        help="only this event (repeatable)",
    )
    p = command(
        group,
        "discard",
        _discard,
        "drop a backlog on purpose",
        "Mark one integration's pending (or failed) deliveries as skipped, with who and when "
        "as the reason. `relay deliveries replay --status skipped` undoes it.",
    )
    p.add_argument("--integration", required=True, metavar="ID")
    p.add_argument("--status", required=True, choices=["pending", "failed"])

    p = commands.add_parser(
        "audit",
        help="who changed what, and when",
        description="The audit log: every change made through the CLI or the HTTP API, newest "
        "first, with the actor (cli:USER or the API token's name). Write keys never appear.",
        formatter_class=FMT,
    )
    database(p)
    p.add_argument("--integration", metavar="ID")
    p.add_argument("--limit", type=int, default=50, metavar="N")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(handler=_audit)


def _key_option(p: argparse.ArgumentParser, *, required: bool) -> None:
    p.add_argument(
        "--write-key",
        required=required,
        metavar="KEY",
        help="the Segment source's write key; '-' reads it from standard input",
    )


def _endpoint_option(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--endpoint",
        metavar="URL",
        help="global: https://api.segment.io; eu: https://events.eu1.segmentapis.com "
        "(default) or https://eu1.api.segmentapis.com",
    )
