/*
 * memhog: the workload inside ckvault's test checkpoints.
 *
 * usage: memhog MEM_MIB [MARKER_HEX]
 *
 * Maps MEM_MIB MiB of anonymous memory and writes every page, so that CRIU dumps all of
 * it into checkpoint/pages-*.img, with a mix that looks like a real process's heap:
 *
 *   30 %  zero pages (written, so they are resident and dumped, as freed buffers are)
 *   20 %  random bytes (incompressible: keys, compressed or encrypted payloads)
 *   25 %  text (log lines, JSON records, HTTP headers)
 *   15 %  pointer-rich structs (heap pointers, lengths, flags, small integers)
 *   10 %  sparse pages (mostly zero with a few live words)
 *
 * The page contents come from a PRNG with a fixed seed, so two runs with the same
 * arguments dirty the same bytes and compress alike (benchmarks stay comparable).
 *
 * MARKER_HEX, if given, is a hex-encoded value V. memhog decodes it and writes the string
 * "CKVAULT-SECRET-MARKER-" V into the heap: at the start of the first page and then once
 * every 1 MiB. The value travels hex-encoded so that the whole marker exists only in the
 * process's memory: never in its argv (which lands in spec.dump and config.dump) and never
 * on stdout (which lands in the container log). A test that finds the marker in a file
 * therefore found memory pages. Nothing secret is printed.
 *
 * Before it says it is ready it also sets up what a responder looks for besides memory
 * (the analyst tests compare ckvault's deep view with checkpointctl's on it):
 *   - /etc/hostname held open read-only (an open file);
 *   - a unix stream socket listening on the abstract name "@ckvault-memhog" (no file, so
 *     nothing in the rootfs diff). No TCP socket: since Linux 6.16 getsockopt(SO_PASSCRED)
 *     on an inet socket fails with EOPNOTSUPP and CRIU 4.1 (Debian 13) then refuses to
 *     dump it ("Can't get 1:16 opt"), so no container with one can be checkpointed here;
 *   - /tmp/dropped.sh written (0755) and /bin/cat removed (the container's disk changes:
 *     rootfs-diff.tar and deleted.files);
 *   - 1 MiB of shared anonymous memory (MAP_SHARED, its first page written): the shared
 *     memory size; CRIU keeps its pages apart from the process's own;
 *   - a unix datagram socket pair with one 24-byte message sent and never read (a queue:
 *     CRIU keeps it in sk-queues.img).
 * A step the sandbox refuses is reported on stderr and skipped.
 *
 * When every page is written it prints "ready <MEM_MIB> MiB" and then sleeps forever.
 * Build: gcc -O2 -static -o memhog memhog.c
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#define PAGE 4096u
#define MARKER_PREFIX "CKVAULT-SECRET-MARKER-"
#define MARKER_EVERY_PAGES 256u /* 1 MiB */

static uint64_t rng_state;

