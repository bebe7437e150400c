"""Faults: a session host's process is killed with live sessions on it, and Ray restarts it;
a media worker is killed mid-call.

Participants, roles, chat, the stage, breakout rooms and event logs come back from the store,
the participants' WebSockets carry on, and every session goes on taking commands and joins.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time

import pytest

from tests.helpers import (
    ServerProcess,
    create_key,
    eventually,
    join_room,
    make_room,
    server_env,
)


@pytest.fixture(scope="module")
def fault_server(tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("fault")
    # Two hosts, so a host's death shows it stays its own: sessions on the other never notice.
    env = server_env(data_dir, stale_seconds=20, session_hosts=2)
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


async def host_of(http, ray_client, session_id: str):
    name = (await http.get(f"/v1/sessions/{session_id}")).json()["host"]
    handle = ray_client.find(name)
    assert handle is not None, name
    return name, handle


async def test_host_killed_with_several_live_sessions_loses_nothing(fault_server, ray_client):
    """kill -9 of a host owning several sessions (chat, the stage, breakout rooms open): every
    session answers again within 2 s, with everything it had, on the same WebSockets."""
    server = fault_server
    async with server.http() as http:
        sessions = []
        for i in range(6):  # spread over both hosts by load
            room = await make_room(http, name=f"crashy {i}")
            mod = await join_room(server, http, room, f"mod{i}", "moderator")
            pub = await join_room(server, http, room, f"pub{i}")
            await mod.wait_event("joined", pub.id)
            await mod.command({"type": "set_role", "participant_id": pub.id, "role": "subscriber"})
            await pub.wait_event("role_changed", pub.id)
            assert (await pub.command({"type": "request_stage"}))["type"] == "ack"
            await mod.command({"type": "chat", "text": f"hello {i}"})
            await mod.command({"type": "ask", "text": f"question {i}?"})
            await mod.command({"type": "breakout_create", "names": ["Blue", "Green"]})
            await mod.command({"type": "breakout_assign", "assignments": {pub.id: None}})
            await mod.command({"type": "breakout_open"})
            sessions.append((room, mod, pub, mod.joined["session"]["id"]))
        hosts = {}
        for _, _, _, sid in sessions:
            name, handle = await host_of(http, ray_client, sid)
            hosts.setdefault(name, (handle, []))[1].append(sid)
        assert len(hosts) == 2, "the sessions spread over both hosts"
        victim, (handle, victims) = sorted(hosts.items(), key=lambda kv: -len(kv[1][1]))[0]
        survivor_sids = [sid for name, (_, sids) in hosts.items() if name != victim for sid in sids]
        old_pid = await ray_client.call(handle, "pid")
        os.kill(old_pid, signal.SIGKILL)  # a hard crash, not a polite exit
        killed_at = time.monotonic()

        async def answers(mod):
            while True:
                reply = await mod.command({"type": "questions"}, timeout=30)
                if reply["type"] == "ack":
                    return time.monotonic() - killed_at
                await asyncio.sleep(0.05)

        took = await asyncio.gather(*(answers(mod) for _, mod, _, _ in sessions))
        by_sid = {sid: t for (_, _, _, sid), t in zip(sessions, took)}
        print(f"answering again after the kill: {max(by_sid[s] for s in victims):.2f} s (victims), "
              f"{max(by_sid[s] for s in survivor_sids):.2f} s (the other host's)")
        # The figure (under 2 s on a quiet machine) is benchmark 4's to report; here, that every
        # session answers again promptly, with a bound a loaded CI machine keeps.
        assert max(by_sid[s] for s in victims) < 10.0, by_sid
        assert await ray_client.call_retrying(handle, "pid") != old_pid

        for room, mod, pub, sid in sessions:
            detail = (await http.get(f"/v1/sessions/{sid}")).json()
            assert detail["status"] == "live"
            assert {(p["identity"], p["role"], p["state"]) for p in detail["participants"]} == {
                (mod.joined["participant"]["identity"], "moderator", "connected"),
                (pub.joined["participant"]["identity"], "subscriber", "connected"),
            }
            assert detail["breakouts"]["open"] is True and [r["name"] for r in detail["breakouts"]["rooms"]] == ["Blue", "Green"]
            history = await mod.command({"type": "chat_history"})
            assert [m["text"] for m in history["data"]] == [f"hello {sessions.index((room, mod, pub, sid))}"]
            qs = await mod.command({"type": "questions"})
            assert len(qs["data"]) == 1
            # The stage request survived; the same WebSockets carry the answer and its events.
            assert (await mod.command({"type": "answer_stage_request", "participant_id": pub.id, "approve": True}))["type"] == "ack"
            ev = await pub.wait_event("stage_approved", pub.id, timeout=30)
            assert ev["data"]["by"] == mod.id
            late = await join_room(server, http, room, f"late-{sid}")
            assert late.joined["session"]["id"] == sid
            await mod.wait_event("joined", late.id, timeout=30)
            log = (await http.get(f"/v1/sessions/{sid}/participants/{pub.id}")).json()
            seqs = [e["seq"] for e in log["events"]]
            assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)  # numbering continued, no reuse
            await late.close()

        # The lifecycle still runs on the restarted host: a moderator ends a session.
        room, mod, pub, sid = next(x for x in sessions if x[3] in victims)
        assert (await mod.command({"type": "end_session"}))["type"] == "ack"
        for p in (mod, pub):
            assert (await p.wait_event("session_ended", timeout=30))["data"]["reason"] == "moderator"
        for _, mod, pub, _ in sessions:
            await mod.close()
            await pub.close()


async def test_ray_kill_with_restart(fault_server, ray_client):
    """The same through Ray's own API (ray.kill with no_restart=False)."""
    server = fault_server
    async with server.http() as http:
        room = await make_room(http, name="ray-killed")
        a = await join_room(server, http, room, "a", "moderator")
        sid = a.joined["session"]["id"]
        name, _ = await host_of(http, ray_client, sid)
        assert ray_client.kill(name, restart=True)
        b = await join_room(server, http, room, "b")
        assert b.joined["session"]["id"] == sid
        assert {p["identity"] for p in b.joined["participants"]} == {"a", "b"}
        await a.wait_event("joined", b.id, timeout=30)
        await a.close()
        await b.close()


