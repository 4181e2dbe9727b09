/*
 * The least a relay process can do: one epoll loop, a TCP connection to DEST for every
 * accepted connection, bytes copied both ways, a half-close passed on. No protocol, no
 * authentication, no pool, no timers. Two of these in a row (tests/bench/floor.sh) are the
 * shape of a tunnel's server and client, so their rate is what this machine allows a
 * tunnel that moves bytes through two user-space processes. A measurement reference, not
 * part of edgepass.
 *
 * Built with -DSOCKMAP (tests/bench/floor-kernel.sh), each pair is handed to the kernel once
 * connected: a BPF sk_skb verdict program sends the bytes that arrive on one socket out of
 * its peer, so the process wakes only to accept, connect and close. That is the most a
 * tunnel's processes could leave to the kernel (needs root and BPF). It does not hold a
 * half-close back behind bytes still in the kernel's queue: fine for request/response
 * connections that close after the answer, wrong for a general relay.
 *
 *   relay LISTEN_PORT DEST_PORT        (both on 127.0.0.1)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <unistd.h>

#define BUF 16384
#define MAX_FD 65536

/* One direction: bytes read from `from`, not yet written to `to`. */
struct dir {
    int from, to;
    int off, len;
    int eof;
    char buf[BUF];
};

/* One accepted connection and its dialed peer; `fd_pair[fd]` finds it. */
struct pair {
    int a, b;
    int connecting;
    unsigned want_a, want_b; /* epoll interest registered now */
    struct dir up, down;     /* a -> b, b -> a */
};

#ifdef SOCKMAP
#include <linux/bpf.h>
#include <sys/syscall.h>

static int peer_map, sock_map; /* socket cookie -> its peer's cookie; cookie -> socket */

static long sys_bpf(int cmd, union bpf_attr *a) { return syscall(__NR_bpf, cmd, a, sizeof *a); }

static int map_create(int type, int value_size) {
    union bpf_attr a = {.map_type = type, .key_size = 8, .value_size = value_size,
                        .max_entries = MAX_FD};
    return (int)sys_bpf(BPF_MAP_CREATE, &a);
}

static int map_set(int map, const void *key, const void *value) {
    union bpf_attr a = {.map_fd = map, .key = (unsigned long)key, .value = (unsigned long)value};
    return (int)sys_bpf(value ? BPF_MAP_UPDATE_ELEM : BPF_MAP_DELETE_ELEM, &a);
}

#define INSN(c, d, s, o, i) {.code = (c), .dst_reg = (d), .src_reg = (s), .off = (o), .imm = (i)}

/* Loads the verdict program and attaches it to the socket map; 0 on success. */
static int kernel_setup(void) {
    peer_map = map_create(BPF_MAP_TYPE_HASH, 8);
    sock_map = map_create(BPF_MAP_TYPE_SOCKHASH, 4);
    if (peer_map < 0 || sock_map < 0) return -1;
    /* peer = peer_map[cookie(skb)]; found ? redirect(skb, sock_map[peer]) : pass */
    struct bpf_insn prog[] = {
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 6, 1, 0, 0),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_get_socket_cookie),
        INSN(BPF_STX | BPF_MEM | BPF_DW, 10, 0, -8, 0),
        INSN(BPF_LD | BPF_DW | BPF_IMM, 1, BPF_PSEUDO_MAP_FD, 0, peer_map), INSN(0, 0, 0, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 2, 10, 0, 0),
        INSN(BPF_ALU64 | BPF_ADD | BPF_K, 2, 0, 0, -8),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_map_lookup_elem),
        INSN(BPF_JMP | BPF_JEQ | BPF_K, 0, 0, 10, 0), /* not found: to the last two */
        INSN(BPF_LDX | BPF_MEM | BPF_DW, 1, 0, 0, 0),
        INSN(BPF_STX | BPF_MEM | BPF_DW, 10, 1, -16, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 1, 6, 0, 0),
        INSN(BPF_LD | BPF_DW | BPF_IMM, 2, BPF_PSEUDO_MAP_FD, 0, sock_map), INSN(0, 0, 0, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_X, 3, 10, 0, 0),
        INSN(BPF_ALU64 | BPF_ADD | BPF_K, 3, 0, 0, -16),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 4, 0, 0, 0),
        INSN(BPF_JMP | BPF_CALL, 0, 0, 0, BPF_FUNC_sk_redirect_hash),
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
        INSN(BPF_ALU64 | BPF_MOV | BPF_K, 0, 0, 0, SK_PASS),
        INSN(BPF_JMP | BPF_EXIT, 0, 0, 0, 0),
    };
    union bpf_attr load = {.prog_type = BPF_PROG_TYPE_SK_SKB, .insns = (unsigned long)prog,
                           .insn_cnt = sizeof prog / sizeof prog[0],
                           .license = (unsigned long)"GPL"};
    int fd = (int)sys_bpf(BPF_PROG_LOAD, &load);
    union bpf_attr attach = {.target_fd = sock_map, .attach_bpf_fd = fd,
                             .attach_type = BPF_SK_SKB_VERDICT};
    return fd < 0 ? -1 : (int)sys_bpf(BPF_PROG_ATTACH, &attach);
}

static unsigned long long cookie(int fd) {
    unsigned long long c = 0;
    socklen_t len = sizeof c;
    getsockopt(fd, SOL_SOCKET, SO_COOKIE, &c, &len);
    return c;
}

