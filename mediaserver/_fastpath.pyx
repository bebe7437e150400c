# cython: language_level=3
# distutils: language = c++
"""The routed media fast path: SRTP/SRTCP forwarding in C, with the GIL released.

``FastPath`` owns a worker's UDP socket once ``run()`` is called from a thread: a
batch loop over ``recvmmsg``/``sendmmsg`` demultiplexes by first byte (RFC 7983),
forwards RTP and answers or forwards RTCP itself, and queues STUN and DTLS for
the Python slow path (an eventfd tells the asyncio loop). Without a socket the
same code runs one packet at a time (``handle_rtp``/``handle_rtcp``), which is how
tests compare it packet for packet with the pure-Python reference,
``mediaserver.media.forwarder.Forwarder``, whose behaviour it must match.

This file is the loop and its tables (endpoints, tracks, routes); the pieces it calls are in
``mediaserver/fastpath/*.pxd``, one per module of the reference (``rtp``, ``rtcp``, ``nack``,
``keyframes``, ``twcc``), inline C compiled into this one extension.

Crypto is libsrtp as pylibsrtp ships it: its cffi module gives the addresses of
``srtp_protect`` and friends and of each session's ``srtp_t``, which C calls
directly. All state sits behind one mutex: the loop holds it per received batch,
control calls from Python hold it briefly. With sender threads (``threads`` > 1) the loop
still routes every copy; each sender thread owns a share of the endpoints and protects and
sends their datagrams, and the loop waits for them before it lets the mutex go, so nothing
they touch (an endpoint's SRTP session, the GSO refusals) changes under them.
"""

import socket as _socket
import threading
import struct as _struct
from collections import Counter

from mediaserver.media.feedback import Result as _Result  # (the reference's, so results compare equal)

from pylibsrtp._binding import ffi as _srtp_ffi, lib as _srtp_lib

from cython.operator cimport dereference as deref, preincrement as inc
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t, uintptr_t
from libc.stdlib cimport calloc, free, malloc, realloc
from libc.string cimport memcmp, memcpy, memmove, memset
from libcpp.string cimport string
from libcpp.unordered_map cimport unordered_map
from libcpp.unordered_set cimport unordered_set
from libcpp.vector cimport vector
from posix.time cimport CLOCK_MONOTONIC, CLOCK_REALTIME, clock_gettime, timespec
from posix.unistd cimport close, read, write

from mediaserver._udp cimport (
    AF_INET, CMSG_DATA, CMSG_FIRSTHDR, CMSG_LEN, CMSG_NXTHDR, CMSG_SPACE, MSG_DONTWAIT, MSG_TRUNC, SCM_TIMESTAMPNS,
    SO_TIMESTAMPNS, SOL_SOCKET, SOL_UDP, UDP_SEGMENT, cmsghdr, htonl, htons, iovec, mmsghdr, msghdr, ntohl, ntohs, recvmmsg, sendmmsg, setsockopt, sockaddr_in, srtp_fn,
)
from mediaserver.fastpath cimport codecs, feedback, keyframes, nack, rtcp, rtp, temporal, twcc
from mediaserver.fastpath.keyframes cimport Keyframes
from mediaserver.fastpath.nack cimport NACK_CACHE, UPSTREAM_MAX, Asked, Slot
from mediaserver.fastpath.rtcp cimport NACK_SEQS, PSFB, RR, RTPFB, SR, Quality
from mediaserver.fastpath.rtp cimport KIND_DROP, KIND_DTLS, KIND_RTCP, KIND_RTP, KIND_STUN, put16, put32, u16, u32
from mediaserver.fastpath.feedback cimport Result, Sent
from mediaserver.fastpath.temporal cimport DROP_WINDOW, MAX_TEMPORAL, Drops, Vp8Temporal
from mediaserver.fastpath.twcc cimport TWCC_MAX_MESSAGES, Twcc


cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    int pthread_mutex_init(pthread_mutex_t*, void*)
    int pthread_mutex_lock(pthread_mutex_t*)
    int pthread_mutex_unlock(pthread_mutex_t*)
    int pthread_mutex_destroy(pthread_mutex_t*)
    ctypedef struct pthread_cond_t:
        pass
    int pthread_cond_init(pthread_cond_t*, void*)
    int pthread_cond_wait(pthread_cond_t*, pthread_mutex_t*)
    int pthread_cond_broadcast(pthread_cond_t*)
    int pthread_cond_destroy(pthread_cond_t*)

cdef extern from "<poll.h>" nogil:
    struct pollfd:
        int fd
        short events
        short revents
    int poll(pollfd*, unsigned long, int)
    short POLLIN
    short POLLOUT

cdef extern from "<sys/eventfd.h>" nogil:
    int eventfd(unsigned int, int)
    int EFD_NONBLOCK
    int EFD_CLOEXEC

from libc.errno cimport EAGAIN, EINVAL, EIO, errno  # EWOULDBLOCK is EAGAIN on Linux


KIND_NAMES = ("drop", "stun", "dtls", "rtp", "rtcp")
CODEC_IDS = {"VP8": codecs.CODEC_VP8, "H264": codecs.CODEC_H264, "VP9": codecs.CODEC_VP9}  # as the reference's

cdef enum:
    MTU = 1500  # larger datagrams are never forwarded (the reference's MTU)
    BUF = 2048  # room for a datagram over the MTU (to count it) and for SRTP trailers
    BATCH = 64  # datagrams per recvmmsg
    CONTROL = 64  # ancillary bytes per datagram: its receive stamp
    OUT_MAX = 64  # datagrams per sendmmsg: more adds latency for the first ones, not speed
    # UDP generic segmentation offload (Linux 4.18, UDP_SEGMENT): consecutive datagrams to one
    # address, all of one size but the last, leave in one send and cross the stack once.
    GSO_SEGMENTS = 64  # the kernel's UDP_MAX_SEGMENTS before 6.x
    GSO_BYTES = 60000  # one datagram before segmentation: under 65,507
    GSO_CONTROL = 32  # ancillary bytes per message: CMSG_SPACE(sizeof(uint16_t)) and room
    SLOW_MAX = 512  # STUN/DTLS datagrams waiting for Python
    SLOW_UNKNOWN_MAX = 128  # of those, the most from addresses no endpoint has (new clients, or noise)
    SLOW_PER_SOURCE = 4  # and the most from any one such address
    REFUSED_MAX = 8  # addresses one batch finds refusing GSO, noted until the batch settles
    MAX_SENDERS = 16

cdef double REMB_INTERVAL = 0.5
cdef int RTX_BURST = 32768  # the reference's: repairs are at most half of what a route is sent, this burst
cdef int LOUD_LEVEL = 40  # the reference's: an audio level (RFC 6464, -dBov) this loud or louder is loud
cdef uint64_t REMB_FOLLOW = 3  # the reference's: an estimate under a third of the best is not followed
cdef double LAYER_TIMEOUT = 1.0
cdef double CONSENT_TIMEOUT = 30.0  # RFC 7675

# Counters; the names match the reference Forwarder's and the worker's.
cdef enum Stat:
    S_RTP_IN, S_RTP_OUT, S_BYTES_OUT, S_RTCP_IN
    S_DROP_NOT_READY, S_DROP_TOO_BIG, S_DROP_SRTP, S_DROP_SRTCP, S_DROP_UNKNOWN_SSRC
    S_DROP_SUBSCRIBER_NOT_READY, S_DROP_PROTECT, S_DROP_NO_CONSENT, S_DROP_UNKNOWN, S_DROP_SEND
    S_DROP_SLOW_QUEUE_FULL, S_PLI_SENT, S_PLI_THROTTLED, S_REMB_SENT, S_SR_FORWARDED
    S_NACK_SERVED, S_NACK_MISSED, S_NACK_UPSTREAM, S_RX_PACKETS, S_RX_BATCHES, S_TX_BATCHES
    S_DROP_DTLS_NO_ICE, S_DROP_SLOW_UNKNOWN, S_PLI_DEFERRED, S_PADDING_IN, S_RTX_REPAIRED, S_RTX_REDUNDANT, S_TWCC_SENT
    S_LAYERS_FOUND, S_LAYER_SWITCHES, S_RTX_SENT, S_TX_GSO, S_GSO_REFUSED, S_VIDEO_RESUMED, S_TEMPORAL_DROPPED
    S_TWCC_IN, S_DROP_TWCC_MALFORMED, S_DROP_MALFORMED, S_NACK_THROTTLED
    S_COUNT

STAT_NAMES = (
    "rtp_in", "rtp_out", "bytes_out", "rtcp_in",
    "drop_not_ready", "drop_too_big", "drop_srtp", "drop_srtcp", "drop_unknown_ssrc",
    "drop_subscriber_not_ready", "drop_protect", "drop_no_consent", "drop_unknown", "drop_send",
    "drop_slow_queue_full", "pli_sent", "pli_throttled", "remb_sent", "sr_forwarded",
    "nack_served", "nack_missed", "nack_upstream", "rx_packets", "rx_batches", "tx_batches",
    "drop_dtls_no_ice", "drop_slow_unknown", "pli_deferred", "padding_in", "rtx_repaired", "rtx_redundant", "twcc_sent",
    "layers_found", "layer_switches", "rtx_sent", "tx_gso", "gso_refused", "video_resumed", "temporal_dropped",
    "twcc_in", "drop_twcc_malformed", "drop_malformed", "nack_throttled",
)

cdef srtp_fn f_protect = <srtp_fn><uintptr_t>int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_protect")))
cdef srtp_fn f_unprotect = <srtp_fn><uintptr_t>int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_unprotect")))
cdef srtp_fn f_protect_rtcp = <srtp_fn><uintptr_t>int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_protect_rtcp")))
cdef srtp_fn f_unprotect_rtcp = <srtp_fn><uintptr_t>int(_srtp_ffi.cast("uintptr_t", _srtp_ffi.addressof(_srtp_lib, "srtp_unprotect_rtcp")))


# Primitives ------------------------------------------------------------------------

def classify(const uint8_t[:] packet):
    """The kind of one datagram: 0 drop, 1 STUN, 2 DTLS, 3 RTP, 4 RTCP."""
    cdef Py_ssize_t n = packet.shape[0]
    cdef int kind
    if n == 0:
        return KIND_DROP
    with nogil:
        kind = rtp.classify(&packet[0], n)
    return kind


def rewrite_rtp(uint8_t[:] packet, uint32_t ssrc, uint16_t seq_delta, uint32_t ts_delta):
    """Rewrite an RTP header in place for one subscriber: new SSRC, shifted sequence number and timestamp."""
    if packet.shape[0] < 12:
        raise ValueError("an RTP header has at least 12 bytes")
    with nogil:
        rtp.rewrite(&packet[0], ssrc, seq_delta, ts_delta)


cdef inline double monotonic() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)  # the clock of Python's time.monotonic()
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double realtime() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_REALTIME, &ts)  # the clock of SO_TIMESTAMPNS stamps
    return ts.tv_sec + ts.tv_nsec * 1e-9


cdef inline double arrival_of(msghdr* msg, double now, double real_now) noexcept nogil:
    """When the kernel received this datagram, on the monotonic clock: a batch read late (this
    thread not scheduled, a long batch before it) still reports each packet's own arrival, which
    is what transport-wide feedback must carry or the publisher reads our lateness as queueing."""
    cdef cmsghdr* cm = CMSG_FIRSTHDR(msg)
    cdef timespec* stamp
    cdef double ago
    while cm != NULL:
        if cm.cmsg_level == SOL_SOCKET and cm.cmsg_type == SCM_TIMESTAMPNS:
            stamp = <timespec*>CMSG_DATA(cm)
            ago = real_now - (stamp.tv_sec + stamp.tv_nsec * 1e-9)
            return now - ago if 0 <= ago < 1 else now  # a clock step: fall back to the batch's time
        cm = CMSG_NXTHDR(msg, cm)
    return now


cdef inline uint64_t pair(uint64_t a, uint32_t b) noexcept nogil:
    return (a << 32) | b


def address_key(tuple addr):
    """An IPv4 (host, port) as the integer the fast path keys endpoints by."""
    return (_struct.unpack("!I", _socket.inet_aton(addr[0]))[0] << 16) | addr[1]


def address_of(uint64_t key):
    return (_socket.inet_ntoa(_struct.pack("!I", key >> 16)), key & 0xFFFF)


# State -----------------------------------------------------------------------------

cdef struct Endpoint:
    bint used
    uint64_t addr  # 0 until ICE gives it one
    void* rx  # srtp_t for what it sends us; NULL until DTLS is done
    void* tx
    double consent_at
    Twcc* twcc  # transport-wide feedback we owe it; NULL unless negotiated
    int mid_ext  # its mid, rid and repaired-rid extension IDs (RFC 8852); 0: none
    int rid_ext
    int rrid_ext
    int level_ext  # its audio level extension's ID (RFC 6464); 0: none
    Sent* sent  # what we send it, numbered, and its feedback; NULL unless it takes transport-cc
    int trailer  # bytes SRTP adds to an RTP packet to it (its profile's tag)