async def test_a_cold_join_while_its_host_restarts_opens_its_session(fault_server, ray_client):
    """A new room's first join whose host dies just before it: the join is tried again on the
    restarted host (the session, not written yet, is not in the store to be looked up) and
    opens the session there, once."""
    server = fault_server
    async with server.http() as http:
        warm = await make_room(http, name="warm")
        w = await join_room(server, http, warm, "w", "moderator")
        names = (await http.get("/v1/server")).json()["nodes"][0]["hosts"]
        assert len(names) == 2
        for name in names:  # (whichever the new session is placed on)
            # (Retried: this test process's own Ray client may still see the host the test
            # before restarted as restarting, ActorUnavailableError, after the gateway sees it back.)
            os.kill(await ray_client.call_retrying(ray_client.find(name), "pid"), signal.SIGKILL)
        rooms = [await make_room(http, name=f"cold after kill {i}") for i in range(3)]
        joined = await asyncio.gather(*(join_room(server, http, r, "a", "moderator") for r in rooms))
        for room, p in zip(rooms, joined):
            assert p.joined["session"]["room_id"] == room["id"]
            sessions = (await http.get("/v1/sessions", params={"room_id": room["id"]})).json()["sessions"]
            assert [s["id"] for s in sessions] == [p.joined["session"]["id"]]
            await p.close()
        await w.close()


def test_a_ray_call_made_before_init_fails_instead_of_joining_a_cluster(fault_server):
    """A Ray call made by our code before ``cluster.init`` (or after ``shutdown``: a thread still
    finishing a view of the cluster while serve stops) fails as ``unavailable``. Ray's default
    would start Ray, or join whichever cluster this machine started last (here the fault server's
    is running): a gateway once did that on its way out and never exited."""
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_AUTO_CONNECT"}
    probe = (
        "import ray\n"  # (Ray first, as in a process that imported it before our module)
        "from actors import cluster\n"
        "def outcome(f):\n"
        "    try:\n        return repr(f())\n"
        "    except Exception as e:\n        return getattr(e, 'code', type(e).__name__)\n"
        "print(outcome(cluster.nodes), outcome(lambda: cluster.find('anything')), ray.is_initialized())\n"
    )
    try:
        out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("a Ray call before init hung: it went to start Ray or join another cluster")
    assert out.returncode == 0, out.stderr[-2000:]
    # (with Ray's default the state API refuses, but looking an actor up went to start or join a
    # cluster: the probe hung past its minute)
    assert out.stdout.split() == ["unavailable", "RaySystemError", "False"], out.stdout + out.stderr[-2000:]


