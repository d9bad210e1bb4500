/* capload: the capacity benchmark's load generator and servers (one epoll loop, no threads).
 *
 * Compiled with gcc by bench/capacity.py at run time; a Python loop cannot open 2,000
 * connections a second on a shared core, and an open-loop schedule (connections start on
 * time whether or not earlier ones finished) is what shows slow and failed connections.
 *
 *   capload serve <ip> <port> <close|wait|hold|echo> <seconds>
 *       close: read the request, answer, close first (the server holds TIME_WAIT)
 *       wait:  answer, then wait for the client to close first
 *       hold:  accept and keep every connection open
 *       echo:  echo every byte back (request/response rate)
 *     prints one JSON line on exit: accepted connections per peer address.
 *   capload rate <ip> <port> <conn/s> <seconds> <close|wait> <src,src,...>
 *       new connections on an open-loop schedule, round robin over the source addresses;
 *       each sends a request and reads the answer; "close" reads to EOF (the server closes
 *       first), "wait" closes after the answer. Timeout 10 s (SYN retries at 1, 3, 7 s).
 *   capload hold <ip> <port> <count> <conn/s> <seconds> <src,...>
 *       open up to count connections and keep them; stops at the first failure.
 *   capload rr <ip> <port> <seconds>
 *       one connection, one byte back and forth: round trips per second.
 *   capload uecho <ip> <port> <seconds>
 *       UDP echo server; on exit one JSON line: datagrams echoed and the CPU time it used.
 *   capload blast <ip> <port> <count>
 *       one UDP flow: one datagram echoed (the flow is established in conntrack), then
 *       count datagrams as fast as they go; one JSON line with the CPU time of the sends.
 *       On veth links the whole path (every namespace's netfilter) runs in the sender's
 *       softirq context, so CPU time per datagram is the per-packet cost of the path.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MAX_SRC 64
#define TIMEOUT_S 10.0
#define SLOW_S 0.9
#define REQUEST "GET / HTTP/1.0\r\n\r\n"
#define RESPONSE "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nok"

static volatile sig_atomic_t stop;
static void on_signal(int sig) { (void)sig; stop = 1; }

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void raise_nofile(void) {
    struct rlimit rl = {1048576, 1048576};
    if (setrlimit(RLIMIT_NOFILE, &rl) != 0) {
        rl.rlim_cur = rl.rlim_max = 262144;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

static struct sockaddr_in addr_of(const char *ip, int port) {
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_port = htons((uint16_t)port);
    if (inet_pton(AF_INET, ip, &a.sin_addr) != 1) {
        fprintf(stderr, "capload: bad address %s\n", ip);
        exit(2);
    }
    return a;
}

/* ------------------------------------------------------------------ server */

struct peer { uint32_t ip; unsigned long count; };
static struct peer peers[4096];
static int npeers;

static void count_peer(uint32_t ip) {
    for (int i = 0; i < npeers; i++)
        if (peers[i].ip == ip) { peers[i].count++; return; }
    if (npeers < 4096) { peers[npeers].ip = ip; peers[npeers].count = 1; npeers++; }
}

static int serve(const char *ip, int port, const char *mode, double seconds) {
    int kind = !strcmp(mode, "close") ? 0 : !strcmp(mode, "wait") ? 1 : !strcmp(mode, "hold") ? 2 : 3;
    int lfd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    setsockopt(lfd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    /* several servers on one port: each process may hold only so many descriptors */
    setsockopt(lfd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof one);
    struct sockaddr_in a = addr_of(ip, port);
    if (bind(lfd, (struct sockaddr *)&a, sizeof a) || listen(lfd, 65535)) {
        perror("capload: listen");
        return 1;
    }
    int ep = epoll_create1(0);
    struct epoll_event ev = {.events = EPOLLIN, .data.fd = lfd}, evs[512];
    epoll_ctl(ep, EPOLL_CTL_ADD, lfd, &ev);
    unsigned long accepted = 0;
    double end = now() + seconds;
    char buf[4096];
    fprintf(stderr, "capload: serving %s:%d (%s)\n", ip, port, mode);
    while (!stop && now() < end) {
        int n = epoll_wait(ep, evs, 512, 100);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            if (fd == lfd) {
                for (;;) {
                    struct sockaddr_in pa;
                    socklen_t pl = sizeof pa;
                    int c = accept4(lfd, (struct sockaddr *)&pa, &pl, SOCK_NONBLOCK);
                    if (c < 0) break;
                    accepted++;
                    count_peer(pa.sin_addr.s_addr);
                    if (kind == 3) setsockopt(c, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
                    if (kind == 2) continue; /* hold: keep it, never look at it again */
                    struct epoll_event cev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = c};
                    epoll_ctl(ep, EPOLL_CTL_ADD, c, &cev);
                }
                continue;
            }
            ssize_t r = read(fd, buf, sizeof buf);
            if (r <= 0) { close(fd); continue; }
            if (kind == 3) { if (write(fd, buf, (size_t)r) < 0) close(fd); continue; }
            if (write(fd, RESPONSE, sizeof RESPONSE - 1) < 0) { close(fd); continue; }
            if (kind == 0) close(fd); /* server closes first */
            /* wait: the client's FIN arrives as a read of 0 */
        }
    }
    printf("{\"accepted\": %lu, \"peers\": {", accepted);
    for (int i = 0; i < npeers; i++) {
        struct in_addr ia = {peers[i].ip};
        printf("%s\"%s\": %lu", i ? ", " : "", inet_ntoa(ia), peers[i].count);
    }
    printf("}}\n");
    return 0;
}

