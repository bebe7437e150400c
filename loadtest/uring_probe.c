/* How much receiving UDP costs with io_uring against recvmmsg, the way the fast path receives.
 *
 *   uring_probe MODE RATE SECONDS        MODE: recvmmsg | uring
 *
 * A child process (pinned to CPU 1) sends 1200-byte datagrams to a socket at RATE per second,
 * a burst every millisecond; this process (pinned to CPU 0) receives them for SECONDS:
 *
 *   recvmmsg: poll, then recvmmsg of up to 64 until fewer come (the fast path's loop);
 *   uring:    one multishot recvmsg (Linux 6.0) filling buffers from a provided-buffer ring,
 *             completions reaped in batches, buffers given back as they are read.
 *
 * It prints one line: mode, packets received per second, CPU-us per packet of the receiving
 * process (its io_uring workers included), loss.
 * Built and run by ``python -m loadtest.bench_fastpath --uring`` (needs liburing-dev).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <liburing.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define SIZE 1200
#define BATCH 64
#define BUF 2048
#define NBUFS 1024 /* a power of two (the buffer ring's size) */
#define BGID 1

static double now(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void pin(int cpu) {
    cpu_set_t set;
    CPU_ZERO(&set);
    CPU_SET(cpu % sysconf(_SC_NPROCESSORS_ONLN), &set);
    sched_setaffinity(0, sizeof(set), &set);
}

static void sender(struct sockaddr_in to, double rate, double seconds) {
    int s = socket(AF_INET, SOCK_DGRAM, 0), per = (int)(rate / 1000 + 0.5), i;
    static char data[BATCH][SIZE];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    double start = now(CLOCK_MONOTONIC), next = start;
    unsigned long long seq = 0;
    pin(1);
    memset(msgs, 0, sizeof msgs);
    for (i = 0; i < BATCH; i++) {
        iov[i].iov_base = data[i];
        iov[i].iov_len = SIZE;
        msgs[i].msg_hdr.msg_iov = &iov[i];
        msgs[i].msg_hdr.msg_iovlen = 1;
        msgs[i].msg_hdr.msg_name = &to;
        msgs[i].msg_hdr.msg_namelen = sizeof to;
    }
    while (now(CLOCK_MONOTONIC) - start < seconds) {
        int left = per;
        while (left > 0) {
            int n = left < BATCH ? left : BATCH;
            for (i = 0; i < n; i++)
                memcpy(data[i], &seq, sizeof seq), seq++;
            sendmmsg(s, msgs, n, 0);
            left -= n;
        }
        next += 0.001;
        double wait = next - now(CLOCK_MONOTONIC);
        if (wait > 0) {
            struct timespec ts = {0, (long)(wait * 1e9)};
            nanosleep(&ts, NULL);
        }
    }
    _exit(0);
}

static unsigned long long receive_recvmmsg(int fd, double seconds) {
    static char bufs[BATCH][BUF];
    struct mmsghdr msgs[BATCH];
    struct iovec iov[BATCH];
    struct pollfd p = {fd, POLLIN, 0};
    unsigned long long got = 0;
    double end = now(CLOCK_MONOTONIC) + seconds;
    while (now(CLOCK_MONOTONIC) < end) {
        if (poll(&p, 1, 100) <= 0)
            continue;
        for (;;) {
            int i, n;
            for (i = 0; i < BATCH; i++) {
                iov[i].iov_base = bufs[i];
                iov[i].iov_len = BUF;
                memset(&msgs[i].msg_hdr, 0, sizeof(struct msghdr));
                msgs[i].msg_hdr.msg_iov = &iov[i];
                msgs[i].msg_hdr.msg_iovlen = 1;
            }
            n = recvmmsg(fd, msgs, BATCH, MSG_DONTWAIT, NULL);
            if (n <= 0)
                break;
            got += n;
            if (n < BATCH)
                break;
        }
    }
    return got;
}

static void arm(struct io_uring *ring, int fd, struct msghdr *hdr) {
    struct io_uring_sqe *sqe = io_uring_get_sqe(ring);
    io_uring_prep_recvmsg_multishot(sqe, fd, hdr, 0);
    sqe->flags |= IOSQE_BUFFER_SELECT;
    sqe->buf_group = BGID;
    io_uring_submit(ring);
}

static unsigned long long receive_uring(int fd, double seconds) {
    struct io_uring ring;
    struct io_uring_params params;
    struct io_uring_buf_ring *br;
    struct msghdr hdr;
    char *bufs = aligned_alloc(4096, (size_t)NBUFS * BUF);
    unsigned long long got = 0;
    int i, ret;
    double end = now(CLOCK_MONOTONIC) + seconds;
    memset(&params, 0, sizeof params);
    params.flags = IORING_SETUP_SINGLE_ISSUER | IORING_SETUP_DEFER_TASKRUN;
    if ((ret = io_uring_queue_init_params(256, &ring, &params)) < 0) {
        fprintf(stderr, "io_uring_queue_init: %s\n", strerror(-ret));
        exit(2);
    }
    {   /* (liburing 2.3, Debian 12's, has no io_uring_setup_buf_ring yet) */
        struct io_uring_buf_reg reg;
        br = aligned_alloc(4096, NBUFS * sizeof(struct io_uring_buf));
        io_uring_buf_ring_init(br);
        memset(&reg, 0, sizeof reg);
        reg.ring_addr = (unsigned long)br;
        reg.ring_entries = NBUFS;
        reg.bgid = BGID;
        if ((ret = io_uring_register_buf_ring(&ring, &reg, 0)) < 0) {
            fprintf(stderr, "io_uring_register_buf_ring: %s\n", strerror(-ret));
            exit(2);
        }
    }
    for (i = 0; i < NBUFS; i++)
        io_uring_buf_ring_add(br, bufs + (size_t)i * BUF, BUF, i, io_uring_buf_ring_mask(NBUFS), i);
    io_uring_buf_ring_advance(br, NBUFS);
    memset(&hdr, 0, sizeof hdr);
    hdr.msg_namelen = sizeof(struct sockaddr_in);
    arm(&ring, fd, &hdr);
    while (now(CLOCK_MONOTONIC) < end) {
        struct io_uring_cqe *cqe;
        struct __kernel_timespec ts = {0, 100000000};
        unsigned head, seen = 0;
        ret = io_uring_submit_and_wait_timeout(&ring, &cqe, 1, &ts, NULL);
        if (ret < 0 && ret != -ETIME && ret != -EINTR) {
            fprintf(stderr, "wait: %s\n", strerror(-ret));
            exit(2);
        }
        io_uring_for_each_cqe(&ring, head, cqe) {
            seen++;
            if (cqe->flags & IORING_CQE_F_BUFFER) {
                int id = cqe->flags >> IORING_CQE_BUFFER_SHIFT;
                char *b = bufs + (size_t)id * BUF;
                if (cqe->res > 0 && io_uring_recvmsg_validate(b, cqe->res, &hdr))
                    got++;
                io_uring_buf_ring_add(br, b, BUF, id, io_uring_buf_ring_mask(NBUFS), 0);
                io_uring_buf_ring_advance(br, 1);
            }
            if (!(cqe->flags & IORING_CQE_F_MORE))
                arm(&ring, fd, &hdr); /* the multishot ended (e.g. out of buffers): again */
        }
        io_uring_cq_advance(&ring, seen);
    }
    io_uring_queue_exit(&ring);
    return got;
}

int main(int argc, char **argv) {
    int fd, size = 8 << 20, status;
    struct sockaddr_in addr;
    socklen_t len = sizeof addr;
    double rate, seconds, t0, c0, t1, c1;
    unsigned long long got;
    pid_t child;
    if (argc != 4 || (strcmp(argv[1], "recvmmsg") && strcmp(argv[1], "uring"))) {
        fprintf(stderr, "usage: %s recvmmsg|uring RATE SECONDS\n", argv[0]);
        return 2;
    }
    rate = atof(argv[2]);
    seconds = atof(argv[3]);
    fd = socket(AF_INET, SOCK_DGRAM | SOCK_NONBLOCK, 0);
    setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &size, sizeof size);
    memset(&addr, 0, sizeof addr);
    addr.sin_family = AF_INET;
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    bind(fd, (struct sockaddr *)&addr, sizeof addr);
    getsockname(fd, (struct sockaddr *)&addr, &len);
    pin(0);
    fflush(stdout);
    if ((child = fork()) == 0)
        sender(addr, rate, seconds + 0.3);
    t0 = now(CLOCK_MONOTONIC), c0 = now(CLOCK_PROCESS_CPUTIME_ID);
    got = strcmp(argv[1], "uring") == 0 ? receive_uring(fd, seconds) : receive_recvmmsg(fd, seconds);
    t1 = now(CLOCK_MONOTONIC), c1 = now(CLOCK_PROCESS_CPUTIME_ID);
    waitpid(child, &status, 0);
    printf("%s %.0f %.3f %.4f\n", argv[1], got / (t1 - t0), (c1 - c0) / got * 1e6, 1 - got / (rate * (t1 - t0)));
    return 0;
}
