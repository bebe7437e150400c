# cython: language_level=3
# distutils: language = c++
"""The load client's packet engine: paced RTP/SRTP sending and counting reception, in C.

A ``Stream`` turns one RTP template into a paced stream (sequence numbers and
timestamps advancing, frames of several packets with the marker bit on the last,
SRTP-protected through libsrtp's function pointers as the server's fast path does)
and remembers when each sequence number left. A ``Sink`` receives on many sockets
with ``epoll`` and ``recvmmsg``, never decrypting: the RTP header is in the clear
(RFC 3711 section 3.1), so the sequence number says which packet arrived and the
sender's clock says how long it took: the kernel stamps each datagram as it reaches
the subscriber's socket (SO_TIMESTAMPNS, the real-time clock), so how fast the sink
drains its sockets does not count. ``run`` drives both without the GIL.

A ``Receiver`` does what a subscriber's peer connection would with what reaches it, for a
load test's subscribers (``loadtest.client.measure``): once their connections are up it takes
over their sockets, decrypts each packet with the connection's own SRTP session and reads the
send time the publisher's ``Stream`` wrote into the payload against the kernel's receive stamp,
so neither the client's Python nor how soon it reads counts in the latency.
"""

from pylibsrtp._binding import ffi as _srtp_ffi, lib as _srtp_lib

from libc.stdint cimport int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc
from libc.string cimport memcpy, memset
from libcpp.unordered_map cimport unordered_map
from libcpp.vector cimport vector
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec

from mediaserver._udp cimport (
    AF_INET, CMSG_DATA, CMSG_FIRSTHDR, CMSG_NXTHDR, MSG_DONTWAIT, SCM_TIMESTAMPNS, SO_TIMESTAMPNS, SOL_SOCKET, cmsghdr,
    htonl, htons, iovec, mmsghdr, msghdr, recvmmsg, sendmmsg, setsockopt, sockaddr_in, srtp_fn,
)


cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint32_t u32
        uint64_t u64
    struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int)
    int epoll_ctl(int, int, int, epoll_event*)
    int epoll_wait(int, epoll_event*, int, int)
    int EPOLLIN
    int EPOLL_CTL_ADD

from posix.unistd cimport close
from posix.time cimport nanosleep


cdef srtp_fn f_protect = <srtp_fn><uintptr_t>int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_protect")))
cdef srtp_fn f_unprotect = <srtp_fn><uintptr_t>int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_unprotect")))

cdef enum:
    BUF = 2048
    BATCH = 64
    HIST = 200000  # latency buckets of 1 us: up to 200 ms


cdef inline uint64_t now_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)  # the clock of kernel receive timestamps
    return <uint64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef inline uint64_t mono_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)  # pacing does not follow clock adjustments
    return <uint64_t>ts.tv_sec * 1000000000 + ts.tv_nsec


