"""Faults: a SessionActor's process is killed during a live session and Ray restarts it.

Participants, roles and event logs come back from the store, the participants'
WebSockets carry on, and the session goes on taking commands and joins.
"""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from tests.helpers import (
    ServerProcess,
    create_key,
    eventually,
    free_port,
    join_room,
    make_room,
    server_env,
)


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("fault")
    env = server_env(data_dir, stale_seconds=20)
    srv = ServerProcess(data_dir=data_dir, env=env)
    srv.key = create_key(env)
    srv.start()
    yield srv
    assert srv.stop() == 0


@pytest.fixture(scope="module")
def ray_client(fault_server):
    """This test process joins the server's Ray cluster, as an operator's script would."""
    from actors import cluster

    assert os.environ.get("RAY_AUTH_MODE") == "token"  # set in conftest, as the README tells operators
    address = (fault_server.data_dir / "ray_address").read_text().strip()
    cluster.init(address, fault_server.env["MEDIASERVER_RAY_NAMESPACE"])
    yield cluster
    cluster.shutdown()


async def test_session_actor_killed_mid_session(fault_server, ray_client):
    from actors import names

    server = fault_server
    async with server.http() as http:
        room = await make_room(http, name="crashy")
        mod = await join_room(server, http, room, "mod", "moderator")
        pub = await join_room(server, http, room, "pub")
        await mod.wait_event("joined", pub.id)
        sid = mod.joined["session"]["id"]
        await mod.command({"type": "set_role", "participant_id": pub.id, "role": "subscriber"})
        await pub.wait_event("role_changed", pub.id)

        handle = ray_client.find(names.session(sid))
        assert handle is not None
        old_pid = await ray_client.call(handle, "pid")
        os.kill(old_pid, signal.SIGKILL)  # a hard crash, not a polite exit

        async def restarted():
            try:
                pid = await ray_client.call(handle, "pid")
            except Exception:
                return None
            return pid if pid != old_pid else None

        new_pid = await eventually(restarted, timeout=60, interval=0.3)
        assert new_pid != old_pid

        # State came back from the store: same participants, roles, states.
        detail = (await http.get(f"/v1/sessions/{sid}")).json()
        assert detail["status"] == "live"
        assert {(p["identity"], p["role"], p["state"]) for p in detail["participants"]} == {
            ("mod", "moderator", "connected"),
            ("pub", "subscriber", "connected"),
        }
        # The same WebSockets keep working: a command goes through the restarted actor,
        # and its event reaches the other participant through the re-established long-poll.
        reply = await mod.command({"type": "set_role", "participant_id": pub.id, "role": "publisher"})
        assert reply["type"] == "ack", reply
        ev = await pub.wait_event("role_changed", pub.id, timeout=30)
        assert ev["data"] == {"role": "publisher", "previous": "subscriber", "by": mod.id}
        # New participants join the same session.
        late = await join_room(server, http, room, "late")
        assert late.joined["session"]["id"] == sid
        await mod.wait_event("joined", late.id, timeout=30)

        log = (await http.get(f"/v1/sessions/{sid}/participants/{pub.id}")).json()
        assert [e["type"] for e in log["events"]] == ["joined", "role_changed", "role_changed"]
        seqs = [e["seq"] for e in log["events"]]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # numbering continued, no reuse

        # And the lifecycle still runs on the restarted actor: the moderator ends it.
        assert (await mod.command({"type": "end_session"}))["type"] == "ack"
        for p in (mod, pub, late):
            assert (await p.wait_event("session_ended", timeout=30))["data"]["reason"] == "moderator"


async def test_ray_kill_with_restart(fault_server, ray_client):
    """The same through Ray's own API (ray.kill with no_restart=False)."""
    from actors import names

    server = fault_server
    async with server.http() as http:
        room = await make_room(http, name="ray-killed")
        a = await join_room(server, http, room, "a", "moderator")
        sid = a.joined["session"]["id"]
        assert ray_client.kill(names.session(sid), restart=True)
        b = await join_room(server, http, room, "b")
        assert b.joined["session"]["id"] == sid
        assert {p["identity"] for p in b.joined["participants"]} == {"a", "b"}
        await a.wait_event("joined", b.id, timeout=30)
        await a.close()
        await b.close()


