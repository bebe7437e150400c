"""Transport-wide congestion control feedback to publishers
(draft-holmer-rmcat-transport-wide-cc-extensions-01): the pure-Python reference of
``mediaserver/fastpath/twcc.pxd``.

The publisher numbers every packet of its transport in a header extension; we tell it when each
arrived, and its own estimator (Chrome's send-side GCC) sets its bitrate from that. Arrivals
are microseconds of the forwarder's clock; deltas go in 250 us ticks, the reference time in
64 ms units (section 3.1)."""

from __future__ import annotations

import struct

from mediaserver.media.rtcp import RTPFB, SERVER_SSRC

URI = "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01"
FMT_TWCC = 15
RING = 2048  # arrivals remembered between two feedback messages
MAX_STATUS = 400  # packets reported per message (it stays under the MTU)
INTERVAL = 0.05  # how often a publisher hears from us
MAX_MESSAGES = 4  # messages sent at once when much is pending


class Twcc:
    """What one transport's packets did, between two feedback messages."""

    def __init__(self, ext_id: int) -> None:
        self.ext_id = ext_id
        self.started = False
        self.base = self.end = self.last = 0  # unwrapped sequence numbers
        self.arrival: dict[int, int] = {}  # unwrapped sequence number -> microseconds
        self.count = 0
        self.last_sent = float("-inf")

    def record(self, seq: int, now: float) -> None:
        """One packet's arrival; a packet older than what was reported already is not reported."""
        if not self.started:
            self.started = True
            self.base = self.end = self.last = seq
        diff = (seq - self.last) & 0xFFFF
        ext = self.last + (diff - 0x10000 if diff >= 0x8000 else diff)
        self.last = max(self.last, ext)
        if ext < self.base:
            return
        if ext >= self.base + RING:  # a jump: what is too old to keep is never reported
            self.base = ext - RING + 1
            self.arrival = {k: v for k, v in self.arrival.items() if k >= self.base}
        self.arrival.setdefault(ext, int(now * 1e6))  # a duplicate keeps its first arrival
        self.end = max(self.end, ext + 1)

    def due(self, now: float) -> bool:
        return self.started and self.end > self.base and now - self.last_sent >= INTERVAL

    def feedback(self, media_ssrc: int, now: float) -> bytes | None:
        """The next feedback message for what is pending, None when there is none to send."""
        n = min(self.end - self.base, MAX_STATUS)
        if n <= 0:
            return None
        received = [self.base + i for i in range(n) if self.base + i in self.arrival]
        if not received:  # all lost: not worth a message of its own (the sender counts them lost)
            self.base += n
            return None
        first = self.arrival[received[0]]
        prev = (first // 64000) * 256
        symbols, deltas = [], []
        for i in range(n):
            a = self.arrival.get(self.base + i)
            if a is None:
                symbols.append(0)
                continue
            d = a // 250 - prev
            if not -32768 <= d <= 32767:  # too far for one message: the rest goes in the next
                n = i
                break
            symbols.append(1 if 0 <= d <= 255 else 2)
            deltas.append(d)
            prev = a // 250
        symbols = symbols[:n]
        body = b"".join(struct.pack("!H", c) for c in chunks(symbols))
        for s, d in zip([s for s in symbols if s], deltas):
            body += struct.pack("!B", d) if s == 1 else struct.pack("!h", d)
        head = struct.pack("!IIHHI", SERVER_SSRC, media_ssrc, self.base & 0xFFFF, n, (((first // 64000) & 0xFFFFFF) << 8) | self.count)
        size = 4 + len(head) + len(body)
        pad = (4 - size % 4) % 4
        if pad:  # RFC 3550 padding: zeros, the last byte counting them
            body += b"\0" * (pad - 1) + bytes([pad])
        msg = struct.pack("!BBH", 0x80 | (0x20 if pad else 0) | FMT_TWCC, RTPFB, (size + pad) // 4 - 1) + head + body
        for k in range(self.base, self.base + n):
            self.arrival.pop(k, None)
        self.base += n
        self.count = (self.count + 1) & 0xFF
        self.last_sent = now
        return msg


def chunks(symbols: list[int]) -> list[int]:
    """Packet status chunks (section 3.1.3, 3.1.4): a run of 14 or more as one run-length
    chunk, else 14 one-bit symbols when none needs two bits, else 7 two-bit symbols."""
    out, i, n = [], 0, len(symbols)
    while i < n:
        run = 1
        while i + run < n and symbols[i + run] == symbols[i] and run < 8191:
            run += 1
        if run >= 14:
            out.append((symbols[i] << 13) | run)
            i += run
        elif 2 not in symbols[i:i + 14]:
            out.append(0x8000 | sum(1 << (13 - j) for j, s in enumerate(symbols[i:i + 14]) if s))
            i += 14
        else:
            out.append(0xC000 | sum(s << (12 - 2 * j) for j, s in enumerate(symbols[i:i + 7])))
            i += 7
    return out


MAX_REPORTED = 4096  # statuses read of one feedback message (more: the message is not read)


def parse(packet: bytes) -> tuple[int, int, list[int | None]]:
    """(base sequence number, reference time in microseconds, arrival in microseconds or None
    per packet) of a feedback message (a subscriber's, about what we sent it; section 3.1).
    Raises ValueError on a malformed one: it is not read at all (as in the fast path)."""
    n = len(packet)
    if packet[0] & 0x20:  # RFC 3550 padding
        if n < 1 or packet[-1] == 0 or packet[-1] > n - 20:
            raise ValueError("bad padding")
        n -= packet[-1]
    if n < 20:
        raise ValueError("too short")
    base, count, ref_word = struct.unpack_from("!HHI", packet, 12)
    if count > MAX_REPORTED:
        raise ValueError("too many statuses")
    pos, symbols = 20, []
    while len(symbols) < count:
        if pos + 2 > n:
            raise ValueError("chunks cut short")
        c = packet[pos] << 8 | packet[pos + 1]
        pos += 2
        if not c & 0x8000:  # run length
            symbols += [(c >> 13) & 3] * min(c & 0x1FFF, count - len(symbols))
        elif not c & 0x4000:  # status vector, one bit each
            symbols += [(c >> (13 - j)) & 1 for j in range(14)][: count - len(symbols)]
        else:  # two bits each
            symbols += [(c >> (12 - 2 * j)) & 3 for j in range(7)][: count - len(symbols)]
    ref = ref_word >> 8
    if ref & 0x800000:
        ref -= 1 << 24
    t = ref * 64000
    arrivals: list[int | None] = []
    for s in symbols:
        if s == 0:
            arrivals.append(None)
            continue
        if s == 3:
            raise ValueError("a reserved status")
        if s == 1:
            if pos + 1 > n:
                raise ValueError("deltas cut short")
            d = packet[pos]
            pos += 1
        else:
            if pos + 2 > n:
                raise ValueError("deltas cut short")
            d = packet[pos] << 8 | packet[pos + 1]
            d -= 0x10000 if d & 0x8000 else 0
            pos += 2
        t += d * 250
        arrivals.append(t)
    return base, ref * 64000, arrivals
