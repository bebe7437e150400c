"""The garbage collector, set for long-running server processes.

A gateway or session host holds a few hundred thousand objects once started (Ray, FastAPI,
SQLAlchemy, the app), none of which ever become garbage; CPython's collector walks them all
on every full collection, stopping the event loop meanwhile. A burst of 300 cold joins spent
about 0.18 s of the gateway's loop in collections; with those objects out of the collector's
sight (``gc.freeze``, Python 3.7), 0.08 s.

The collection thresholds stay CPython's: collecting less often (tried: every 10,000
allocations, 0.03 s in that burst) let cyclic garbage holding event-loop handles outlive the
loop, and the gateway then aborted in libuv at shutdown (``uv__close`` on a closed handle).
"""

from __future__ import annotations

import gc


def settle() -> None:
    """Call once a process has started: what exists now is kept out of every later collection."""
    gc.collect()
    gc.freeze()
