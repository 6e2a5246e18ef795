/* A lean XenStore load client for bench.py (compiled there with gcc; not a test).
 *
 * Forks CLIENTS processes; each connects to the daemon's Unix socket, writes its own 10
 * keys /bench/w<n>/k0..9, waits for a common start time, then sends one request and
 * reads its whole reply (one request in flight, blocking socket) for SECONDS. Ops are
 * the xs_wire.h codes; MIX is read, write, directory or writeread (alternating, as
 * hostile.py's good client does). With DEPTH > 1 a client sends DEPTH requests in one
 * write, then reads their DEPTH replies (pipelining; latency is then per round trip).
 * Each child sends its latencies (ns) to the parent through a pipe; the parent prints
 * one line:
 *
 *     requests <n> seconds <s> rate <req/s> p50_us <µs> p99_us <µs>
 *
 * Why C: 16 Python client processes on a 2-core machine eat the core the daemon does
 * not use, so a Python client measures itself as much as the daemon. This one costs
 * the kernel's socket work and little else.
 *
 * Usage: xsload SOCKET CLIENTS SECONDS MIX [DEPTH]
 */
#include <errno.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { XS_DIRECTORY = 1, XS_READ = 2, XS_WRITE = 11, XS_ERROR = 16 };
#define HEADER 16
#define MAX_SAMPLES (1u << 24)

struct header { uint32_t type, req_id, tx_id, len; };

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

static void die(const char *what)
{
    perror(what);
    exit(2);
}

static void write_all(int fd, const void *buf, size_t len)
{
    const char *p = buf;
    while (len) {
        ssize_t n = write(fd, p, len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            die("write");
        }
        p += n;
        len -= (size_t)n;
    }
}

static void read_all(int fd, void *buf, size_t len)
{
    char *p = buf;
    while (len) {
        ssize_t n = read(fd, p, len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n <= 0) {
            fprintf(stderr, "xsload: connection closed early\n");
            exit(2);
        }
        p += n;
        len -= (size_t)n;
    }
}

/* A request: header and payload in one buffer, sent with one write. */
static size_t build(char *out, uint32_t type, const char *payload, size_t len)
{
    struct header h = { type, 0, 0, (uint32_t)len };
    memcpy(out, &h, HEADER);
    memcpy(out + HEADER, payload, len);
    return HEADER + len;
}

/* Read one whole reply; exit on an error reply. */
static void read_reply(int sock)
{
    char reply[4096 + HEADER];
    struct header h;
    read_all(sock, &h, HEADER);
    if (h.len > 4096) {
        fprintf(stderr, "xsload: reply of %u bytes\n", h.len);
        exit(2);
    }
    read_all(sock, reply, h.len);
    if (h.type == XS_ERROR) {
        fprintf(stderr, "xsload: error reply %.*s\n", (int)h.len, reply);
        exit(2);
    }
}

/* Send one request, read its reply. */
static void round_trip(int sock, const char *req, size_t len)
{
    write_all(sock, req, len);
    read_reply(sock);
}