/* splitmix64: small, fast, good enough for filler bytes. */
static uint64_t rnd(void) {
    uint64_t z = (rng_state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
}

static unsigned below(unsigned n) { return (unsigned)(rnd() % n); }

static const char *const words[] = {
    "order",   "customer", "invoice",  "shipment", "payment", "session", "token",
    "cart",    "warehouse", "pending", "accepted", "refused", "retry",   "timeout",
    "checkout", "inventory", "account", "address", "Berlin",  "Lisbon",  "Osaka",
    "premium", "standard", "express", "blue",     "large",   "small",   "cache",
};
#define NWORDS (sizeof words / sizeof words[0])

static const char *const paths[] = {
    "/api/v1/orders", "/api/v1/customers", "/api/v2/cart/items", "/healthz",
    "/api/v1/payments/authorize", "/metrics", "/api/v1/inventory/reserve",
};
#define NPATHS (sizeof paths / sizeof paths[0])

/* One line of text of a kind chosen at random; returns its length (may be truncated). */
static int text_line(char *buf, size_t cap) {
    switch (below(3)) {
    case 0:
        return snprintf(buf, cap,
                        "2026-11-28T08:%02u:%02u.%03uZ INFO  shop-api req=%08x method=%s path=%s/%u "
                        "status=%u dur_ms=%u\n",
                        below(60), below(60), below(1000), (unsigned)rnd(),
                        below(4) ? "GET" : "POST", paths[below(NPATHS)], below(100000),
                        below(10) ? 200u : 503u, below(900));
    case 1:
        return snprintf(buf, cap,
                        "{\"id\":%u,\"sku\":\"SKU-%05u\",\"qty\":%u,\"state\":\"%s\",\"city\":\"%s\","
                        "\"price\":%u.%02u,\"note\":\"%s %s\"}\n",
                        below(10000000), below(100000), 1 + below(9), words[below(NWORDS)],
                        words[18 + below(3)], below(500), below(100), words[below(NWORDS)],
                        words[below(NWORDS)]);
    default:
        return snprintf(buf, cap,
                        "Host: shop.internal\r\nUser-Agent: ckvault-test/1.0\r\nCookie: sid=%016llx; "
                        "cart=%u\r\nAccept: application/json\r\n\r\n",
                        (unsigned long long)rnd(), below(100000));
    }
}

static void fill_text(unsigned char *p) {
    char line[256];
    size_t off = 0;
    while (off < PAGE) {
        int n = text_line(line, sizeof line);
        if (n <= 0) continue;
        size_t len = (size_t)n < sizeof line ? (size_t)n : sizeof line - 1;
        if (len > PAGE - off) len = PAGE - off;
        memcpy(p + off, line, len);
        off += len;
    }
}

static void fill_random(unsigned char *p) {
    for (unsigned i = 0; i < PAGE; i += 8) {
        uint64_t v = rnd();
        memcpy(p + i, &v, 8);
    }
}

/* Arrays of 32-byte structs: {next ptr, data ptr, length, flags|refcount}. */
static void fill_pointers(unsigned char *p) {
    uint64_t heap = 0x000055d4c0000000ull + ((rnd() & 0xfffff) << 12);
    for (unsigned i = 0; i < PAGE; i += 32) {
        uint64_t s[4];
        s[0] = below(8) ? heap + (rnd() & 0xffff0) : 0;
        s[1] = heap + (rnd() & 0xfffff0);
        s[2] = below(4096);
        s[3] = ((uint64_t)below(4) << 32) | (1 + below(3));
        memcpy(p + i, s, sizeof s);
    }
}

static void fill_sparse(unsigned char *p) {
    memset(p, 0, PAGE);
    unsigned live = 1 + below(24);
    for (unsigned k = 0; k < live; k++) {
        uint64_t v = rnd() & 0x0000ffffffffffffull;
        memcpy(p + 8 * below(PAGE / 8), &v, 8);
    }
}

static int hexval(char c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* Decodes "PREFIX" + unhex(hex) into a fresh heap string, or exits on bad input. */
static char *decode_marker(const char *hex) {
    size_t n = strlen(hex), plen = strlen(MARKER_PREFIX);
    if (n % 2 != 0 || n / 2 > 1024) {
        fprintf(stderr, "memhog: MARKER_HEX must be an even number of hex digits (<= 2048)\n");
        exit(2);
    }
    char *m = malloc(plen + n / 2 + 1);
    if (!m) exit(1);
    memcpy(m, MARKER_PREFIX, plen);
    for (size_t i = 0; i < n / 2; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);
        if (hi < 0 || lo < 0) {
            fprintf(stderr, "memhog: MARKER_HEX is not hex\n");
            exit(2);
        }
        m[plen + i] = (char)(hi << 4 | lo);
    }
    m[plen + n / 2] = 0;
    return m;
}

/* What a responder looks for besides memory: see the header. */
static void scene(void) {
    if (open("/etc/hostname", O_RDONLY) < 0) perror("memhog: open /etc/hostname");
    int u = socket(AF_UNIX, SOCK_STREAM, 0);
    struct sockaddr_un un = {.sun_family = AF_UNIX};
    static const char name[] = "\0ckvault-memhog";
    memcpy(un.sun_path, name, sizeof name - 1);
    socklen_t ulen = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + sizeof name - 1);
    if (u < 0 || bind(u, (struct sockaddr *)&un, ulen) < 0 || listen(u, 8) < 0)
        perror("memhog: unix listen @ckvault-memhog");
    int f = open("/tmp/dropped.sh", O_WRONLY | O_CREAT | O_TRUNC, 0755);
    if (f < 0 || write(f, "#!/bin/sh\necho dropped\n", 24) != 24) perror("memhog: write /tmp/dropped.sh");
    if (f >= 0) close(f);
    if (unlink("/bin/cat") < 0) perror("memhog: unlink /bin/cat");
    unsigned char *sh = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (sh == MAP_FAILED) perror("memhog: mmap shared");
    else memset(sh, 0x5a, 4096);
    int pair[2];
    if (socketpair(AF_UNIX, SOCK_DGRAM, 0, pair) < 0 || send(pair[0], "ckvault-memhog-queued-24", 24, 0) != 24)
        perror("memhog: queued datagram");
}

int main(int argc, char **argv) {
    if (argc < 2 || argc > 3) {
        fprintf(stderr, "usage: memhog MEM_MIB [MARKER_HEX]\n");
        return 2;
    }
    char *end;
    unsigned long mib = strtoul(argv[1], &end, 10);
    if (*end != 0 || mib > 1u << 20) {
        fprintf(stderr, "memhog: MEM_MIB must be a number of MiB\n");
        return 2;
    }
    char *marker = argc == 3 ? decode_marker(argv[2]) : NULL;
    /* Fixed seed, varied by size, so equal runs dirty equal bytes. */
    rng_state = 0x636b7661756c74ull ^ (uint64_t)mib;

    size_t len = (size_t)mib << 20;
    unsigned char *mem = NULL;
    if (len > 0) {
        mem = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (mem == MAP_FAILED) {
            perror("memhog: mmap");
            return 1;
        }
    }
    size_t pages = len / PAGE;
    for (size_t i = 0; i < pages; i++) {
        unsigned char *p = mem + i * PAGE;
        unsigned r = below(100);
        if (r < 30) memset(p, 0, PAGE);
        else if (r < 50) fill_random(p);
        else if (r < 75) fill_text(p);
        else if (r < 90) fill_pointers(p);
        else fill_sparse(p);
    }
    if (marker) {
        size_t mlen = strlen(marker);
        /* Wholly inside one page, so it is contiguous in pages-*.img as well. */
        if (mlen + 64 <= PAGE)
            for (size_t i = 0; i < pages; i += MARKER_EVERY_PAGES)
                memcpy(mem + i * PAGE + 64, marker, mlen);
        /* The decoded string itself also stays live on the malloc heap. */
    }
    scene();
    printf("ready %lu MiB\n", mib);
    fflush(stdout);
    for (;;) sleep(3600);
}
