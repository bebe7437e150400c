"""Running Janus (Debian's 1.1.2) on loopback and speaking to its VideoRoom plugin over the HTTP API,
so that the load client drives it exactly as it drives mediaserver.

Janus leaves loopback interfaces out of its ICE candidates; a small LD_PRELOAD shim (compiled
here with gcc) clears IFF_LOOPBACK in what getifaddrs reports, so its only candidate is
127.0.0.1 and no packet leaves loopback.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import httpx

PLUGINS = "/usr/lib/x86_64-linux-gnu/janus"
SHIM = r"""
#define _GNU_SOURCE
#include <dlfcn.h>
#include <ifaddrs.h>
#include <net/if.h>
int getifaddrs(struct ifaddrs **ifap) {
    static int (*real)(struct ifaddrs **) = 0;
    if (!real) real = (int (*)(struct ifaddrs **))dlsym(RTLD_NEXT, "getifaddrs");
    int r = real(ifap);
    if (r == 0)
        for (struct ifaddrs *i = *ifap; i; i = i->ifa_next) i->ifa_flags &= ~IFF_LOOPBACK;
    return r;
}
"""


def serving(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until a server we started answers ``url`` with 200; False if it exits or times out."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    return False


def available() -> str | None:
    """None if Janus can run here, else why not."""
    if not shutil.which("janus"):
        return "janus is not installed (apt-get install janus)"
    if not shutil.which("gcc"):
        return "gcc is needed for the loopback shim"
    if not Path(PLUGINS, "plugins", "libjanus_videoroom.so").exists():
        return f"no VideoRoom plugin under {PLUGINS}"
    return None


def install() -> None:
    """Install Debian's janus when missing and we are root (the benchmark's only system package)."""
    if shutil.which("janus") or os.geteuid() != 0:
        return
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    subprocess.run(["apt-get", "install", "-y", "-qq", "janus"], env=env, check=False, capture_output=True)


class JanusProcess:
    """Janus with the VideoRoom plugin and the HTTP transport on 127.0.0.1, in a scratch folder."""

    def __init__(self, port: int, *, event_loops: int | None = 2):
        self.port = port
        self.event_loops = event_loops
        self.dir = Path(tempfile.mkdtemp(prefix="janus-bench-"))
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/janus"

    def start(self, timeout: float = 20) -> None:
        conf = self.dir / "conf"
        conf.mkdir()
        loops = f"event_loops = {self.event_loops}" if self.event_loops else ""
        disabled_plugins = ",".join(
            f"libjanus_{p}.so" for p in ("audiobridge", "duktape", "lua", "nosip", "recordplay", "sip", "streaming",
                                         "textroom", "videocall", "voicemail", "echotest")
        )
        (conf / "janus.jcfg").write_text(f"""
general: {{
    configs_folder = "{conf}"
    plugins_folder = "{PLUGINS}/plugins"
    transports_folder = "{PLUGINS}/transports"
    events_folder = "{PLUGINS}/events"
    loggers_folder = "{PLUGINS}/loggers"
    log_to_stdout = true
    debug_level = 2
    {loops}
}}
media: {{ }}
nat: {{
    nice_debug = false
    ice_enforce_list = "lo"
}}
plugins: {{ disable = "{disabled_plugins}" }}
transports: {{ disable = "libjanus_websockets.so,libjanus_mqtt.so,libjanus_nanomsg.so,libjanus_pfunix.so,libjanus_rabbitmq.so" }}
events: {{ broadcast = false }}
loggers: {{ disable = "libjanus_jsonlog.so" }}
""")
        (conf / "janus.transport.http.jcfg").write_text(f"""
