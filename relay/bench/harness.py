"""The benchmark's environment: a fresh database per run, the sink in its own process, and child
processes measured the same way whatever they are (wall time, CPU seconds, peak RSS)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import asyncpg

from relay.model import ALL_ENDPOINTS, Region
from relay.store import connect, migrate, with_database

BENCH_ORG = "org_bench"
WRITE_KEY_PREFIX = "bench-key-"
# A disabled event type and a renamed one, as the issue asks; the mix keeps most events sent.
EVENT_MIX = (
    "CASE WHEN g % 10 = 0 THEN 'Flow Dismissed' WHEN g % 10 < 4 THEN 'Response Submitted' "
    "ELSE 'Flow Viewed' END"
)
EVENT_SETTINGS = {
    "Flow Dismissed": {"enabled": False},
    "Response Submitted": {"rename": "survey_responded"},
}

SEED_EVENTS = f"""
INSERT INTO relay.events (id, organization_id, app_id, event_type, occurred_at, user_id,
    anonymous_id, survey_id, response_id, page_path, page_referrer, locale, traits, identities,
    "references")
SELECT $1 || g, '{BENCH_ORG}', $2 || (g % $3), {EVENT_MIX}, now(), 'user_' || (g % 5000),
       'anon_' || g, 'srv_' || (g % 20), CASE WHEN g % 10 BETWEEN 1 AND 3 THEN 'resp_' || g END,
       '/checkout/step-' || (g % 7), 'https://example.com/pricing', 'en-US',
       jsonb_build_object('email', 'user' || (g % 5000) || '@example.com', 'plan', 'trial'),
       jsonb_build_object('userId', 'user_' || (g % 5000), 'anonymousId', 'anon_' || g),
       jsonb_build_object('flow_id', 'flow_' || (g % 50), 'flow_version', 3)
FROM generate_series($4::bigint, $5::bigint) g
"""  # fmt: skip


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def fresh_database(server_url: str, name: str) -> str:
    """Drop and create `name`, apply the relay schema; returns its URL."""
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.execute(f'CREATE DATABASE "{name}"')
    finally:
        await admin.close()
    url = with_database(server_url, name)
    conn = await connect(url)
    try:
        await migrate(conn)
    finally:
        await conn.close()
    return url


async def drop_database(server_url: str, name: str) -> None:
    admin = await asyncpg.connect(server_url)
    try:
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await admin.close()


async def add_integrations(url: str, apps: Sequence[str], per_app: int = 1) -> list[str]:
    """`per_app` integrations for each app, alternating regions; all with the bench's event
    settings. Returns the write keys (the first integration of an app sends bare ids)."""
    from relay.admin.models import IntegrationCreate
    from relay.admin.service import AdminService
    from relay.store import create_pool

    pool = await create_pool(url, max_size=2)
    keys = []
    try:
        service = AdminService(pool, "bench")
        for n, app in enumerate(apps):
            for k in range(per_app):
                key = f"{WRITE_KEY_PREFIX}{n:03d}-{k}"
                region = (Region.GLOBAL, Region.EU)[(n + k) % 2]
                await service.create(
                    IntegrationCreate.model_validate(
                        {
                            "organization_id": BENCH_ORG,
                            "app_id": app,
                            "write_key": key,
                            "region": region.value,
                            "events": EVENT_SETTINGS,
                        }
                    )
                )
                keys.append(key)
    finally:
        await pool.close()
    return keys


async def seed_events(
    url: str, count: int, apps: int, *, prefix: str = "evt_", start: int = 1
) -> None:
    """Write `count` outbox events spread over app_0…app_{apps-1}, in chunks, as a product would
    (the trigger creates the deliveries)."""
    conn = await connect(url)
    try:
        chunk = 50_000
        for first in range(start, start + count, chunk):
            last = min(first + chunk - 1, start + count - 1)
            await conn.execute(SEED_EVENTS, prefix, "app_", apps, first, last)
    finally:
        await conn.close()


def expected_sends(count: int, start: int = 1) -> int:
    """Events of the mix that are sent (Flow Dismissed, every 10th, is disabled)."""
    return sum(1 for g in range(start, start + count) if g % 10 != 0)


def overrides(sink_url: str) -> str:
    return json.dumps(dict.fromkeys(ALL_ENDPOINTS, sink_url))


@dataclass
class Measured:
    seconds: float
    cpu_seconds: float
    peak_rss_mb: float
    returncode: int
    log: str
    # PostgreSQL's CPU seconds over the same span, when the server runs on this machine.
    server_cpu_seconds: float | None = None


def stat_cpu_ticks(stat: str) -> int:
    """CPU clock ticks in a /proc/<pid>/stat line: the process's own (utime, stime) and its
    reaped children's (cutime, cstime). The command name may hold spaces and parentheses, so
    fields are counted from its closing parenthesis."""
    fields = stat.rsplit(")", 1)[1].split()
    return sum(int(f) for f in fields[11:15])


def server_cpu_seconds() -> float | None:
    """CPU seconds used so far by every PostgreSQL process on this machine, exited backends
    included (the postmaster reaps them); None when there is none, as with a remote server.
    Counts whole servers: other databases and autovacuum too."""
    ticks, found = 0, False
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/comm") as comm:
                if comm.read().strip() != "postgres":
                    continue
            with open(f"/proc/{pid}/stat") as stat:
                ticks += stat_cpu_ticks(stat.read())
            found = True
        except OSError:  # gone meanwhile, or not ours to read
            continue
    return ticks / os.sysconf("SC_CLK_TCK") if found else None


def high_water_mb(pid: int) -> float:
    """The process's peak resident set so far (VmHWM), or 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0.0