async def test_callers_that_want_a_fresh_view_at_once_share_one_reading(fault_server, ray_client, monkeypatch):
    """While a host restarts, every call to it fails and its caller asks for a fresh view of the
    cluster: many at the same instant share one reading of Ray's nodes (they queued behind one
    begun after they asked), instead of reading one after another; a later ask reads again."""
    from actors import view as view_module
    from actors.control import actor_config
    from mediaserver.config import Settings
    from mediaserver.store import Store

    readings = []
    real = view_module.cluster.nodes

    def nodes():
        readings.append(time.monotonic())
        return real()

    monkeypatch.setattr(view_module.cluster, "nodes", nodes)
    settings = Settings(data_dir=fault_server.data_dir)
    store = Store(settings.db_url)
    try:
        view = view_module.ClusterView(actor_config(settings), store)
        await asyncio.gather(*(view.refresh(force=True) for _ in range(30)))
        assert 1 <= len(readings) <= 2, readings  # the first, and one begun after the other 29 asked
        assert view.nodes and all(n.alive for n in view.nodes)
        assert any(n.hosts for n in view.nodes)  # the server's own node, its session hosts on it
        await view.refresh(force=True)
        assert len(readings) in (2, 3)  # asked after the last reading began: read again
        count = len(readings)
        await view.refresh()  # not forced, and fresh: nothing read
        assert len(readings) == count
        # Older than REFRESH_SECONDS: answered at once from the view as it is (a burst of joins
        # does not wait on Ray), while one reading goes on behind it.
        view._at -= view_module.REFRESH_SECONDS + 1
        at = view._at
        for _ in range(10):
            await view.refresh()  # (returns without waiting on anything: the reading has not begun)
        assert len(readings) == count and view._at == at and not view._background.done()
        await view._background
        assert len(readings) == count + 1 and view._at > at
        # Older than STALE_SECONDS: too old to act on, the caller waits for a reading.
        view._at -= view_module.STALE_SECONDS + 1
        await view.refresh()
        assert len(readings) == count + 2
    finally:
        await store.close()


async def test_breakout_rooms_are_held_by_their_sessions_host(fault_server, ray_client):
    """An open breakout room is owned by its session's host (found through the Directory) and
    retired when the rooms close or the session ends."""
    from mediaserver.errors import MediaserverError

    server = fault_server
    async with server.http() as http:
        room = await make_room(http, name="with breakouts")
        a = await join_room(server, http, room, "a", "moderator")
        sid = a.joined["session"]["id"]
        _, host = await host_of(http, ray_client, sid)

        async def on_host(method, *args):
            return await ray_client.call(host, "call", sid, method, args)

        view = await on_host("breakouts", "create_breakouts", a.id, ["Team blue"])
        assert await on_host("breakout_info") == []  # not open yet
        await on_host("breakouts", "open_breakouts", a.id)
        [info] = await on_host("breakout_info")
        assert info["name"] == "Team blue" and info["session_id"] == sid and info["id"] == view["rooms"][0]["id"]
        try:
            await on_host("breakouts", "rename_breakout", a.id, info["id"], "x" * 31)
            raise AssertionError("a 31-character name must be refused")
        except MediaserverError as e:
            assert e.code == "breakout_name_too_long"
        await http.post(f"/v1/sessions/{sid}/end")
        assert await on_host("breakout_info") == []
        await a.close()