/* ------------------------------------------------------------------ clients */

struct conn { double start; int state; size_t got; };
static struct conn *conns; /* indexed by fd */
static int nsrc, maxfd;
static struct sockaddr_in srcs[MAX_SRC];

static int parse_sources(char *list) {
    for (char *tok = strtok(list, ","); tok && nsrc < MAX_SRC; tok = strtok(NULL, ","))
        srcs[nsrc++] = addr_of(tok, 0);
    return nsrc;
}

static int open_conn(int ep, struct sockaddr_in *dst, unsigned long index) {
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK, 0), one = 1;
    if (fd < 0) return -1;
    /* The port is chosen at connect time for the whole 4-tuple, not at bind time. */
    setsockopt(fd, IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, &one, sizeof one);
    if (nsrc && bind(fd, (struct sockaddr *)&srcs[index % nsrc], sizeof srcs[0])) {
        close(fd);
        return -1;
    }
    if (connect(fd, (struct sockaddr *)dst, sizeof *dst) && errno != EINPROGRESS) {
        close(fd);
        return -1;
    }
    struct epoll_event ev = {.events = EPOLLOUT | EPOLLIN | EPOLLRDHUP, .data.fd = fd};
    epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev);
    if (fd > maxfd) maxfd = fd;
    return fd;
}

static int elapsed_s_int(double t0) { return (int)(now() - t0) + 1; }