cdef struct Level:
    uint64_t packets  # with an audio level
    uint64_t loud  # LOUD_LEVEL or louder
    uint64_t loudness  # sum of 127 - level

cdef struct Route:
    int dst
    uint32_t ssrc  # the SSRC the subscriber sees
    uint8_t pt
    uint16_t seq_delta
    uint32_t ts_delta
    bint video
    bint has_estimate
    uint64_t estimate  # the subscriber's latest REMB, bit/s
    int layer  # simulcast: the layer it should get
    int cap  # simulcast: the highest layer its link carries (-1: none, video paused)
    # Simulcast, as the reference's Route: the layer it gets now (-1: none yet), the last packet
    # it was sent, the first sequence number of the current layer, the VP8 picture-ID shifts.
    int current
    bint has_last
    uint16_t last_seq
    uint32_t last_ts
    double last_at
    int last_pid
    int last_tl0
    uint16_t layer_start
    uint16_t pid_delta
    uint8_t tl0_delta
    # A video sent as one stream, on again after a pause: waits for a keyframe (resume); its
    # numbers were shifted then, NACKs for before are not answered (resumed). The reference's.
    bint resume
    bint resumed
    int rtx_tokens  # bytes of repairs it may be sent now (the reference's RTX_BURST)
    # VP8 temporal layers, the reference's: the highest TID it may get, the one it gets now, the
    # newest publisher sequence number routed since it first dropped one, and whether its
    # record of drops (FastPath.tdrops) exists.
    int tcap
    int tcur
    bint has_tin
    uint16_t tin_top
    bint tlast_dropped  # the packet at tin_top was not sent
    bint tlast_end  # ... ended a frame (RTP marker)
    bint has_drops

cdef struct RtxOut:
    # How repairs go to one subscriber's stream (RFC 4588).
    uint32_t ssrc
    uint8_t pt
    uint16_t seq  # the next one

cdef struct Layer:
    # One RTP stream of a track: the track's own, or one simulcast encoding.
    bint has_ssrc  # a simulcast encoding's SSRC is learnt from its first packet
    uint32_t ssrc
    Slot* cache  # NACK_CACHE slots, allocated with the first packet
    Keyframes kf
    Asked* asked  # UPSTREAM_RING slots, allocated with the first NACK sent upstream
    bint has_highest
    uint16_t highest  # the highest sequence number received (modulo 2^16)
    uint8_t rid[16]
    int rid_len
    double seen  # its latest packet (a simulcast layer silent for LAYER_TIMEOUT is not sent now)
    uint64_t bytes  # received so far, for its bitrate

cdef enum:
    MAX_LAYERS = 3
    TRACK_ITSELF = 3  # by_track's layer for a simulcast track's own SSRC, which names no stream

cdef struct Track:
    bint used
    int src
    uint32_t ssrc  # what routes know it by
    Route* routes
    int nroutes
    int cap
    double last_remb
    int nlayers  # 0: not simulcast (layers[0] is the track's own stream)
    int codec
    bint single  # a video sent as one stream whose codec we were told (set_codec)
    uint8_t mid[16]
    int mid_len
    Layer layers[MAX_LAYERS]
    uint64_t tbytes[MAX_TEMPORAL + 1]  # bytes received in each VP8 temporal layer

cdef struct OutBatch:
    int n
    uint8_t* bufs  # OUT_MAX * BUF
    int* lens
    uint64_t* addrs
    bint collect  # keep the datagrams for Python instead of sending them
    mmsghdr* msgs  # one per message: a datagram, or a run of them to one address (GSO)
    iovec* iov  # one per datagram
    sockaddr_in* names  # one per message
    uint8_t* control  # GSO_CONTROL bytes per message
    int* first  # a message's first datagram
    int* count  # its datagrams
    # A sender thread's batch: its datagrams are queued in the clear and protected by the thread
    # that sends them (with these sessions: SRTCP where rtcp is set).
    bint defer
    int sender
    void** txs
    uint8_t* rtcp
    bint gso  # (the loop's setting when it was handed over)
    # What sending it found, until the loop settles it into its counters (sender threads never
    # write FastPath's own state).
    uint64_t c_batches
    uint64_t c_gso
    uint64_t c_drop_send
    uint64_t c_drop_protect
    uint64_t c_failed_rtp
    uint64_t c_refused
    int nrefused
    uint64_t refused[REFUSED_MAX]


cdef bint out_init(OutBatch* b, bint collect) noexcept nogil:
    memset(b, 0, sizeof(OutBatch))
    b.collect = collect
    b.sender = -1
    b.bufs = <uint8_t*>malloc(OUT_MAX * BUF)
    b.lens = <int*>malloc(OUT_MAX * sizeof(int))
    b.addrs = <uint64_t*>malloc(OUT_MAX * sizeof(uint64_t))
    b.msgs = <mmsghdr*>calloc(OUT_MAX, sizeof(mmsghdr))
    b.iov = <iovec*>calloc(OUT_MAX, sizeof(iovec))
    b.names = <sockaddr_in*>calloc(OUT_MAX, sizeof(sockaddr_in))
    b.control = <uint8_t*>calloc(OUT_MAX, GSO_CONTROL)
    b.first = <int*>malloc(OUT_MAX * sizeof(int))
    b.count = <int*>malloc(OUT_MAX * sizeof(int))
    b.txs = <void**>calloc(OUT_MAX, sizeof(void*))
    b.rtcp = <uint8_t*>calloc(OUT_MAX, 1)
    return (b.bufs != NULL and b.lens != NULL and b.addrs != NULL and b.msgs != NULL and b.iov != NULL and b.names != NULL
            and b.control != NULL and b.first != NULL and b.count != NULL and b.txs != NULL and b.rtcp != NULL)


cdef void out_free(OutBatch* b) noexcept nogil:
    free(b.bufs)
    free(b.lens)
    free(b.addrs)
    free(b.msgs)
    free(b.iov)
    free(b.names)
    free(b.control)
    free(b.first)
    free(b.count)
    free(b.txs)
    free(b.rtcp)


cdef bint out_refused(OutBatch* out, uint64_t addr) noexcept nogil:
    cdef int i
    for i in range(out.nrefused):
        if out.refused[i] == addr:
            return True
    return False


cdef int out_messages(OutBatch* out, int i, int m, const unordered_set[uint64_t]* no_gso) noexcept nogil:
    """Messages for datagrams ``i``.. of ``out`` from message ``m`` on; returns how many in
    all. With GSO, consecutive datagrams to one address make one message while all but the
    last have the first one's size (UDP_SEGMENT cuts at that size)."""
    cdef int j, size, total
    cdef uint64_t addr
    cdef msghdr* h
    cdef cmsghdr* cm
    cdef bint grouping
    while i < out.n:
        addr = out.addrs[i]
        size = out.lens[i]
        total = size
        j = i + 1
        grouping = out.gso and no_gso.find(addr) == no_gso.end() and not out_refused(out, addr)
        while grouping and j < out.n and j - i < GSO_SEGMENTS and out.addrs[j] == addr and out.lens[j] <= size \
                and total + out.lens[j] <= GSO_BYTES:
            total += out.lens[j]
            j += 1
            if out.lens[j - 1] < size:
                break  # a shorter one can only be the last
        out.names[m].sin_family = AF_INET
        out.names[m].sin_addr.s_addr = htonl(<uint32_t>(addr >> 16))
        out.names[m].sin_port = htons(<uint16_t>(addr & 0xFFFF))
        h = &out.msgs[m].msg_hdr
        h.msg_name = &out.names[m]
        h.msg_namelen = sizeof(sockaddr_in)
        h.msg_iov = &out.iov[i]
        h.msg_iovlen = j - i
        h.msg_flags = 0
        if j - i > 1:
            h.msg_control = out.control + m * GSO_CONTROL
            h.msg_controllen = CMSG_SPACE(sizeof(uint16_t))
            cm = CMSG_FIRSTHDR(h)
            cm.cmsg_level = SOL_UDP
            cm.cmsg_type = UDP_SEGMENT
            cm.cmsg_len = CMSG_LEN(sizeof(uint16_t))
            (<uint16_t*>CMSG_DATA(cm))[0] = <uint16_t>size
        else:
            h.msg_control = NULL
            h.msg_controllen = 0
        out.first[m] = i
        out.count[m] = j - i
        m += 1
        i = j
    return m


cdef void out_seal(OutBatch* out) noexcept nogil:
    """Point the iovecs at the datagrams, protecting first those queued in the clear (a sender
    thread's batch); a datagram libsrtp refuses is left out."""
    cdef int i, k = 0, length
    cdef bint ok
    for i in range(out.n):
        length = out.lens[i]
        if out.defer and out.txs[i] != NULL:
            if out.rtcp[i]:
                ok = f_protect_rtcp(out.txs[i], out.bufs + i * BUF, &length) == 0
            else:
                ok = f_protect(out.txs[i], out.bufs + i * BUF, &length) == 0
            if not ok:
                out.c_drop_protect += 1
                if not out.rtcp[i]:
                    out.c_failed_rtp += 1
                continue
        out.iov[k].iov_base = out.bufs + i * BUF
        out.iov[k].iov_len = length
        out.lens[k] = length
        out.addrs[k] = out.addrs[i]
        k += 1
    out.n = k


cdef void out_send(OutBatch* out, int fd, const unordered_set[uint64_t]* no_gso) noexcept nogil:
    """Send the batch with ``sendmmsg`` (runs to one address as one GSO message where allowed)
    and empty it; what happened is counted in the batch (c_*)."""
    cdef int i, m, sent, done = 0
    cdef bint waited = False
    cdef pollfd pfd
    out_seal(out)
    m = out_messages(out, 0, 0, no_gso)
    out.c_batches += 1
    while done < m:
        sent = sendmmsg(fd, out.msgs + done, m - done, MSG_DONTWAIT)
        if sent > 0:
            for i in range(done, done + sent):
                if out.count[i] > 1:
                    out.c_gso += out.count[i]
            done += sent
        elif sent < 0 and errno == EAGAIN:
            # The send buffer is full: wait a moment for room once, then drop the rest.
            pfd.fd = fd
            pfd.events = POLLOUT
            if waited or poll(&pfd, 1, 2) <= 0:
                out.c_drop_send += out.n - out.first[done]
                break
            waited = True
        elif out.count[done] > 1 and (errno == EINVAL or errno == EIO) and out.nrefused < REFUSED_MAX:
            # Segmentation refused on this path (a device without checksum offload, a socket
            # without UDP checksums): this address gets single datagrams from now on.
            out.c_refused += 1
            out.refused[out.nrefused] = out.addrs[out.first[done]]
            out.nrefused += 1
            m = out_messages(out, out.first[done], done, no_gso)
        else:
            # The kernel refused this message (e.g. a pending ICMP error): skip it.
            out.c_drop_send += out.count[done]
            done += 1
    out.n = 0


cdef struct Sender:
    # A sender thread: the loop fills one batch while the thread protects and sends the other.
    pthread_mutex_t mu
    pthread_cond_t cv
    OutBatch batch[2]
    int filling  # the batch the loop fills
    bint busy  # the other one is being sent
    bint quit
    int fd
    const unordered_set[uint64_t]* no_gso


cdef bint sender_wait(Sender* sd, bint busy) noexcept nogil:
    """Until sd.busy is ``busy`` (or, waiting for work, the sender is told to quit); returns
    sd.busy then. (Spinning first instead of sleeping at once measured no better latency on a
    2-core machine.)"""
    pthread_mutex_lock(&sd.mu)
    while sd.busy != busy and not (busy and sd.quit):
        pthread_cond_wait(&sd.cv, &sd.mu)
    busy = sd.busy
    pthread_mutex_unlock(&sd.mu)
    return busy


cdef void sender_set(Sender* sd, bint busy, bint quit=False) noexcept nogil:
    pthread_mutex_lock(&sd.mu)
    sd.busy = busy
    sd.quit = quit
    pthread_cond_broadcast(&sd.cv)
    pthread_mutex_unlock(&sd.mu)


cdef void sender_loop(Sender* sd) noexcept nogil:
    while sender_wait(sd, True):  # (False: told to quit)
        out_send(&sd.batch[1 - sd.filling], sd.fd, sd.no_gso)
        sender_set(sd, False)