async def test_a_media_workers_batch_takes_only_its_listed_calls(fault_server, ray_client):
    """``MediaWorkerActor.calls`` runs what a host's batch names only if it is one of the calls
    hosts batch: anything else, a real method (``pid``) or a made-up one, is refused on its own,
    and the listed call beside them still answers."""
    async with fault_server.http() as http:
        room = await make_room(http, name="worker batch")
        a = await join_room(fault_server, http, room, "a", "moderator")
        name = (await http.get(f"/v1/sessions/{a.joined['session']['id']}")).json()["media_worker"]
        worker = ray_client.find(name)
        before = await ray_client.call(worker, "pid")
        outcomes = await ray_client.call(worker, "calls", [("pid", ()), ("__init__", ()), ("no_such_call", (1,)), ("stats", ())])
        assert [o[:2] for o in outcomes[:3]] == [("error", "invalid_request")] * 3
        assert "pid" in outcomes[0][2] and "no_such_call" in outcomes[2][2]
        assert outcomes[3][0] == "ok" and outcomes[3][1]["fastpath"] is True and "port" in outcomes[3][1]
        assert await ray_client.call(worker, "pid") == before  # nothing broke: the same process answers
        await a.close()


async def test_media_worker_killed_mid_session(fault_server, ray_client):
    """Ray restarts the media worker; the session tells its participants to start media over, and
    media flows again without anyone joining again by hand."""
    from loadtest.peers import join_media, loopback_only_ice, wait_for

    loopback_only_ice()
    server = fault_server
    async with server.http() as http:
        room = await make_room(http, name="worker crash")
        pub = await join_media(server, http, room, "pub")
        sub = await join_media(server, http, room, "sub", "subscriber")
        try:
            await pub.publish()
            await wait_for(lambda: sub.got.video_frames >= 20, timeout=60)
            name = (await http.get(f"/v1/sessions/{pub.joined['session']['id']}")).json()["media_worker"]
            worker = ray_client.find(name)
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


async def _archiving(server, http, name: str):
    """A publisher of counting frames and a tone, media flowing, and an archive of it recording
    for 2 s: (publisher, its video track, the archive)."""
    from loadtest.peers import CounterVideo, Tone, join_media, loopback_only_ice, wait_for

    loopback_only_ice()
    room = await make_room(http, name=name)
    pub = await join_media(server, http, room, "pub", "moderator")
    video = CounterVideo()
    await pub.publish(video_track=video, audio_track=Tone())
    await wait_for(lambda: video.sent > 10)
    archive = (await http.post(f"/v1/sessions/{pub.joined['session']['id']}/archives", json={})).json()
    await asyncio.sleep(2)
    return pub, video, archive


async def _stopped(http, archive: dict) -> dict:
    """Stop the archive; it, once ready."""
    await http.post(f"/v1/archives/{archive['id']}/stop")

    async def ready():
        a = (await http.get(f"/v1/archives/{archive['id']}")).json()
        return a if a["status"] in ("ready", "failed") else None

    done = await eventually(ready, timeout=60)
    assert done["status"] == "ready", done
    return done


async def test_an_archive_goes_on_in_new_segments_after_its_media_worker_dies(fault_server, ray_client, tmp_path):
    """The recorder is not the worker: killing the worker mid-archive loses nothing recorded
    before the fault, and the tracks published again after the reset go on in second segments."""
    import av

    from loadtest.peers import read_counter, wait_for

    server = fault_server
    async with server.http() as http:
        pub, video, archive = await _archiving(server, http, "archive through a crash")
        sid = pub.joined["session"]["id"]
        try:
            before = video.sent
            name = (await http.get(f"/v1/sessions/{sid}")).json()["media_worker"]
            os.kill(await ray_client.call(ray_client.find(name), "pid"), signal.SIGKILL)
            await wait_for(lambda: pub.resets >= 1, timeout=60)
            resumed = video.sent
            await wait_for(lambda: video.sent > resumed + 60, timeout=60)  # 2 s more after the reset
            await _stopped(http, archive)
            r = await http.get(f"/v1/archives/{archive['id']}/files/manifest.json")
            segments = [s for s in r.json()["segments"] if s["kind"] == "video"]
            assert len(segments) == 2 and segments[0]["track_id"] == segments[1]["track_id"], segments
            assert segments[1]["offset"] > segments[0]["offset"] + 1.5
            counters = []
            for s in segments:
                path = tmp_path / s["file"]
                path.write_bytes((await http.get(f"/v1/archives/{archive['id']}/files/{s['file']}")).content)
                with av.open(str(path)) as c:
                    counters.append([read_counter(f) for f in c.decode(video=0)])
            first, second = counters
            # Everything up to the kill is in the first file (frames in the last ~100 ms before
            # it may have been in flight), and the second goes on after the reset.
            assert first and first[-1] >= before - 5 and len(set(first)) >= 0.9 * (first[-1] - first[0]), first[-5:]
            assert second and second[0] > first[-1] and second[-1] > resumed + 30, (first[-1], second[:3], resumed)
        finally:
            await pub.close()


