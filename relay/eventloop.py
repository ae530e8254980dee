"""The one way the relay's commands run a coroutine: on uvloop where it is installed."""

from __future__ import annotations

import asyncio
import gc
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

# Objects allocated between two young-generation collections (CPython's default is 700).
YOUNG_GENERATION = 50_000


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run`, on uvloop when available: its faster sockets and callbacks cut the
    relay's CPU per event when draining (README, Benchmark). Windows has no uvloop."""
    tune_gc()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(main)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def tune_gc() -> None:
    """Collect less often. One claim makes tens of thousands of short-lived objects at once, so
    at the default pace the cyclic collector ran every few events and re-scanned each share
    still in flight: about a third of the relay's and of the sink's CPU when draining (README,
    Benchmark). Reference counting still frees nearly everything at once; only cycles wait.
    Freezing first takes the objects of the imports, which live as long as the process, out of
    every full collection."""
    gc.freeze()
    gc.set_threshold(YOUNG_GENERATION, *gc.get_threshold()[1:])
