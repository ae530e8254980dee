"""Outages a daemon must live through without losing an event: PostgreSQL restarted under load,
Segment (the sink) down for a while, and one of three workers killed with SIGKILL."""

from __future__ import annotations

import asyncio
import contextlib
import json
import signal
import tempfile
import warnings
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import pytest

from relay.admin.models import IntegrationCreate
from relay.admin.service import AdminService
from relay.sink import Fault, Sink, start_sink
from relay.store import connect, create_pool, migrate
from tests.conftest import RunningSink
from tests.helpers import (
    GLOBAL,
    add_integration,
    event,
    insert_events,
    relay_command,
    subprocess_env,
    wait_until,
)

pytestmark = pytest.mark.slow


class PrivatePostgres:
    """A PostgreSQL of this test's own (pgserver's binaries), so it can be stopped and
    started under a running relay whatever server the rest of the suite uses."""

    def __init__(self) -> None:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*XDG_RUNTIME_DIR.*")
            import pgserver

            self.server: Any = pgserver.get_server(  # type: ignore[attr-defined]
                Path(tempfile.mkdtemp(prefix="relay-pg-restart-")), cleanup_mode="delete"
            )
        self.url = str(self.server.get_uri())

    def stop(self) -> None:
        from pgserver._commands import pg_ctl  # type: ignore[attr-defined]

        pg_ctl(
            ["-w", "-m", "fast", "stop"], pgdata=self.server.pgdata, user=self.server.system_user
        )

    def start(self) -> None:
        self.server.ensure_postgres_running()


@pytest.fixture
def private_postgres() -> Iterator[PrivatePostgres]:
    pg = PrivatePostgres()
    yield pg
    pg.server.cleanup()


def _env(database_url: str, sink_url: str, **extra: str) -> dict[str, str]:
    return subprocess_env(
        RELAY_DATABASE_URL=database_url,
        RELAY_ENDPOINT_OVERRIDES=json.dumps({GLOBAL: sink_url}),
        RELAY_POLL_INTERVAL_SECONDS="0.1",
        **extra,
    )


async def _relay_run(env: dict[str, str]) -> asyncio.subprocess.Process:
    return await asyncio.create_subprocess_exec(
        *relay_command("run"),
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )


async def _stop(process: asyncio.subprocess.Process) -> str:
    process.send_signal(signal.SIGTERM)
    _, err = await asyncio.wait_for(process.communicate(), 30)
    assert process.returncode == 0, err.decode()[-2000:]
    return err.decode()


async def test_postgres_restarted_under_load_loses_nothing(
    private_postgres: PrivatePostgres, sink: RunningSink
) -> None:
    url = private_postgres.url
    conn = await connect(url)
    await migrate(conn)
    await conn.close()
    pool = await create_pool(url, max_size=2)
    await AdminService(pool, "test").create(
        IntegrationCreate.model_validate(
            {"organization_id": "org_1", "app_id": "app_1", "write_key": "k", "region": "global"}
        )
    )
    await insert_events(pool, [event(n) for n in range(1, 501)])
    await pool.close()

    sink.sink.add_fault(Fault(status=200, delay=0.05, times=-1))  # keep the relay busy
    worker = await _relay_run(_env(url, sink.url, RELAY_BATCH_MAX_EVENTS="20"))
    await wait_until(lambda: len(sink.sink.calls()) > 0, seconds=30)

    private_postgres.stop()
    await asyncio.sleep(3)
    private_postgres.start()

    pool = await create_pool(url, max_size=2)
    try:
        await insert_events(pool, [event(n) for n in range(501, 1001)])

        async def settled() -> bool:
            pending: int = await pool.fetchval(
                "SELECT count(*) FROM relay.deliveries WHERE status <> 'delivered'"
            )
            return pending == 0

        try:
            await wait_until(settled, seconds=90)
        except AssertionError:
            states = await pool.fetch(
                "SELECT status, lease_token IS NOT NULL AS leased, count(*) FROM relay.deliveries "
                "GROUP BY 1, 2"
            )
            with contextlib.suppress(ProcessLookupError):
                worker.kill()
            _, err = await worker.communicate()
            tail = "\n".join(err.decode().splitlines()[-25:])
            raise AssertionError(
                f"not all delivered: {[tuple(r) for r in states]}\n{tail}"
            ) from None
    finally:
        await pool.close()
    log = await _stop(worker)

    assert "database_unavailable" in log
    received = Counter(c["messageId"] for c in sink.sink.calls())
    assert set(received) == {f"evt_{n}" for n in range(1, 1001)}


async def test_segment_down_for_a_while_then_everything_arrives(
    pool: asyncpg.Pool, database_url: str
) -> None:
    sink = Sink()
    runner, url = await start_sink(sink)
    port = url.rsplit(":", 1)[1]
    await runner.cleanup()  # Segment is down
    await add_integration(pool)
    await insert_events(pool, [event(n) for n in range(1, 51)])
    worker = await _relay_run(_env(database_url, url, RELAY_RETRY_SCHEDULE="1s,1s,1s,1s,1s,1s"))

    async def tried() -> bool:
        attempts: int = await pool.fetchval("SELECT min(attempts) FROM relay.deliveries")
        return attempts >= 2

    await wait_until(tried, seconds=30)
    assert sink.received == []
    runner, _ = await start_sink(sink, port=int(port))  # back up
    try:

        async def delivered() -> bool:
            done: int = await pool.fetchval(
                "SELECT count(*) FROM relay.deliveries WHERE status = 'delivered'"
            )
            return done == 50

        await wait_until(delivered, seconds=30)
        log = await _stop(worker)
    finally:
        await runner.cleanup()
    assert {c["messageId"] for c in sink.calls()} == {f"evt_{n}" for n in range(1, 51)}
    assert "integration_failing" in log
    assert "integration_recovered" in log


async def test_one_of_three_workers_killed_loses_nothing(
    pool: asyncpg.Pool, database_url: str, sink: RunningSink
) -> None:
    for n in range(4):
        await add_integration(pool, write_key=f"key-{n}-00000", app_id=f"app_{n}")
    await insert_events(pool, [event(n, app_id=f"app_{n % 4}") for n in range(1, 2001)])
    sink.sink.add_fault(Fault(status=200, delay=0.2, times=-1))
    env = _env(database_url, sink.url, RELAY_LEASE_SECONDS="2", RELAY_BATCH_MAX_EVENTS="25",
               RELAY_CLAIM_PER_INTEGRATION="50")  # fmt: skip
    workers = [await _relay_run(env) for _ in range(3)]
    await wait_until(lambda: len(sink.sink.calls()) >= 200, seconds=30)
    workers[0].kill()
    await workers[0].wait()

    async def settled() -> bool:
        left: int = await pool.fetchval(
            "SELECT count(*) FROM relay.deliveries WHERE status <> 'delivered'"
        )
        return left == 0

    await wait_until(settled, seconds=90)
    for survivor in workers[1:]:
        await _stop(survivor)

    received = Counter(c["messageId"] for c in sink.sink.calls())
    assert set(received) == {f"evt_{n}" for n in range(1, 2001)}
    # Only what the killed worker held in flight is sent twice, always with the same messageId.
    duplicates = sum(n - 1 for n in received.values())
    assert duplicates <= 2 * 16 * 50