async def test_an_archive_records_on_after_its_recorder_dies(fault_server, ray_client, tmp_path):
    """The recorder (one per node, a Ray actor) is killed mid-archive: its owner sees it at once,
    starts another and sends it every track again, and the segments the dead one had open are
    finished by its successor: the frames recorded before the kill are all in a whole file (but
    the last moment the dead process had buffered), and the new segment goes on from the fault."""
    import av

    from loadtest.peers import read_counter

    server = fault_server
    async with server.http() as http:
        pub, video, archive = await _archiving(server, http, "recorder crash")
        try:
            recorder = ray_client.find("recorder:127.0.0.1")
            before = video.sent
            killed_at = time.time()
            os.kill(await ray_client.call(recorder, "pid"), signal.SIGKILL)
            await asyncio.sleep(4)
            done = await _stopped(http, archive)
            assert not any(f["name"].startswith(".") or f["name"].endswith(".part") for f in done["files"]), done["files"]
            manifest = (await http.get(f"/v1/archives/{archive['id']}/files/manifest.json")).json()
            video_segments = [s for s in manifest["segments"] if s["kind"] == "video"]
            salvaged = [s for s in video_segments if s.get("salvaged")]
            after = [s for s in video_segments if done["started_at"] + s["offset"] > killed_at]
            assert len(salvaged) == 1 and after and after[0]["duration"] > 2, manifest["segments"]  # recorded on
            assert any(s.get("salvaged") for s in manifest["segments"] if s["kind"] == "audio"), manifest["segments"]
            listed = {f["name"] for f in done["files"]}
            assert all(s["file"] in listed for s in manifest["segments"])
            path = tmp_path / salvaged[0]["file"]
            path.write_bytes((await http.get(f"/v1/archives/{archive['id']}/files/{salvaged[0]['file']}")).content)
            with av.open(str(path)) as c:
                frames = [read_counter(f) for f in c.decode(video=0)]
            # From the archive's first keyframe to within a second of the kill (the last half
            # second the muxer held died with the process), every frame, in a file any player reads.
            assert frames and frames[-1] >= before - 30 and len(set(frames)) >= 0.9 * (frames[-1] - frames[0]), frames[-5:]
            assert salvaged[0]["frames"] == len(frames) and salvaged[0]["duration"] >= 0.5
        finally:
            await pub.close()


async def test_participant_reconnects_and_media_resumes(fault_server):
    """A publisher loses its connection (socket and peer connections) and comes back inside the
    grace period: same participant, and its viewers get its media again."""
    from loadtest.peers import join_media, loopback_only_ice, wait_for

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


async def test_host_restart_restores_media(fault_server, ray_client):
    """After a host restart, participants start media over and newcomers see the tracks that
    were already published."""
    from loadtest.peers import join_media, loopback_only_ice, wait_for

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
            _, host = await host_of(http, ray_client, sid)
            os.kill(await ray_client.call(host, "pid"), signal.SIGKILL)
            await wait_for(lambda: pub.resets >= 1 and sub.resets >= 1, timeout=60)
            await wait_for(lambda: sub.got.video_frames >= 20, timeout=60)
            late = await join_media(server, http, room, "late", "subscriber")
            assert {t["participant_id"] for t in late.joined["tracks"]} == {pub.id}
            await wait_for(lambda: late.got.video_frames >= 20, timeout=60)
        finally:
            for c in (pub, sub, late):
                if c is not None:
                    await c.close()
