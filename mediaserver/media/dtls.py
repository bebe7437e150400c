"""DTLS 1.2 as the passive (server) side of DTLS-SRTP (RFC 5763, RFC 5764), on memory BIOs.

The worker feeds received records in and sends what comes out; when the
handshake completes, the negotiated SRTP profile and the exported keys are
ready for the forwarder. The client's certificate must match the fingerprint
in its SDP (RFC 8122 section 5).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass

from aiortc.rtcdtlstransport import RTCCertificate, certificate_digest
from OpenSSL import SSL

from mediaserver.media.srtp import PROFILES, SrtpKeys


@dataclass(frozen=True)
class Fingerprint:
    algorithm: str  # e.g. "sha-256"
    value: str  # colon-separated upper-case hex


class ServerCertificate:
    """One certificate per worker; its fingerprint goes into every SDP the worker answers."""

    def __init__(self) -> None:
        self._cert = RTCCertificate.generateCertificate()
        self.fingerprint = Fingerprint("sha-256", certificate_digest(self._cert._cert, "sha-256"))
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_QUERY_MTU)
        # The peer must present a certificate; we check it against its SDP fingerprint ourselves.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, lambda *args: True)
        ctx.use_certificate(self._cert._cert)
        ctx.use_privatekey(self._cert._key)
        ctx.set_cipher_list(b"ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-ECDSA-CHACHA20-POLY1305:ECDHE-ECDSA-AES128-SHA")
        ctx.set_tlsext_use_srtp(b":".join(p.openssl_name for p in PROFILES))
        self.context = ctx


class DtlsError(Exception):
    pass


class DtlsServer:
    def __init__(self, cert: ServerCertificate, remote_fingerprints: list[Fingerprint], mtu: int = 1200):
        self._ssl = SSL.Connection(cert.context)
        self._ssl.set_accept_state()
        self._ssl.set_ciphertext_mtu(mtu)
        self.remote_fingerprints = remote_fingerprints
        self.keys: SrtpKeys | None = None
        self.failed: str | None = None

    @property
    def done(self) -> bool:
        return self.keys is not None

    def feed(self, record: bytes) -> list[bytes]:
        """Process one received datagram; return the datagrams to send back."""
        if self.failed:
            return []
        self._ssl.bio_write(record)
        if not self.done:
            try:
                self._ssl.do_handshake()
            except SSL.WantReadError:
                pass
            except SSL.Error as e:
                self.failed = f"handshake failed: {e}"
                return self._pending()
            else:
                self._complete()
        else:
            try:
                self._ssl.recv(1500)  # alerts or stray records after the handshake
            except (SSL.WantReadError, SSL.ZeroReturnError, SSL.Error):
                pass
        return self._pending()

    def _pending(self) -> list[bytes]:
        out = []
        while True:
            try:
                out.append(self._ssl.bio_read(1500))
            except SSL.WantReadError:
                return out

    def _complete(self) -> None:
        cert = self._ssl.get_peer_certificate(as_cryptography=True)
        if cert is None:
            self.failed = "the client sent no certificate"
            return
        if not any(
            fp.algorithm.lower() == "sha-256"
            and hmac.compare_digest(certificate_digest(cert, "sha-256").upper(), fp.value.upper())
            for fp in self.remote_fingerprints
        ):
            self.failed = "the client's certificate does not match the fingerprint in its SDP"
            return
        name = self._ssl.get_selected_srtp_profile()
        profile = next((p for p in PROFILES if p.openssl_name == name), None)
        if profile is None:
            self.failed = "no SRTP protection profile was negotiated"
            return
        material = self._ssl.export_keying_material(b"EXTRACTOR-dtls_srtp", 2 * (profile.key_len + profile.salt_len))
        # RFC 5764 section 4.2: client key | server key | client salt | server salt.
        self.keys = SrtpKeys.from_material(profile, material, server=True)