cdef class Stream:
    """One outgoing RTP stream to one address."""

    cdef int fd
    cdef sockaddr_in dst
    cdef uint8_t tmpl[BUF]
    cdef int size  # plaintext packet size
    cdef uint16_t seq
    cdef uint32_t ts
    cdef uint32_t ts_step
    cdef int frame_packets
    cdef int in_frame
    cdef bint stamp  # write the send time (ns, real-time clock) into the first 8 payload bytes
    cdef int twcc_at  # where a transport-wide sequence number goes in each packet, -1: none
    cdef int payload_at  # where the payload starts (after the header extension)
    cdef void* srtp
    cdef object session  # keeps the pylibsrtp session alive
    cdef uint64_t sent_at[65536]  # send time (ns) by sequence number
    cdef readonly uint64_t sent
    cdef mmsghdr msgs[BATCH]
    cdef iovec iov[BATCH]
    cdef uint8_t* bufs

    def __cinit__(self, int fd, tuple dst, uint32_t ssrc, int size=1200, int payload_type=96, session=None,
                  uint32_t clock_rate=90000, double fps=30.0, int frame_packets=1, bint stamp=False,
                  bytes extension=b"", int twcc_at=-1, bytes prefix=b""):
        """``extension``: an RTP header extension block (RFC 8285) each packet carries, with a
        transport-wide sequence number written at ``twcc_at`` in it; ``prefix``: the payload's
        first bytes (e.g. a VP8 descriptor), before the send-time stamp."""
        import socket
        import struct
        if not 12 <= size <= 1400:
            raise ValueError("packet size must be 12..1400 bytes")
        self.fd = fd
        memset(&self.dst, 0, sizeof(sockaddr_in))
        self.dst.sin_family = AF_INET
        self.dst.sin_addr.s_addr = htonl(struct.unpack("!I", socket.inet_aton(dst[0]))[0])
        self.dst.sin_port = htons(dst[1])
        self.size = size - (16 if session is not None else 0)  # room for the SRTP tag
        memset(self.tmpl, 0, BUF)
        self.tmpl[0] = 0x80
        self.tmpl[1] = payload_type & 0x7F
        self.tmpl[8] = ssrc >> 24
        self.tmpl[9] = (ssrc >> 16) & 0xFF
        self.tmpl[10] = (ssrc >> 8) & 0xFF
        self.tmpl[11] = ssrc & 0xFF
        cdef int i
        for i in range(12, self.size):
            self.tmpl[i] = (i * 7) & 0xFF
        if len(extension) % 4 or 12 + len(extension) + len(prefix) + 8 > self.size:
            raise ValueError("an extension block is whole 32-bit words, and it and the prefix must fit")
        if extension:
            self.tmpl[0] |= 0x10
        memcpy(self.tmpl + 12, <char*>extension, len(extension))
        memcpy(self.tmpl + 12 + len(extension), <char*>prefix, len(prefix))
        self.twcc_at = 12 + twcc_at if extension and 0 <= twcc_at <= len(extension) - 2 else -1
        self.payload_at = 12 + len(extension) + len(prefix)
        self.seq = 1
        self.ts = 0
        self.ts_step = <uint32_t>(clock_rate / fps)
        self.frame_packets = frame_packets
        self.stamp = stamp and self.size >= self.payload_at + 8
        self.session = session
        self.srtp = NULL if session is None else <void*><uintptr_t>int(_srtp_ffi.cast("uintptr_t", session._srtp[0]))
        self.bufs = <uint8_t*>malloc(BATCH * BUF)
        if self.bufs == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.bufs)

    cdef int send(self, int count) noexcept nogil:
        """Send ``count`` packets now; returns how many the kernel took."""
        cdef int i, k, n, length, done = 0, sent
        cdef uint8_t* b
        cdef uint64_t t
        while count > 0:
            n = count if count < BATCH else BATCH
            t = now_ns()
            for i in range(n):
                b = self.bufs + i * BUF
                memcpy(b, self.tmpl, self.size)
                self.in_frame += 1
                if self.in_frame == self.frame_packets:
                    b[1] |= 0x80  # the marker bit ends a frame
                b[2] = self.seq >> 8
                b[3] = self.seq & 0xFF
                b[4] = self.ts >> 24
                b[5] = (self.ts >> 16) & 0xFF
                b[6] = (self.ts >> 8) & 0xFF
                b[7] = self.ts & 0xFF
                if self.twcc_at >= 0:
                    b[self.twcc_at] = self.seq >> 8
                    b[self.twcc_at + 1] = self.seq & 0xFF
                if self.stamp:
                    for k in range(8):
                        b[self.payload_at + k] = (t >> (56 - 8 * k)) & 0xFF
                length = self.size
                if self.srtp != NULL:
                    f_protect(self.srtp, b, &length)
                self.sent_at[self.seq] = t
                self.seq += 1
                if self.in_frame == self.frame_packets:
                    self.in_frame = 0
                    self.ts += self.ts_step
                self.iov[i].iov_base = b
                self.iov[i].iov_len = length
                self.msgs[i].msg_hdr.msg_name = &self.dst
                self.msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
                self.msgs[i].msg_hdr.msg_iov = &self.iov[i]
                self.msgs[i].msg_hdr.msg_iovlen = 1
                self.msgs[i].msg_hdr.msg_control = NULL
                self.msgs[i].msg_hdr.msg_controllen = 0
            sent = sendmmsg(self.fd, self.msgs, n, 0)
            if sent > 0:
                done += sent
                self.sent += sent
            count -= n
        return done


