"""The `relay` command: argument parsing and output only; the work is done by the services."""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from relay import __version__, eventloop
from relay.admin.cli import register as register_admin_commands
from relay.bench.cli import register as register_bench
from relay.config import Settings, load_settings
from relay.errors import UserError

# Database, HTTP and logging modules are imported by the handlers that need them, so `--help`
# and argument errors answer at once.

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
  RELAY_HTTP_LISTEN         admin API address (default 127.0.0.1:8080; off for none)
  RELAY_ADMIN_TOKEN         Bearer token that turns the admin API on
  RELAY_ENV_FILE            optional file of RELAY_* settings
  (every setting is listed in the README)
"""


def build_parser() -> argparse.ArgumentParser:
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
    p.add_argument(
        "--concurrency", type=int, metavar="N", help="integration shares delivered at once"
    )
    p.set_defaults(handler=_cmd_run)

    register_admin_commands(commands, database)
    register_bench(commands)

    p = commands.add_parser(
        "admin",
        help="serve the admin HTTP API without delivering",
        description="Serve the admin API (/api/v1/…, OpenAPI at /api/v1/openapi.json) on "
        "RELAY_HTTP_LISTEN without running deliveries. `relay run` serves the same API. "
        "Requests need Authorization: Bearer <token>; with no RELAY_ADMIN_TOKEN(S) the API is off.",
        formatter_class=fmt,
    )
    database(p)
    p.set_defaults(handler=_cmd_admin)

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
    args = build_parser().parse_args(argv)
    handler: Callable[[argparse.Namespace], int] = args.handler
    try:
        return handler(args)
    except UserError as exc:
        print(f"relay: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except Exception as exc:
        if not _is_database_error(exc):
            raise
        from relay.logging import mask_url_password

        if isinstance(exc, OSError):
            reason = exc.strerror or str(exc)
            message = f"cannot reach PostgreSQL ({reason.lower()}): check RELAY_DATABASE_URL"
        else:
            message = f"PostgreSQL refused: {mask_url_password(str(exc))}"
        print(f"relay: error: {message}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


def _is_database_error(exc: Exception) -> bool:
    """Cannot connect, or PostgreSQL refused: a one-line error, not a traceback."""
    asyncpg = sys.modules.get("asyncpg")
    database_errors = (
        (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.exceptions.InternalClientError)
        if asyncpg
        else ()
    )
    return isinstance(exc, (OSError, *database_errors))


def _settings(args: argparse.Namespace, **extra: Any) -> Settings:
    return load_settings(database_url=getattr(args, "database_url", None), **extra)


def _cmd_migrate(args: argparse.Namespace) -> int:
    from relay.store import connect, migrate

    url = _settings(args).require_database_url()

    async def go() -> int:
        conn = await connect(url)
        try:
            return await migrate(conn)
        finally:
            await conn.close()

    version = eventloop.run(go())
    print(f"schema relay is at version {version}")
    return 0


def _daemon_settings(args: argparse.Namespace, **extra: Any) -> Settings:
    from relay.logging import configure_logging

    settings = _settings(args, **extra)
    settings.require_database_url()
    configure_logging(settings.log_level, settings.log_format)
    return settings


def _cmd_run(args: argparse.Namespace) -> int:
    from relay.daemon import run_worker

    settings = _daemon_settings(args, concurrency=args.concurrency)
    eventloop.run(run_worker(settings, until_idle=args.until_idle, serve_http=not args.until_idle))
    return 0


def _cmd_admin(args: argparse.Namespace) -> int:
    from relay.daemon import serve_admin

    eventloop.run(serve_admin(_daemon_settings(args)))
    return 0


def _cmd_sink(args: argparse.Namespace) -> int:
    from relay.daemon import serve_until_signalled
    from relay.logging import configure_logging
    from relay.sink import Sink, start_sink

    configure_logging()
    sink = Sink(
        write_keys=set(args.write_key), lenient_keys=args.lenient_keys, record_path=args.record
    )

    async def serve() -> None:
        runner, url = await start_sink(sink, args.host, args.port)
        print(f"sink listening on {url} (stats: {url}/_sink/stats)", flush=True)
        await serve_until_signalled(runner)

    eventloop.run(serve())
    return 0


def _cmd_demo(args: argparse.Namespace) -> int:
    from relay.demo import run_demo

    with contextlib.suppress(BrokenPipeError):
        run_demo(_settings(args), sys.stdout)
    return 0
