"""The `relay` command: argument parsing and output only; the work is done by the services."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

import asyncpg
import orjson
from pydantic import ValidationError

from relay import __version__
from relay.config import Settings, SettingsError, load_settings
from relay.daemon import check_schema, run_worker
from relay.integrations import NewIntegration, create_integration
from relay.logging import configure_logging, mask_url_password
from relay.model import EventType
from relay.sink import Sink, start_sink
from relay.store import Store, connect, create_pool, migrate

EVENT_NAMES = ", ".join(repr(e.value) for e in EventType)

MAIN_HELP = """\
relay forwards survey lifecycle events (Flow Viewed, Flow Dismissed, Response Submitted) from
the PostgreSQL outbox table relay.events to Segment as track calls, one Segment source per
integration, with renames, disables, pause, and Segment's documented retry policy.

first time:    relay demo                      (embedded PostgreSQL + local sink, no set-up)
production:    relay migrate && relay run      (with RELAY_DATABASE_URL set)
"""

ENV_HELP = """\
environment:
  RELAY_DATABASE_URL        PostgreSQL URL (or --database-url)
  RELAY_ENDPOINT_OVERRIDES  JSON object, official Segment base URL -> replacement URL
  RELAY_RETRY_SCHEDULE      delays between retries (default 1m,2m,4m,8m,16m,32m,64m,6h)
  RELAY_ENV_FILE            optional file of RELAY_* settings
  (every setting is listed in the README)
