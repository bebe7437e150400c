"""ICE servers for participants: STUN, and TURN with short-lived credentials; and a local coturn.

Credentials follow the TURN REST scheme that coturn checks with ``use-auth-secret``
(draft-uberti-behave-turn-rest-00, section 2.2): the username is ``expiry:participant`` (expiry
in Unix seconds) and the password is ``base64(HMAC-SHA1(secret, username))``. TURN needs no
account per participant, and a credential stops working at its expiry, checked by the TURN
server itself.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import logging
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)


def turn_credentials(secret: str, participant_id: str, ttl: float, now: float | None = None) -> tuple[str, str]:
    """The TURN REST username and password for one participant, valid ``ttl`` seconds."""
    expiry = int((time.time() if now is None else now) + ttl)
    username = f"{expiry}:{participant_id}"
    password = base64.b64encode(hmac.new(secret.encode(), username.encode(), hashlib.sha1).digest()).decode()
    return username, password


@dataclass
class IceServers:
    """What each participant is told in ``joined``: the RTCIceServer list for its peer connections."""

    stun_urls: list[str] = field(default_factory=list)
    turn_urls: list[str] = field(default_factory=list)
    turn_secret: str | None = None
    turn_ttl: float = 86400

    @classmethod
    def from_settings(cls, settings) -> "IceServers":
        return cls(list(settings.stun_urls), list(settings.turn_urls), settings.turn_secret, settings.turn_ttl)

    def for_participant(self, participant_id: str) -> list[dict]:
        out: list[dict] = []
        if self.stun_urls:
            out.append({"urls": list(self.stun_urls)})
        if self.turn_urls and self.turn_secret:
            username, credential = turn_credentials(self.turn_secret, participant_id, self.turn_ttl)
            out.append({"urls": list(self.turn_urls), "username": username, "credential": credential})
        return out


def stun_answers(host: str, port: int, timeout: float = 0.3) -> bool:
    """Whether a STUN server answers a binding request on ``host:port`` (UDP)."""
    from aioice import stun

    request = stun.Message(message_method=stun.Method.BINDING, message_class=stun.Class.REQUEST)
    with socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.sendto(bytes(request), (host, port))
            data, _ = s.recvfrom(2048)
        except OSError:
            return False
    try:
        reply = stun.parse_message(data)
    except ValueError:
        return False
    return reply.transaction_id == request.transaction_id and reply.message_class == stun.Class.RESPONSE


class LocalTurn:
    """A coturn (Debian's ``coturn``, the ``turnserver`` binary) on one address, for `make run`
    and the tests: shared-secret credentials, UDP and TCP on one port, no TLS, relays on the same
    address. ``allow_loopback`` lets it relay to 127.0.0.1 (coturn refuses loopback peers unless
    told), which a single machine needs: the media workers listen there."""

    def __init__(self, host: str, port: int, secret: str, *, allow_loopback: bool | None = None,
                 relay_ports: tuple[int, int] = (49160, 49660), binary: str | None = None) -> None:
        self.host, self.port, self.secret = host, port, secret
        self.allow_loopback = host.startswith("127.") or host == "::1" if allow_loopback is None else allow_loopback
        self.relay_ports = relay_ports
        self.binary = binary or shutil.which("turnserver")
        self.proc: subprocess.Popen | None = None
        self.dir = Path(tempfile.mkdtemp(prefix="mediaserver-turn-"))

    @staticmethod
    def installed() -> bool:
        return shutil.which("turnserver") is not None

    @property
    def urls(self) -> list[str]:
        where = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return [f"turn:{where}?transport=udp", f"turn:{where}?transport=tcp"]

    @property
    def stun_urls(self) -> list[str]:
        where = f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
        return [f"stun:{where}"]

    def command(self) -> list[str]:
        cmd = [
            self.binary or "turnserver", "-n", f"--listening-ip={self.host}", f"--relay-ip={self.host}",
            f"--listening-port={self.port}", "--use-auth-secret", f"--static-auth-secret={self.secret}",
            "--realm=mediaserver", "--fingerprint", "--no-cli", "--no-tls", "--no-dtls",
            "--no-software-attribute", "--no-multicast-peers", "--verbose", "--simple-log", "--log-file=stdout",
            f"--min-port={self.relay_ports[0]}", f"--max-port={self.relay_ports[1]}",
            f"--pidfile={self.dir / 'turnserver.pid'}", f"--userdb={self.dir / 'turndb'}",
        ]
        if self.allow_loopback:
            cmd.append("--allow-loopback-peers")
        return cmd

    def start(self, timeout: float = 5.0) -> None:
        """Start it and wait until it answers STUN; raises RuntimeError (with its log) if it does not."""
        if not self.binary:
            raise RuntimeError("coturn is not installed (Debian: apt-get install coturn)")
        if stun_answers(self.host, self.port, 0.1):
            raise RuntimeError(f"something already answers STUN on {self.host}:{self.port}")
        self.log_path = self.dir / "turnserver.log"
        with open(self.log_path, "wb") as logf:
            self.proc = subprocess.Popen(self.command(), stdout=logf, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            if stun_answers(self.host, self.port):
                return
        self.stop()
        raise RuntimeError(f"coturn did not start on {self.host}:{self.port}: {self.log()[-800:]}")

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except (OSError, AttributeError):
            return ""

    def allocations(self) -> int:
        """Relay allocations coturn made so far (from its log), e.g. to check media went through it."""
        return self.log().count("ALLOCATE processed, success")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None
        shutil.rmtree(self.dir, ignore_errors=True)
