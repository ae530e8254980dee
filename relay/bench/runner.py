"""`relay bench`: the relay's runs and the baselines', on one machine, in one table."""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TextIO

from relay import eventloop
from relay.bench.harness import Child, SinkProcess, child_env, sink_process
from relay.bench.report import Result, render
from relay.bench.scenarios import INSERT_SESSIONS, drain, fanout, inserts, run_on_backlog, steady
from relay.errors import UsageError

BASELINES = {
    "naive": "(a) simplest outbox worker",
    "procrastinate": "(b) procrastinate, job per delivery",
    "segment": "(c) segment-analytics-python, in memory",
}


@dataclass(frozen=True)
class Sizes:
    events: int
    integrations: int
    fanout_events: int
    rate: int
    seconds: float
    baseline_events: int
    concurrency: int
    memory_events: int
    insert_seconds: float

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> Sizes:
        quick = args.quick
        return cls(
            events=args.events or (20_000 if quick else 200_000),
            integrations=args.integrations,
            fanout_events=args.fanout_events or (4_000 if quick else 40_000),
            rate=args.rate,
            seconds=args.seconds or (5.0 if quick else 30.0),
            baseline_events=args.baseline_events or (1_000 if quick else 5_000),
            concurrency=args.baseline_concurrency,
            memory_events=args.memory_events,
            insert_seconds=args.insert_seconds or (2.0 if quick else 5.0),
        )


RUNS = ("drain", "fan-out", "steady", "inserts", "baselines")


def choose(option: str, text: str, allowed: Sequence[str]) -> list[str]:
    """The comma-separated names in `text`, in `allowed`'s order; `none` for none."""
    names = {n.strip() for n in text.split(",")} - {"", "none"}
    unknown = names - set(allowed)
    if unknown:
        known = ", ".join(allowed)
        raise UsageError(f"{option}: unknown {', '.join(sorted(unknown))}; use {known}")
    return [n for n in allowed if n in names]


def run_bench(args: argparse.Namespace) -> int:
    """Run the scenarios `args` ask for and print the table."""
    sizes = Sizes.from_args(args)
    runs = choose("--only", args.only, RUNS)
    baselines = choose("--baselines", args.baselines, list(BASELINES))
    if "baselines" not in runs:
        baselines = []
    if not runs and not sizes.memory_events:
        raise UsageError("--only: nothing to run; name at least one of " + ", ".join(RUNS))
    with _server(args.database_url) as server_url:
        results = eventloop.run(run_all(server_url, sizes, runs, baselines, sys.stdout))
    print()
    reference = next((r for r in results if r.name == "relay drain"), None)
    print(render(results, reference))
    if args.json:
        print(json.dumps([r.as_json() for r in results], indent=2))
    return 0


@contextlib.contextmanager
def _server(database_url: str | None) -> Iterator[str]:
    if database_url:
        yield database_url
        return
    from relay.embedded import embedded_postgres

    with embedded_postgres() as url:
        yield url


async def run_all(
    server_url: str, sizes: Sizes, runs: Sequence[str], baselines: Sequence[str], out: TextIO
) -> list[Result]:
    results: list[Result] = []

    def done(result: Result) -> None:
        results.append(result)
        out.write(f"  {result.name}: {result.rate:,.0f} {result.unit}/s\n")
        out.flush()

    with sink_process() as sink:
        if "drain" in runs:
            out.write(f"drain: {sizes.events:,} events, {sizes.integrations} integrations\n")
            done(
                await drain(server_url, sink, events=sizes.events, integrations=sizes.integrations)
            )
        if "fan-out" in runs:
            out.write(f"fan-out: {sizes.fanout_events:,} events x 5 integrations\n")
            done(await fanout(server_url, sink, events=sizes.fanout_events))
        if "steady" in runs:
            out.write(f"steady: {sizes.rate:,} events/s for {sizes.seconds:g} s\n")
            done(
                await steady(
                    server_url, sink, rate=sizes.rate, seconds=sizes.seconds,
                    integrations=sizes.integrations,
                )
            )  # fmt: skip
        if "inserts" in runs:
            out.write(
                f"product inserts: one event per transaction, {INSERT_SESSIONS} sessions, "
                f"{sizes.insert_seconds:g} s per mode\n"
            )
            for result in await inserts(server_url, seconds=sizes.insert_seconds):
                done(result)
        for name in baselines:
            out.write(f"baseline {BASELINES[name]}: {sizes.baseline_events:,} events\n")
            done(await baseline(server_url, sink, name, sizes))
        if sizes.memory_events:
            out.write(f"memory: {sizes.memory_events:,}-event backlog\n")
            done(
                await drain(
                    server_url, sink, events=sizes.memory_events,
                    integrations=sizes.integrations, name="big backlog",
                )
            )  # fmt: skip
    return results


async def baseline(server_url: str, sink: SinkProcess, name: str, sizes: Sizes) -> Result:
    def start(url: str) -> Child:
        return Child(
            [sys.executable, "-m", "relay.bench.baselines", name, "--database-url", url,
             "--sink", sink.url, "--concurrency", str(sizes.concurrency)],
            child_env(),
        )  # fmt: skip

    measured = await run_on_backlog(
        server_url, sink, f"baseline {name}", start,
        events=sizes.baseline_events, apps=sizes.integrations,
    )  # fmt: skip
    report = json.loads(measured.log.strip().splitlines()[-1])
    return Result(
        BASELINES[name],
        sizes.baseline_events,
        report["seconds"],
        cpu_seconds=report["cpu_seconds"],
        db_cpu_seconds=measured.server_cpu_seconds,
        peak_rss_mb=measured.peak_rss_mb,
        note="" if name != "segment" else "not durable",
        baseline=True,
    )