class Child:
    """A child process measured when it ends: wall time and CPU seconds from wait4(), peak RSS
    from /proc (wait4's ru_maxrss would include the forking parent's size)."""

    SAMPLE_EVERY = 0.05

    def __init__(self, argv: Sequence[str], env: dict[str, str]) -> None:
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed in wait()
        self.started = time.perf_counter()
        self.process = subprocess.Popen(
            list(argv), env=env, stdin=subprocess.DEVNULL, stdout=self._log, stderr=self._log
        )
        self.peak_rss_mb = 0.0
        self._sampler = threading.Thread(target=self._sample, daemon=True)
        self._sampler.start()

    def _sample(self) -> None:
        while self.process.returncode is None:
            self.peak_rss_mb = max(self.peak_rss_mb, high_water_mb(self.process.pid))
            time.sleep(self.SAMPLE_EVERY)

    def stop(self) -> None:
        self.process.terminate()

    def wait(self) -> Measured:
        _, status, usage = os.wait4(self.process.pid, 0)
        seconds = time.perf_counter() - self.started
        self.process.returncode = os.waitstatus_to_exitcode(status)
        self._sampler.join()
        self._log.seek(0)
        log = self._log.read().decode(errors="replace")
        self._log.close()
        return Measured(
            seconds=seconds,
            cpu_seconds=usage.ru_utime + usage.ru_stime,
            peak_rss_mb=self.peak_rss_mb,
            returncode=self.process.returncode,
            log=log,
        )

    async def wait_async(self) -> Measured:
        return await asyncio.get_running_loop().run_in_executor(None, self.wait)


def relay_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "relay", *args]


def child_env(**values: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("RELAY_")}
    env.update(RELAY_LOG_LEVEL="warning", RELAY_LOG_FORMAT="json", RELAY_HTTP_LISTEN="off")
    env.update(values)
    return env


class SinkProcess:
    """`relay sink` in its own process, so it does not share the bench's event loop."""

    def __init__(self) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._child = Child(
            relay_argv("sink", "--port", str(self.port)), child_env(RELAY_LOG_LEVEL="error")
        )
        deadline = time.monotonic() + 30
        while True:
            try:
                self.stats()
                return
            except OSError:
                if time.monotonic() > deadline or self._child.process.poll() is not None:
                    raise RuntimeError("the sink did not start") from None
                time.sleep(0.05)

    def _get(self, path: str) -> Any:
        with urllib.request.urlopen(self.url + path, timeout=60) as response:
            return json.loads(response.read())

    def stats(self) -> dict[str, Any]:
        stats: dict[str, Any] = self._get("/_sink/stats")
        return stats

    def calls(self) -> list[dict[str, Any]]:
        calls: list[dict[str, Any]] = self._get("/_sink/calls")
        return calls

    def reset(self) -> None:
        request = urllib.request.Request(self.url + "/_sink/reset", method="POST")
        with urllib.request.urlopen(request, timeout=10):
            pass

    def close(self) -> None:
        self._child.stop()
        self._child.wait()


@contextmanager
def sink_process() -> Iterator[SinkProcess]:
    sink = SinkProcess()
    try:
        yield sink
    finally:
        sink.close()
