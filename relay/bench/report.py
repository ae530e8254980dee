"""The benchmark's arithmetic and its table. Pure: no I/O, unit-tested on its own."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class Result:
    """One measured run. `items` are what the rate counts (events, or deliveries for fan-out)."""

    name: str
    items: int
    seconds: float
    unit: str = "events"
    cpu_seconds: float | None = None
    # PostgreSQL's CPU over the run, when it runs on this machine (whole server).
    db_cpu_seconds: float | None = None
    peak_rss_mb: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    note: str = ""
    # A baseline's rate is also shown as the relay's multiple of it.
    baseline: bool = False

    @property
    def rate(self) -> float:
        return rate(self.items, self.seconds)

    def as_json(self) -> dict[str, Any]:
        return {**asdict(self), "rate": round(self.rate, 1)}


def rate(items: int, seconds: float) -> float:
    if seconds <= 0:
        raise ValueError("a run takes some time")
    return items / seconds


def percentile(values: Sequence[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation between closest ranks."""
    if not values:
        raise ValueError("no values")
    if not 0 <= q <= 100:
        raise ValueError("q is a percentage")
    ordered = sorted(values)
    position = (len(ordered) - 1) * q / 100
    low, high = math.floor(position), math.ceil(position)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """p50/p95/p99/max in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "p50": round(percentile(ms, 50), 1),
        "p95": round(percentile(ms, 95), 1),
        "p99": round(percentile(ms, 99), 1),
        "max": round(max(ms), 1),
    }


def speedup(relay: Result, other: Result, digits: int = 1) -> str:
    """How many times the relay's rate is the other's, as `12.3x`."""
    return f"{relay.rate / other.rate:.{digits}f}x"


def _number(value: float | None, digits: int = 0) -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}"


def render(results: Sequence[Result], reference: Result | None) -> str:
    """The table `relay bench` prints; `relay x` says how many times a baseline's rate the
    reference (the relay's drain) achieved."""
    headers = [
        "run", "items", "seconds", "rate/s", "relay x", "CPU s", "DB CPU s", "peak RSS MB",
        "latency ms",
    ]  # fmt: skip
    rows = []
    for r in results:
        lat = r.latency_ms
        latency = f"p50 {lat['p50']:g} / p95 {lat['p95']:g} / p99 {lat['p99']:g}" if lat else "-"
        rows.append(
            [
                r.name + (f" ({r.note})" if r.note else ""),
                f"{r.items:,} {r.unit}",
                _number(r.seconds, 2),
                _number(r.rate),
                speedup(reference, r) if reference is not None and r.baseline else "-",
                _number(r.cpu_seconds, 2),
                _number(r.db_cpu_seconds, 2),
                _number(r.peak_rss_mb, 1),
                latency,
            ]
        )
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    lines = [
        "  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)),
        "  ".join("-" * w for w in widths),
    ]
    lines += ["  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)) for row in rows]
    return "\n".join(line.rstrip() for line in lines)