cdef class FastPath:
    """Forwarding state and the batch loop. The control API mirrors the reference Forwarder."""

    cdef pthread_mutex_t mu
    cdef vector[Endpoint] eps
    cdef vector[Track] tracks
    cdef unordered_map[uint64_t, int] by_addr
    cdef unordered_map[uint64_t, int] by_track  # (publisher endpoint, a stream's SSRC) -> track * 4 + layer
    cdef unordered_map[uint64_t, uint64_t] reverse  # (subscriber, SSRC it sees) -> (track, route index)
    cdef unordered_map[uint64_t, Quality] quality_map  # (subscriber, SSRC it sees) -> its latest report
    cdef unordered_map[uint64_t, uint32_t] rtx_map  # (publisher, its RTX SSRC) -> the media SSRC it repairs
    cdef unordered_map[uint64_t, RtxOut] rtx_out  # (subscriber, SSRC it sees) -> its RTX stream
    cdef unordered_map[uint64_t, Drops] tdrops  # (subscriber, SSRC it sees) -> what it was not sent lately
    cdef unordered_map[uint64_t, Level] levels  # (publisher, SSRC) -> the audio levels it sent
    cdef uint64_t counts[<int>S_COUNT]
    cdef OutBatch ctl  # for calls from Python: collected, returned to the caller
    cdef OutBatch net  # for the loop: sent with sendmmsg
    cdef Sender* senders  # threads beside the loop's that protect and send a share of its datagrams
    cdef readonly int threads  # the loop's and the senders'
    cdef int active  # senders running (while run() runs)
    cdef vector[string] got
    cdef vector[uint64_t] got_addr
    cdef int fd
    cdef int efd
    cdef bint stopping
    cdef public bint check_consent
    cdef readonly bint crypto  # off only in benchmarks: the cost of the loop without SRTP
    cdef public bint gso  # send runs of datagrams to one address with UDP_SEGMENT
    cdef unordered_set[uint64_t] no_gso  # addresses whose path refused it (e.g. no checksum offload)
    # STUN and DTLS datagrams on their way to Python
    cdef uint8_t* slow_bufs
    cdef int* slow_lens
    cdef uint64_t* slow_addrs
    cdef int slow_head
    cdef int slow_count
    cdef int slow_unknown  # of slow_count, from unknown addresses
    cdef unordered_map[uint64_t, int] slow_by_source  # unknown address -> its datagrams waiting
    cdef dict ids  # endpoint id -> index
    cdef list names  # index -> endpoint id
    cdef dict sessions  # index -> (rx, tx) pylibsrtp sessions, kept alive while C uses them
    cdef list free_eps

    def __cinit__(self, *, bint crypto=True, bint gso=True, int threads=1):
        """``threads``: how many threads send what the loop forwards (the loop's own and
        threads - 1 more): one publisher's fan-out to many subscribers spread over cores."""
        cdef int k
        # First, so that __dealloc__ of one refused below closes no descriptor (0 is stdin).
        self.fd = -1
        self.efd = -1
        if not 1 <= threads <= MAX_SENDERS:
            raise ValueError(f"threads must be 1 to {MAX_SENDERS}")
        self.crypto = crypto
        self.gso = gso
        self.threads = threads
        pthread_mutex_init(&self.mu, NULL)
        memset(self.counts, 0, sizeof(self.counts))
        if not (out_init(&self.ctl, True) and out_init(&self.net, False)):
            raise MemoryError()
        self.senders = <Sender*>calloc(threads - 1, sizeof(Sender)) if threads > 1 else NULL
        for k in range(threads - 1):
            pthread_mutex_init(&self.senders[k].mu, NULL)
            pthread_cond_init(&self.senders[k].cv, NULL)
            self.senders[k].no_gso = &self.no_gso
            self.senders[k].fd = -1
            if not (out_init(&self.senders[k].batch[0], False) and out_init(&self.senders[k].batch[1], False)):
                raise MemoryError()
            self.senders[k].batch[0].defer = self.senders[k].batch[1].defer = True
            self.senders[k].batch[0].sender = self.senders[k].batch[1].sender = k
        self.slow_bufs = <uint8_t*>malloc(SLOW_MAX * BUF)
        self.slow_lens = <int*>malloc(SLOW_MAX * sizeof(int))
        self.slow_addrs = <uint64_t*>malloc(SLOW_MAX * sizeof(uint64_t))
        if self.slow_bufs == NULL or self.slow_lens == NULL or self.slow_addrs == NULL:
            raise MemoryError()
        self.fd = -1
        self.efd = -1
        self.ids = {}
        self.names = []
        self.sessions = {}
        self.free_eps = []

    def __dealloc__(self):
        cdef size_t i
        cdef int k
        for i in range(self.eps.size()):
            self._free_twcc(i)
        for i in range(self.tracks.size()):
            if self.tracks[i].used:
                self._free_track(i)
        out_free(&self.ctl)
        out_free(&self.net)
        for k in range(self.threads - 1):
            out_free(&self.senders[k].batch[0])
            out_free(&self.senders[k].batch[1])
            pthread_cond_destroy(&self.senders[k].cv)
            pthread_mutex_destroy(&self.senders[k].mu)
        free(self.senders)
        free(self.slow_bufs)
        free(self.slow_lens)
        free(self.slow_addrs)
        if self.efd >= 0:
            close(self.efd)
        pthread_mutex_destroy(&self.mu)

    cdef inline void lock(self) noexcept nogil:
        pthread_mutex_lock(&self.mu)

    cdef inline void unlock(self) noexcept nogil:
        pthread_mutex_unlock(&self.mu)

    # Control (from Python) -------------------------------------------------------

    cdef int _ep(self, str eid) except -1:
        idx = self.ids.get(eid)
        if idx is None:
            raise KeyError(eid)
        return idx

    def add_endpoint(self, str eid):
        cdef int idx
        if eid in self.ids:
            return
        with nogil:
            self.lock()
        try:
            if self.free_eps:
                idx = self.free_eps.pop()
                self.names[idx] = eid
            else:
                idx = self.eps.size()
                self.eps.push_back(Endpoint(False, 0, NULL, NULL, 0.0, NULL, 0, 0, 0, 0, NULL, 0))
                self.names.append(eid)
            self.eps[idx] = Endpoint(True, 0, NULL, NULL, -1e18, NULL, 0, 0, 0, 0, NULL, 0)
            self.ids[eid] = idx
        finally:
            self.unlock()

    def set_address(self, str eid, tuple addr):
        cdef int idx = self._ep(eid)
        cdef uint64_t key = address_key(addr)
        with nogil:
            self.lock()
            self._unmap_address(idx)
            self.eps[idx].addr = key
            self.by_addr[key] = idx
            self.unlock()

    cdef void _unmap_address(self, int idx) noexcept nogil:
        cdef uint64_t old = self.eps[idx].addr
        cdef unordered_map[uint64_t, int].iterator it
        if old != 0:
            it = self.by_addr.find(old)
            if it != self.by_addr.end() and deref(it).second == idx:
                self.by_addr.erase(it)
            self.no_gso.erase(old)  # (whoever has the address next may take GSO)

    def set_keys(self, str eid, keys):
        """Install the DTLS-SRTP keys (a ``SrtpKeys``): from now on the endpoint is ready."""
        cdef int idx = self._ep(eid)
        rx, tx = keys.sessions()
        cdef uintptr_t rxp = int(_srtp_ffi.cast("uintptr_t", rx._srtp[0]))
        cdef uintptr_t txp = int(_srtp_ffi.cast("uintptr_t", tx._srtp[0]))
        cdef int trailer = keys.profile.rtp_trailer
        old = self.sessions.get(idx)
        with nogil:
            self.lock()
            self.eps[idx].rx = <void*>rxp
            self.eps[idx].tx = <void*>txp
            self.eps[idx].trailer = trailer
            self.unlock()
        self.sessions[idx] = (rx, tx)
        del old  # freed only once C no longer points at it

    def set_twcc(self, str eid, int ext_id):
        """Send the endpoint transport-wide feedback for the packets carrying extension ``ext_id``
        (0: none)."""
        cdef int idx = self._ep(eid)
        if not 0 <= ext_id <= 255:
            raise ValueError("a header extension ID is 1-255")
        with nogil:
            self.lock()
            self._free_twcc(idx)
            if ext_id:
                self.eps[idx].twcc = <Twcc*>calloc(1, sizeof(Twcc))
                if self.eps[idx].twcc != NULL:
                    self.eps[idx].twcc.ext_id = ext_id
                    self.eps[idx].twcc.last_sent = -1e18
            self.unlock()
        if ext_id and self.eps[idx].twcc == NULL:
            raise MemoryError()

    cdef void _free_twcc(self, int idx) noexcept nogil:
        if self.eps[idx].twcc != NULL:
            free(self.eps[idx].twcc.arrival)
            free(self.eps[idx].twcc)
            self.eps[idx].twcc = NULL

    def set_twcc_out(self, str eid, int ext_id):
        """Number what goes to the endpoint in header extension ``ext_id`` (1-14; 0: not) and pair
        its transport-wide feedback with it (``twcc_results``), as the reference's."""
        cdef int idx = self._ep(eid)
        if not 0 <= ext_id <= 14:
            raise ValueError("a one-byte header extension ID is 1-14")
        with nogil:
            self.lock()
            if self.eps[idx].sent != NULL and (not ext_id or self.eps[idx].sent.ext_id != ext_id):
                feedback.sent_free(self.eps[idx].sent)
                self.eps[idx].sent = NULL
            if ext_id and self.eps[idx].sent == NULL:
                self.eps[idx].sent = feedback.sent_new(ext_id)
            self.unlock()

    def twcc_results(self):
        """{subscriber: [feedback.Result, ...] since the last call}, as the reference's."""
        cdef int i, k
        cdef size_t j, first
        cdef Sent* s
        cdef Result r
        cdef vector[int] who  # endpoints with results, and where each one's start in ``results``
        cdef vector[size_t] starts  # (and where the last one's end)
        cdef vector[Result] results
        with nogil:
            # Copied out under the lock, Python's objects made after it (see take_slow): a busy
            # worker has thousands of these per subscriber every step.
            self.lock()
            for i in range(self.eps.size()):
                s = self.eps[i].sent
                if not self.eps[i].used or s == NULL or s.rcount == 0:
                    continue
                who.push_back(i)
                starts.push_back(results.size())
                for k in range(s.rcount):
                    results.push_back(s.results[(s.rhead + k) % feedback.MAX_RESULTS])
                s.rhead = 0
                s.rcount = 0
            starts.push_back(results.size())
            self.unlock()
        out = {}
        for j in range(who.size()):
            got = []
            for first in range(starts[j], starts[j + 1]):
                r = results[first]
                got.append(_Result(r.seq, r.sent, r.size, None if r.lost else r.arrival, r.reported))
            out[self.names[who[j]]] = got
        return out

    def set_audio_level(self, str eid, int ext_id):
        """Count the audio levels (RFC 6464) the endpoint's packets carry in extension ``ext_id`` (0: none)."""
        cdef int idx = self._ep(eid)
        if not 0 <= ext_id <= 255:
            raise ValueError("a header extension ID is 1-255")
        with nogil:
            self.lock()
            self.eps[idx].level_ext = ext_id
            self.unlock()

    def audio_levels(self):
        """{(publisher, SSRC): [packets with an audio level, loud ones, sum of 127 - level]}, as the reference's."""
        out = {}
        with nogil:
            self.lock()
        try:
            for item in self.levels:
                out[(self.names[item.first >> 32], item.first & 0xFFFFFFFF)] = [
                    item.second.packets, item.second.loud, item.second.loudness]
        finally:
            self.unlock()
        return out

    def set_rtx(self, str eid, uint32_t rtx_ssrc, uint32_t media_ssrc):
        """The endpoint repairs ``media_ssrc`` with RTX (RFC 4588) on ``rtx_ssrc``."""
        cdef int idx = self._ep(eid)
        with nogil:
            self.lock()
            self.rtx_map[pair(idx, rtx_ssrc)] = media_ssrc
            self.unlock()

    def set_rtx_out(self, str eid, uint32_t ssrc, uint32_t rtx_ssrc, int rtx_pt):
        """Repairs of what the endpoint receives as ``ssrc`` go as RTX (RFC 4588) on ``rtx_ssrc``
        (0: as the original packet)."""
        cdef int idx = self._ep(eid)
        cdef unordered_map[uint64_t, RtxOut].iterator it
        cdef RtxOut* ro
        with nogil:
            self.lock()
            it = self.rtx_out.find(pair(idx, ssrc))
            if rtx_ssrc == 0:
                if it != self.rtx_out.end():
                    self.rtx_out.erase(it)
            elif it != self.rtx_out.end():
                ro = &deref(it).second
                ro.ssrc = rtx_ssrc
                ro.pt = rtx_pt
            else:
                self.rtx_out[pair(idx, ssrc)] = RtxOut(rtx_ssrc, rtx_pt, 1)
            self.unlock()

    def set_sdes(self, str eid, int mid_id, int rid_id, int rrid_id):
        """The header extension IDs of the endpoint's mid, rid and repaired rid (RFC 8852), by
        which its simulcast encodings are told apart."""
        cdef int idx = self._ep(eid)
        with nogil:
            self.lock()
            self.eps[idx].mid_ext = mid_id
            self.eps[idx].rid_ext = rid_id
            self.eps[idx].rrid_ext = rrid_id
            self.unlock()

    def add_simulcast(self, str eid, uint32_t track_ssrc, str mid, list rids, str codec):
        """A simulcast track of the endpoint, known to routes as ``track_ssrc`` (its encodings'
        SSRCs are learnt from their packets), with its encodings' rids, lowest first."""
        cdef int idx = self._ep(eid), i
        cdef size_t t
        cdef Track* tr
        cdef bytes m = mid.encode()
        names = [r.encode() for r in rids]
        if not 1 <= len(rids) <= MAX_LAYERS or not all(0 < len(r) <= 16 for r in names + [m]):
            raise ValueError("one to three rids, and rids and mid of 1-16 characters")
        with nogil:
            self.lock()
            t = self._track(idx, track_ssrc)
        try:
            tr = &self.tracks[t]
            tr.nlayers = len(names)
            tr.codec = CODEC_IDS.get(codec, 0)
            tr.mid_len = len(m)
            memcpy(tr.mid, <char*>m, len(m))
            tr.layers[0].has_ssrc = False
            for i in range(len(names)):
                tr.layers[i].rid_len = len(names[i])
                memcpy(tr.layers[i].rid, <char*>names[i], len(names[i]))
            self.by_track[pair(idx, track_ssrc)] = t * 4 + TRACK_ITSELF
        finally:
            self.unlock()

    def set_codec(self, str eid, uint32_t ssrc, str codec):
        """A video track of the endpoint sent as one stream, and its codec: a route of it that
        was paused resumes at a keyframe (read from the payload; unknown codec: at once)."""
        cdef int idx = self._ep(eid)
        cdef size_t t
        cdef int code = CODEC_IDS.get(codec, 0)
        with nogil:
            self.lock()
            t = self._track(idx, ssrc)
            self.tracks[t].single = True
            self.tracks[t].codec = code
            self.tracks[t].layers[0].bytes = 0
            self.unlock()

    def set_layer(self, str src, uint32_t track_ssrc, str dst, int layer, double now):
        """Send ``dst`` another layer of a simulcast track, from the layer's next keyframe (asked for now)."""
        return self._set_choice(src, track_ssrc, dst, layer, False, now, MAX_TEMPORAL)

    def set_cap(self, str src, uint32_t track_ssrc, str dst, int cap, double now, int tcap=MAX_TEMPORAL):
        """The highest layer of a video track ``dst``'s link carries (the adaptation's choice,
        under the layer it asked for); -1 pauses its video, which resumes from a keyframe. A
        video sent as one stream has one layer: on (0) or paused. ``tcap``: the highest VP8
        temporal layer it gets (2: every frame, 1: half, 0: a quarter)."""
        return self._set_choice(src, track_ssrc, dst, cap, True, now, tcap)

    cdef list _set_choice(self, str src, uint32_t track_ssrc, str dst, int value, bint is_cap, double now, int tcap):
        """A simulcast route's layer (asked for) or cap (its link's), then the keyframe of the
        layer it should get now, unless it has it or its video is paused."""
        s, d = self.ids.get(src), self.ids.get(dst)
        if s is None or d is None:
            return []
        cdef int si = s, di = d, r, L, was
        cdef size_t t
        cdef Track* tr
        cdef Route* rt
        cdef unordered_map[uint64_t, int].iterator it
        with nogil:
            self.lock()
            it = self.by_track.find(pair(si, track_ssrc))
            if it != self.by_track.end() and is_cap and not self.tracks[deref(it).second >> 2].nlayers:
                t = deref(it).second >> 2
                tr = &self.tracks[t]
                for r in range(tr.nroutes):
                    rt = &tr.routes[r]
                    if rt.dst != di or not rt.video:
                        continue
                    rt.tcap = 0 if tcap < 0 else MAX_TEMPORAL if tcap > MAX_TEMPORAL else tcap
                    was = rt.cap
                    rt.cap = value if value < MAX_LAYERS else MAX_LAYERS - 1
                    if rt.cap < 0:
                        rt.cap = -1
                        rt.resume = False
                    elif was < 0:
                        rt.resume = True
                        self._request_keyframe(t, 0, now, &self.ctl)
                    break
            elif it != self.by_track.end() and self.tracks[deref(it).second >> 2].nlayers:
                t = deref(it).second >> 2
                tr = &self.tracks[t]
                for r in range(tr.nroutes):
                    if tr.routes[r].dst != di:
                        continue
                    rt = &tr.routes[r]
                    if not is_cap:
                        rt.layer = value if value < tr.nlayers else tr.nlayers - 1
                        if rt.layer < 0:
                            rt.layer = 0
                    elif rt.video:
                        rt.tcap = 0 if tcap < 0 else MAX_TEMPORAL if tcap > MAX_TEMPORAL else tcap
                        rt.cap = value if value < MAX_LAYERS else MAX_LAYERS - 1
                        if rt.cap < 0:
                            rt.cap = -1
                            rt.current = -1  # (its numbers go on from the last packet sent when it resumes)
                    L = self._wanted(tr, rt, now)
                    if L >= 0 and rt.current != L and tr.layers[L].has_ssrc:
                        self._request_keyframe(t, L, now, &self.ctl)
                    break
            self._flush(&self.ctl)
            self.unlock()
        return self._collected()

    def layer_bytes(self):
        """{(publisher, track SSRC): bytes received so far in each of its simulcast layers}."""
        out = {}
        cdef size_t t
        with nogil:
            self.lock()
        try:
            for t in range(self.tracks.size()):
                if self.tracks[t].used and (self.tracks[t].nlayers or self.tracks[t].single):
                    out[(self.names[self.tracks[t].src], self.tracks[t].ssrc)] = [
                        self.tracks[t].layers[i].bytes for i in range(self.tracks[t].nlayers or 1)]
        finally:
            self.unlock()
        return out

    def temporal_bytes(self):
        """{(publisher, track SSRC): bytes received so far in each VP8 temporal layer}, for the
        VP8 tracks seen (all in TID 0 where the packets name none)."""
        out = {}
        cdef size_t t
        cdef Track* tr
        with nogil:
            self.lock()
        try:
            for t in range(self.tracks.size()):
                tr = &self.tracks[t]
                if tr.used and (tr.tbytes[0] or tr.tbytes[1] or tr.tbytes[2]):
                    out[(self.names[tr.src], tr.ssrc)] = [tr.tbytes[0], tr.tbytes[1], tr.tbytes[2]]
        finally:
            self.unlock()
        return out

    def subscriber_estimates(self):
        """{subscriber: {(publisher, track SSRC): its latest REMB estimate, bit/s}}, for the
        routes it has now."""
        out = {}
        cdef size_t t
        cdef int r
        with nogil:
            self.lock()
        try:
            for t in range(self.tracks.size()):
                if not self.tracks[t].used:
                    continue
                for r in range(self.tracks[t].nroutes):
                    if self.tracks[t].routes[r].has_estimate:
                        out.setdefault(self.names[self.tracks[t].routes[r].dst], {})[
                            (self.names[self.tracks[t].src], self.tracks[t].ssrc)] = self.tracks[t].routes[r].estimate
        finally:
            self.unlock()
        return out

    def set_consent(self, str eid, double now):
        """The endpoint's latest valid ICE check (RFC 7675 consent freshness)."""
        cdef int idx = self._ep(eid)
        with nogil:
            self.lock()
            self.eps[idx].consent_at = now
            self.unlock()

    def remove_endpoint(self, str eid):
        found = self.ids.pop(eid, None)
        if found is None:
            return
        cdef int idx = found
        with nogil:
            self.lock()
            self._remove_endpoint(idx)
            self.unlock()
        self.names[idx] = None
        self.free_eps.append(idx)
        self.sessions.pop(idx, None)

    cdef void _remove_endpoint(self, int idx) noexcept nogil:
        cdef size_t t
        cdef int r
        cdef uint64_t key
        cdef vector[uint64_t] stale
        cdef unordered_map[uint64_t, Quality].iterator it
        cdef unordered_map[uint64_t, uint32_t].iterator rit
        cdef unordered_map[uint64_t, RtxOut].iterator oit
        cdef unordered_map[uint64_t, Level].iterator lit
        self._unmap_address(idx)
        self._free_twcc(idx)
        rit = self.rtx_map.begin()
        while rit != self.rtx_map.end():
            if (deref(rit).first >> 32) == <uint64_t>idx:
                rit = self.rtx_map.erase(rit)
            else:
                inc(rit)
        oit = self.rtx_out.begin()
        while oit != self.rtx_out.end():
            if (deref(oit).first >> 32) == <uint64_t>idx:
                oit = self.rtx_out.erase(oit)
            else:
                inc(oit)
        lit = self.levels.begin()
        while lit != self.levels.end():
            if (deref(lit).first >> 32) == <uint64_t>idx:
                lit = self.levels.erase(lit)
            else:
                inc(lit)
        for t in range(self.tracks.size()):
            if not self.tracks[t].used:
                continue
            if self.tracks[t].src == idx:
                self._free_track(t)
                continue
            r = 0
            while r < self.tracks[t].nroutes:
                if self.tracks[t].routes[r].dst == idx:
                    self._remove_route_at(t, r)
                else:
                    r += 1
        it = self.quality_map.begin()
        while it != self.quality_map.end():
            if (deref(it).first >> 32) == <uint64_t>idx:
                stale.push_back(deref(it).first)
            inc(it)
        for key in stale:
            self.quality_map.erase(key)
        feedback.sent_free(self.eps[idx].sent)
        self.eps[idx] = Endpoint(False, 0, NULL, NULL, 0.0, NULL, 0, 0, 0, 0, NULL, 0)

    cdef void _free_track(self, size_t t) noexcept nogil:
        cdef Track* tr = &self.tracks[t]
        cdef int r, i
        for r in range(tr.nroutes):
            self.reverse.erase(pair(tr.routes[r].dst, tr.routes[r].ssrc))
            if tr.routes[r].has_drops:
                self.tdrops.erase(pair(tr.routes[r].dst, tr.routes[r].ssrc))
        self.by_track.erase(pair(tr.src, tr.ssrc))
        for i in range(MAX_LAYERS):
            if tr.nlayers and tr.layers[i].has_ssrc:
                self.by_track.erase(pair(tr.src, tr.layers[i].ssrc))
            free(tr.layers[i].cache)
            free(tr.layers[i].asked)
        free(tr.routes)
        memset(tr, 0, sizeof(Track))

    cdef void _remove_route_at(self, size_t t, int r) noexcept nogil:
        # Keep the order of the others (the order subscribers are served in, as the reference's).
        cdef Track* tr = &self.tracks[t]
        cdef int i
        self.reverse.erase(pair(tr.routes[r].dst, tr.routes[r].ssrc))
        if tr.routes[r].has_drops:
            self.tdrops.erase(pair(tr.routes[r].dst, tr.routes[r].ssrc))
        tr.nroutes -= 1
        for i in range(r, tr.nroutes):
            tr.routes[i] = tr.routes[i + 1]
            self.reverse[pair(tr.routes[i].dst, tr.routes[i].ssrc)] = pair(t, i)

    def set_route(self, str src, uint32_t src_ssrc, str dst, route):
        """Forward the publisher's ``src_ssrc`` to ``dst`` as described by ``route`` (a forwarder.Route)."""
        cdef int s = self._ep(src)
        cdef int d = self._ep(dst)
        cdef Route rt
        memset(&rt, 0, sizeof(Route))
        rt.dst = d
        rt.ssrc = route.ssrc
        rt.pt = route.payload_type
        rt.seq_delta = route.seq_delta & 0xFFFF
        rt.ts_delta = route.ts_delta & 0xFFFFFFFF
        rt.video = route.video
        rt.layer = route.layer
        rt.cap = route.cap
        rt.current = -1
        rt.last_pid = -1
        rt.last_tl0 = -1
        rt.tcap = MAX_TEMPORAL
        rt.tcur = MAX_TEMPORAL
        with nogil:
            self.lock()
            ok = self._set_route(s, src_ssrc, rt)
            self.unlock()
        if not ok:
            raise MemoryError()

    cdef size_t _track(self, int s, uint32_t src_ssrc) noexcept nogil:
        """The track routes know as (s, src_ssrc), made with its own stream if new."""
        cdef size_t t = 0
        cdef int i
        cdef Track tr0
        cdef unordered_map[uint64_t, int].iterator it = self.by_track.find(pair(s, src_ssrc))
        if it != self.by_track.end():
            return deref(it).second >> 2
        memset(&tr0, 0, sizeof(Track))
        for t in range(self.tracks.size() + 1):
            if t == self.tracks.size():
                self.tracks.push_back(tr0)
                break
            if not self.tracks[t].used:
                break
        memset(&self.tracks[t], 0, sizeof(Track))
        self.tracks[t].used = True
        self.tracks[t].src = s
        self.tracks[t].ssrc = src_ssrc
        self.tracks[t].last_remb = -1e18
        self.tracks[t].layers[0].has_ssrc = True
        self.tracks[t].layers[0].ssrc = src_ssrc
        for i in range(MAX_LAYERS):
            keyframes.keyframes_init(&self.tracks[t].layers[i].kf)
            self.tracks[t].layers[i].seen = -1e18
        self.by_track[pair(s, src_ssrc)] = t * 4
        return t

    cdef bint _set_route(self, int s, uint32_t src_ssrc, Route rt) noexcept nogil:
        cdef size_t t = self._track(s, src_ssrc)
        cdef Track* tr
        cdef int r
        cdef Route* grown
        tr = &self.tracks[t]
        for r in range(tr.nroutes):
            if tr.routes[r].dst == rt.dst:
                rt.has_estimate = tr.routes[r].has_estimate
                rt.estimate = tr.routes[r].estimate
                if tr.routes[r].ssrc == rt.ssrc and (tr.nlayers or tr.routes[r].cap < 0 or tr.routes[r].resumed
                                                     or self._filtered(&tr.routes[r])):
                    # The same stream to the same subscriber, routed again (a renegotiation): a
                    # simulcast route, or one paused, resumed or thinned to fewer frames, keeps
                    # where it is, or its numbers would jump (and SRTP refuse them).
                    rt.cap = tr.routes[r].cap
                    rt.seq_delta = tr.routes[r].seq_delta
                    rt.ts_delta = tr.routes[r].ts_delta
                    rt.current = tr.routes[r].current
                    rt.has_last = tr.routes[r].has_last
                    rt.last_seq = tr.routes[r].last_seq
                    rt.last_ts = tr.routes[r].last_ts
                    rt.last_at = tr.routes[r].last_at
                    rt.last_pid = tr.routes[r].last_pid
                    rt.last_tl0 = tr.routes[r].last_tl0
                    rt.layer_start = tr.routes[r].layer_start
                    rt.pid_delta = tr.routes[r].pid_delta
                    rt.tl0_delta = tr.routes[r].tl0_delta
                    rt.resume = tr.routes[r].resume
                    rt.resumed = tr.routes[r].resumed
                    rt.tcap = tr.routes[r].tcap
                    rt.tcur = tr.routes[r].tcur
                    rt.has_tin = tr.routes[r].has_tin
                    rt.tin_top = tr.routes[r].tin_top
                    rt.tlast_dropped = tr.routes[r].tlast_dropped
                    rt.tlast_end = tr.routes[r].tlast_end
                    rt.has_drops = tr.routes[r].has_drops
                elif tr.routes[r].has_drops:
                    self.tdrops.erase(pair(tr.routes[r].dst, tr.routes[r].ssrc))
                tr.routes[r] = rt
                self.reverse[pair(rt.dst, rt.ssrc)] = pair(t, r)
                return True
        if tr.nroutes == tr.cap:
            grown = <Route*>realloc(tr.routes, (tr.cap * 2 + 4) * sizeof(Route))
            if grown == NULL:
                return False
            tr.routes = grown
            tr.cap = tr.cap * 2 + 4
        tr.routes[tr.nroutes] = rt
        self.reverse[pair(rt.dst, rt.ssrc)] = pair(t, tr.nroutes)
        tr.nroutes += 1
        return True

    cdef bint _filtered(self, Route* rt) noexcept nogil:
        return rt.has_drops or rt.tcur < MAX_TEMPORAL or rt.tcap < MAX_TEMPORAL

    def remove_route(self, str src, uint32_t src_ssrc, str dst):
        s, d = self.ids.get(src), self.ids.get(dst)
        if s is None or d is None:
            return
        cdef int si = s, di = d, r
        cdef size_t t
        cdef unordered_map[uint64_t, int].iterator it
        with nogil:
            self.lock()
            it = self.by_track.find(pair(si, src_ssrc))
            if it != self.by_track.end():
                t = deref(it).second >> 2
                for r in range(self.tracks[t].nroutes):
                    if self.tracks[t].routes[r].dst == di:
                        self._remove_route_at(t, r)
                        break
            self.unlock()

    # Packets from Python (tests, and what the control path sends) -------------------

    def handle_rtp(self, bytes data, tuple addr, double now=0.0):
        return self._handle(data, addr, now, False)

    def handle_rtcp(self, bytes data, tuple addr, double now):
        return self._handle(data, addr, now, True)

    def keyframes_for(self, str subscriber, double now):
        """PLIs for every video track routed to a subscriber that just became able to receive."""
        idx = self.ids.get(subscriber)
        if idx is None:
            return []
        cdef int sub = idx
        with nogil:
            self.lock()
            self._keyframes_for(sub, now, &self.ctl)
            self._flush(&self.ctl)
            self.unlock()
        return self._collected()

    cdef list _handle(self, bytes data, tuple addr, double now, bint is_rtcp):
        cdef uint64_t key = address_key(addr)
        cdef int n = len(data)
        cdef bytearray buf = bytearray(data) + bytearray(256)  # room for trailers
        cdef uint8_t* p = <uint8_t*><char*>buf
        with nogil:
            self.lock()
            if is_rtcp:
                self._rtcp(p, n, key, now, &self.ctl)
            else:
                self._rtp(p, n, key, now, now, &self.ctl)
            self._flush(&self.ctl)
            self.unlock()
        return self._collected()

    cdef list _collected(self):
        cdef bytes data
        out = []
        for i in range(self.got.size()):
            data = self.got[i]
            out.append((data, address_of(self.got_addr[i])))
        self.got.clear()
        self.got_addr.clear()
        return out

    # The data path (nogil, mutex held) ------------------------------------------

    cdef inline int _ready(self, int idx) noexcept nogil:
        return self.eps[idx].addr != 0 and self.eps[idx].rx != NULL

    cdef inline int _source(self, uint64_t addr) noexcept nogil:
        """The ready endpoint at this address, else -1."""
        cdef unordered_map[uint64_t, int].iterator it = self.by_addr.find(addr)
        if it == self.by_addr.end() or not self._ready(deref(it).second):
            return -1
        return deref(it).second

    cdef inline bint _consented(self, int idx, double now) noexcept nogil:
        if self.check_consent and now - self.eps[idx].consent_at > CONSENT_TIMEOUT:
            self.counts[<int>S_DROP_NO_CONSENT] += 1  # RFC 7675: stop sending when consent lapses
            return False
        return True

    cdef inline void _commit(self, OutBatch* out, int n, int dst) noexcept nogil:
        out.lens[out.n] = n
        out.addrs[out.n] = self.eps[dst].addr
        out.n += 1
        if out.n == OUT_MAX:
            if out.defer:
                self._hand_over(out.sender)
            else:
                self._flush(out)

    cdef void _flush(self, OutBatch* out) noexcept nogil:
        cdef int i
        if out.n == 0:
            return
        if out.collect:
            for i in range(out.n):
                self.got.push_back(string(<char*>(out.bufs + i * BUF), out.lens[i]))
                self.got_addr.push_back(out.addrs[i])
            out.n = 0
            return
        out.gso = self.gso
        out_send(out, self.fd, &self.no_gso)
        if self.active == 0:
            self._settle(out)  # (with sender threads, once they are done: they read no_gso)

    cdef void _settle(self, OutBatch* out) noexcept nogil:
        """What sending a batch found, into the counters and no_gso."""
        cdef int i
        self.counts[<int>S_TX_BATCHES] += out.c_batches
        self.counts[<int>S_TX_GSO] += out.c_gso
        self.counts[<int>S_DROP_SEND] += out.c_drop_send
        self.counts[<int>S_DROP_PROTECT] += out.c_drop_protect
        self.counts[<int>S_RTP_OUT] -= out.c_failed_rtp
        self.counts[<int>S_GSO_REFUSED] += out.c_refused
        for i in range(out.nrefused):
            self.no_gso.insert(out.refused[i])
        out.c_batches = out.c_gso = out.c_drop_send = out.c_drop_protect = out.c_failed_rtp = out.c_refused = 0
        out.nrefused = 0

    cdef inline OutBatch* _out_for(self, OutBatch* out, int dst) noexcept nogil:
        """The batch a datagram to ``dst`` goes in: with sender threads, each owns the
        subscribers whose index falls to it (so one subscriber's datagrams keep their order and
        its SRTP session is used by one thread at a time); the loop thread keeps share 0."""
        cdef int share
        if self.active == 0 or out != &self.net:
            return out
        share = dst % (self.active + 1)
        if share == 0:
            return out
        return &self.senders[share - 1].batch[self.senders[share - 1].filling]

    cdef void _hand_over(self, int k) noexcept nogil:
        """Give sender ``k`` the batch the loop filled (once it has sent the one before)."""
        cdef Sender* sd = &self.senders[k]
        sender_wait(sd, 0)
        sd.batch[sd.filling].gso = self.gso
        sd.filling = 1 - sd.filling
        sender_set(sd, 1)

    cdef void _drain(self) noexcept nogil:
        """At the end of a received batch: every sender's datagrams out, and the loop waits for
        them (the state they read stays the loop's, under its lock, until then)."""
        cdef int k
        cdef Sender* sd
        for k in range(self.active):
            if self.senders[k].batch[self.senders[k].filling].n:
                self._hand_over(k)
        for k in range(self.active):
            sd = &self.senders[k]
            sender_wait(sd, 0)
            self._settle(&sd.batch[0])
            self._settle(&sd.batch[1])
        self._settle(&self.net)

    cdef void _rtp(self, uint8_t* p, int n, uint64_t addr, double now, double arrival, OutBatch* out) noexcept nogil:
        cdef uint16_t seq
        cdef int code = self._rtp_in(p, &n, addr, now, arrival, out, &seq)
        if code >= 0:
            self._forward(code, &p, &n, &seq, 1, now, out)

    cdef int _rtp_in(self, uint8_t* p, int* plen, uint64_t addr, double now, double arrival, OutBatch* out,
                     uint16_t* seq_out) noexcept nogil:
        """What arrives: checked, decrypted (RTX unwrapped), cached for repairs. Returns the
        stream it belongs to (track * 4 + layer; -1: not forwarded) and sets its plaintext
        length and sequence number; ``_forward`` sends it on."""
        cdef int src = self._source(addr)
        cdef int n = plen[0], length = n, off, elen = 0, code
        cdef uint32_t ssrc
        cdef uint16_t seq
        cdef Layer* ly
        cdef Twcc* tw
        cdef unordered_map[uint64_t, int].iterator it
        cdef unordered_map[uint64_t, uint32_t].iterator rit
        if src < 0:
            self.counts[<int>S_DROP_NOT_READY] += 1  # no ICE and DTLS from this address: never forwarded
            return -1
        if n > MTU:
            self.counts[<int>S_DROP_TOO_BIG] += 1
            return -1
        if self.crypto and f_unprotect(self.eps[src].rx, p, &length) != 0:
            self.counts[<int>S_DROP_SRTP] += 1  # authentication or replay check failed (RFC 3711 3.3)
            return -1
        self.counts[<int>S_RTP_IN] += 1
        seq = u16(p + 2)
        ssrc = u32(p + 8)
        if self.eps[src].level_ext:
            off = rtp.find_extension(p, length, self.eps[src].level_ext, &elen)
            if off >= 0 and elen >= 1:
                self._count_level(pair(src, ssrc), p[off] & 0x7F)
        tw = self.eps[src].twcc
        if tw != NULL:
            off = rtp.find_extension(p, length, tw.ext_id, &elen)
            if off >= 0 and elen >= 2:
                twcc.twcc_record(tw, u16(p + off), arrival)
                self._send_twcc(src, ssrc, now, out)
        it = self.by_track.find(pair(src, ssrc))
        if it != self.by_track.end() and (deref(it).second & 3) == TRACK_ITSELF:
            self.counts[<int>S_DROP_UNKNOWN_SSRC] += 1  # a simulcast track's own SSRC names no stream
            return -1
        if it == self.by_track.end() and self.eps[src].mid_ext > 0:
            self._discover(src, p, length, ssrc)
            it = self.by_track.find(pair(src, ssrc))
        if it == self.by_track.end():
            rit = self.rtx_map.find(pair(src, ssrc))
            if rit == self.rtx_map.end():
                self.counts[<int>S_DROP_UNKNOWN_SSRC] += 1
                return -1
            # RTX (RFC 4588 section 4): the original sequence number leads the payload. A packet
            # with nothing but padding is the publisher probing its bandwidth: not media.
            if rtp.payload_length(p, length) < 2:
                self.counts[<int>S_PADDING_IN] += 1
                return -1
            off = rtp.payload_offset(p, length)
            seq = u16(p + off)
            ssrc = deref(rit).second
            put16(p + 2, seq)
            put32(p + 8, ssrc)
            memmove(p + off, p + off + 2, length - off - 2)
            length -= 2
            it = self.by_track.find(pair(src, ssrc))
            if it == self.by_track.end() or (deref(it).second & 3) == TRACK_ITSELF:
                self.counts[<int>S_DROP_UNKNOWN_SSRC] += 1
                return -1
            code = deref(it).second
            if nack.cache_get(self.tracks[code >> 2].layers[code & 3].cache, seq) != NULL:
                self.counts[<int>S_RTX_REDUNDANT] += 1  # we have it: a probe with payload, or a late repair
                return -1
            self.counts[<int>S_RTX_REPAIRED] += 1
        code = deref(it).second
        ly = &self.tracks[code >> 2].layers[code & 3]
        nack.cache_put(&ly.cache, seq, p, length)
        if not ly.has_highest or rtp.newer(seq, ly.highest):
            ly.highest = seq
            ly.has_highest = True
        plen[0] = length
        seq_out[0] = seq
        return code

    cdef void _forward(self, int code, uint8_t** ps, int* ns, uint16_t* seqs, int count, double now,
                       OutBatch* out) noexcept nogil:
        """Send a run of packets of one stream (consecutive in a received batch) on, subscriber
        by subscriber: each one's packets leave one after another, so they can share a send."""
        cdef Track* tr = &self.tracks[code >> 2]
        cdef Layer* ly = &tr.layers[code & 3]
        if tr.nlayers:
            self._forward_layer(code >> 2, code & 3, ps, ns, seqs, count, now, out)
        else:
            self._forward_single(code >> 2, ps, ns, seqs, count, now, out)
        if keyframes.keyframes_due(&ly.kf, now):
            # A request the throttle held back (a subscriber ready just after another): sent
            # with the publisher's first packet after the window, not dropped.
            self.counts[<int>S_PLI_DEFERRED] += 1
            self._request_keyframe(code >> 2, code & 3, now, out)

    cdef void _discover(self, int src, const uint8_t* p, int n, uint32_t ssrc) noexcept nogil:
        """The first packet of a simulcast encoding (or of its RTX stream): which track and
        layer it is, from its mid and rid (or repaired rid) header extensions."""
        cdef int mid_len = 0, rid_len = 0, rrid_len = 0, mid_at, rid_at, rrid_at = -1, i
        cdef size_t t
        cdef Track* tr
        mid_at = rtp.find_extension(p, n, self.eps[src].mid_ext, &mid_len)
        rid_at = rtp.find_extension(p, n, self.eps[src].rid_ext, &rid_len)
        if rid_at < 0:
            rrid_at = rtp.find_extension(p, n, self.eps[src].rrid_ext, &rrid_len)
        if mid_at < 0 or (rid_at < 0 and rrid_at < 0):
            return
        for t in range(self.tracks.size()):
            tr = &self.tracks[t]
            if not tr.used or tr.src != src or not tr.nlayers or tr.mid_len != mid_len or memcmp(tr.mid, p + mid_at, mid_len) != 0:
                continue
            for i in range(tr.nlayers):
                if rid_at >= 0 and tr.layers[i].rid_len == rid_len and memcmp(tr.layers[i].rid, p + rid_at, rid_len) == 0 and not tr.layers[i].has_ssrc:
                    tr.layers[i].has_ssrc = True
                    tr.layers[i].ssrc = ssrc
                    self.by_track[pair(src, ssrc)] = t * 4 + i
                    self.counts[<int>S_LAYERS_FOUND] += 1
                elif rrid_at >= 0 and tr.layers[i].rid_len == rrid_len and memcmp(tr.layers[i].rid, p + rrid_at, rrid_len) == 0 and tr.layers[i].has_ssrc:
                    self.rtx_map[pair(src, ssrc)] = tr.layers[i].ssrc
            return

    cdef void _forward_single(self, size_t t, uint8_t** ps, int* ns, uint16_t* seqs, int count, double now,
                              OutBatch* out) noexcept nogil:
        """Packets of a track sent as one stream go to every route of it but the paused ones; a
        route on again starts at a keyframe (asked for again if it is late)."""
        cdef Track* tr = &self.tracks[t]
        cdef Route* rt
        cdef int r, k, off
        cdef int key[BATCH]  # per packet: -1 not looked at yet, else whether a keyframe starts there
        cdef bint waiting = False
        for k in range(count):
            if tr.single:
                tr.layers[0].bytes += ns[k]
                self._count_temporal(tr, ps[k], ns[k])
            key[k] = -1
        for r in range(tr.nroutes):
            rt = &tr.routes[r]
            if rt.cap < 0:
                continue  # its video is paused: audio only
            for k in range(count):
                if rt.resume:
                    if tr.single and tr.codec:
                        if key[k] < 0:
                            off = rtp.payload_offset(ps[k], ns[k])
                            key[k] = codecs.keyframe_start(tr.codec, ps[k] + off, ns[k] - off) if off >= 0 else 0
                        if not key[k]:
                            waiting = True
                            continue
                    self._go_on(rt, ps[k], seqs[k], now)
                    rt.resume = False
                    rt.resumed = True
                    rt.layer_start = <uint16_t>(seqs[k] + rt.seq_delta)
                    self.counts[<int>S_VIDEO_RESUMED] += 1
                self._send_rtp(rt, ps[k], ns[k], now, out, tr.codec if tr.single else -1)
        if waiting and keyframes.keyframes_ready(&tr.layers[0].kf, now):
            self._request_keyframe(t, 0, now, out)  # its keyframe is late: ask again

    cdef void _forward_layer(self, size_t t, int L, uint8_t** ps, int* ns, uint16_t* seqs, int count, double now,
                             OutBatch* out) noexcept nogil:
        """Packets of one simulcast layer go to the routes that get that layer, and start it for
        those waiting for it from the first keyframe start among them."""
        cdef Track* tr = &self.tracks[t]
        cdef Route* rt
        cdef int r, k, off
        cdef int key[BATCH]  # per packet: -1 not looked at yet, else whether a keyframe starts there
        cdef bint waiting = False
        tr.layers[L].seen = now
        for k in range(count):
            tr.layers[L].bytes += ns[k]
            self._count_temporal(tr, ps[k], ns[k])
            key[k] = -1
        for r in range(tr.nroutes):
            rt = &tr.routes[r]
            for k in range(count):
                if rt.current != L:
                    if self._wanted(tr, rt, now) != L:
                        break  # the same for the rest of the run (one clock reading)
                    off = rtp.payload_offset(ps[k], ns[k])
                    if key[k] < 0:
                        key[k] = codecs.keyframe_start(tr.codec, ps[k] + off, ns[k] - off) if off >= 0 else 0
                    if not key[k]:
                        waiting = True
                        continue
                    self._switch(rt, L, tr.codec, ps[k], off, ns[k], seqs[k], now)
                self._send_rtp(rt, ps[k], ns[k], now, out, tr.codec)
        if waiting and keyframes.keyframes_ready(&tr.layers[L].kf, now):
            self._request_keyframe(t, L, now, out)  # its keyframe is late: ask again

    cdef int _wanted(self, Track* tr, Route* rt, double now) noexcept nogil:
        """The layer a route gets: the one it asked for if sent now, else the next lower one
        sent, else the next higher (a publisher sends only what its camera and link allow)."""
        cdef int i, top = rt.layer if rt.layer < rt.cap else rt.cap
        cdef int hi = tr.nlayers if rt.cap >= rt.layer else rt.cap + 1
        if top < 0:
            return -1  # its video is paused
        for i in range(top, -1, -1):
            if tr.layers[i].has_ssrc and now - tr.layers[i].seen < LAYER_TIMEOUT:
                return i
        for i in range(top + 1, hi):
            if tr.layers[i].has_ssrc and now - tr.layers[i].seen < LAYER_TIMEOUT:
                return i
        return top

    cdef void _switch(self, Route* rt, int L, int codec, const uint8_t* p, int off, int n, uint16_t seq, double now) noexcept nogil:
        """Start a route on another layer: its sequence numbers, timestamps and picture IDs go
        on from the last ones it was sent, so the subscriber sees one stream."""
        cdef int pid, tl0
        if self._go_on(rt, p, seq, now):
            if off >= 0 and codecs.picture(codec, p + off, n - off, &pid, &tl0):
                if pid >= 0 and rt.last_pid >= 0:
                    rt.pid_delta = <uint16_t>(rt.last_pid + 1 - pid) & 0x7FFF
                if tl0 >= 0 and rt.last_tl0 >= 0:
                    rt.tl0_delta = <uint8_t>(rt.last_tl0 + 1 - tl0)
        rt.current = L
        rt.layer_start = <uint16_t>(seq + rt.seq_delta)
        self.counts[<int>S_LAYER_SWITCHES] += 1

    cdef void _count_level(self, uint64_t key, int level) noexcept nogil:
        cdef Level* lv = &self.levels[key]  # (zeroed when new)
        lv.packets += 1
        if level <= LOUD_LEVEL:
            lv.loud += 1
        lv.loudness += 127 - level

    cdef void _count_temporal(self, Track* tr, const uint8_t* p, int n) noexcept nogil:
        cdef Vp8Temporal tl
        cdef int off
        if tr.codec != codecs.CODEC_VP8:
            return
        off = rtp.payload_offset(p, n)
        if off >= 0 and temporal.vp8_temporal(p + off, n - off, &tl):
            tr.tbytes[tl.tid if tl.tid > 0 else 0] += n

    cdef bint _go_on(self, Route* rt, const uint8_t* p, uint16_t seq, double now) noexcept nogil:
        """A route's sequence numbers and timestamps go on from the last ones it was sent, from
        this packet on, so the subscriber sees one stream. False if it was sent nothing yet."""
        cdef double gap
        rt.has_tin = False  # (numbers of another stream from here on)
        if rt.has_drops:
            self.tdrops.erase(pair(rt.dst, rt.ssrc))
            rt.has_drops = False
        if not rt.has_last:
            return False
        rt.seq_delta = <uint16_t>(rt.last_seq + 1 - seq)
        gap = (now - rt.last_at) * 90000  # video's 90 kHz clock
        rt.ts_delta = <uint32_t>(rt.last_ts + (<uint32_t>gap if gap >= 1 else 1) - u32(p + 4))
        return True

    cdef void _send_twcc(self, int src, uint32_t media_ssrc, double now, OutBatch* out) noexcept nogil:
        cdef uint8_t msg[MTU]
        cdef int k, length
        cdef Twcc* tw = self.eps[src].twcc
        if not twcc.twcc_due(tw, now):
            return
        for k in range(TWCC_MAX_MESSAGES):
            if tw.end <= tw.base:
                return
            length = twcc.twcc_feedback(tw, msg, media_ssrc, now)
            if length:
                self.counts[<int>S_TWCC_SENT] += 1
                self._send_rtcp(src, msg, length, now, out)

    cdef bint _send_rtp(self, Route* rt, const uint8_t* plain, int n, double now, OutBatch* out, int codec,
                        bint repair=False) noexcept nogil:
        """``codec`` >= 0: a video packet whose codec is known (a simulcast layer's, or a video
        sent as one stream whose codec we were told): its route keeps track of what it was sent,
        and VP8 frames above its temporal layer are not sent; ``repair``: a retransmission, sent
        as RTX where the subscriber takes it."""
        cdef int length = n, clear, off, pid, tl0, extra_seq = 0, extra_pid = 0
        cdef uint16_t out_seq
        cdef uint8_t* b
        cdef unordered_map[uint64_t, RtxOut].iterator rx
        cdef RtxOut* ro
        cdef Sent* sent
        cdef uint16_t tw_seq = 0
        if not self._ready(rt.dst):
            self.counts[<int>S_DROP_SUBSCRIBER_NOT_READY] += 1
            return False
        if codec == codecs.CODEC_VP8 and rt.video and not self._temporal(rt, plain, n, repair, &extra_seq, &extra_pid):
            return False
        if repair:
            if rt.rtx_tokens < n:
                self.counts[<int>S_NACK_THROTTLED] += 1
                return False
            rt.rtx_tokens -= n
        else:
            rt.rtx_tokens = rt.rtx_tokens + n // 2 if rt.rtx_tokens + n // 2 < RTX_BURST else RTX_BURST
        if not self._consented(rt.dst, now):
            return False
        out = self._out_for(out, rt.dst)
        b = out.bufs + out.n * BUF
        memcpy(b, plain, n)
        rtp.rewrite(b, rt.ssrc, <uint16_t>(rt.seq_delta + extra_seq), rt.ts_delta)
        b[1] = (b[1] & 0x80) | rt.pt
        off = -1
        if codec >= 0:
            off = rtp.payload_offset(b, n)
            if off >= 0:
                codecs.rewrite_picture(codec, b + off, n - off, <uint16_t>(rt.pid_delta + extra_pid), rt.tl0_delta)
        if codec >= 0 or rt.video:
            out_seq = u16(b + 2)
            if not rt.has_last or rtp.newer(out_seq, rt.last_seq):
                rt.has_last = True
                rt.last_seq = out_seq
                rt.last_ts = u32(b + 4)
                rt.last_at = now
                if codec >= 0 and off >= 0 and codecs.picture(codec, b + off, n - off, &pid, &tl0):
                    rt.last_pid = pid
                    rt.last_tl0 = tl0
        if repair:
            rx = self.rtx_out.find(pair(rt.dst, rt.ssrc))
            off = rtp.payload_offset(b, length) if rx != self.rtx_out.end() else -1
            if off >= 0:
                # RFC 4588 section 4: its own SSRC, payload type and sequence number, the original
                # sequence number first in the payload.
                ro = &deref(rx).second  # (a pointer: the map's own entry, not a copy)
                memmove(b + off + 2, b + off, length - off)
                put16(b + off, u16(b + 2))
                put16(b + 2, ro.seq)
                put32(b + 8, ro.ssrc)
                b[1] = (b[1] & 0x80) | ro.pt
                ro.seq += 1
                length += 2
                self.counts[<int>S_RTX_SENT] += 1
        sent = self.eps[rt.dst].sent
        if sent != NULL:
            if rtp.payload_offset(b, length) < 0:
                self.counts[<int>S_DROP_MALFORMED] += 1  # (its header extensions run past its end)
                return False
            tw_seq = feedback.sent_number(sent)
            length = rtp.only_extension(b, length, sent.ext_id, tw_seq)
        clear = length
        if out.defer:
            # Its sender thread protects it: what SRTP adds is the profile's tag.
            out.txs[out.n] = self.eps[rt.dst].tx if self.crypto else NULL
            out.rtcp[out.n] = 0
            if self.crypto:
                length += self.eps[rt.dst].trailer
        elif self.crypto and f_protect(self.eps[rt.dst].tx, b, &length) != 0:
            self.counts[<int>S_DROP_PROTECT] += 1
            return False
        if sent != NULL:
            feedback.sent_record(sent, tw_seq, now, length)
        self.counts[<int>S_RTP_OUT] += 1
        self.counts[<int>S_BYTES_OUT] += length
        self._commit(out, clear if out.defer else length, rt.dst)
        return True

    cdef bint _temporal(self, Route* rt, const uint8_t* plain, int n, bint repair, int* extra_seq, int* extra_pid) noexcept nogil:
        """Whether a VP8 packet goes to a route thinned to fewer frames (False: dropped) and what
        it is shifted by beyond the route's own shifts (the reference's ``_temporal``)."""
        cdef Vp8Temporal tl
        cdef int off
        cdef uint16_t seq
        cdef Drops* d = NULL
        cdef bint keep
        cdef int gap, k
        if not (self._filtered(rt) or repair):
            rt.has_tin = False  # (its numbers are not followed while it gets every frame)
            return True
        off = rtp.payload_offset(plain, n)
        if off < 0 or not temporal.vp8_temporal(plain + off, n - off, &tl) or tl.tid < 0:
            return True
        seq = u16(plain + 2)
        if rt.has_drops:
            d = &self.tdrops[pair(rt.dst, rt.ssrc)]
        if repair or (rt.has_tin and not temporal.newer16(seq, rt.tin_top)):
            if d == NULL:
                return True
            if temporal.drops_dropped_picture(d, tl.pid) or <uint16_t>(rt.tin_top - seq) >= DROP_WINDOW:
                self.counts[<int>S_TEMPORAL_DROPPED] += 1  # of a frame it does not get, or too late to place
                return False
            temporal.drops_after(d, seq, tl.pid, extra_seq, extra_pid)
            return True
        rt.tcur = temporal.step_layer(rt.tcur, rt.tcap, &tl)
        keep = tl.tid <= rt.tcur
        if rt.has_tin:
            # What never came between the last packet and this one was of dropped frames (the
            # reference's rule): counted as dropped.
            gap = <uint16_t>(seq - rt.tin_top - 1)
            if 0 < gap < DROP_WINDOW and ((rt.tlast_dropped and (not keep or tl.start))
                                          or (rt.tlast_end and not keep and not tl.start)):
                if d == NULL:
                    d = self._new_drops(rt)
                for k in range(1, gap + 1):
                    temporal.drops_add(d, <uint16_t>(rt.tin_top + k), -1)
                rt.seq_delta = <uint16_t>(rt.seq_delta - gap)
        rt.has_tin = True
        rt.tin_top = seq
        rt.tlast_dropped = not keep
        rt.tlast_end = (plain[1] & 0x80) != 0
        if keep:
            return True
        if d == NULL:
            d = self._new_drops(rt)
        rt.seq_delta = <uint16_t>(rt.seq_delta - 1)
        if temporal.drops_add(d, seq, tl.pid):
            rt.pid_delta = <uint16_t>(rt.pid_delta - 1) & 0x7FFF
        self.counts[<int>S_TEMPORAL_DROPPED] += 1
        return False

    cdef Drops* _new_drops(self, Route* rt) noexcept nogil:
        cdef Drops fresh
        temporal.drops_init(&fresh)
        self.tdrops[pair(rt.dst, rt.ssrc)] = fresh
        rt.has_drops = True
        return &self.tdrops[pair(rt.dst, rt.ssrc)]

    cdef bint _send_rtcp(self, int dst, const uint8_t* plain, int n, double now, OutBatch* out) noexcept nogil:
        cdef int length = n
        cdef uint8_t* b
        if not self._consented(dst, now):
            return False
        out = self._out_for(out, dst)
        b = out.bufs + out.n * BUF
        memcpy(b, plain, n)
        if out.defer:
            out.txs[out.n] = self.eps[dst].tx if self.crypto else NULL
            out.rtcp[out.n] = 1
        elif self.crypto and f_protect_rtcp(self.eps[dst].tx, b, &length) != 0:
            self.counts[<int>S_DROP_PROTECT] += 1
            return False
        self._commit(out, length, dst)
        return True

    cdef void _rtcp(self, uint8_t* p, int n, uint64_t addr, double now, OutBatch* out) noexcept nogil:
        cdef int src = self._source(addr)
        cdef int length = n, pos = 0, end, plen, pt, fmt, L
        cdef uint8_t* pk
        cdef unordered_map[uint64_t, uint64_t].iterator rev
        if src < 0:
            self.counts[<int>S_DROP_NOT_READY] += 1
            return
        if n > MTU:
            self.counts[<int>S_DROP_TOO_BIG] += 1
            return
        if self.crypto and f_unprotect_rtcp(self.eps[src].rx, p, &length) != 0:
            self.counts[<int>S_DROP_SRTCP] += 1
            return
        self.counts[<int>S_RTCP_IN] += 1
        # A compound packet (RFC 3550 section 6.1); stop at the first header we cannot trust.
        while pos + 4 <= length:
            end = pos + 4 * (u16(p + pos + 2) + 1)
            if (p[pos] >> 6) != 2 or end > length:
                return
            pk = p + pos
            plen = end - pos
            pt = pk[1]
            fmt = pk[0] & 0x1F
            pos = end
            self._report_blocks(src, pt, fmt, pk, plen)
            if pt == SR and plen >= 28:
                self._forward_sr(src, pk, now, out)
            elif pt == RTPFB and fmt == 15:
                if self.eps[src].sent != NULL:  # (a subscriber's, about what we send it)
                    if feedback.sent_feedback(self.eps[src].sent, pk, plen, now):
                        self.counts[<int>S_TWCC_IN] += 1
                    else:
                        self.counts[<int>S_DROP_TWCC_MALFORMED] += 1
            elif rtcp.is_remb(pt, fmt, pk, plen):
                self._pass_remb(src, pk, plen, now, out)
            elif pt == RTPFB and fmt == 1 and plen >= 16:
                self._answer_nack(src, pk, plen, now, out)
            elif pt == PSFB and plen >= 12 and (fmt == 1 or (fmt == 4 and plen >= 20)):
                # PLI (RFC 4585 6.3.1) names the media SSRC at 8; FIR (RFC 5104 4.3.1) in its first FCI entry.
                rev = self.reverse.find(pair(src, u32(pk + 8) if fmt == 1 else u32(pk + 12)))
                if rev != self.reverse.end():
                    L = self._layer_for(deref(rev).second, False, now)
                    if L >= 0:
                        self._request_keyframe(deref(rev).second >> 32, L, now, out)

    cdef void _report_blocks(self, int src, int pt, int count, const uint8_t* pk, int plen) noexcept nogil:
        cdef int i, pos, start
        cdef Quality q
        if pt == SR:
            start = 28
        elif pt == RR:
            start = 8
        else:
            return
        for i in range(count):
            pos = start + 24 * i
            if pos + 24 > plen:
                return
            if self.reverse.find(pair(src, u32(pk + pos))) == self.reverse.end():
                continue  # only what a subscriber says of what we send it
            rtcp.report_block(pk + pos, &q)
            self.quality_map[pair(src, u32(pk + pos))] = q

    cdef void _forward_sr(self, int src, const uint8_t* pk, double now, OutBatch* out) noexcept nogil:
        # Each subscriber gets the publisher's sender report as its own stream's (RFC 3550
        # section 6.4.1): its SSRC, its timestamps, no report blocks; of a simulcast layer, those
        # that get that layer now.
        cdef uint8_t sr[28]
        cdef int r, L
        cdef Track* tr
        cdef unordered_map[uint64_t, int].iterator it = self.by_track.find(pair(src, u32(pk + 4)))
        if it == self.by_track.end():
            return
        tr = &self.tracks[deref(it).second >> 2]
        L = deref(it).second & 3 if tr.nlayers and (deref(it).second & 3) != TRACK_ITSELF else -1
        for r in range(tr.nroutes):
            if not self._ready(tr.routes[r].dst) or (L >= 0 and tr.routes[r].current != L):
                continue
            rtcp.translate_sr(sr, pk, tr.routes[r].ssrc, tr.routes[r].ts_delta)
            self.counts[<int>S_SR_FORWARDED] += 1
            self._send_rtcp(tr.routes[r].dst, sr, 28, now, out)

    cdef void _pass_remb(self, int sub, const uint8_t* pk, int plen, double now, OutBatch* out) noexcept nogil:
        # Without simulcast one stream serves everyone: the publisher hears the lowest estimate.
        cdef int count = pk[16], i, r
        cdef uint64_t bitrate = rtcp.remb_bitrate(pk)
        cdef uint64_t low, best
        cdef bint video
        cdef unordered_map[uint64_t, uint64_t].iterator rev
        cdef Track* tr
        cdef uint8_t msg[24]
        for i in range(count):
            if 24 + 4 * i > plen:
                break
            rev = self.reverse.find(pair(sub, u32(pk + 20 + 4 * i)))
            if rev == self.reverse.end():
                continue
            tr = &self.tracks[deref(rev).second >> 32]
            r = <uint32_t>deref(rev).second
            tr.routes[r].has_estimate = True
            tr.routes[r].estimate = bitrate
            if tr.nlayers:
                continue  # its layers serve subscribers apart: none sets its publisher's pace
            if not self._ready(tr.src) or now - tr.last_remb < REMB_INTERVAL:
                continue
            # Of a video: the lowest of those whose video plays, unless far under the best
            # (REMB_FOLLOW); of audio: the lowest. As the reference's.
            video = tr.routes[r].video
            best = 0
            low = <uint64_t>0xFFFFFFFFFFFFFFFF
            for r in range(tr.nroutes):
                if tr.routes[r].has_estimate and tr.routes[r].cap >= 0 and tr.routes[r].estimate > best:
                    best = tr.routes[r].estimate
            for r in range(tr.nroutes):
                if (tr.routes[r].has_estimate and tr.routes[r].cap >= 0 and tr.routes[r].estimate < low
                        and (not video or tr.routes[r].estimate * REMB_FOLLOW >= best)):
                    low = tr.routes[r].estimate
            if low == <uint64_t>0xFFFFFFFFFFFFFFFF:
                continue  # nobody's video plays
            tr.last_remb = now
            self.counts[<int>S_REMB_SENT] += 1
            self._send_rtcp(tr.src, msg, rtcp.remb(msg, low, tr.ssrc), now, out)

    cdef int _layer_for(self, uint64_t rev, bint target, double now) noexcept nogil:
        """The layer a route (a reverse entry) gets now (``target``: should get); -1 when its
        stream is not known yet."""
        cdef Track* tr = &self.tracks[rev >> 32]
        cdef Route* rt = &tr.routes[<uint32_t>rev]
        cdef int L
        if not tr.nlayers:
            return 0
        L = self._wanted(tr, rt, now) if target or rt.current < 0 else rt.current
        return L if L >= 0 and tr.layers[L].has_ssrc else -1

    cdef void _answer_nack(self, int sub, const uint8_t* pk, int plen, double now, OutBatch* out) noexcept nogil:
        # Resend from the cache (RFC 4585 6.2.1 Generic NACK) rather than ask the publisher; what
        # never reached us is asked of the publisher.
        cdef unordered_map[uint64_t, uint64_t].iterator rev = self.reverse.find(pair(sub, u32(pk + 8)))
        cdef Track* tr
        cdef Route* rt
        cdef int pos, i, n = 0, L
        cdef uint16_t pid, blp, seq
        cdef uint16_t missing[NACK_SEQS]
        if rev == self.reverse.end():
            return
        L = self._layer_for(deref(rev).second, False, now)
        if L < 0:
            return
        tr = &self.tracks[deref(rev).second >> 32]
        rt = &tr.routes[<uint32_t>deref(rev).second]
        pos = 12
        while pos < plen - 3:
            pid = u16(pk + pos)
            blp = u16(pk + pos + 2)
            for i in range(17):
                if i > 0 and not (blp & (1 << (i - 1))):
                    continue
                seq = <uint16_t>(pid + i)
                if (tr.nlayers or rt.resumed) and <uint16_t>(seq - rt.layer_start) >= 0x8000:
                    self.counts[<int>S_NACK_MISSED] += 1  # sent from another layer, or before a pause: gone with it
                    continue
                seq = <uint16_t>(seq - rt.seq_delta)
                if rt.has_drops:
                    seq = temporal.drops_publisher_seq(&self.tdrops[pair(rt.dst, rt.ssrc)], seq)  # past the frames it was not sent
                if not self._resend(tr, L, rt, seq, now, out) and n < NACK_SEQS:
                    missing[n] = seq
                    n += 1
            pos += 4
        self._ask_publisher(tr, L, missing, n, now, out)

    cdef bint _resend(self, Track* tr, int L, Route* rt, uint16_t seq, double now, OutBatch* out) noexcept nogil:
        """True when the publisher's packet ``seq`` is in the cache (resent, or dropped for its
        subscriber's sake)."""
        cdef Slot* slot = nack.cache_get(tr.layers[L].cache, seq)
        if slot == NULL:
            self.counts[<int>S_NACK_MISSED] += 1
            return False
        if self._send_rtp(rt, slot.data, slot.len, now, out, tr.codec if tr.nlayers or tr.single else -1, True):
            self.counts[<int>S_NACK_SERVED] += 1
        return True

    cdef void _ask_publisher(self, Track* tr, int L, uint16_t* seqs, int n, double now, OutBatch* out) noexcept nogil:
        """A Generic NACK to the publisher for packets we never got, each at most once per UPSTREAM_HOLD."""
        cdef uint16_t wanted[UPSTREAM_MAX]
        cdef uint8_t msg[12 + 4 * UPSTREAM_MAX]
        cdef int nw
        cdef Layer* ly = &tr.layers[L]
        if n == 0 or not self._ready(tr.src):
            return
        nw = nack.to_ask(&ly.asked, ly.highest, seqs, n, now, wanted)
        if nw == 0:
            return
        self.counts[<int>S_NACK_UPSTREAM] += 1
        self._send_rtcp(tr.src, msg, rtcp.nack(msg, ly.ssrc, wanted, nw), now, out)

    cdef void _request_keyframe(self, size_t t, int L, double now, OutBatch* out) noexcept nogil:
        cdef Track* tr = &self.tracks[t]
        cdef Layer* ly = &tr.layers[L]
        cdef uint8_t msg[12]
        if not ly.has_ssrc:
            return
        if keyframes.keyframes_throttled(&ly.kf, now):
            self.counts[<int>S_PLI_THROTTLED] += 1  # at most one per stream per 500 ms
            return
        if not self._ready(tr.src):
            return
        keyframes.keyframes_sent(&ly.kf, now)
        self.counts[<int>S_PLI_SENT] += 1
        self._send_rtcp(tr.src, msg, rtcp.pli(msg, ly.ssrc), now, out)

    cdef void _keyframes_for(self, int sub, double now, OutBatch* out) noexcept nogil:
        cdef size_t t
        cdef int r, L
        if not self._ready(sub):
            return
        for t in range(self.tracks.size()):
            if not self.tracks[t].used:
                continue
            for r in range(self.tracks[t].nroutes):
                if self.tracks[t].routes[r].dst == sub and self.tracks[t].routes[r].video:
                    L = self._layer_for(pair(t, r), True, now)
                    if L >= 0:
                        self._request_keyframe(t, L, now, out)
                    break

    # The socket loop ----------------------------------------------------------------

    def attach(self, int fd):
        """Take over reception on this (non-blocking, IPv4 UDP) socket; returns the eventfd that
        becomes readable when STUN or DTLS datagrams wait in ``take_slow()``."""
        cdef int one = 1
        self.fd = fd
        setsockopt(fd, SOL_SOCKET, SO_TIMESTAMPNS, &one, sizeof(int))  # arrivals for TWCC
        if self.efd < 0:
            self.efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC)
            if self.efd < 0:
                raise OSError(errno, "eventfd failed")
        return self.efd

    def run(self):
        """The batch loop; returns after ``stop()``. Call it from a thread of its own."""
        if self.fd < 0:
            raise RuntimeError("attach() a socket first")
        cdef int k
        self.stopping = False
        helpers = []
        for k in range(self.threads - 1):
            self.senders[k].fd = self.fd
            sender_set(&self.senders[k], False)
            helper = threading.Thread(target=self._sender, args=(k,), name=f"fastpath-send-{k + 1}", daemon=True)
            helper.start()
            helpers.append(helper)
        self.active = self.threads - 1
        try:
            with nogil:
                self._loop()
        finally:
            self.active = 0  # (the loop drained them before it returned)
            for k in range(self.threads - 1):
                with nogil:
                    sender_set(&self.senders[k], False, True)  # (idle: the loop drained them)
            for t in helpers:
                t.join()

    def _sender(self, int k):
        with nogil:
            sender_loop(&self.senders[k])

    def stop(self):
        self.stopping = True

    def take_slow(self):
        """The STUN and DTLS datagrams received since the last call: [(bytes, (host, port))]."""
        cdef uint64_t value
        cdef int i, slot
        cdef vector[string] datagrams
        cdef vector[uint64_t] addrs
        if self.efd >= 0:
            read(self.efd, &value, 8)
        with nogil:
            # Copied out under the lock and made Python objects after it: allocating them could
            # run the garbage collector, and the loop would wait that long for the lock.
            self.lock()
            for i in range(self.slow_count):
                slot = (self.slow_head + i) % SLOW_MAX
                datagrams.push_back(string(<char*>self.slow_bufs + slot * BUF, self.slow_lens[slot]))
                addrs.push_back(self.slow_addrs[slot])
            self.slow_head = (self.slow_head + self.slow_count) % SLOW_MAX
            self.slow_count = 0
            self.slow_unknown = 0
            self.slow_by_source.clear()
            self.unlock()
        return [(datagrams[i], address_of(addrs[i])) for i in range(datagrams.size())]

    cdef bint _admit_slow(self, uint64_t addr, int kind) noexcept nogil:
        """Whether a STUN or DTLS datagram gets a place in the queue to Python. Clients we know
        (an endpoint has their address) come first: addresses nobody has share a quarter of the
        queue, a few places each, so a flood of noise cannot crowd out a known client's checks.
        DTLS from an address no valid ICE check came from is never for us."""
        cdef bint known = self.by_addr.find(addr) != self.by_addr.end()
        if not known:
            if kind == KIND_DTLS:
                self.counts[<int>S_DROP_DTLS_NO_ICE] += 1
                return False
            if self.slow_unknown >= SLOW_UNKNOWN_MAX or self.slow_by_source[addr] >= SLOW_PER_SOURCE:
                self.counts[<int>S_DROP_SLOW_UNKNOWN] += 1
                return False
        if self.slow_count == SLOW_MAX:
            self.counts[<int>S_DROP_SLOW_QUEUE_FULL] += 1
            return False
        if not known:
            self.slow_unknown += 1
            self.slow_by_source[addr] += 1
        return True

    cdef void _loop(self) noexcept nogil:
        cdef mmsghdr* msgs = <mmsghdr*>calloc(BATCH, sizeof(mmsghdr))
        cdef iovec* iov = <iovec*>calloc(BATCH, sizeof(iovec))
        cdef sockaddr_in* names = <sockaddr_in*>calloc(BATCH, sizeof(sockaddr_in))
        cdef uint8_t* bufs = <uint8_t*>malloc(BATCH * BUF)
        cdef uint8_t* control = <uint8_t*>malloc(BATCH * CONTROL)
        cdef pollfd pfd
        cdef int i, n, length, kind, slot, code, run_code = -1, run_n = 0
        cdef bint woke
        cdef uint64_t addr, one = 1
        cdef uint8_t* p
        cdef double now, real_now
        # A run: consecutive packets of one stream in the batch, forwarded together.
        cdef uint8_t* run_p[BATCH]
        cdef int run_len[BATCH]
        cdef uint16_t run_seq[BATCH]
        if msgs == NULL or iov == NULL or names == NULL or bufs == NULL or control == NULL:
            free(msgs)
            free(iov)
            free(names)
            free(bufs)
            free(control)
            return
        pfd.fd = self.fd
        pfd.events = POLLIN
        while not self.stopping:
            if poll(&pfd, 1, 100) <= 0:  # wake up now and then to notice stop()
                continue
            while not self.stopping:
                for i in range(BATCH):
                    iov[i].iov_base = bufs + i * BUF
                    iov[i].iov_len = BUF
                    msgs[i].msg_hdr.msg_name = &names[i]
                    msgs[i].msg_hdr.msg_namelen = sizeof(sockaddr_in)
                    msgs[i].msg_hdr.msg_iov = &iov[i]
                    msgs[i].msg_hdr.msg_iovlen = 1
                    msgs[i].msg_hdr.msg_flags = 0
                    msgs[i].msg_hdr.msg_control = control + i * CONTROL
                    msgs[i].msg_hdr.msg_controllen = CONTROL
                n = recvmmsg(self.fd, msgs, BATCH, MSG_DONTWAIT, NULL)
                if n <= 0:
                    break
                now = monotonic()
                real_now = realtime()
                woke = False
                self.lock()
                self.counts[<int>S_RX_PACKETS] += n
                self.counts[<int>S_RX_BATCHES] += 1
                for i in range(n):
                    p = bufs + i * BUF
                    length = msgs[i].msg_len
                    if msgs[i].msg_hdr.msg_flags & MSG_TRUNC:
                        length = BUF  # over the MTU whatever its real size
                    if names[i].sin_family != AF_INET:
                        self.counts[<int>S_DROP_UNKNOWN] += 1
                        continue
                    addr = ((<uint64_t>ntohl(names[i].sin_addr.s_addr)) << 16) | ntohs(names[i].sin_port)
                    kind = rtp.classify(p, length)
                    if kind == KIND_RTP:
                        code = self._rtp_in(p, &length, addr, now, arrival_of(&msgs[i].msg_hdr, now, real_now), &self.net,
                                            &run_seq[run_n])
                        if code < 0:
                            continue
                        if run_n and code != run_code:
                            self._forward(run_code, run_p, run_len, run_seq, run_n, now, &self.net)
                            run_seq[0] = run_seq[run_n]
                            run_n = 0
                        run_code = code
                        run_p[run_n] = p
                        run_len[run_n] = length
                        run_n += 1
                        continue
                    if run_n:
                        # What else came (RTCP: NACKs, PLIs) is handled after the media before it.
                        self._forward(run_code, run_p, run_len, run_seq, run_n, now, &self.net)
                        run_n = 0
                    if kind == KIND_RTCP:
                        self._rtcp(p, length, addr, now, &self.net)
                    elif kind == KIND_STUN or kind == KIND_DTLS:
                        if length > BUF - 1 or not self._admit_slow(addr, kind):
                            continue
                        slot = (self.slow_head + self.slow_count) % SLOW_MAX
                        memcpy(self.slow_bufs + slot * BUF, p, length)
                        self.slow_lens[slot] = length
                        self.slow_addrs[slot] = addr
                        self.slow_count += 1
                        woke = True
                    else:
                        self.counts[<int>S_DROP_UNKNOWN] += 1
                if run_n:
                    self._forward(run_code, run_p, run_len, run_seq, run_n, now, &self.net)
                    run_n = 0
                self._flush(&self.net)
                if self.active:
                    self._drain()
                self.unlock()
                if woke:
                    write(self.efd, &one, 8)
                if n < BATCH:
                    break
        free(msgs)
        free(iov)
        free(names)
        free(bufs)
        free(control)

    # Figures -------------------------------------------------------------------------

    @property
    def stats(self):
        return Counter({name: self.counts[i] for i, name in enumerate(STAT_NAMES) if self.counts[i]})

    @property
    def quality(self):
        """{(subscriber endpoint, SSRC it sees): its latest reception report}, as the reference's."""
        cdef vector[uint64_t] keys
        cdef vector[Quality] reports
        cdef size_t i
        with nogil:  # (copied under the lock, Python's objects made after: see take_slow)
            self.lock()
            for item in self.quality_map:
                keys.push_back(item.first)
                reports.push_back(item.second)
            self.unlock()
        out = {}
        for i in range(keys.size()):
            q = reports[i]
            out[(self.names[keys[i] >> 32], keys[i] & 0xFFFFFFFF)] = {
                "ssrc": keys[i] & 0xFFFFFFFF, "fraction_lost": q.fraction / 256, "lost": q.lost,
                "highest_seq": q.highest, "jitter": q.jitter, "lsr": q.lsr, "dlsr": q.dlsr,
            }
        return out
