"""`relay bench` on the command line: its options only, so `relay --help` stays fast; the
benchmark's machinery loads when the command runs."""

from __future__ import annotations

import argparse

DESCRIPTION = """\
Measure, on this machine, with the embedded PostgreSQL (or --database-url) and the local
Segment-compatible sink, each in its own process:

  drain     a cold `relay run --until-idle` delivering a backlog of --events pending events
            over --integrations integrations (both regions, Flow Dismissed disabled,
            Response Submitted renamed): events/s, CPU seconds, peak RSS
  fan-out   each event going to 5 integrations of one app: deliveries/s
  steady    events inserted at --rate a second for --seconds while `relay run` runs:
            latency from the insert's commit to the sink's receipt, p50/p95/p99
  inserts   the product's side: one-event INSERT transactions from 8 sessions for
            --insert-seconds into the outbox alone, with the fan-out trigger but
            relay.notify = off, and with the trigger as shipped (one NOTIFY per
            transaction); each as a share of the outbox-alone rate
  baselines the same events, to the same sink, through (a) the simplest correct outbox
            worker (one row claimed, one /v1/track POST, one update, a few at a time),
            (b) procrastinate with one job per delivery, (c) the official
            segment-analytics-python client fed in memory (not durable)

Every run checks that each expected event arrived exactly once before its numbers count.
`CPU s` is the measured process's; `DB CPU s` is every PostgreSQL process's on this machine
over the run (all databases, autovacuum included; none for a remote server).
`relay x` is the relay drain's rate as a multiple of each baseline's, which holds on a
noisy machine where absolute rates do not. Baselines (b) and (c) need
`pip install 'relay[bench]'`. Run it on an otherwise idle machine; --quick finishes in
under a minute."""


def _positive(text: str) -> int:
    try:
        value = int(text.replace(",", "").replace("_", ""))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be more than 0")
    return value


def register(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = commands.add_parser(
        "bench",
        help="measure the relay against the obvious alternatives",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--database-url", metavar="URL",
        help="a PostgreSQL server where bench databases may be created and dropped "
        "(default: a throwaway embedded one)",
    )  # fmt: skip
    p.add_argument("--quick", action="store_true", help="small sizes: done in under a minute")
    p.add_argument("--events", type=_positive, metavar="N", help="drain size (200,000)")
    p.add_argument("--integrations", type=_positive, default=10, metavar="M", help="(10)")
    p.add_argument("--fanout-events", type=_positive, metavar="N", help="fan-out size (40,000 x 5)")
    p.add_argument(
        "--rate", type=_positive, default=2000, metavar="R", help="steady inserts/s (2,000)"
    )
    p.add_argument("--seconds", type=_seconds, metavar="S", help="steady duration (30)")
    p.add_argument(
        "--insert-seconds", type=_seconds, metavar="S",
        help="product-insert runs: seconds per mode (5)",
    )  # fmt: skip
    p.add_argument(
        "--baseline-events", type=_positive, metavar="N", help="events per baseline (5,000)"
    )
    p.add_argument(
        "--baseline-concurrency", type=_positive, default=4, metavar="K",
        help="requests in flight for baselines (a) and (b) (4)",
    )  # fmt: skip
    p.add_argument(
        "--only", default="drain,fan-out,steady,inserts,baselines", metavar="LIST",
        help="which runs, comma-separated: drain, fan-out, steady, inserts, baselines "
        "(all); baselines are compared with the drain only when both run",
    )  # fmt: skip
    p.add_argument(
        "--baselines", default="naive,procrastinate,segment", metavar="LIST",
        help="which baselines to run, comma-separated: naive, procrastinate, segment, "
        "or none (all three)",
    )  # fmt: skip
    p.add_argument(
        "--memory-events", type=int, default=0, metavar="N",
        help="also drain an N-event backlog and report its peak RSS (e.g. 1000000)",
    )  # fmt: skip
    p.add_argument("--json", action="store_true", help="print the results as JSON too")
    p.set_defaults(handler=_command)


def _command(args: argparse.Namespace) -> int:
    from relay.bench.runner import run_bench

    return run_bench(args)
