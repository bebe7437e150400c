"""SRTP protection profiles and keys (RFC 5764 section 4.1.2, RFC 7714)."""

from __future__ import annotations

from dataclasses import dataclass

from pylibsrtp import Policy, Session


@dataclass(frozen=True)
class Profile:
    openssl_name: bytes
    libsrtp_id: int
    key_len: int
    salt_len: int
    rtp_trailer: int  # bytes protecting an RTP packet adds: its authentication tag (no MKI)


# Preference order: AEAD first (cheaper per packet and stronger), then the mandatory one.
PROFILES = (
    Profile(b"SRTP_AEAD_AES_128_GCM", Policy.SRTP_PROFILE_AEAD_AES_128_GCM, 16, 12, 16),
    Profile(b"SRTP_AES128_CM_SHA1_80", Policy.SRTP_PROFILE_AES128_CM_SHA1_80, 16, 14, 10),
)
BY_NAME = {p.openssl_name.decode(): p for p in PROFILES}


@dataclass(frozen=True)
class SrtpKeys:
    profile: Profile
    rx: bytes  # key + salt for what the peer sends us
    tx: bytes  # key + salt for what we send the peer

    @classmethod
    def from_material(cls, profile: Profile, material: bytes, *, server: bool) -> "SrtpKeys":
        k, s = profile.key_len, profile.salt_len
        client = material[0:k] + material[2 * k : 2 * k + s]
        srv = material[k : 2 * k] + material[2 * k + s : 2 * k + 2 * s]
        return cls(profile, rx=client if server else srv, tx=srv if server else client)

    def sessions(self) -> tuple[Session, Session]:
        """(inbound, outbound) libsrtp sessions for these keys."""
        rx = Policy(key=self.rx, ssrc_type=Policy.SSRC_ANY_INBOUND, srtp_profile=self.profile.libsrtp_id)
        rx.window_size = 1024  # replay window (RFC 3711 section 3.3.2); reordering up to this is fine
        tx = Policy(key=self.tx, ssrc_type=Policy.SSRC_ANY_OUTBOUND, srtp_profile=self.profile.libsrtp_id)
        tx.allow_repeat_tx = True  # retransmissions re-protect the same sequence number
        return Session(rx), Session(tx)
