"""The relay's own runs: drain a backlog, fan out to five integrations, keep up with a steady
insert rate. Each one checks that every expected event arrived, exactly once."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import time
from collections.abc import Callable

from relay.bench.harness import (
    SEED_EVENTS,
    Child,
    Measured,
    SinkProcess,
    add_integrations,
    child_env,
    drop_database,
    expected_sends,
    fresh_database,
    overrides,
    relay_argv,
    seed_events,
    server_cpu_seconds,
)
from relay.bench.report import Result, latency_summary, speedup
from relay.errors import UserError
from relay.store import connect


class BenchError(UserError):
    """A run that did not deliver what it should have: the numbers would be meaningless."""

    exit_code = 1


def _db_name(scenario: str) -> str:
    return f"relay_bench_{os.getpid()}_{scenario.replace(' ', '_').replace('-', '_')}"


def check_received(sink: SinkProcess, expected: int, what: str) -> None:
    stats = sink.stats()
    if stats["accepted"] != expected or stats["duplicates"] or stats["dropped"]:
        raise BenchError(
            f"{what}: the sink accepted {stats['accepted']} of {expected} calls "
            f"({stats['duplicates']} duplicates, dropped {stats['dropped']})"
        )


def _relay_drain(sink: SinkProcess) -> Callable[[str], Child]:
    """A cold `relay run --until-idle` against the database it is given."""
    return lambda url: Child(
        relay_argv("run", "--until-idle"),
        child_env(RELAY_DATABASE_URL=url, RELAY_ENDPOINT_OVERRIDES=overrides(sink.url)),
    )


async def run_on_backlog(
    server_url: str,
    sink: SinkProcess,
    name: str,
    child: Callable[[str], Child],
    *,
    events: int,
    apps: int,
    per_app: int = 1,
) -> Measured:
    """In a fresh database with `per_app` integrations for each of `apps` apps and `events`
    pending events, run the process `child` starts for the database's URL until it exits, and
    check that every expected call reached the sink exactly once."""
    database = _db_name(name)
    url = await fresh_database(server_url, database)
    try:
        await add_integrations(url, [f"app_{n}" for n in range(apps)], per_app=per_app)
        await seed_events(url, events, apps)
        sink.reset()
        server_before = server_cpu_seconds()
        measured = await child(url).wait_async()
        measured = dataclasses.replace(
            measured, server_cpu_seconds=_since(server_before, server_cpu_seconds())
        )
        if measured.returncode != 0:
            raise BenchError(f"{name}: exited {measured.returncode}: {measured.log[-2000:]}")
        check_received(sink, expected_sends(events) * per_app, name)
    finally:
        await drop_database(server_url, database)
    return measured


def _since(before: float | None, after: float | None) -> float | None:
    return after - before if before is not None and after is not None else None


async def drain(
    server_url: str, sink: SinkProcess, *, events: int, integrations: int, name: str = "drain"
) -> Result:
    """A cold `relay run --until-idle` delivering `events` pending events of `integrations`
    integrations (both regions, one event type disabled, one renamed)."""
    measured = await run_on_backlog(
        server_url, sink, name, _relay_drain(sink), events=events, apps=integrations
    )
    return Result(
        f"relay {name}",
        events,
        measured.seconds,
        cpu_seconds=measured.cpu_seconds,
        db_cpu_seconds=measured.server_cpu_seconds,
        peak_rss_mb=measured.peak_rss_mb,
        note=f"{integrations} integrations, cold start",
    )


async def fanout(server_url: str, sink: SinkProcess, *, events: int, per_app: int = 5) -> Result:
    """Each event goes to `per_app` integrations of one app."""
    measured = await run_on_backlog(
        server_url, sink, "fan-out", _relay_drain(sink), events=events, apps=1, per_app=per_app
    )
    return Result(
        "relay fan-out",
        events * per_app,
        measured.seconds,
        unit="deliveries",
        cpu_seconds=measured.cpu_seconds,
        db_cpu_seconds=measured.server_cpu_seconds,
        peak_rss_mb=measured.peak_rss_mb,
        note=f"{events:,} events x {per_app} integrations",
    )


TICKS_PER_SECOND = 50


async def steady(
    server_url: str, sink: SinkProcess, *, rate: int, seconds: float, integrations: int
) -> Result:
    """Insert `rate` events a second for `seconds` while `relay run` runs; latency is from the
    insert's commit to the sink receiving the call."""
    database = _db_name("steady")
    url = await fresh_database(server_url, database)
    relay = None
    try:
        await add_integrations(url, [f"app_{n}" for n in range(integrations)])
        relay = Child(
            relay_argv("run"),
            child_env(RELAY_DATABASE_URL=url, RELAY_ENDPOINT_OVERRIDES=overrides(sink.url)),
        )
        await _warm_up(url, sink)
        server_before = server_cpu_seconds()
        committed, total, elapsed = await _insert_steadily(url, rate, seconds, integrations)
        expected = {f"evt_{n}" for n in range(total) if n % 10 != 0}
        await _until_received(sink, len(expected), seconds=60)
        db_cpu = _since(server_before, server_cpu_seconds())  # the inserts' share included
        calls = sink.calls()
        _check_ids([c["call"]["messageId"] for c in calls], expected)
        latencies = [
            c["received_at"] - committed[int(c["call"]["messageId"][4:]) // _chunk(rate)]
            for c in calls
        ]
    finally:
        if relay is not None:
            relay.stop()
            measured = await relay.wait_async()
        await drop_database(server_url, database)
    return Result(
        "relay steady",
        total,
        elapsed,  # more than `seconds` only if the inserts could not keep the rate
        cpu_seconds=measured.cpu_seconds,
        db_cpu_seconds=db_cpu,
        peak_rss_mb=measured.peak_rss_mb,
        latency_ms=latency_summary(latencies),
        note=f"{rate:,}/s for {seconds:g} s",
    )


async def _until_received(sink: SinkProcess, count: int, *, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while sink.stats()["accepted"] < count:
        if time.monotonic() > deadline:
            return  # the exact check that follows says what is missing
        await asyncio.sleep(0.2)


def _check_ids(received: list[str], expected: set[str]) -> None:
    got = set(received)
    if got == expected and len(received) == len(got):
        return
    extra, missing = sorted(got - expected)[:5], sorted(expected - got)[:5]
    raise BenchError(
        f"steady: received {len(received)} calls ({len(got)} distinct) for {len(expected)} "
        f"events; unexpected {extra}, missing {missing}"
    )


def _chunk(rate: int) -> int:
    return max(1, rate // TICKS_PER_SECOND)


async def _warm_up(url: str, sink: SinkProcess) -> None:
    """Wait until the relay has started and delivered one event, then forget it."""
    sink.reset()
    await seed_events(url, 1, 1, prefix="warmup_")
    await _until_received(sink, 1, seconds=30)
    if sink.stats()["accepted"] < 1:
        raise BenchError("steady: the relay did not start within 30 s")
    sink.reset()


async def _insert_steadily(
    url: str, rate: int, seconds: float, apps: int
) -> tuple[dict[int, float], int, float]:
    """Insert chunks of events (evt_0, evt_1, ...) at fixed times, TICKS_PER_SECOND
    transactions a second; returns the commit time of each chunk (wall clock, as the sink
    records receipt; event n is in chunk n // chunk), how many events were inserted, and how
    long the inserts took."""
    chunk = _chunk(rate)
    ticks = int(seconds * rate / chunk)
    conn = await connect(url)
    committed: dict[int, float] = {}
    try:
        start = time.monotonic()
        for tick in range(ticks):
            await asyncio.sleep(max(0.0, start + tick * chunk / rate - time.monotonic()))
            first = tick * chunk
            await conn.execute(SEED_EVENTS, "evt_", "app_", apps, first, first + chunk - 1)
            committed[tick] = time.time()
        elapsed = time.monotonic() - start + chunk / rate  # the last tick has its interval too
    finally:
        await conn.close()
    return committed, ticks * chunk, elapsed


# The product's side of the outbox: how each part of the trigger slows its inserts.
INSERT_SESSIONS = 8
INSERT_MODES = (
    ("outbox alone", "ALTER TABLE relay.events DISABLE TRIGGER events_fan_out", None),
    ("trigger, notify off", None, "SET relay.notify = off"),
    ("trigger as shipped", None, None),
)


async def inserts(server_url: str, *, seconds: float) -> list[Result]:
    """Single-event INSERT transactions, as a product that writes one event per request does,
    from INSERT_SESSIONS sessions for `seconds` in each mode, with one integration for the app
    and no relay running: into the outbox alone (trigger disabled), with the fan-out trigger
    but relay.notify = off, and with the trigger as shipped (fan-out and one NOTIFY per
    transaction). Each rate is also given as a share of the outbox-alone rate."""
    database = _db_name("inserts")
    url = await fresh_database(server_url, database)
    results: list[Result] = []
    try:
        await add_integrations(url, ["app_0"])
        admin = await connect(url)
        try:
            for n, (label, table_setup, session_setup) in enumerate(INSERT_MODES):
                await admin.execute("TRUNCATE relay.events CASCADE")
                await admin.execute("ALTER TABLE relay.events ENABLE TRIGGER events_fan_out")
                if table_setup:
                    await admin.execute(table_setup)
                count = await _insert_for(url, seconds, f"m{n}_", session_setup)
                results.append(Result(f"inserts: {label}", count, seconds, unit="inserts"))
        finally:
            await admin.close()
    finally:
        await drop_database(server_url, database)
    alone = results[0]
    return [
        dataclasses.replace(r, note=f"{speedup(r, alone, digits=2)} the outbox alone")
        for r in results
    ]


async def _insert_for(url: str, seconds: float, prefix: str, session_setup: str | None) -> int:
    """Commit one-event transactions from INSERT_SESSIONS sessions until `seconds` pass."""
    sessions = [await connect(url) for _ in range(INSERT_SESSIONS)]
    deadline = time.monotonic() + seconds

    async def insert_until_deadline(k: int) -> int:
        conn, n = sessions[k], 0
        if session_setup:
            await conn.execute(session_setup)
        while time.monotonic() < deadline:
            n += 1
            await conn.execute(SEED_EVENTS, f"{prefix}{k}_", "app_", 1, n, n)
        return n

    try:
        counts = await asyncio.gather(*map(insert_until_deadline, range(INSERT_SESSIONS)))
    finally:
        for conn in sessions:
            await conn.close()
    return sum(counts)
