"""Calls to a session host gathered a turn of the event loop at a time (``mediaserver.control.batch``),
without Ray: what leaves together, that each call keeps its own outcome, and long polls answered
as soon as one of a batch is, the rest sent again without their callers noticing."""

from __future__ import annotations

import asyncio

from mediaserver.control.batch import AGAIN, Batcher, run_batch, run_polls
from mediaserver.errors import MediaserverError


class Host:
    """A stand-in for a host's ``calls``: records each message, answers per call."""

    def __init__(self) -> None:
        self.messages: list[list[tuple]] = []

    async def run(self, session_id, method, args, new=None):
        if method == "fail":
            raise MediaserverError("not_moderator", f"{session_id} may not")
        if method == "bug":
            raise RuntimeError("a bug in this session's handling")
        await asyncio.sleep(0.001 * len(args))
        return {"session": session_id, "args": list(args), "new": new}

    async def send(self, batch):
        self.messages.append(batch)
        return await run_batch(self.run, batch)


async def test_calls_made_in_one_turn_leave_as_one_message_each_with_its_own_outcome():
    host = Host()
    b = Batcher(host.send)
    calls = [b.call(f"s{i}", "fail" if i == 3 else "bug" if i == 5 else "op", (i,) * (i % 3), {"n": i}) for i in range(8)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert len(host.messages) == 1 and len(host.messages[0]) == 8
    for i, r in enumerate(results):
        if i == 3:
            assert isinstance(r, MediaserverError) and r.code == "not_moderator" and "s3" in r.message
        elif i == 5:  # an unexpected failure is that call's alone, answered as internal
            assert isinstance(r, MediaserverError) and r.code == "internal"
        else:
            assert r == {"session": f"s{i}", "args": [i] * (i % 3), "new": {"n": i}}
    # The next turn's calls go in a message of their own.
    assert (await b.call("s9", "op", ()))["session"] == "s9"
    assert [len(m) for m in host.messages] == [8, 1]
    assert (b.calls, b.batches) == (9, 2)


async def test_a_burst_bigger_than_a_message_leaves_as_several_in_the_same_turn():
    host = Host()
    b = Batcher(host.send, max_batch=4)
    results = await asyncio.gather(*(b.call(f"s{i}", "op", ()) for i in range(10)))
    assert [r["session"] for r in results] == [f"s{i}" for i in range(10)]
    assert sorted(len(m) for m in host.messages) == [2, 4, 4]


async def test_a_message_that_fails_fails_every_call_in_it_and_no_other():
    sent = []

    async def send(batch):
        sent.append(batch)
        if len(sent) == 1:
            raise MediaserverError("unavailable", "the host is restarting")
        return [("ok", c[0]) for c in batch]

    b = Batcher(send)
    first = await asyncio.gather(*(b.call(f"s{i}", "op", ()) for i in range(3)), return_exceptions=True)
    assert all(isinstance(r, MediaserverError) and r.code == "unavailable" for r in first)
    assert await asyncio.gather(*(b.call(f"s{i}", "op", ()) for i in range(3))) == ["s0", "s1", "s2"]


async def test_a_host_answering_the_wrong_number_of_calls_fails_them_rather_than_mixing_them_up():
    async def send(batch):
        return [("ok", 1)]

    b = Batcher(send)
    results = await asyncio.gather(b.call("a", "op", ()), b.call("b", "op", ()), return_exceptions=True)
    assert all(isinstance(r, MediaserverError) and r.code == "internal" for r in results)


async def test_a_caller_that_went_away_before_its_turn_ended_is_not_sent():
    host = Host()
    b = Batcher(host.send)
    gone = b.call("gone", "op", ())
    kept = b.call("kept", "op", ())
    gone.cancel()
    assert (await kept)["session"] == "kept"
    assert [c[0] for c in host.messages[0]] == ["kept"]


class Mailboxes:
    """Long polls that wait for their session's next news (an asyncio.Event per session)."""

    def __init__(self) -> None:
        self.news: dict[str, asyncio.Event] = {}
        self.polled: dict[str, int] = {}
        self.stopped = 0

    async def run(self, session_id, method, args, new=None):
        self.polled[session_id] = self.polled.get(session_id, 0) + 1
        event = self.news.setdefault(session_id, asyncio.Event())
        try:
            await asyncio.wait_for(event.wait(), args[0])
        except asyncio.TimeoutError:
            return {"session": session_id, "events": []}
        except asyncio.CancelledError:
            self.stopped += 1
            raise
        return {"session": session_id, "events": ["news"]}

    async def send(self, batch):
        return await run_polls(self.run, batch, linger=0.01)


async def test_a_batch_of_polls_is_answered_when_one_is_and_the_others_wait_on_unnoticed():
    box = Mailboxes()
    b = Batcher(box.send)
    polls = {s: b.call(s, "wait_events", (30.0,)) for s in ("a", "b", "c", "d")}
    await asyncio.sleep(0.05)
    assert b.batches == 1 and not any(p.done() for p in polls.values())
    box.news["b"].set()
    assert (await asyncio.wait_for(polls["b"], 2))["events"] == ["news"]
    await asyncio.sleep(0.05)
    # The others were stopped on the host and sent again, their callers still waiting.
    assert box.stopped == 3 and b.batches == 2
    assert not any(polls[s].done() for s in "acd")
    assert [box.polled[s] for s in "abcd"] == [2, 1, 2, 2]
    # News for two sessions at once comes back in one answer.
    box.news["a"].set()
    box.news["d"].set()
    assert [(await asyncio.wait_for(polls[s], 2))["events"] for s in "ad"] == [["news"], ["news"]]
    await asyncio.sleep(0.05)
    assert b.batches == 3 and not polls["c"].done()
    # A poll nobody answers times out on its own, as it would alone.
    quick = Batcher(box.send)
    assert (await asyncio.wait_for(quick.call("e", "wait_events", (0.05,)), 2))["events"] == []
    box.news["c"].set()
    assert (await asyncio.wait_for(polls["c"], 2))["events"] == ["news"]


async def test_polls_that_fail_at_once_answer_the_batch_without_failing_the_rest():
    async def run(session_id, method, args, new=None):
        if session_id == "gone":
            raise MediaserverError("session_not_found", "no session gone")
        await asyncio.sleep(args[0])
        return session_id

    outcomes = await run_polls(run, [("gone", "wait_events", (0,), None), ("here", "wait_events", (5.0,), None)], linger=0)
    assert outcomes == [("error", "session_not_found", "no session gone"), AGAIN]


async def test_polls_woken_together_come_back_together():
    news = asyncio.Event()

    async def run(session_id, method, args, new=None):
        await news.wait()
        for _ in range(3):  # (each takes a few turns to finish, as a real poll re-taking its lock does)
            await asyncio.sleep(0)
        return session_id

    task = asyncio.ensure_future(run_polls(run, [(f"s{i}", "wait_events", (), None) for i in range(5)], linger=0.01))
    await asyncio.sleep(0.01)
    news.set()
    assert await asyncio.wait_for(task, 2) == [("ok", f"s{i}") for i in range(5)]