"""


class UsageError(Exception):
    """Bad input on the command line; the message is one line naming the option."""


def _parser() -> argparse.ArgumentParser:
    fmt = argparse.RawDescriptionHelpFormatter
    parser = argparse.ArgumentParser(
        prog="relay", description=MAIN_HELP, epilog=ENV_HELP, formatter_class=fmt
    )
    parser.add_argument("--version", action="version", version=f"relay {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    def database(p: argparse.ArgumentParser) -> None:
        p.add_argument(
            "--database-url", metavar="URL", help="PostgreSQL URL (default: $RELAY_DATABASE_URL)"
        )

    p = commands.add_parser(
        "migrate",
        help="create or update the relay schema",
        description="Apply schema.sql to the database: creates the schema `relay` with its "
        "tables and the outbox trigger. Idempotent; run it on every deploy.",
        formatter_class=fmt,
    )
    database(p)
    p.set_defaults(handler=_cmd_migrate)

    p = commands.add_parser(
        "run",
        help="run the relay daemon",
        description="Deliver due events to Segment until SIGTERM/SIGINT (then finish or "
        "release in-flight work and exit 0). Any number of `relay run` processes may share "
        "one database.",
        epilog=ENV_HELP,
        formatter_class=fmt,
    )
    database(p)
    p.add_argument(
        "--until-idle",
        action="store_true",
        help="exit once nothing is due (batch jobs, demos, tests); retries scheduled for "
        "later stay in the database for the next run",
    )
    p.add_argument("--concurrency", type=int, metavar="N", help="claim-and-send loops")
    p.set_defaults(handler=_cmd_run)

    p = commands.add_parser(
        "integrations",
        help="manage integrations (Segment destinations)",
        description="Integrations connect an organization's app to one Segment source.",
    )
    sub = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    c = sub.add_parser(
        "create",
        help="create an integration and print its id",
        description="Create an integration. Events of the organization+app inserted from now "
        "on are delivered to it. The write key is stored and never printed.",
        epilog=f"events: {EVENT_NAMES}\n\nexample:\n  relay integrations create "
        "--organization-id org_1 --app-id app_1 --write-key $KEY --region eu \\\n"
        "      --rename 'Response Submitted=survey_responded' --disable 'Flow Dismissed'",
        formatter_class=fmt,
    )
    database(c)
    c.add_argument("--organization-id", required=True, metavar="ORG")
    c.add_argument("--app-id", required=True, metavar="APP")
    c.add_argument(
        "--write-key", required=True, metavar="KEY", help="the Segment source's write key"
    )
    c.add_argument("--region", required=True, choices=["global", "eu"])
    c.add_argument(
        "--endpoint",
        metavar="URL",
        help="global: https://api.segment.io; eu: https://events.eu1.segmentapis.com "
        "(default) or https://eu1.api.segmentapis.com",
    )
    c.add_argument("--name", metavar="NAME", help="a label for people (default: Segment (REGION))")
    c.add_argument(
        "--rename",
        action="append",
        default=[],
        metavar="EVENT=NAME",
        help="send EVENT under another name (repeatable)",
    )
    c.add_argument(
        "--disable", action="append", default=[], metavar="EVENT", help="do not send EVENT"
    )
    c.add_argument("--json", action="store_true", help='print {"id": …} instead of the bare id')
    c.set_defaults(handler=_cmd_integrations_create)

    p = commands.add_parser(
        "sink",
        help="serve a local Segment-compatible tracking API",
        description="A local stand-in for Segment's tracking API (/v1/track, /v1/batch) that "
        "enforces Segment's limits, records accepted calls and can be told to fail. Point the "
        'relay at it with RELAY_ENDPOINT_OVERRIDES=\'{"https://api.segment.io": '
        '"http://127.0.0.1:8765"}\'.',
        epilog="control: GET /_sink/stats, GET /_sink/calls, POST /_sink/faults "
        '{"status": 503, "times": 3, "retry_after": 5}, DELETE /_sink/faults, POST /_sink/reset',
        formatter_class=fmt,
    )
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument(
        "--write-key",
        action="append",
        default=[],
        metavar="KEY",
        help="accept this key (repeatable); with none, any key is accepted",
    )
    p.add_argument(
        "--lenient-keys",
        action="store_true",
        help="answer unknown keys 200 and drop their events, as Segment does (default: 401)",
    )
    p.add_argument(
        "--record", type=Path, metavar="FILE", help="append accepted calls as JSON lines"
    )
    p.set_defaults(handler=_cmd_sink)

    p = commands.add_parser(
        "demo",
        help="see the relay work end to end, no set-up needed",
        description="Start a throwaway embedded PostgreSQL (unless RELAY_DATABASE_URL is set), "
        "apply the schema, start a local sink, create an integration with one event renamed "
        "and one disabled, insert sample events of all three types, relay them and print "
        "what Segment received.",
        formatter_class=fmt,
    )
    database(p)
    p.set_defaults(handler=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except (SettingsError, UsageError) as exc:
        _fail(str(exc))
    except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
        _fail(f"database error: {mask_url_password(str(exc))}")
    except KeyboardInterrupt:
        return 130


def _fail(message: str) -> NoReturn:
    print(f"relay: error: {message}", file=sys.stderr)
    raise SystemExit(2)


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return load_settings(database_url=getattr(args, "database_url", None), **extra)


def _cmd_migrate(args: argparse.Namespace) -> int:
    settings = _settings(args)
    url = settings.require_database_url()

    async def go() -> int:
        conn = await connect(url)
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    version = asyncio.run(go())
    print(f"schema relay is at version {version}")
    return 0


def _cmd_run(args: argparse.Namespace) -> int:
    settings = _settings(args, concurrency=args.concurrency)
    settings.require_database_url()
    configure_logging(settings.log_level, settings.log_format)
    asyncio.run(run_worker(settings, until_idle=args.until_idle))
    return 0


def _event_settings(renames: list[str], disables: list[str]) -> dict[str, dict[str, Any]]:
    valid = {e.value for e in EventType}
    result: dict[str, dict[str, Any]] = {}
    for item in renames:
        event, sep, name = item.partition("=")
        if not sep:
            raise UsageError(f"--rename {item!r}: write it as EVENT=NEW_NAME")
        if event not in valid:
            raise UsageError(f"--rename: unknown event {event!r}; events are {EVENT_NAMES}")
        result.setdefault(event, {})["rename"] = name
    for event in disables:
        if event not in valid:
            raise UsageError(f"--disable: unknown event {event!r}; events are {EVENT_NAMES}")
        result.setdefault(event, {})["enabled"] = False
    return result


def parse_new_integration(values: dict[str, Any]) -> NewIntegration:
    """Validate, naming the offending option in the error."""
    try:
        return NewIntegration.model_validate(values)
    except ValidationError as exc:
        error = exc.errors(include_url=False)[0]
        field = str(error["loc"][0]) if error["loc"] else "value"
        message = error["msg"].removeprefix("Value error, ")
        option = "--" + field.replace("_", "-") if field in NewIntegration.model_fields else field
        if field == "event_settings":
            option = "--rename/--disable"
        raise UsageError(f"invalid {option}: {message}") from None


def _cmd_integrations_create(args: argparse.Namespace) -> int:
    new = parse_new_integration(
        {
            "organization_id": args.organization_id,
            "app_id": args.app_id,
            "write_key": args.write_key,
            "region": args.region,
            "endpoint": args.endpoint,
            "name": args.name,
            "event_settings": _event_settings(args.rename, args.disable),
        }
    )
    url = _settings(args).require_database_url()

    async def go() -> str:
        pool = await create_pool(url, max_size=1)
        try:
            await check_schema(pool)
            return (await create_integration(Store(pool), new)).id
        finally:
            await pool.close()

    integration_id = asyncio.run(go())
    print(orjson.dumps({"id": integration_id}).decode() if args.json else integration_id)
    return 0


def _cmd_sink(args: argparse.Namespace) -> int:
    configure_logging()
    sink = Sink(
        write_keys=set(args.write_key), lenient_keys=args.lenient_keys, record_path=args.record
    )

    async def serve() -> None:
        runner, url = await start_sink(sink, args.host, args.port)
        print(f"sink listening on {url} (stats: {url}/_sink/stats)", flush=True)
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await stop.wait()
        await runner.cleanup()

    asyncio.run(serve())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from relay.demo import run_demo

    with contextlib.suppress(BrokenPipeError):
        run_demo(_settings(args), sys.stdout)
    return 0