static int cmp_double(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static int rate(const char *ip, int port, double per_s, double seconds, const char *mode,
                char *sources) {
    int server_closes = !strcmp(mode, "close");
    struct sockaddr_in dst = addr_of(ip, port);
    parse_sources(sources);
    conns = calloc(1u << 20, sizeof *conns);
    unsigned long total = (unsigned long)(per_s * seconds), started = 0, ok = 0, failed = 0,
                  slow = 0, timeouts = 0, refused = 0, local = 0, open_now = 0;
    double *lat = calloc(total + 1, sizeof *lat);
    int ep = epoll_create1(0);
    struct epoll_event evs[1024];
    double t0 = now(), last_sweep = t0;
    unsigned long per_second_fail[4096] = {0}, per_second_slow[4096] = {0};
    while (!stop) {
        double t = now();
        unsigned long due = (unsigned long)((t - t0) * per_s);
        if (due > total) due = total;
        while (started < due) {
            double sched = t0 + started / per_s;
            int fd = open_conn(ep, &dst, started);
            started++;
            if (fd < 0) { failed++; local++; continue; }
            conns[fd] = (struct conn){sched, 1, 0};
            open_now++;
        }
        if (started >= total && open_now == 0) break;
        int n = epoll_wait(ep, evs, 1024, 1);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd;
            struct conn *c = &conns[fd];
            if (!c->state) continue;
            int done = 0, bad = 0;
            if (c->state == 1) {
                int err = 0;
                socklen_t el = sizeof err;
                getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
                if (err) { bad = 1; if (err == ECONNREFUSED || err == ECONNRESET) refused++; }
                else if (evs[i].events & EPOLLOUT) {
                    if (write(fd, REQUEST, sizeof REQUEST - 1) < 0) bad = 1;
                    c->state = 2;
                    struct epoll_event ev = {.events = EPOLLIN | EPOLLRDHUP, .data.fd = fd};
                    epoll_ctl(ep, EPOLL_CTL_MOD, fd, &ev);
                }
            }
            if (!bad && c->state == 2 && (evs[i].events & (EPOLLIN | EPOLLRDHUP | EPOLLHUP))) {
                char buf[512];
                ssize_t r;
                while ((r = read(fd, buf, sizeof buf)) > 0) c->got += (size_t)r;
                if (r == 0) done = c->got >= sizeof RESPONSE - 1;
                else if (errno != EAGAIN) bad = 1;
                if (!server_closes && c->got >= sizeof RESPONSE - 1) done = 1;
                if (r == 0 && !done) bad = 1;
            }
            if (done || bad) {
                double took = now() - c->start;
                if (done) {
                    ok++;
                    lat[ok - 1] = took;
                    if (took > SLOW_S) {
                        slow++;
                        unsigned long s = (unsigned long)(c->start - t0);
                        if (s < 4096) per_second_slow[s]++;
                    }
                } else {
                    failed++;
                    unsigned long s = (unsigned long)(c->start - t0);
                    if (s < 4096) per_second_fail[s]++;
                }
                c->state = 0;
                close(fd);
                open_now--;
            }
        }
        t = now();
        if (t - last_sweep > 0.05) { /* time out connections older than TIMEOUT_S */
            last_sweep = t;
            for (int fd = 0; fd <= maxfd && open_now; fd++) {
                if (conns[fd].state && t - conns[fd].start > TIMEOUT_S) {
                    failed++;
                    timeouts++;
                    unsigned long s = (unsigned long)(conns[fd].start - t0);
                    if (s < 4096) per_second_fail[s]++;
                    conns[fd].state = 0;
                    close(fd);
                    open_now--;
                }
            }
        }
    }
    qsort(lat, ok, sizeof *lat, cmp_double);
    double p50 = ok ? lat[ok / 2] : 0, p99 = ok ? lat[(ok * 99) / 100] : 0,
           p999 = ok ? lat[(ok * 999) / 1000] : 0, mx = ok ? lat[ok - 1] : 0;
    printf("{\"attempted\": %lu, \"ok\": %lu, \"failed\": %lu, \"slow\": %lu, \"timeouts\": %lu, "
           "\"refused_or_reset\": %lu, \"local_errors\": %lu, \"elapsed_s\": %.3f, "
           "\"p50_ms\": %.3f, \"p99_ms\": %.3f, \"p999_ms\": %.3f, \"max_ms\": %.3f, "
           "\"failed_by_second\": {",
           started, ok, failed, slow, timeouts, refused, local, now() - t0, p50 * 1e3,
           p99 * 1e3, p999 * 1e3, mx * 1e3);
    int first = 1;
    for (int s = 0; s < 4096; s++)
        if (per_second_fail[s]) { printf("%s\"%d\": %lu", first ? "" : ", ", s, per_second_fail[s]); first = 0; }
    printf("}, \"slow_by_10s\": [");
    for (int s = 0; s < 4096 && s < elapsed_s_int(t0); s += 10) {
        unsigned long n = 0;
        for (int k = s; k < s + 10 && k < 4096; k++) n += per_second_slow[k];
        printf("%s%lu", s ? ", " : "", n);
    }
    printf("]}\n");
    return 0;
}

static int hold(const char *ip, int port, unsigned long count, double per_s, double seconds,
                char *sources) {
    struct sockaddr_in dst = addr_of(ip, port);
    parse_sources(sources);
    conns = calloc(1u << 20, sizeof *conns);
    int ep = epoll_create1(0);
    struct epoll_event evs[1024];
    unsigned long started = 0, established = 0, failed = 0, pending = 0;
    double t0 = now(), first_fail = -1, end = t0 + seconds, last_sweep = t0;
    while (!stop && now() < end) {
        double t = now();
        unsigned long due = (unsigned long)((t - t0) * per_s);
        while (started < due && started < count && failed == 0) {
            int fd = open_conn(ep, &dst, started);
            started++;
            if (fd < 0) { failed++; first_fail = t - t0; break; }
            conns[fd] = (struct conn){t, 1, 0};
            pending++;
        }
        int n = epoll_wait(ep, evs, 1024, 5);
        for (int i = 0; i < n; i++) {
            int fd = evs[i].data.fd, err = 0;
            socklen_t el = sizeof err;
            if (conns[fd].state != 1) continue;
            getsockopt(fd, SOL_SOCKET, SO_ERROR, &err, &el);
            pending--;
            if (err) { failed++; if (first_fail < 0) first_fail = now() - t0; close(fd); }
            else established++;
            conns[fd].state = 2;
            epoll_ctl(ep, EPOLL_CTL_DEL, fd, NULL);
        }
        t = now();
        if (t - last_sweep < 0.05) continue;
        last_sweep = t;
        for (int fd = 0; fd <= maxfd && pending; fd++)
            if (conns[fd].state == 1 && t - conns[fd].start > 3.5) { /* SYN lost twice */
                failed++;
                if (first_fail < 0) first_fail = t - t0;
                conns[fd].state = 3;
                pending--;
            }
        if ((started >= count || failed) && pending == 0) break;
    }
    printf("{\"target\": %lu, \"attempted\": %lu, \"established\": %lu, \"failed\": %lu, "
           "\"first_failure_s\": %.3f, \"elapsed_s\": %.3f}\n",
           count, started, established, failed, first_fail, now() - t0);
    fflush(stdout);
    /* keep them open until told to stop, so that the caller can read the kernel's state */
    while (!stop) pause();
    return 0;
}

