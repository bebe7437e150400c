"""The garbage collector, set for long-running server processes.

A gateway or session host holds a few hundred thousand objects once started (Ray, FastAPI,
SQLAlchemy, the app), none of which ever become garbage; CPython's collector walks them all
on every full collection and every handful of young ones, stopping the event loop meanwhile.
A burst of 300 cold joins spent about 0.18 s of the gateway's loop in collections; moved out of
the collector's sight (``gc.freeze``, Python 3.7) and collected less often, 0.03 s.
"""

from __future__ import annotations

import gc

# Young objects collected every 10,000 allocations net rather than 700: most of a request's
# objects die by reference counting first, so fewer, larger collections find the same cycles.
THRESHOLDS = (10_000, 50, 100)


def settle() -> None:
    """Call once a process has started: what exists now is kept out of every later collection."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(*THRESHOLDS)
