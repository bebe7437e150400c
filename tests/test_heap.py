"""The collector settings long-running processes take once started (mediaserver.heap)."""

from __future__ import annotations

import gc

from mediaserver import heap


def test_settle_freezes_what_exists_and_keeps_collecting_new_garbage():
    before = gc.get_threshold()
    try:
        heap.settle()
        assert gc.get_freeze_count() > 10_000  # (this test process: pytest, the app's imports)
        assert gc.get_threshold() == before
        # What is made afterwards is collected as before: a cycle made now still goes.
        class Node:
            pass

        a, b = Node(), Node()
        a.other, b.other = b, a
        del a, b
        assert gc.collect() >= 2
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