static int rr(const char *ip, int port, double seconds) {
    struct sockaddr_in dst = addr_of(ip, port);
    int fd = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst)) { perror("capload: connect"); return 1; }
    char b = 'x';
    unsigned long trips = 0;
    double t0 = now(), end = t0 + seconds;
    while (!stop && now() < end) {
        if (write(fd, &b, 1) != 1 || read(fd, &b, 1) != 1) break;
        trips++;
    }
    printf("{\"round_trips\": %lu, \"per_s\": %.1f}\n", trips, trips / (now() - t0));
    return 0;
}

static double cpu_s(clockid_t clock) {
    struct timespec t;
    clock_gettime(clock, &t);
    return t.tv_sec + t.tv_nsec / 1e9;
}

static int uecho(const char *ip, int port, double seconds) {
    struct sockaddr_in a = addr_of(ip, port);
    int fd = socket(AF_INET, SOCK_DGRAM, 0), one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, (struct sockaddr *)&a, sizeof a)) { perror("capload: bind"); return 1; }
    struct timeval tv = {0, 200000};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    fprintf(stderr, "capload: udp echo on %s:%d\n", ip, port);
    unsigned long echoed = 0;
    double c0 = cpu_s(CLOCK_PROCESS_CPUTIME_ID), end = now() + seconds;
    char buf[2048];
    while (!stop && now() < end) {
        struct sockaddr_in peer;
        socklen_t len = sizeof peer;
        ssize_t n = recvfrom(fd, buf, sizeof buf, 0, (struct sockaddr *)&peer, &len);
        if (n < 0) continue;
        if (sendto(fd, buf, n, 0, (struct sockaddr *)&peer, len) == n) echoed++;
    }
    printf("{\"echoed\": %lu, \"cpu_s\": %.6f}\n", echoed,
           cpu_s(CLOCK_PROCESS_CPUTIME_ID) - c0);
    return 0;
}

static int blast(const char *ip, int port, unsigned long count) {
    struct sockaddr_in dst = addr_of(ip, port);
    int fd = socket(AF_INET, SOCK_DGRAM, 0);
    if (connect(fd, (struct sockaddr *)&dst, sizeof dst)) { perror("capload: connect"); return 1; }
    struct timeval tv = {2, 0};
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
    char b = 'x';
    if (send(fd, &b, 1, 0) != 1 || recv(fd, &b, 1, 0) != 1) {
        fprintf(stderr, "capload: no echo from %s:%d\n", ip, port);
        return 1;
    }
    unsigned long sent = 0;
    double c0 = cpu_s(CLOCK_THREAD_CPUTIME_ID), t0 = now();
    for (unsigned long i = 0; i < count && !stop; i++)
        if (send(fd, &b, 1, 0) == 1) sent++;
    double cpu = cpu_s(CLOCK_THREAD_CPUTIME_ID) - c0, wall = now() - t0;
    printf("{\"sent\": %lu, \"cpu_s\": %.6f, \"wall_s\": %.6f}\n", sent, cpu, wall);
    return 0;
}

int main(int argc, char **argv) {
    signal(SIGTERM, on_signal);
    signal(SIGINT, on_signal);
    signal(SIGPIPE, SIG_IGN);
    setvbuf(stdout, NULL, _IOLBF, 0);
    raise_nofile();
    if (argc == 6 && !strcmp(argv[1], "serve"))
        return serve(argv[2], atoi(argv[3]), argv[4], atof(argv[5]));
    if (argc == 8 && !strcmp(argv[1], "rate"))
        return rate(argv[2], atoi(argv[3]), atof(argv[4]), atof(argv[5]), argv[6], argv[7]);
    if (argc == 8 && !strcmp(argv[1], "hold"))
        return hold(argv[2], atoi(argv[3]), strtoul(argv[4], NULL, 10), atof(argv[5]),
                    atof(argv[6]), argv[7]);
    if (argc == 5 && !strcmp(argv[1], "uecho")) return uecho(argv[2], atoi(argv[3]), atof(argv[4]));
    if (argc == 5 && !strcmp(argv[1], "blast"))
        return blast(argv[2], atoi(argv[3]), strtoul(argv[4], NULL, 10));
    if (argc == 5 && !strcmp(argv[1], "rr")) return rr(argv[2], atoi(argv[3]), atof(argv[4]));
    fprintf(stderr, "usage: see the comment at the top of capload.c\n");
    return 2;
}