cdef inline uint64_t received_at(msghdr* h, uint64_t fallback) noexcept nogil:
    """The kernel's receive stamp of a datagram (SO_TIMESTAMPNS), else ``fallback``."""
    cdef cmsghdr* cm = CMSG_FIRSTHDR(h)
    cdef timespec* stamp
    while cm != NULL:
        if cm.cmsg_level == SOL_SOCKET and cm.cmsg_type == SCM_TIMESTAMPNS:
            stamp = <timespec*>CMSG_DATA(cm)
            return <uint64_t>stamp.tv_sec * 1000000000 + stamp.tv_nsec
        cm = CMSG_NXTHDR(h, cm)
    return fallback


cdef inline void ready_batch(mmsghdr* msgs, iovec* iov, uint8_t* bufs, int size, uint8_t* control) noexcept nogil:
    """BATCH messages for recvmmsg: datagram k into bufs + k * size, its ancillary data (the
    receive stamp) into control + k * 64."""
    cdef int k
    for k in range(BATCH):
        iov[k].iov_base = bufs + k * size
        iov[k].iov_len = size
        memset(&msgs[k].msg_hdr, 0, sizeof(msghdr))
        msgs[k].msg_hdr.msg_iov = &iov[k]
        msgs[k].msg_hdr.msg_iovlen = 1
        msgs[k].msg_hdr.msg_control = control + k * 64
        msgs[k].msg_hdr.msg_controllen = 64


cdef inline void count_latency(uint64_t* hist, uint64_t* late, uint64_t arrived, uint64_t sent) noexcept nogil:
    """Into a histogram of 1 us buckets (``late``: past its end)."""
    cdef uint64_t lat = (arrived - sent) // 1000 if arrived > sent else 0
    if lat < HIST:
        hist[lat] += 1
    else:
        late[0] += 1


cdef double percentile(uint64_t* hist, uint64_t late, double q) noexcept:
    """The q-th percentile of a latency histogram of 1 us buckets (``late``: past its end)."""
    cdef uint64_t total = late, acc = 0
    cdef int i
    for i in range(HIST):
        total += hist[i]
    if total == 0:
        return float("nan")
    for i in range(HIST):
        acc += hist[i]
        if acc >= q / 100.0 * total:
            return i
    return HIST


cdef class Sink:
    """Receives on many sockets; counts packets and their latency against one Stream's clock."""

    cdef int ep
    cdef vector[int] fds
    cdef uint64_t* hist
    cdef readonly uint64_t received
    cdef readonly uint64_t late  # beyond the histogram
    cdef readonly uint64_t bytes
    cdef Stream clock
    cdef bint measuring

    def __cinit__(self, list fds, Stream clock):
        cdef epoll_event ev
        cdef int fd, one = 1
        self.ep = epoll_create1(0)
        if self.ep < 0:
            raise OSError("epoll_create1 failed")
        self.clock = clock
        self.hist = <uint64_t*>calloc(HIST, sizeof(uint64_t))
        if self.hist == NULL:
            raise MemoryError()
        for fd in fds:
            memset(&ev, 0, sizeof(ev))
            ev.events = EPOLLIN
            ev.data.fd = fd
            if epoll_ctl(self.ep, EPOLL_CTL_ADD, fd, &ev) != 0:
                raise OSError("epoll_ctl failed")
            setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(int))
            self.fds.push_back(fd)
        self.measuring = True

    def __dealloc__(self):
        free(self.hist)
        if self.ep >= 0:
            close(self.ep)

    def reset(self):
        memset(self.hist, 0, HIST * sizeof(uint64_t))
        self.received = 0
        self.late = 0
        self.bytes = 0

    cdef void drain(self, int timeout_ms) noexcept nogil:
        cdef epoll_event events[64]
        cdef mmsghdr msgs[BATCH]
        cdef iovec iov[BATCH]
        cdef uint8_t bufs[BATCH][256]  # headers are enough: the rest is truncated
        cdef uint8_t control[BATCH][64]
        cdef int n, i, k, got
        cdef uint64_t t
        cdef uint16_t seq
        n = epoll_wait(self.ep, events, 64, timeout_ms)
        for i in range(n):
            while True:
                ready_batch(msgs, iov, &bufs[0][0], 256, &control[0][0])
                got = recvmmsg(events[i].data.fd, msgs, BATCH, MSG_DONTWAIT, NULL)
                if got <= 0:
                    break
                t = now_ns()
                for k in range(got):
                    if msgs[k].msg_len < 12 or (bufs[k][1] & 0x7F) >= 64 and (bufs[k][1] & 0x7F) <= 95:
                        continue  # not RTP (RTCP under rtcp-mux)
                    self.received += 1
                    self.bytes += msgs[k].msg_len
                    seq = (<uint16_t>bufs[k][2] << 8) | bufs[k][3]
                    count_latency(self.hist, &self.late, received_at(&msgs[k].msg_hdr, t), self.clock.sent_at[seq])
                if got < BATCH:
                    break

    def percentile(self, double q):
        """The q-th percentile of latency in microseconds (1 us resolution)."""
        return percentile(self.hist, self.late, q)