async def test_session_owns_its_breakout_room_actors(fault_server, ray_client):
    """A SessionActor starts BreakoutRoomActors and retires them when the session ends."""
    from actors import names
    from mediaserver.errors import MediaserverError

    server = fault_server
    async with server.http() as http:
        room = await make_room(http, name="with breakouts")
        a = await join_room(server, http, room, "a", "moderator")
        sid = a.joined["session"]["id"]
        session = ray_client.find(names.session(sid))
        view = await ray_client.call(session, "breakouts", "create_breakouts", a.id, ["Team blue"])
        assert ray_client.find(names.breakout(sid, view["rooms"][0]["id"])) is None  # not open yet
        await ray_client.call(session, "breakouts", "open_breakouts", a.id)
        [info] = await ray_client.call(session, "breakout_info")
        assert info["name"] == "Team blue" and info["session_id"] == sid
        breakout = ray_client.find(names.breakout(sid, info["id"]))
        assert breakout is not None and (await ray_client.call(breakout, "info"))["id"] == info["id"]
        try:
            await ray_client.call(session, "breakouts", "rename_breakout", a.id, info["id"], "x" * 31)
            raise AssertionError("a 31-character name must be refused")
        except MediaserverError as e:
            assert e.code == "breakout_name_too_long"
        await http.post(f"/v1/sessions/{sid}/end")

        async def retired():
            return ray_client.find(names.breakout(sid, info["id"])) is None

        await eventually(retired, timeout=20)


async def test_media_worker_killed_mid_session(fault_server, ray_client):
    """Ray restarts the media worker; the session tells its participants to start media over, and
    media flows again without anyone joining again by hand."""
    from actors import names
    from tests.media_peers import join_media, loopback_only_ice, wait_for

    loopback_only_ice()
    server = fault_server
    async with server.http() as http:
        room = await make_room(http, name="worker crash")
        pub = await join_media(server, http, room, "pub")
        sub = await join_media(server, http, room, "sub", "subscriber")
        try:
            await pub.publish()
            await wait_for(lambda: sub.got.video_frames >= 20, timeout=60)
            worker = ray_client.find(names.media_worker(0))
            os.kill(await ray_client.call(worker, "pid"), signal.SIGKILL)
            await wait_for(lambda: pub.resets >= 1 and sub.resets >= 1, timeout=60)
            await wait_for(lambda: sub.got.video_frames >= 20, timeout=60)  # counted afresh after the reset
            assert len(set(sub.got.lumas)) >= 5
            assert pub.id == pub.joined["participant"]["id"] and sub.event_seen("track_published") is not None
            sid = pub.joined["session"]["id"]

            async def logged():  # the actor records while media already flows again
                log = (await http.get(f"/v1/sessions/{sid}/participants/{pub.id}")).json()["events"]
                kinds = [e["type"] for e in log]
                return log if kinds.count("track_published") == 4 and kinds.count("track_unpublished") == 2 else None

            log = await eventually(logged, timeout=20)  # audio and video, twice
            assert all(e["data"].get("reason") == "media_reset" for e in log if e["type"] == "track_unpublished")
        finally:
            await pub.close()
            await sub.close()


async def test_participant_reconnects_and_media_resumes(fault_server):
    """A publisher loses its connection (socket and peer connections) and comes back inside the
    grace period: same participant, and its viewers get its media again."""
    from tests.media_peers import join_media, loopback_only_ice, wait_for

    loopback_only_ice()
    server = fault_server
    async with server.http() as http:
        room = await make_room(http, name="flaky network")
        pub = await join_media(server, http, room, "pub")
        sub = await join_media(server, http, room, "sub", "subscriber")
        try:
            await pub.publish()
            await wait_for(lambda: sub.got.video_frames >= 20, timeout=60)
            before = pub.id
            await pub.drop()
            await asyncio.sleep(0.5)
            msg = await pub.resume()
            assert msg["type"] == "joined" and msg["resumed"] is True and msg["participant"]["id"] == before
            await wait_for(lambda: pub.resets >= 1, timeout=20)
            seen = sub.got.video_frames
            await wait_for(lambda: sub.got.video_frames >= seen + 30, timeout=60)
            assert sub.event_seen("reconnected", participant_id=before) is not None
        finally:
            await pub.close()
            await sub.close()


async def test_session_actor_restart_restores_media(fault_server, ray_client):
    """After a SessionActor restart, participants start media over and newcomers see the
    tracks that were already published."""
    from actors import names
    from tests.media_peers import join_media, loopback_only_ice, wait_for

    loopback_only_ice()
    server = fault_server
    async with server.http() as http:
        room = await make_room(http, name="actor crash with media")
        pub = await join_media(server, http, room, "pub")
        sub = await join_media(server, http, room, "sub", "subscriber")
        late = None
        try:
            await pub.publish()
            await wait_for(lambda: sub.got.video_frames >= 20, timeout=60)
            sid = pub.joined["session"]["id"]
            os.kill(await ray_client.call(ray_client.find(names.session(sid)), "pid"), signal.SIGKILL)
            await wait_for(lambda: pub.resets >= 1 and sub.resets >= 1, timeout=60)
            await wait_for(lambda: sub.got.video_frames >= 20, timeout=60)
            late = await join_media(server, http, room, "late", "subscriber")
            assert {t["participant_id"] for t in late.joined["tracks"]} == {pub.id}
            await wait_for(lambda: late.got.video_frames >= 20, timeout=60)
        finally:
            for c in (pub, sub, late):
                if c is not None:
                    await c.close()
