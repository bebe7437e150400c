"""A burst's joins started a few per turn of the event loop (``mediaserver.pacing``): no more
than the budget in any turn, first come first served, nothing taken by a caller that went away,
and no wait at all for a caller with budget left."""

from __future__ import annotations

import asyncio

from mediaserver.pacing import TurnBudget


class Turns:
    """Counts the turns of the running event loop (a callback that puts itself back each turn)."""

    def __init__(self) -> None:
        self.n = 0
        self.stopped = False
        asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        if not self.stopped:
            self.n += 1
            asyncio.get_running_loop().call_soon(self._tick)


async def test_at_most_the_budget_goes_on_each_turn_in_the_order_callers_came():
    turns = Turns()
    budget = TurnBudget(3)
    passed: list[tuple[int, int]] = []  # (caller, turn)

    async def caller(i: int) -> None:
        await budget.take()
        passed.append((i, turns.n))

    await asyncio.gather(*(caller(i) for i in range(10)))
    turns.stopped = True
    assert [i for i, _ in passed] == list(range(10))  # first come, first served
    per_turn: dict[int, int] = {}
    for _, turn in passed:
        per_turn[turn] = per_turn.get(turn, 0) + 1
    assert max(per_turn.values()) == 3 and len(per_turn) == 4, per_turn  # 3 + 3 + 3 + 1


async def test_a_caller_that_went_away_takes_nothing():
    turns = Turns()
    budget = TurnBudget(2)
    passed: list[tuple[int, int]] = []

    async def caller(i: int) -> None:
        await budget.take()
        passed.append((i, turns.n))

    tasks = [asyncio.ensure_future(caller(i)) for i in range(6)]
    await asyncio.sleep(0)  # every caller is in: 0 and 1 went on, 2..5 wait
    tasks[2].cancel()
    tasks[3].cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    turns.stopped = True
    assert [i for i, _ in passed] == [0, 1, 4, 5]
    assert passed[2][1] == passed[3][1] != passed[0][1]  # 4 and 5 in the same later turn: 2 and 3 left their places


async def test_a_lone_caller_does_not_wait_a_turn():
    turns = Turns()
    budget = TurnBudget(2)
    await asyncio.sleep(0)
    before = turns.n
    await budget.take()
    await budget.take()
    assert turns.n == before  # both went on in the turn they asked in
    await budget.take()  # the third waits for a later turn
    assert turns.n > before
    turns.stopped = True
