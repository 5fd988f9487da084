"""The worker's startup heap, frozen out of the garbage collector's full passes."""

from __future__ import annotations

import gc

from orchestrator.worker.heap import freeze_startup_heap


def collectable() -> set[int]:
    """Ids of the objects any collection (a full one included) walks."""
    return {id(o) for generation in range(3) for o in gc.get_objects(generation=generation)}


def test_what_was_loaded_before_is_frozen_and_later_objects_are_not() -> None:
    loaded = [[i] for i in range(1000)]  # tracked containers, alive at "startup"
    assert id(loaded[0]) in collectable()
    try:
        frozen = freeze_startup_heap()
        assert frozen == gc.get_freeze_count() >= len(loaded)
        walked = collectable()
        assert not any(id(o) in walked for o in loaded)
        later = [1]
        assert id(later) in collectable()
    finally:
        gc.unfreeze()
    assert gc.get_freeze_count() == 0
