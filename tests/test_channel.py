"""The direct connection from gateways to session hosts (``mediaserver.control.channel``), over
loopback: batches answered in any order, a peer without the key refused both ways, a lost host
failing every waiting request at once, a failed batch's error carried back."""

from __future__ import annotations

import asyncio
import os
import pickle
import struct

import pytest

from mediaserver.control.channel import ChannelClient, ChannelServer, channel_key
from mediaserver.errors import MediaserverError

KEY = channel_key("the deployment's secret")


async def started(handle) -> tuple[ChannelServer, tuple[str, int]]:
    server = ChannelServer(handle, KEY)
    return server, await server.start("127.0.0.1")


async def test_batches_are_answered_each_in_its_own_time():
    release = asyncio.Event()

    async def handle(kind, batch):
        if kind == "polls":
            await release.wait()  # a long poll: answered after the calls sent later
        return [("ok", (kind, c)) for c in batch]

    server, address = await started(handle)
    client = ChannelClient(address, KEY)
    try:
        poll = asyncio.ensure_future(client.request("polls", ["p1"]))
        assert await client.request("calls", ["a", "b"]) == [("ok", ("calls", "a")), ("ok", ("calls", "b"))]
        assert not poll.done()
        release.set()
        assert await poll == [("ok", ("polls", "p1"))]
        many = await asyncio.gather(*(client.request("calls", [i]) for i in range(50)))
        assert many == [[("ok", ("calls", i))] for i in range(50)]
    finally:
        client.close()
        await server.stop()


async def test_a_batch_that_fails_as_a_whole_says_why():
    async def handle(kind, batch):
        if kind == "bad":
            raise MediaserverError("invalid_request", "no batch kind 'bad'")
        raise RuntimeError("a bug")

    server, address = await started(handle)
    client = ChannelClient(address, KEY)
    try:
        with pytest.raises(MediaserverError) as e:
            await client.request("bad", [])
        assert (e.value.code, e.value.message) == ("invalid_request", "no batch kind 'bad'")
        with pytest.raises(MediaserverError) as e:
            await client.request("calls", [1])
        assert e.value.code == "internal"
        assert not client.closed  # (the connection is fine: only those batches failed)
    finally:
        client.close()
        await server.stop()


async def test_a_peer_without_the_key_is_refused_both_ways():
    calls = []

    async def handle(kind, batch):
        calls.append(batch)
        return []

    server, address = await started(handle)
    try:
        # A gateway with another key: the host closes it before reading any frame.
        stranger = ChannelClient(address, channel_key("another secret"))
        with pytest.raises(MediaserverError) as e:
            await stranger.request("calls", ["x"])
        assert e.value.code == "unavailable" and stranger.closed
        # Raw bytes instead of a proof: closed too, nothing handled.
        reader, writer = await asyncio.open_connection(*address)
        await reader.readexactly(16)
        writer.write(os.urandom(48) + b"\x00\x00\x00\x05hello")
        assert await reader.read() == b""
        writer.close()
        assert calls == [] and server.refused == 2
    finally:
        await server.stop()
    # A "host" that does not know the key (whatever took a dead host's port): never sent a batch.
    sent = []
    finished = asyncio.Event()

    async def impostor(reader, writer):
        writer.write(os.urandom(16))
        sent.append(await reader.readexactly(48))
        writer.write(os.urandom(32))
        sent.append(await reader.read())  # (until the gateway hangs up)
        writer.close()
        finished.set()

    fake = await asyncio.start_server(impostor, "127.0.0.1", 0)
    client = ChannelClient(fake.sockets[0].getsockname()[:2], KEY)
    with pytest.raises(MediaserverError) as e:
        await client.request("calls", ["secret stuff"])
    assert e.value.code == "unavailable"
    await asyncio.wait_for(finished.wait(), 5)
    fake.close()
    await fake.wait_closed()
    assert len(sent) == 2 and sent[1] == b""  # the proof was all it got


async def test_a_host_that_goes_away_fails_every_waiting_request_at_once():
    async def handle(kind, batch):
        await asyncio.sleep(3600)

    server, address = await started(handle)
    client = ChannelClient(address, KEY)
    waiting = [asyncio.ensure_future(client.request("polls", [i])) for i in range(5)]
    await asyncio.sleep(0.1)
    server.server.close()
    for end in list(server.connections):  # (as if its process died: no goodbye)
        end.transport.abort()
    done = await asyncio.wait_for(asyncio.gather(*waiting, return_exceptions=True), 5)
    assert all(isinstance(d, MediaserverError) and d.code == "unavailable" for d in done)
    assert client.closed
    with pytest.raises(MediaserverError) as e:
        await client.request("calls", [1])
    assert e.value.code == "unavailable"


async def test_a_malformed_or_oversized_frame_closes_only_that_connection():
    """A peer that proved the key but then sends a frame over the limit, or one that is not a
    request, loses its connection; the host goes on answering everyone else."""
    from mediaserver.control.channel import HEADER, MAX_FRAME, _frame

    async def handle(kind, batch):
        return [("ok", c) for c in batch]

    server, address = await started(handle)
    try:
        for bad in (HEADER.pack(MAX_FRAME + 1), _frame("not a request"), HEADER.pack(5) + b"\x80\x05junk"):
            client = ChannelClient(address, KEY)
            assert await client.request("calls", [1]) == [("ok", 1)]  # (connected and proved)
            client._end.transport.write(bad)
            for _ in range(100):
                if client.closed:
                    break
                await asyncio.sleep(0.02)
            assert client.closed, bad[:8]
            other = ChannelClient(address, KEY)
            assert await other.request("calls", [2]) == [("ok", 2)]
            other.close()
    finally:
        await server.stop()


async def test_frames_split_or_run_together_are_read_whole():
    """The ends read frames as bytes arrive: a frame cut into pieces (down to one byte at a
    time) and several frames in one write are each read once, whole."""
    from mediaserver.control.channel import NONCE_BYTES, _frame, _proof

    async def handle(kind, batch):
        return [("ok", (kind, c)) for c in batch]

    server, address = await started(handle)
    try:
        reader, writer = await asyncio.open_connection(*address)
        nonce = await reader.readexactly(NONCE_BYTES)
        mine = os.urandom(NONCE_BYTES)
        hello = _proof(KEY, nonce, b"gateway") + mine
        for i in range(len(hello)):  # (the hello itself a byte at a time)
            writer.write(hello[i:i + 1])
            await writer.drain()
        assert await reader.readexactly(32) == _proof(KEY, mine, b"host")
        one = _frame((1, "calls", ["a" * 300]))
        for i in range(len(one)):
            writer.write(one[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0)
        writer.write(b"".join(_frame((n, "calls", [n])) for n in range(2, 12)))  # ten in one write
        await writer.drain()
        replies = {}
        while len(replies) < 11:
            (n,) = struct.unpack("!I", await reader.readexactly(4))
            rid, outcomes = pickle.loads(await reader.readexactly(n))
            assert rid not in replies
            replies[rid] = outcomes
        assert replies[1] == [("ok", ("calls", "a" * 300))]
        assert all(replies[n] == [("ok", ("calls", n))] for n in range(2, 12))
        writer.close()
    finally:
        await server.stop()