cdef uint64_t MINUTE_NS = 60000000000


cdef struct Transit:
    int64_t last  # ns, the stream's previous packet's
    double jitter  # ns, RFC 3550 section 6.4.1
    bint seen


cdef class Receiver:
    """Subscribers' sockets and their SRTP sessions: counts what arrives decrypted, with its
    latency from the send time in its payload and, per stream, the interarrival jitter."""

    cdef int ep
    cdef vector[int] fds
    cdef vector[void*] sessions
    cdef list keep  # the pylibsrtp sessions, alive while C uses them
    cdef uint64_t* hist
    cdef unordered_map[uint64_t, Transit] transit  # (socket's index, SSRC) -> its stream's
    cdef readonly uint64_t received
    cdef readonly uint64_t bytes
    cdef readonly uint64_t late  # beyond the histogram
    cdef readonly uint64_t unstamped  # RTP without a send time (audio too short, or another sender's)
    cdef readonly uint64_t not_rtp  # STUN, DTLS, RTCP: left alone while we hold the socket
    cdef readonly uint64_t refused  # SRTP would not authenticate it

    def __cinit__(self, list receivers):
        """``receivers``: (socket fd, pylibsrtp Session that decrypts what it receives)."""
        cdef epoll_event ev
        cdef int fd, one = 1
        cdef uintptr_t ptr
        self.ep = epoll_create1(0)
        if self.ep < 0:
            raise OSError("epoll_create1 failed")
        self.hist = <uint64_t*>calloc(HIST, sizeof(uint64_t))
        if self.hist == NULL:
            raise MemoryError()
        self.keep = []
        for fd, session in receivers:
            ptr = int(_srtp_ffi.cast("uintptr_t", session._srtp[0]))
            memset(&ev, 0, sizeof(ev))
            ev.events = EPOLLIN
            ev.data.u32 = self.fds.size()
            if epoll_ctl(self.ep, EPOLL_CTL_ADD, fd, &ev) != 0:
                raise OSError("epoll_ctl failed")
            setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(int))
            self.fds.push_back(fd)
            self.sessions.push_back(<void*>ptr)
            self.keep.append(session)

    def __dealloc__(self):
        free(self.hist)
        if self.ep >= 0:
            close(self.ep)

    def run(self, double duration):
        """Receive for ``duration`` seconds, without the GIL (call it from a thread)."""
        cdef uint64_t end = mono_ns() + <uint64_t>(duration * 1e9)
        with nogil:
            while mono_ns() < end:
                self.drain(20)

    cdef void drain(self, int timeout_ms) noexcept nogil:
        cdef epoll_event events[64]
        cdef mmsghdr msgs[BATCH]
        cdef iovec iov[BATCH]
        cdef uint8_t* bufs = <uint8_t*>malloc(BATCH * BUF)
        cdef uint8_t control[BATCH][64]
        cdef int n, i, k, got, idx, length, off
        cdef uint8_t* b
        cdef uint64_t now, arrived, sent, key
        cdef int64_t tr, d
        cdef Transit* st
        if bufs == NULL:
            return
        n = epoll_wait(self.ep, events, 64, timeout_ms)
        for i in range(n):
            idx = events[i].data.u32
            while True:
                ready_batch(msgs, iov, bufs, BUF, &control[0][0])
                got = recvmmsg(self.fds[idx], msgs, BATCH, MSG_DONTWAIT, NULL)
                if got <= 0:
                    break
                now = now_ns()
                for k in range(got):
                    b = bufs + k * BUF
                    length = msgs[k].msg_len
                    # RTP (RFC 7983: first byte 128-191), not RTCP (payload types 64-95 under mux).
                    if length < 12 or b[0] < 128 or b[0] > 191 or 64 <= (b[1] & 0x7F) <= 95:
                        self.not_rtp += 1
                        continue
                    if f_unprotect(self.sessions[idx], b, &length) != 0:
                        self.refused += 1
                        continue
                    self.received += 1
                    self.bytes += length
                    off = 12 + 4 * (b[0] & 0x0F)
                    if b[0] & 0x10 and length >= off + 4:
                        off += 4 + 4 * ((<int>b[off + 2] << 8) | b[off + 3])
                    if length < off + 8:
                        self.unstamped += 1
                        continue
                    sent = 0
                    for d in range(8):
                        sent = (sent << 8) | b[off + d]
                    arrived = received_at(&msgs[k].msg_hdr, now)
                    if sent == 0 or sent > arrived + MINUTE_NS or arrived > sent + MINUTE_NS:
                        self.unstamped += 1  # (not a time: another sender's payload)
                        continue
                    count_latency(self.hist, &self.late, arrived, sent)
                    key = (<uint64_t>idx << 32) | ((<uint64_t>b[8] << 24) | (<uint64_t>b[9] << 16) | (<uint64_t>b[10] << 8) | b[11])
                    st = &self.transit[key]
                    tr = <int64_t>arrived - <int64_t>sent
                    if st.seen:
                        d = tr - st.last
                        st.jitter += ((d if d >= 0 else -d) - st.jitter) / 16.0
                    st.seen = True
                    st.last = tr
                if got < BATCH:
                    break
        free(bufs)

    def percentile(self, double q):
        """The q-th percentile of latency in microseconds (1 us resolution)."""
        return percentile(self.hist, self.late, q)

    @property
    def jitter_ms(self):
        """The mean over streams of their interarrival jitter."""
        values = [item.second.jitter / 1e6 for item in self.transit]
        return sum(values) / len(values) if values else 0.0


