"""`relay bench` end to end at toy sizes: it completes, every scenario and baseline reports,
and its own delivery check (every expected event arrived, exactly once) holds. No timing is
asserted: this machine is shared, and the numbers belong in the README, not in a test."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import pytest

from relay.bench.harness import SinkProcess, server_cpu_seconds
from relay.bench.scenarios import BenchError, check_received
from tests.helpers import relay_command, subprocess_env

pytestmark = pytest.mark.slow

SIZES = {"events": 600, "fanout_events": 100, "rate": 200, "seconds": 1, "baseline_events": 60}


@pytest.mark.timeout(300)
async def test_quick_bench_completes_with_every_event_delivered(server_url: str) -> None:
    args = [
        *("--quick", "--json", "--database-url", server_url, "--integrations", "3"),
        *("--events", str(SIZES["events"]), "--fanout-events", str(SIZES["fanout_events"])),
        *("--rate", str(SIZES["rate"]), "--seconds", str(SIZES["seconds"])),
        *("--baseline-events", str(SIZES["baseline_events"])),
        *("--insert-seconds", "0.5"),
    ]
    process = await asyncio.create_subprocess_exec(
        *relay_command("bench", *args),
        env=subprocess_env(),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    out, _ = await process.communicate()
    text = out.decode()
    assert process.returncode == 0, text[-3000:]
    results = json.loads(text[text.index("\n[") + 1 :])
    by_name = {r["name"]: r for r in results}
    assert by_name["relay drain"]["items"] == SIZES["events"]
    if server_cpu_seconds() is not None:  # the server runs here: its CPU is counted
        assert by_name["relay drain"]["db_cpu_seconds"] > 0
    assert by_name["relay fan-out"]["items"] == SIZES["fanout_events"] * 5
    assert by_name["relay steady"]["items"] == SIZES["rate"] * SIZES["seconds"]
    assert (
        by_name["relay steady"]["latency_ms"]["p99"] >= by_name["relay steady"]["latency_ms"]["p50"]
    )
    inserts = [r for r in results if r["name"].startswith("inserts: ")]
    assert [r["name"] for r in inserts] == [
        "inserts: outbox alone",
        "inserts: trigger, notify off",
        "inserts: trigger as shipped",
    ]
    assert inserts[0]["note"] == "1.00x the outbox alone"
    assert all(r["items"] > 0 for r in inserts)
    baselines = [r for r in results if r["baseline"]]
    assert [r["name"][:3] for r in baselines] == ["(a)", "(b)", "(c)"]
    assert all(r["items"] == SIZES["baseline_events"] for r in baselines)
    assert all(r["rate"] > 0 for r in results)
    assert all(r["peak_rss_mb"] > 0 for r in results if r not in inserts)  # child processes
    assert "relay x" in text  # the table was printed


def test_a_missing_event_fails_the_bench() -> None:
    """The check every scenario ends with: numbers only count when everything arrived."""
    sink = SinkProcess()
    try:
        body = json.dumps(
            {"batch": [{"type": "track", "event": "e", "anonymousId": "a", "messageId": "m1"}]}
        ).encode()
        request = urllib.request.Request(f"{sink.url}/v1/batch", data=body, method="POST")
        request.add_header("Authorization", "Basic a2V5Og==")
        with urllib.request.urlopen(request, timeout=10):
            pass
        check_received(sink, 1, "one call")
        with pytest.raises(BenchError, match="accepted 1 of 2 calls"):
            check_received(sink, 2, "two calls")
    finally:
        sink.close()
