# cython: language_level=3
# Declarations the C packet loops share (mediaserver._fastpath, loadtest._wire): batched UDP
# (Linux recvmmsg/sendmmsg with ancillary data), IPv4 addresses, and the signature of the libsrtp
# calls reached through pylibsrtp's function pointers.

from libc.stdint cimport uint16_t, uint32_t
from posix.time cimport timespec

cdef extern from "<sys/uio.h>" nogil:
    struct iovec:
        void* iov_base
        size_t iov_len

cdef extern from "<netinet/in.h>" nogil:
    struct in_addr:
        uint32_t s_addr
    struct sockaddr_in:
        unsigned short sin_family
        uint16_t sin_port
        in_addr sin_addr
    uint16_t htons(uint16_t)
    uint16_t ntohs(uint16_t)
    uint32_t htonl(uint32_t)
    uint32_t ntohl(uint32_t)

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    struct msghdr:
        void* msg_name
        socklen_t msg_namelen
        iovec* msg_iov
        size_t msg_iovlen
        void* msg_control
        size_t msg_controllen
        int msg_flags
    struct mmsghdr:
        msghdr msg_hdr
        unsigned int msg_len
    struct cmsghdr:
        size_t cmsg_len
        int cmsg_level
        int cmsg_type
    cmsghdr* CMSG_FIRSTHDR(msghdr*)
    cmsghdr* CMSG_NXTHDR(msghdr*, cmsghdr*)
    unsigned char* CMSG_DATA(cmsghdr*)
    size_t CMSG_SPACE(size_t)
    size_t CMSG_LEN(size_t)
    int recvmmsg(int, mmsghdr*, unsigned int, int, timespec*)
    int sendmmsg(int, mmsghdr*, unsigned int, int)
    int setsockopt(int, int, int, const void*, socklen_t)
    int AF_INET
    int MSG_DONTWAIT
    int MSG_TRUNC
    int SOL_SOCKET
    int SO_TIMESTAMPNS
    int SCM_TIMESTAMPNS

cdef extern from *:
    """
    #include <netinet/udp.h>
    #ifndef SOL_UDP
    #define SOL_UDP 17
    #endif
    #ifndef UDP_SEGMENT
    #define UDP_SEGMENT 103  /* Linux 4.18: UDP generic segmentation offload */
    #endif
    """
    int SOL_UDP
    int UDP_SEGMENT

# srtp_protect, srtp_unprotect and their RTCP twins (libsrtp 2: context, buffer, in/out length).
ctypedef int (*srtp_fn)(void* ctx, void* hdr, int* len_ptr) noexcept nogil
