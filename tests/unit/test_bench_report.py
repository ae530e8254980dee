"""The benchmark's own arithmetic and table."""

from __future__ import annotations

import re

import pytest

from relay.bench.harness import expected_sends, stat_cpu_ticks
from relay.bench.report import Result, latency_summary, percentile, rate, render, speedup
from relay.bench.runner import RUNS, choose
from relay.errors import UsageError


def test_rate_is_items_over_seconds() -> None:
    assert rate(20_000, 0.5) == 40_000
    with pytest.raises(ValueError, match="some time"):
        rate(1, 0)


@pytest.mark.parametrize(
    ("q", "expected"), [(0, 1.0), (50, 2.5), (25, 1.75), (100, 4.0), (99, 3.97)]
)
def test_percentile_interpolates_between_closest_ranks(q: float, expected: float) -> None:
    assert percentile([4.0, 1.0, 3.0, 2.0], q) == pytest.approx(expected)


def test_percentile_of_one_value_is_that_value() -> None:
    assert percentile([7.0], 99) == 7.0


@pytest.mark.parametrize(("values", "q"), [([], 50), ([1.0], 101), ([1.0], -1)])
def test_percentile_refuses_nonsense(values: list[float], q: float) -> None:
    with pytest.raises(ValueError, match=r"no values|percentage"):
        percentile(values, q)


def test_latency_summary_is_in_milliseconds() -> None:
    seconds = [n / 1000 for n in range(1, 101)]  # 1 ms .. 100 ms
    assert latency_summary(seconds) == {"p50": 50.5, "p95": 95.0, "p99": 99.0, "max": 100.0}


def test_speedup_is_the_relays_multiple() -> None:
    relay = Result("relay drain", 200_000, 10.0)
    naive = Result("naive", 5_000, 10.0, baseline=True)
    assert speedup(relay, naive) == "40.0x"


def test_a_share_below_one_keeps_two_digits() -> None:
    alone = Result("inserts: outbox alone", 9_000, 2.0)
    shipped = Result("inserts: trigger as shipped", 4_410, 2.0)
    assert speedup(shipped, alone, digits=2) == "0.49x"


def test_expected_sends_leave_out_the_disabled_tenth() -> None:
    # Event g is Flow Dismissed, disabled in the bench's integrations, when g % 10 == 0.
    assert expected_sends(10) == 9
    assert expected_sends(10, start=5) == 9
    assert expected_sends(25) == 23


def test_table_gives_ratios_for_baselines_only() -> None:
    relay = Result(
        "relay drain", 200_000, 10.0, cpu_seconds=7.5, db_cpu_seconds=9.254, peak_rss_mb=140.26
    )
    fanout = Result("relay fan-out", 100_000, 10.0, unit="deliveries")
    steady = Result(
        "relay steady", 60_000, 30.0, latency_ms={"p50": 8.0, "p95": 20.5, "p99": 45.0, "max": 60}
    )
    naive = Result("(a) naive", 5_000, 10.0, baseline=True)
    memory = Result("(c) segment", 5_000, 2.0, note="not durable", baseline=True)
    lines = render([relay, fanout, steady, naive, memory], relay).splitlines()
    assert lines[0].split() == [
        "run", "items", "seconds", "rate/s", "relay", "x", "CPU", "s", "DB", "CPU", "s", "peak",
        "RSS", "MB", "latency", "ms",
    ]  # fmt: skip
    rows = {line.split("  ")[0]: line for line in lines[2:]}
    assert "20,000" in rows["relay drain"]
    assert "7.50" in rows["relay drain"]
    assert "9.25" in rows["relay drain"]
    assert "140.3" in rows["relay drain"]
    assert "x" not in rows["relay fan-out"].split("deliveries", 1)[1]
    assert "p50 8 / p95 20.5 / p99 45" in rows["relay steady"]
    assert "40.0x" in rows["(a) naive"]
    assert "8.0x" in rows["(c) segment (not durable)"]
    # Every header starts where its column's rule does.
    starts = [m.start() for m in re.finditer(r"-+", lines[1])]
    headers = [
        "run", "items", "seconds", "rate/s", "relay x", "CPU s", "DB CPU s", "peak RSS MB",
        "latency",
    ]  # fmt: skip
    assert [lines[0].index(h) for h in headers] == starts


def test_stat_cpu_ticks_adds_own_and_reaped_childrens_time_past_an_odd_command_name() -> None:
    # pid (comm) state ppid pgrp session tty tpgid flags minflt cminflt majflt cmajflt
    # utime stime cutime cstime ...
    line = "4242 (post gres) x) S 1 4242 4242 0 -1 4194560 10 0 0 0 700 50 3000 250 20 0 1 0"
    assert stat_cpu_ticks(line) == 700 + 50 + 3000 + 250


def test_choose_keeps_the_allowed_order_and_reads_none_as_nothing() -> None:
    assert choose("--only", "steady, drain,drain", RUNS) == ["drain", "steady"]
    assert choose("--only", "none", RUNS) == []
    assert choose("--baselines", "", ["naive"]) == []


def test_choose_names_the_option_and_every_unknown_name() -> None:
    with pytest.raises(UsageError, match=r"^--only: unknown fanout, nope; use drain, fan-out, "):
        choose("--only", "drain,fanout,nope", RUNS)
