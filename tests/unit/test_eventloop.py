import gc
from collections.abc import Iterator

import pytest

from relay import eventloop


@pytest.fixture
def restore_gc() -> Iterator[None]:
    threshold = gc.get_threshold()
    yield
    gc.unfreeze()
    gc.set_threshold(*threshold)


async def _threshold_inside() -> tuple[int, int, int]:
    return gc.get_threshold()


@pytest.mark.usefixtures("restore_gc")
def test_run_collects_young_objects_less_often_and_keeps_older_generations() -> None:
    before = gc.get_threshold()
    inside = eventloop.run(_threshold_inside())
    assert inside == (eventloop.YOUNG_GENERATION, *before[1:])


@pytest.mark.usefixtures("restore_gc")
def test_run_freezes_what_exists_before_the_loop_starts() -> None:
    gc.unfreeze()
    eventloop.run(_threshold_inside())
    assert gc.get_freeze_count() > 0