/* From now on the kernel moves the pair's bytes; 0 on success. */
static int kernel_pair(int a, int b) {
    unsigned long long ca = cookie(a), cb = cookie(b);
    if (map_set(peer_map, &ca, &cb) || map_set(peer_map, &cb, &ca) ||
        map_set(sock_map, &cb, &b) || map_set(sock_map, &ca, &a))
        return -1;
    /* Bytes that arrived before the sockets joined the map wait for the next data-ready
     * event; setting SO_RCVLOWAT raises one now. */
    int one = 1;
    setsockopt(a, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
    setsockopt(b, SOL_SOCKET, SO_RCVLOWAT, &one, sizeof one);
    return 0;
}

static void kernel_unpair(int a, int b) {
    unsigned long long ca = cookie(a), cb = cookie(b);
    map_set(peer_map, &ca, NULL);
    map_set(peer_map, &cb, NULL);
}
#else
static int kernel_setup(void) { return 0; }
static int kernel_pair(int a, int b) { return (void)a, (void)b, 0; }
static void kernel_unpair(int a, int b) { (void)a, (void)b; }
#endif

static struct pair *fd_pair[MAX_FD];
static int ep;

static void interest(int fd, unsigned *now, unsigned want) {
    if (*now == want) return;
    struct epoll_event ev = {.events = want, .data.fd = fd};
    /* Out of the set while it waits for nothing, so a hang-up is not reported again and again. */
    epoll_ctl(ep, !want ? EPOLL_CTL_DEL : *now ? EPOLL_CTL_MOD : EPOLL_CTL_ADD, fd, &ev);
    *now = want;
}

static void close_pair(struct pair *p) {
    kernel_unpair(p->a, p->b);
    fd_pair[p->a] = fd_pair[p->b] = NULL;
    close(p->a);
    close(p->b);
    free(p);
}

/* Moves what it can in one direction; returns -1 on an error. */
static int pump(struct dir *d) {
    if (d->len == d->off && !d->eof) {
        ssize_t n = read(d->from, d->buf, BUF);
        if (n > 0) {
            d->off = 0;
            d->len = (int)n;
        } else if (n == 0) {
            d->eof = 1;
            shutdown(d->to, SHUT_WR);
        } else if (errno != EAGAIN) {
            return -1;
        }
    }
    while (d->off < d->len) {
        ssize_t n = write(d->to, d->buf + d->off, d->len - d->off);
        if (n < 0) return errno == EAGAIN ? 0 : -1;
        d->off += (int)n;
    }
    return 0;
}

/* Registers what each side waits for, from the state of both directions. */
static void rearm(struct pair *p) {
    unsigned wa = 0, wb = 0;
    if (p->connecting) {
        wb = EPOLLOUT;
    } else {
        if (p->up.off == p->up.len && !p->up.eof) wa |= EPOLLIN;
        if (p->up.off < p->up.len) wb |= EPOLLOUT;
        if (p->down.off == p->down.len && !p->down.eof) wb |= EPOLLIN;
        if (p->down.off < p->down.len) wa |= EPOLLOUT;
    }
    interest(p->a, &p->want_a, wa);
    interest(p->b, &p->want_b, wb);
}

static int tcp_socket(void) {
    int one = 1, fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd >= 0) setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    return fd;
}

int main(int argc, char **argv) {
    if (argc != 3) {
        fprintf(stderr, "usage: relay LISTEN_PORT DEST_PORT\n");
        return 2;
    }
    struct sockaddr_in lis = {.sin_family = AF_INET, .sin_port = htons(atoi(argv[1])),
                              .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    struct sockaddr_in dst = lis;
    dst.sin_port = htons(atoi(argv[2]));
    int one = 1, l = tcp_socket();
    setsockopt(l, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (l < 0 || bind(l, (struct sockaddr *)&lis, sizeof lis) || listen(l, 4096)) {
        perror("listen");
        return 1;
    }
    if (kernel_setup()) {
        perror("bpf");
        return 1;
    }
    ep = epoll_create1(EPOLL_CLOEXEC);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = l}, evs[64];
    epoll_ctl(ep, EPOLL_CTL_ADD, l, &ev);
    for (;;) {
        int n = epoll_wait(ep, evs, 64, -1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == l) {
                int a;
                while ((a = accept4(l, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC)) >= 0) {
                    int b = tcp_socket();
                    if (a >= MAX_FD || b < 0 || b >= MAX_FD) {
                        close(a);
                        if (b >= 0) close(b);
                        continue;
                    }
                    setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    struct pair *p = calloc(1, sizeof *p);
                    p->a = a;
                    p->b = b;
                    p->up.from = p->down.to = a;
                    p->up.to = p->down.from = b;
                    fd_pair[a] = fd_pair[b] = p;
                    if (connect(b, (struct sockaddr *)&dst, sizeof dst) && errno != EINPROGRESS) {
                        close_pair(p);
                        continue;
                    }
                    /* On loopback the handshake is usually done by now, EINPROGRESS or not. */
                    struct sockaddr_in peer;
                    socklen_t plen = sizeof peer;
                    p->connecting = getpeername(b, (struct sockaddr *)&peer, &plen) != 0;
                    if (!p->connecting &&
                        (kernel_pair(a, b) || pump(&p->up) || pump(&p->down))) {
                        close_pair(p);
                        continue;
                    }
                    rearm(p);
                }
                continue;
            }
            struct pair *p = fd_pair[fd];
            if (!p) continue;
            if (p->connecting) {
                int err = 0;
                socklen_t len = sizeof err;
                getsockopt(p->b, SOL_SOCKET, SO_ERROR, &err, &len);
                if (err || kernel_pair(p->a, p->b)) {
                    close_pair(p);
                    continue;
                }
                p->connecting = 0;
            }
            if (pump(&p->up) || pump(&p->down) ||
                (p->up.eof && p->down.eof && p->up.off == p->up.len &&
                 p->down.off == p->down.len)) {
                close_pair(p);
                continue;
            }
            rearm(p);
        }
    }
}