static int compare(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static void child(const char *path, int index, double start_at, double seconds,
                  const char *mix, int depth, int out)
{
    char *burst = malloc((size_t)depth * 128);
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    char reads[10][128], writes[10][128], dir[128], text[96];
    size_t read_len[10], write_len[10], dir_len;
    int sock = socket(AF_UNIX, SOCK_STREAM, 0);
    uint64_t *samples = malloc(MAX_SAMPLES * sizeof *samples);
    uint64_t count = 0;
    double stop, began, elapsed;

    if (sock < 0 || !samples || !burst)
        die("socket");
    strncpy(addr.sun_path, path, sizeof addr.sun_path - 1);
    if (connect(sock, (struct sockaddr *)&addr, sizeof addr) < 0)
        die("connect");
    for (int k = 0; k < 10; k++) {
        int n = snprintf(text, sizeof text, "/bench/w%d/k%d", index, k);
        read_len[k] = build(reads[k], XS_READ, text, (size_t)n + 1);
        n += 1 + snprintf(text + n + 1, sizeof text - (size_t)n - 1, "value%d", k);
        write_len[k] = build(writes[k], XS_WRITE, text, (size_t)n);
        round_trip(sock, writes[k], write_len[k]);
    }
    dir_len = build(dir, XS_DIRECTORY, text,
                    (size_t)snprintf(text, sizeof text, "/bench/w%d", index) + 1);
    while (now() < start_at)
        usleep(1000);
    began = now();
    stop = began + seconds;
    for (uint64_t i = 0; count < MAX_SAMPLES;) {
        struct timespec t0, t1;
        size_t len = 0;
        for (int d = 0; d < depth; d++, i++) {
            int k = (int)(i % 10);
            if (strcmp(mix, "read") == 0 || (strcmp(mix, "writeread") == 0 && i % 2)) {
                memcpy(burst + len, reads[k], read_len[k]);
                len += read_len[k];
            } else if (strcmp(mix, "directory") == 0) {
                memcpy(burst + len, dir, dir_len);
                len += dir_len;
            } else {
                memcpy(burst + len, writes[k], write_len[k]);
                len += write_len[k];
            }
        }
        clock_gettime(CLOCK_MONOTONIC, &t0);
        write_all(sock, burst, len);  /* DEPTH requests in one write, then their replies */
        for (int d = 0; d < depth; d++)
            read_reply(sock);
        clock_gettime(CLOCK_MONOTONIC, &t1);
        samples[count++] = (uint64_t)(t1.tv_sec - t0.tv_sec) * 1000000000u
                           + (uint64_t)(t1.tv_nsec - t0.tv_nsec);
        if (t1.tv_sec + t1.tv_nsec / 1e9 >= stop)
            break;
    }
    elapsed = now() - began;
    uint64_t requests = count * (uint64_t)depth;  /* the samples are per round trip */
    write_all(out, &requests, sizeof requests);
    write_all(out, &elapsed, sizeof elapsed);
    write_all(out, samples, count * sizeof *samples);
    exit(0);
}

int main(int argc, char **argv)
{
    int clients, depth = 1, pipes[256];
    double seconds, start_at, elapsed = 0;
    uint64_t total = 0, requests = 0, *all = NULL;

    if (argc == 6)
        depth = atoi(argv[5]);
    if ((argc != 5 && argc != 6) || (clients = atoi(argv[2])) < 1 || clients > 256 ||
        depth < 1 || depth > 256) {
        fprintf(stderr, "usage: xsload SOCKET CLIENTS(1-256) SECONDS "
                        "read|write|directory|writeread [DEPTH(1-256)]\n");
        return 2;
    }
    seconds = atof(argv[3]);
    start_at = now() + 0.3 + clients * 0.005;
    for (int c = 0; c < clients; c++) {
        int fds[2];
        if (pipe(fds) < 0)
            die("pipe");
        pid_t pid = fork();
        if (pid < 0)
            die("fork");
        if (pid == 0) {
            close(fds[0]);
            child(argv[1], c, start_at, seconds, argv[4], depth, fds[1]);
        }
        close(fds[1]);
        pipes[c] = fds[0];
    }
    for (int c = 0; c < clients; c++) {
        uint64_t count;
        double took;
        read_all(pipes[c], &count, sizeof count);
        read_all(pipes[c], &took, sizeof took);
        requests += count;
        count /= (uint64_t)depth;
        all = realloc(all, (total + count) * sizeof *all);
        if (!all)
            die("realloc");
        read_all(pipes[c], all + total, count * sizeof *all);
        total += count;
        if (took > elapsed)
            elapsed = took;
        close(pipes[c]);
    }
    for (int c = 0; c < clients; c++) {
        int status;
        if (wait(&status) < 0 || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
            fprintf(stderr, "xsload: a client failed\n");
            return 2;
        }
    }
    if (!total) {
        fprintf(stderr, "xsload: no request completed\n");
        return 2;
    }
    qsort(all, total, sizeof *all, compare);
    printf("requests %llu seconds %.3f rate %.0f p50_us %.0f p99_us %.0f\n",
           (unsigned long long)requests, elapsed, requests / elapsed, all[total / 2] / 1e3,
           all[total * 99 / 100] / 1e3);
    return 0;
}