def send_paced(Stream stream, double rate, double duration):
    """Send ``stream`` at ``rate`` packets/s for ``duration`` seconds, without the GIL (call it
    from a thread of its own). Returns the packets sent."""
    cdef uint64_t start = mono_ns(), t, end = start + <uint64_t>(duration * 1e9)
    cdef uint64_t due, sent = 0
    cdef timespec pause
    pause.tv_sec = 0
    pause.tv_nsec = 1000000
    with nogil:
        t = start
        while t < end:
            due = <uint64_t>((t - start) * 1e-9 * rate)
            if due > sent:
                stream.send(<int>(due - sent))
                sent = due
            else:
                nanosleep(&pause, NULL)  # 1 ms: the pacing granularity
            t = mono_ns()
    return sent


def run(Stream stream, Sink sink, double rate, double duration, double drain_after=0.2):
    """Send ``stream`` at ``rate`` packets/s for ``duration`` seconds while ``sink`` receives;
    then keep receiving for ``drain_after`` seconds. Returns the packets sent."""
    cdef uint64_t start = mono_ns(), t, end = start + <uint64_t>(duration * 1e9)
    cdef uint64_t stop = end + <uint64_t>(drain_after * 1e9)
    cdef uint64_t due, sent = 0
    with nogil:
        t = start
        while t < stop:
            if t < end:
                due = <uint64_t>((t - start) * 1e-9 * rate)
                if due > sent:
                    stream.send(<int>(due - sent))  # stream.sent counts what the kernel took
                    sent = due
                    sink.drain(0)
                else:
                    sink.drain(1)  # 1 ms: the pacing granularity
            else:
                sink.drain(10)
            t = mono_ns()
    return sent
