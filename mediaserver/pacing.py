"""How many joins the gateway starts in one turn of its event loop.

An event loop runs every ready task's next step before any task's step after it. When a burst
of joins arrives, every join's admission (token, room, the session's opening transaction: about
1.5 ms each here) runs before any join's host call leaves, and the host answers them all in one
batch: the first join of a burst of 100 was answered when the last one was, 0.3–0.4 s in.
Starting only a few joins (or resumes) per turn lets the first ones' host call leave while the
rest wait their turn, so a burst's joins finish spread out in the order they came (the first of
100 after 0.14–0.2 s instead of 0.32–0.37 s; ``bench_sessions``). Nothing is held while a join
waits on its host: a slow or restarting host delays only its own joins.
"""

from __future__ import annotations

import asyncio
from collections import deque

ADMISSIONS_PER_TURN = 8  # about 12 ms of admissions; their host call leaves at the end of the turn


class TurnBudget:
    """At most ``per_turn`` callers of ``take`` go on in one turn of the event loop; the others
    wait, first come first served, for later turns."""

    def __init__(self, per_turn: int = ADMISSIONS_PER_TURN):
        self.per_turn = per_turn
        self.used = 0
        self.waiting: deque[asyncio.Future] = deque()
        self._renewing = False

    async def take(self) -> None:
        if self.used < self.per_turn and not self.waiting:
            self._use()
            return
        fut = asyncio.get_running_loop().create_future()
        self.waiting.append(fut)
        await fut  # (counted against the turn it was let go in)

    def _use(self) -> None:
        self.used += 1
        if not self._renewing:  # the budget renews in the next turn
            self._renewing = True
            asyncio.get_running_loop().call_soon(self._renew)

    def _renew(self) -> None:
        self.used, self._renewing = 0, False
        while self.waiting and self.used < self.per_turn:
            fut = self.waiting.popleft()
            if not fut.done():  # (a caller that went away meanwhile takes nothing)
                fut.set_result(None)
                self._use()