general: {{ json = "compact", base_path = "/janus", http = true, port = {self.port}, ip = "127.0.0.1" }}
admin: {{ admin_http = false }}
cors: {{ }}
""")
        (conf / "janus.plugin.videoroom.jcfg").write_text("general: { }\n")
        src, shim = self.dir / "shim.c", self.dir / "loopback_shim.so"
        src.write_text(SHIM)
        subprocess.run(["gcc", "-shared", "-fPIC", "-O2", "-o", str(shim), str(src), "-ldl"], check=True)
        env = dict(os.environ, LD_PRELOAD=str(shim))
        self.log = open(self.dir / "janus.log", "w")
        self.proc = subprocess.Popen(["janus", "-F", str(conf), "-C", str(conf / "janus.jcfg")], env=env,
                                     stdout=self.log, stderr=subprocess.STDOUT)
        if not serving(f"{self.url}/info", self.proc, timeout):
            raise RuntimeError(f"janus did not start; see {self.dir / 'janus.log'}")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        shutil.rmtree(self.dir, ignore_errors=True)


class JanusSession:
    """One Janus session (one HTTP client) with a long-poll that routes events to handles."""

    _ids = itertools.count(1)

    def __init__(self, url: str):
        self.url = url
        self.http = httpx.AsyncClient(timeout=40)
        self.sid: int | None = None
        self.queues: dict[int, asyncio.Queue] = {}
        self._poller: asyncio.Task | None = None

    async def _post(self, path: str, body: dict) -> dict:
        r = await self.http.post(self.url + path, json={**body, "transaction": f"t{next(self._ids)}"})
        r.raise_for_status()
        data = r.json()
        if data.get("janus") == "error":
            raise RuntimeError(f"janus: {data['error']}")
        return data

    async def create(self) -> None:
        self.sid = (await self._post("", {"janus": "create"}))["data"]["id"]
        self._poller = asyncio.ensure_future(self._poll())

    async def _poll(self) -> None:
        while True:
            try:
                r = await self.http.get(f"{self.url}/{self.sid}", params={"maxev": 20})
                events = r.json()
            except Exception:
                await asyncio.sleep(0.1)
                continue
            for ev in events if isinstance(events, list) else [events]:
                if ev.get("janus") == "event" and ev.get("sender") in self.queues:
                    await self.queues[ev["sender"]].put(ev)

    async def attach(self) -> int:
        hid = (await self._post(f"/{self.sid}", {"janus": "attach", "plugin": "janus.plugin.videoroom"}))["data"]["id"]
        self.queues[hid] = asyncio.Queue()
        return hid

    async def request(self, hid: int, body: dict, jsep: dict | None = None) -> dict:
        """A synchronous plugin request (create, list): its answer."""
        msg = {"janus": "message", "body": body}
        if jsep:
            msg["jsep"] = jsep
        return await self._post(f"/{self.sid}/{hid}", msg)

    async def event(self, hid: int, timeout: float = 30) -> dict:
        return await asyncio.wait_for(self.queues[hid].get(), timeout)

    async def close(self) -> None:
        if self._poller:
            self._poller.cancel()
        if self.sid is not None:
            try:
                await self._post(f"/{self.sid}", {"janus": "destroy"})
            except Exception:
                pass
        await self.http.aclose()


class JanusSignaling:
    """The load client's signaling interface (join, publish, on_offer, close) on Janus VideoRoom."""

    def __init__(self, url: str, room: int, *, feeds: list[int] | None = None):
        self.url, self.room, self.feeds = url, room, feeds
        self.session = JanusSession(url)
        self.on_offer = None
        self.feed_id: int | None = None
        self.join_seconds = 0.0

    async def join(self) -> dict:
        t0 = time.perf_counter()
        await self.session.create()
        self.handle = await self.session.attach()
        if self.feeds is None:  # a publisher: joins now, publishes with publish()
            await self.session.request(self.handle, {"request": "join", "ptype": "publisher", "room": self.room})
            ev = await self.session.event(self.handle)
            self.feed_id = ev["plugindata"]["data"]["id"]
        else:  # a subscriber of these feeds: Janus offers, we answer and start
            await self.session.request(self.handle, {
                "request": "join", "ptype": "subscriber", "room": self.room,
                "streams": [{"feed": f} for f in self.feeds],
            })
            ev = await self.session.event(self.handle)
            answer = await self.on_offer(ev["jsep"]["sdp"])
            await self.session.request(self.handle, {"request": "start"}, {"type": "answer", "sdp": answer})
        self.join_seconds = time.perf_counter() - t0
        return {}

    async def publish(self, offer: str) -> str:
        await self.session.request(self.handle, {"request": "configure", "audio": True, "video": True},
                                   {"type": "offer", "sdp": offer})
        while True:
            ev = await self.session.event(self.handle)
            if ev.get("jsep"):
                return ev["jsep"]["sdp"]

    async def close(self) -> None:
        await self.session.close()


async def create_room(url: str, room: int, publishers: int) -> None:
    s = JanusSession(url)
    await s.create()
    try:
        hid = await s.attach()
        reply = await s.request(hid, {"request": "create", "room": room, "publishers": max(publishers, 6),
                                      "bitrate": 0, "audiocodec": "opus", "videocodec": "vp8"})
        data = reply["plugindata"]["data"]
        if data.get("videoroom") != "created":
            raise RuntimeError(f"janus room not created: {data}")
    finally:
        await s.close()
