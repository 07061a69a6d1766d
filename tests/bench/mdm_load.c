/* mdm_load: a load generator for the MDM check-in and command protocols.
 *
 * It simulates N devices. Each has its own EC P-256 key and a client
 * certificate issued from the CA of the server's data directory (ca.crt,
 * ca.key), kept in <data_dir>/bench-devices.bin so that a large enrolled
 * population is made once and reused: the server binds each certificate
 * to its device at Authenticate, so the same certificates must come back.
 * The file header counts the devices enrolled so far; a run enrolls only
 * those not enrolled yet (or all of them with --reenroll).
 *
 * One libuv loop, one thread: TLS through OpenSSL memory BIOs on uv_tcp
 * streams, HTTP/1.1 with Content-Length framing. Bodies are XML plists the
 * way devices send them.
 *
 * Connection designs (a device's identity is its TLS client certificate,
 * so a TLS connection can only ever speak for one device):
 *   keepalive  C connections, each one device's long-lived connection, as a
 *              real device keeps its connection while it works through its
 *              queue. The C devices are spread over the whole enrolled
 *              population (a stride through it), so that with 100,000
 *              enrolled the keys touched are spread over the whole store.
 *              --rotate R closes a connection after R cycles and opens one
 *              for the next device (a new handshake), to cycle through many
 *              more devices than connections.
 *   new        one TLS handshake per connect cycle: a bounded number C of
 *              concurrent connections, each taking the next device of the
 *              population (all N in turn), full handshake, the cycle, close.
 * With --transport sig the same runs over the plain HTTP listener, and
 * every body is signed (Mdm-Signature: a detached CMS SignedData, SHA-256,
 * made afresh for every request with the device key; nothing cached).
 *
 * A connect cycle (--mode):
 *   idle     Idle -> empty 200 (the queue is empty); a command that comes
 *            anyway is acknowledged and counted.
 *   command  Idle -> command, Acknowledged -> empty 200. Every device in
 *            circulation gets one ProfileList queued before each of its
 *            cycles: devices that finished a cycle are collected and
 *            enqueued in bulk, one POST /v1/commands with all of them as
 *            targets, by a separate admin connection; the POST goes out as
 *            soon as the previous one returned, so the rounds overlap (in
 *            open loop, at most every POST_GAP_MS: see there).
 *   healthz  GET /healthz (a "cycle" is that one request): the bare
 *            request, for the ratio to the protocol work.
 *
 * Load: closed loop (every connection starts its next cycle at once), or
 * open loop with --rate (cycles are started at a constant rate whatever
 * the latency; a cycle that finds no free connection waits, and its first
 * request's latency counts from its scheduled start, so that a slow server
 * is not hidden by fewer requests).
 *
 * Latency is per request, from send (or scheduled start) to the last byte
 * of the response; the cycle latency and the TLS handshake latency are
 * reported apart. Only what completes inside the measured window (after
 * --warmup) counts. With --pid the server's CPU time (utime + stime from
 * /proc/<pid>/stat) over the window is divided by the requests done.
 *
 * Output: one line of key=value pairs on stdout. */
#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/ssl.h>
#include <openssl/x509.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include <uv.h>

#include "crypto/ca.h"
#include "crypto/keys.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/encode.h"
#include "util/err.h"
#include "util/misc.h"

#define DEVFILE_MAGIC "MDMLOAD1"
#define READ_CHUNK 65536
#define TOPIC "com.apple.mgmt.External.7b1f6b46-2f5c-4d4e-9d4f-00000000b001"
#define MAX_TARGETS_PER_POST 100000
/* Open loop: the bulk enqueues go out at most this often. A server below
 * its peak answers a POST within a fraction of a millisecond, so posting
 * as soon as the previous one returned made one POST per cycle: an admin
 * request per cycle for the server, and the load generator's core full,
 * which then delayed its own reads and inflated the latencies. */
#define POST_GAP_MS 10
/* Open loop: how long after --warmup the window may wait for the warm-up's
 * backlog to drain. */
#define SETTLE_MAX_S 10.0
#define ARRIVE_US 500
#define MAX_ERROR_LINES 10
#define ENROLL_CONNS 128            /* concurrent enrollments (one handshake each) */

enum mode { M_IDLE, M_COMMAND, M_HEALTHZ, M_ENROLL };
enum transport { T_MTLS, T_SIG };
enum slot_state { ST_FREE, ST_CONNECTING, ST_READY, ST_BUSY, ST_CLOSING };
enum after_close { AC_NONE, AC_RECONNECT, AC_NEWDEV, AC_FREE };
enum err_kind { E_HTTP, E_CONN, E_TLS, E_TIMEOUT, E_PROTO, E__COUNT };
static const char *const err_names[E__COUNT] = {"http", "conn", "tls", "timeout", "proto"};

typedef struct device {
    uint32_t idx;
    const unsigned char *cert_der, *key_der;
    uint16_t cert_len, key_len;
    X509 *cert;                 /* parsed on first use */
    EVP_PKEY *key;
    struct slot *slot;          /* the slot that holds it, or NULL */
    bool queued;                /* a command waits for it (idle mode: always) */
    bool draining;              /* in the list waiting for a bulk enqueue */
    char udid[32];
} device_t;

typedef struct slot {
    uv_tcp_t tcp;
    uv_connect_t connect_req;
    int id;
    int state;
    int after_close;
    bool admin;
    bool tls;
    SSL *ssl;
    BIO *rbio, *wbio;
    bool hs_done;
    device_t *dev;
    int step;                   /* position in the action (enroll, cycle) */
    uint64_t op_start_ns;       /* connect or request start, for timeouts */
    uint64_t conn_start_ns;
    uint64_t cycle_start_ns;    /* cycle start (the scheduled time in open loop) */
    uint64_t req_start_ns;
    uint64_t req_sent_ns;       /* when the request was written */
    bool cycle_started;
    bool cycle_failed;
    bool in_free;               /* on the stack of free slots */
    int cmds_in_cycle;
    int cycles_on_conn;
    int requests_in_cycle;
    mdm_buf_t in;               /* plaintext received, not yet parsed */
    mdm_buf_t out;              /* the request being sent */
    uint32_t *batch;            /* admin: the devices of the POST in flight */
    size_t nbatch;
    char readbuf[READ_CHUNK];
} slot_t;

typedef struct write_req {
    uv_write_t w;
    size_t len;
    char data[];
} write_req_t;

typedef struct samples {
    double *v;                  /* milliseconds */
    size_t n, cap;
} samples_t;

/* A ring of device indices or of times. */
typedef struct ring {
    uint64_t *v;
    size_t cap, head, n;
} ring_t;

static struct {
    /* options */
    const char *data_dir;
    const char *host;
    int port, plain_port;
    int mode;
    int transport;
    bool new_conn;
    uint32_t ndev;
    int nconn;
    double warmup, duration;
    double warmup_done;         /* seconds from the start to the window's start */
    uint64_t count;
    double rate;
    int rotate;
    const char *api_key;
    int pid;
    const char *label;
    bool enroll, enroll_only, reenroll;
    double timeout;
    bool progress;
    uint32_t window;            /* command mode, new or rotating: devices in circulation */
    uint32_t stride_seed;

    /* devices */
    unsigned char *file;
    size_t file_len;
    uint32_t file_count, file_enrolled;
    device_t *devs;
    uint32_t ndevs;             /* devices in memory (>= ndev) */

    /* run state */
    uv_loop_t *loop;
    SSL_CTX *ctx;
    slot_t *slots;
    slot_t admin;
    bool use_admin;
    ring_t fifo;                /* devices free to be taken by a slot */
    slot_t **free_slots;        /* slots that may start a cycle now */
    int nfree;
    slot_t **needdev;           /* keep-alive slots waiting for a device to connect */
    int nneeddev;
    uint32_t *drained;          /* devices waiting for a bulk enqueue */
    size_t ndrained;
    ring_t backlog;             /* open loop: scheduled starts not yet begun */
    uv_timer_t tick;
    uv_timer_t post_gap;        /* open loop: the next bulk enqueue is due */
    bool post_gap_armed;
    uint64_t last_post_ns;
    uv_poll_t arrive;           /* open loop: a timerfd every ARRIVE_US issues the arrivals due */
    int arrive_fd;
    uv_signal_t sigint;
    bool stopping;
    bool measuring;
    bool done;
    int open_handles;

    /* time */
    uint64_t t0_ns, tm_start_ns, tm_end_ns;
    uint64_t arrivals;
    size_t backlog_max;

    /* enrollment */
    uint32_t enroll_from, enroll_to, enroll_done, enroll_failed;
    uint64_t enroll_start_ns;

    /* counters over the window */
    uint64_t cycles, cmd_cycles, requests, errors[E__COUNT];
    uint64_t handshakes, posts, post_targets;
    uint64_t all_cycles, all_errors;
    samples_t lat_req, lat_cycle, lat_hs, lat_post;
    samples_t lat_svc;          /* open loop: from the actual send */
    uint64_t late_starts;       /* open loop: cycles begun > 1 ms after schedule */
    double server_cpu0, client_cpu0, core0_busy0, core1_busy0, server_wb0, disk_wb0;
    uint64_t last_progress_cycles;
    int error_lines;
} G;

/* ---- small helpers ------------------------------------------------------- */

static uint64_t now_ns(void)
{
    return uv_hrtime();
}

static void samples_add(samples_t *s, double ms)
{
    if (s->n == s->cap) {
        s->cap = s->cap ? s->cap * 2 : 4096;
        s->v = mdm_realloc(s->v, s->cap * sizeof(double));
    }
    s->v[s->n++] = ms;
}

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* The p-th percentile (nearest rank) of sorted samples. */
static double pct(const samples_t *s, double p)
{
    if (s->n == 0)
        return 0;
    size_t k = (size_t)ceil(p / 100.0 * (double)s->n);
    if (k < 1)
        k = 1;
    if (k > s->n)
        k = s->n;
    return s->v[k - 1];
}

static void ring_init(ring_t *r, size_t cap)
{
    r->v = mdm_calloc(cap ? cap : 1, sizeof(uint64_t));
    r->cap = cap ? cap : 1;
    r->head = r->n = 0;
}

static void ring_push(ring_t *r, uint64_t x)
{
    if (r->n == r->cap) {
        size_t ncap = r->cap * 2;
        uint64_t *nv = mdm_calloc(ncap, sizeof(uint64_t));
        for (size_t i = 0; i < r->n; i++)
            nv[i] = r->v[(r->head + i) % r->cap];
        mdm_free(r->v);
        r->v = nv;
        r->cap = ncap;
        r->head = 0;
    }
    r->v[(r->head + r->n) % r->cap] = x;
    r->n++;
}

static uint64_t ring_pop(ring_t *r)
{
    uint64_t x = r->v[r->head];
    r->head = (r->head + 1) % r->cap;
    r->n--;
    return x;
}

/* utime + stime of a process in seconds, or -1. */
static double proc_cpu(int pid)
{
    char path[64], buf[4096];
    snprintf(path, sizeof(path), "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    size_t n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (p == NULL)
        return -1;
    /* After the command: field 3 is the state; utime is 14, stime 15. */
    unsigned long long ut = 0, st = 0;
    int field = 2;
    char *save = NULL;
    for (char *tok = strtok_r(p + 1, " ", &save); tok != NULL; tok = strtok_r(NULL, " ", &save)) {
        field++;
        if (field == 14)
            ut = strtoull(tok, NULL, 10);
        else if (field == 15) {
            st = strtoull(tok, NULL, 10);
            break;
        }
    }
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

/* Bytes a process caused to be written to storage (write_bytes of
 * /proc/<pid>/io: the pages it dirtied), or -1. */
static double proc_write_bytes(int pid)
{
    char path[64], line[128];
    snprintf(path, sizeof(path), "/proc/%d/io", pid);
    FILE *f = fopen(path, "r");
    if (f == NULL)
        return -1;
    double v = -1;
    while (fgets(line, sizeof(line), f) != NULL)
        if (strncmp(line, "write_bytes:", 12) == 0)
            v = strtod(line + 12, NULL);
    fclose(f);
    return v;
}

/* Bytes written to the machine's disks (sectors written, /proc/diskstats,
 * whole disks only), or -1. write_bytes of /proc/<pid>/io counts pages as
 * they are dirtied and, on some kernels, far more than reaches the disk;
 * this is what the devices received (from every process: read it on a
 * quiet machine). */
static double disk_written_bytes(void)
{
    FILE *f = fopen("/proc/diskstats", "r");
    if (f == NULL)
        return -1;
    char line[512];
    double total = 0;
    bool any = false;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned maj, min;
        char name[64];
        unsigned long long v[7];
        if (sscanf(line, "%u %u %63s %llu %llu %llu %llu %llu %llu %llu", &maj, &min, name, &v[0],
                   &v[1], &v[2], &v[3], &v[4], &v[5], &v[6]) != 10)
            continue;
        if (strncmp(name, "loop", 4) == 0 || strncmp(name, "ram", 3) == 0 ||
            strncmp(name, "zram", 4) == 0)
            continue;
        char sys[128];
        snprintf(sys, sizeof(sys), "/sys/block/%s", name);
        if (access(sys, F_OK) != 0)
            continue; /* a partition: its disk counts it */
        total += (double)v[6] * 512.0;
        any = true;
    }
    fclose(f);
    return any ? total : -1;
}

/* Busy time of cpuN from /proc/stat in seconds (everything but idle and
 * iowait), or -1. Tells how much of a core other processes took. */
static double core_busy(int cpu)
{
    FILE *f = fopen("/proc/stat", "r");
    if (f == NULL)
        return -1;
    char line[512], name[16];
    snprintf(name, sizeof(name), "cpu%d ", cpu);
    double busy = -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        if (strncmp(line, name, strlen(name)) != 0)
            continue;
        unsigned long long v[8] = {0};
        sscanf(line + strlen(name), "%llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1],
               &v[2], &v[3], &v[4], &v[5], &v[6], &v[7]);
        /* user nice system idle iowait irq softirq steal */
        busy = (double)(v[0] + v[1] + v[2] + v[5] + v[6] + v[7]) / (double)sysconf(_SC_CLK_TCK);
        break;
    }
    fclose(f);
    return busy;
}

static double self_cpu(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    return (double)ru.ru_utime.tv_sec + (double)ru.ru_utime.tv_usec / 1e6 +
           (double)ru.ru_stime.tv_sec + (double)ru.ru_stime.tv_usec / 1e6;
}

static void ssl_errors(const char *what)
{
    unsigned long e;
    char buf[256];
    fprintf(stderr, "mdm_load: %s", what);
    while ((e = ERR_get_error()) != 0) {
        ERR_error_string_n(e, buf, sizeof(buf));
        fprintf(stderr, ": %s", buf);
    }
    fputc('\n', stderr);
}

static void fatal(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));

static void fatal(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("mdm_load: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* ---- the device file ----------------------------------------------------- */

static void udid_of(uint32_t idx, char out[32])
{
    snprintf(out, 32, "00008030-BE%014X", idx);
}

static char *devfile_path(void)
{
    return mdm_sprintf("%s/bench-devices.bin", G.data_dir);
}

static void put_u32(unsigned char *p, uint32_t v)
{
    p[0] = (unsigned char)(v >> 24);
    p[1] = (unsigned char)(v >> 16);
    p[2] = (unsigned char)(v >> 8);
    p[3] = (unsigned char)v;
}

static uint32_t get_u32(const unsigned char *p)
{
    return (uint32_t)p[0] << 24 | (uint32_t)p[1] << 16 | (uint32_t)p[2] << 8 | p[3];
}

/* Points the device table at the records of the file image. */
static void devfile_index(void)
{
    mdm_free(G.devs);
    G.devs = mdm_calloc(G.file_count ? G.file_count : 1, sizeof(device_t));
    size_t off = 16;
    for (uint32_t i = 0; i < G.file_count; i++) {
        if (off + 4 > G.file_len)
            fatal("bench-devices.bin is truncated at device %u", i);
        device_t *d = &G.devs[i];
        d->idx = i;
        d->cert_len = (uint16_t)(G.file[off] << 8 | G.file[off + 1]);
        d->key_len = (uint16_t)(G.file[off + 2] << 8 | G.file[off + 3]);
        off += 4;
        if (off + d->cert_len + d->key_len > G.file_len)
            fatal("bench-devices.bin is truncated at device %u", i);
        d->cert_der = G.file + off;
        off += d->cert_len;
        d->key_der = G.file + off;
        off += d->key_len;
        d->queued = true;
        udid_of(i, d->udid);
    }
    G.ndevs = G.file_count;
}

static void devfile_load(void)
{
    char *path = devfile_path();
    FILE *f = fopen(path, "rb");
    if (f == NULL) {
        mdm_free(path);
        G.file_count = G.file_enrolled = 0;
        G.file_len = 16;
        G.file = mdm_calloc(1, 16);
        memcpy(G.file, DEVFILE_MAGIC, 8);
        devfile_index();
        return;
    }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    if (len < 16)
        fatal("%s is too short", path);
    G.file = mdm_malloc((size_t)len);
    G.file_len = (size_t)len;
    if (fread(G.file, 1, G.file_len, f) != G.file_len)
        fatal("cannot read %s", path);
    fclose(f);
    if (memcmp(G.file, DEVFILE_MAGIC, 8) != 0)
        fatal("%s is not a device file of this program", path);
    G.file_count = get_u32(G.file + 8);
    G.file_enrolled = get_u32(G.file + 12);
    mdm_free(path);
    devfile_index();
}

/* Writes the image atomically (temporary file, rename). */
static void devfile_save(void)
{
    put_u32(G.file + 8, G.file_count);
    put_u32(G.file + 12, G.file_enrolled);
    char *path = devfile_path();
    char *tmp = mdm_sprintf("%s.tmp", path);
    FILE *f = fopen(tmp, "wb");
    if (f == NULL || fwrite(G.file, 1, G.file_len, f) != G.file_len || fflush(f) != 0 ||
        fsync(fileno(f)) != 0)
        fatal("cannot write %s: %s", tmp, strerror(errno));
    fclose(f);
    if (rename(tmp, path) != 0)
        fatal("cannot rename %s: %s", tmp, strerror(errno));
    mdm_free(tmp);
    mdm_free(path);
}

struct gen_job {
    mdm_ca_t *ca;
    uint32_t from, to;
    mdm_buf_t out;              /* records */
    int rc;
    char msg[512];
};

/* Makes the key and certificate of devices [from, to). */
static void *gen_thread(void *arg)
{
    struct gen_job *j = arg;
    mdm_err_t err = {0};
    for (uint32_t i = j->from; i < j->to && j->rc == 0; i++) {
        EVP_PKEY *key = NULL;
        X509 *cert = NULL;
        X509_NAME *name = X509_NAME_new();
        char udid[32], cn[64];
        udid_of(i, udid);
        snprintf(cn, sizeof(cn), "bench device %s", udid);
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                   0);
        j->rc = mdm_key_generate("ec:P-256", &key, &err);
        if (j->rc == 0)
            j->rc = mdm_ca_issue_client_cert_for_key(j->ca, key, name, NULL, &cert, &err);
        X509_NAME_free(name);
        if (j->rc == 0) {
            unsigned char *cd = NULL, *kd = NULL;
            int cl = i2d_X509(cert, &cd);
            int kl = i2d_PrivateKey(key, &kd);
            if (cl <= 0 || kl <= 0 || cl > 65535 || kl > 65535) {
                j->rc = MDM_ECRYPTO;
                snprintf(err.msg, sizeof(err.msg), "cannot encode device %u", i);
            } else {
                unsigned char h[4] = {(unsigned char)(cl >> 8), (unsigned char)cl,
                                      (unsigned char)(kl >> 8), (unsigned char)kl};
                mdm_buf_append(&j->out, h, 4);
                mdm_buf_append(&j->out, cd, (size_t)cl);
                mdm_buf_append(&j->out, kd, (size_t)kl);
            }
            OPENSSL_free(cd);
            OPENSSL_free(kd);
        }
        X509_free(cert);
        EVP_PKEY_free(key);
    }
    if (j->rc != 0)
        snprintf(j->msg, sizeof(j->msg), "%s", err.msg);
    return NULL;
}

/* Makes sure the file holds at least n devices (two threads make them). */
static void devfile_ensure(uint32_t n)
{
    if (G.file_count >= n)
        return;
    char *cp = mdm_sprintf("%s/ca.crt", G.data_dir), *kp = mdm_sprintf("%s/ca.key", G.data_dir);
    mdm_ca_t *ca = NULL;
    mdm_err_t err = {0};
    if (mdm_ca_load(cp, kp, NULL, true, &ca, &err) != 0)
        fatal("loading the CA of %s: %s", G.data_dir, err.msg);
    mdm_free(cp);
    mdm_free(kp);
    uint32_t from = G.file_count;
    uint64_t t = now_ns();
    fprintf(stderr, "mdm_load: making keys and certificates for devices %u..%u\n", from, n - 1);
    enum { NT = 2 };
    struct gen_job jobs[NT];
    pthread_t th[NT];
    uint32_t per = (n - from + NT - 1) / NT;
    for (int k = 0; k < NT; k++) {
        memset(&jobs[k], 0, sizeof(jobs[k]));
        jobs[k].ca = ca;
        jobs[k].from = from + per * (uint32_t)k;
        jobs[k].to = jobs[k].from + per > n ? n : jobs[k].from + per;
        if (jobs[k].from > n)
            jobs[k].from = n;
        pthread_create(&th[k], NULL, gen_thread, &jobs[k]);
    }
    for (int k = 0; k < NT; k++)
        pthread_join(th[k], NULL);
    for (int k = 0; k < NT; k++)
        if (jobs[k].rc != 0)
            fatal("making device certificates: %s", jobs[k].msg);
    size_t extra = 0;
    for (int k = 0; k < NT; k++)
        extra += jobs[k].out.len;
    G.file = mdm_realloc(G.file, G.file_len + extra);
    for (int k = 0; k < NT; k++) {
        memcpy(G.file + G.file_len, jobs[k].out.data, jobs[k].out.len);
        G.file_len += jobs[k].out.len;
        mdm_buf_free(&jobs[k].out);
    }
    G.file_count = n;
    mdm_ca_free(ca);
    devfile_index();
    devfile_save();
    fprintf(stderr, "mdm_load: %u devices made in %.1f s\n", n - from,
            (double)(now_ns() - t) / 1e9);
}

/* Parses a device's certificate and key on first use. */
static void device_load(device_t *d)
{
    if (d->cert != NULL)
        return;
    const unsigned char *p = d->cert_der;
    d->cert = d2i_X509(NULL, &p, d->cert_len);
    p = d->key_der;
    d->key = d2i_AutoPrivateKey(NULL, &p, d->key_len);
    if (d->cert == NULL || d->key == NULL) {
        ssl_errors("parsing a device record");
        fatal("device %u of bench-devices.bin does not parse", d->idx);
    }
}

/* ---- requests ------------------------------------------------------------ */

static const char PL_HEAD[] =
    "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
    "<!DOCTYPE plist PUBLIC \"-//Apple//DTD PLIST 1.0//EN\" "
    "\"http://www.apple.com/DTDs/PropertyList-1.0.dtd\">\n"
    "<plist version=\"1.0\">\n<dict>\n";
static const char PL_TAIL[] = "</dict>\n</plist>\n";

static void pl_str(mdm_buf_t *b, const char *k, const char *v)
{
    mdm_buf_printf(b, "\t<key>%s</key>\n\t<string>%s</string>\n", k, v);
}

static void pl_data(mdm_buf_t *b, const char *k, const void *p, size_t n)
{
    mdm_buf_printf(b, "\t<key>%s</key>\n\t<data>", k);
    mdm_base64_encode(b, p, n);
    mdm_buf_puts(b, "</data>\n");
}

static void body_authenticate(mdm_buf_t *b, const device_t *d)
{
    char serial[32];
    snprintf(serial, sizeof(serial), "C0BE%08X", d->idx);
    mdm_buf_puts(b, PL_HEAD);
    pl_str(b, "MessageType", "Authenticate");
    pl_str(b, "Topic", TOPIC);
    pl_str(b, "UDID", d->udid);
    pl_str(b, "SerialNumber", serial);
    pl_str(b, "ProductName", "iPhone15,2");
    pl_str(b, "OSVersion", "17.5");
    pl_str(b, "BuildVersion", "21F79");
    pl_str(b, "DeviceName", "Bench iPhone");
    pl_str(b, "Model", "iPhone15,2");
    pl_str(b, "ModelName", "iPhone");
    mdm_buf_puts(b, PL_TAIL);
}

static void body_token_update(mdm_buf_t *b, const device_t *d)
{
    unsigned char token[32], unlock[16];
    char magic[37];
    mdm_random(token, sizeof(token));
    mdm_random(unlock, sizeof(unlock));
    mdm_uuid(magic);
    mdm_buf_puts(b, PL_HEAD);
    pl_str(b, "MessageType", "TokenUpdate");
    pl_str(b, "Topic", TOPIC);
    pl_str(b, "UDID", d->udid);
    pl_data(b, "Token", token, sizeof(token));
    pl_str(b, "PushMagic", magic);
    pl_data(b, "UnlockToken", unlock, sizeof(unlock));
    mdm_buf_puts(b, PL_TAIL);
}

static void body_idle(mdm_buf_t *b, const device_t *d)
{
    mdm_buf_puts(b, PL_HEAD);
    pl_str(b, "Status", "Idle");
    pl_str(b, "UDID", d->udid);
    mdm_buf_puts(b, PL_TAIL);
}

/* The answer to ProfileList (and, for the count, to any command). */
static void body_ack(mdm_buf_t *b, const device_t *d, const char *uuid)
{
    mdm_buf_puts(b, PL_HEAD);
    pl_str(b, "CommandUUID", uuid);
    mdm_buf_puts(b, "\t<key>ProfileList</key>\n\t<array/>\n");
    pl_str(b, "Status", "Acknowledged");
    pl_str(b, "UDID", d->udid);
    mdm_buf_puts(b, PL_TAIL);
}

/* Appends "Mdm-Signature: <base64 CMS>\r\n" for body, signed now. */
static void sign_header(mdm_buf_t *out, const device_t *d, const char *body, size_t len)
{
    BIO *in = BIO_new_mem_buf(body, (int)len);
    CMS_ContentInfo *cms = CMS_sign(d->cert, d->key, NULL, in,
                                    CMS_DETACHED | CMS_BINARY | CMS_NOSMIMECAP);
    unsigned char *der = NULL;
    int dl = cms ? i2d_CMS_ContentInfo(cms, &der) : -1;
    if (dl <= 0) {
        ssl_errors("CMS_sign");
        fatal("cannot sign a request body");
    }
    mdm_buf_puts(out, "Mdm-Signature: ");
    mdm_base64_encode(out, der, (size_t)dl);
    mdm_buf_puts(out, "\r\n");
    OPENSSL_free(der);
    CMS_ContentInfo_free(cms);
    BIO_free(in);
}

static int port_of(const slot_t *s)
{
    return s->tls ? G.port : G.plain_port;
}

/* Builds a PUT of an MDM body into s->out. */
static void build_put(slot_t *s, const char *path, const char *ctype, mdm_buf_t *body)
{
    mdm_buf_reset(&s->out);
    mdm_buf_printf(&s->out,
                   "PUT %s HTTP/1.1\r\nHost: %s:%d\r\nUser-Agent: MDM/1.0\r\n"
                   "Content-Type: %s\r\nContent-Length: %zu\r\n",
                   path, G.host, port_of(s), ctype, body->len);
    if (G.transport == T_SIG && !s->tls)
        sign_header(&s->out, s->dev, body->data, body->len);
    mdm_buf_puts(&s->out, "\r\n");
    mdm_buf_append(&s->out, body->data, body->len);
}

/* ---- connections --------------------------------------------------------- */

static void push_free(slot_t *s)
{
    if (s->in_free)
        return;
    s->in_free = true;
    G.free_slots[G.nfree++] = s;
}

static slot_t *pop_free(void)
{
    slot_t *s = G.free_slots[--G.nfree];
    s->in_free = false;
    return s;
}

static void slot_close(slot_t *s, int after, bool notify);
static void on_established(slot_t *s);
static void dispatch(void);
static void admin_maybe_post(void);
static void connect_slot(slot_t *s);
static void slot_setup_keepalive(slot_t *s);
static void cycle_aborted(slot_t *s);

static void count_error(slot_t *s, int kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void count_error(slot_t *s, int kind, const char *fmt, ...)
{
    G.all_errors++;
    if (G.measuring)
        G.errors[kind]++;
    if (G.error_lines < MAX_ERROR_LINES && !G.stopping) {
        G.error_lines++;
        va_list ap;
        va_start(ap, fmt);
        fprintf(stderr, "mdm_load: error (%s, slot %d, device %s): ", err_names[kind], s->id,
                s->dev ? s->dev->udid : "-");
        vfprintf(stderr, fmt, ap);
        fputc('\n', stderr);
        va_end(ap);
    }
}

static void on_write(uv_write_t *w, int status)
{
    (void)status;
    mdm_free(w);
}

static void raw_write(slot_t *s, const char *p, size_t n)
{
    uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
    int r = uv_try_write((uv_stream_t *)&s->tcp, &b, 1);
    if (r == (int)n)
        return;
    size_t done = r > 0 ? (size_t)r : 0;
    if (r < 0 && r != UV_EAGAIN) {
        count_error(s, E_CONN, "write: %s", uv_strerror(r));
        slot_close(s, AC_RECONNECT, false);
        return;
    }
    write_req_t *w = mdm_malloc(sizeof(*w) + n - done);
    w->len = n - done;
    memcpy(w->data, p + done, n - done);
    uv_buf_t wb = uv_buf_init(w->data, (unsigned)w->len);
    if (uv_write(&w->w, (uv_stream_t *)&s->tcp, &wb, 1, on_write) != 0)
        mdm_free(w);
}

static void flush_tls(slot_t *s)
{
    char buf[16384];
    int n;
    while ((n = BIO_read(s->wbio, buf, sizeof(buf))) > 0)
        raw_write(s, buf, (size_t)n);
}

static void send_bytes(slot_t *s, const char *p, size_t n)
{
    if (!s->tls) {
        raw_write(s, p, n);
        return;
    }
    int r = SSL_write(s->ssl, p, (int)n);
    if (r <= 0) {
        count_error(s, E_TLS, "SSL_write failed");
        slot_close(s, AC_RECONNECT, false);
        return;
    }
    flush_tls(s);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    (void)suggested;
    slot_t *s = h->data;
    *buf = uv_buf_init(s->readbuf, sizeof(s->readbuf));
}

/* ---- responses ----------------------------------------------------------- */

typedef struct resp {
    int status;
    const char *body;
    size_t body_len;
    bool close;
} resp_t;

static void handle_response(slot_t *s, const resp_t *r);

/* Finds the value of a header in a response head (case-insensitive). */
static const char *head_find(const char *head, size_t hlen, const char *name, size_t *vlen)
{
    size_t nl = strlen(name);
    const char *p = head, *end = head + hlen;
    while (p < end) {
        const char *eol = memchr(p, '\n', (size_t)(end - p));
        if (eol == NULL)
            eol = end;
        if ((size_t)(eol - p) > nl && strncasecmp(p, name, nl) == 0 && p[nl] == ':') {
            const char *v = p + nl + 1;
            while (v < eol && (*v == ' ' || *v == '\t'))
                v++;
            const char *ve = eol;
            while (ve > v && (ve[-1] == '\r' || ve[-1] == ' '))
                ve--;
            *vlen = (size_t)(ve - v);
            return v;
        }
        p = eol + 1;
    }
    return NULL;
}

/* Takes every complete response out of s->in. */
static void parse_responses(slot_t *s)
{
    for (;;) {
        if (s->state == ST_CLOSING || s->state == ST_FREE)
            return;
        if (s->in.len < 12)
            return;
        const char *hend = memmem(s->in.data, s->in.len, "\r\n\r\n", 4);
        if (hend == NULL)
            return;
        size_t hlen = (size_t)(hend - s->in.data) + 4;
        if (strncmp(s->in.data, "HTTP/1.", 7) != 0) {
            count_error(s, E_PROTO, "not an HTTP response");
            slot_close(s, AC_RECONNECT, false);
            return;
        }
        resp_t r = {.status = atoi(s->in.data + 9)};
        size_t vl = 0;
        const char *cl = head_find(s->in.data, hlen, "Content-Length", &vl);
        size_t blen = cl ? strtoul(cl, NULL, 10) : 0;
        if (s->in.len < hlen + blen)
            return;
        const char *conn = head_find(s->in.data, hlen, "Connection", &vl);
        r.close = conn != NULL && vl == 5 && strncasecmp(conn, "close", 5) == 0;
        r.body = s->in.data + hlen;
        r.body_len = blen;
        /* Nothing is read while the response is handled (reads come from
         * the loop), so the body stays put until it is consumed. */
        handle_response(s, &r);
        mdm_buf_consume(&s->in, hlen + blen);
    }
}

static void tls_pump(slot_t *s)
{
    if (!s->hs_done) {
        int r = SSL_do_handshake(s->ssl);
        if (r != 1) {
            int e = SSL_get_error(s->ssl, r);
            flush_tls(s);
            if (e == SSL_ERROR_WANT_READ)
                return;
            unsigned long le = ERR_peek_error();
            char eb[256] = "";
            if (le)
                ERR_error_string_n(le, eb, sizeof(eb));
            ERR_clear_error();
            count_error(s, E_TLS, "handshake failed: %s", eb);
            slot_close(s, AC_RECONNECT, false);
            return;
        }
        s->hs_done = true;
        flush_tls(s);
        uint64_t t = now_ns();
        if (G.measuring && !s->admin) {
            G.handshakes++;
            samples_add(&G.lat_hs, (double)(t - s->conn_start_ns) / 1e6);
        }
        on_established(s);
        if (s->state == ST_CLOSING || s->state == ST_FREE)
            return;
    }
    char buf[16384];
    for (;;) {
        int r = SSL_read(s->ssl, buf, sizeof(buf));
        if (r > 0) {
            mdm_buf_append(&s->in, buf, (size_t)r);
            continue;
        }
        int e = SSL_get_error(s->ssl, r);
        if (e == SSL_ERROR_WANT_READ)
            break;
        ERR_clear_error();
        if (e == SSL_ERROR_ZERO_RETURN) {
            if (s->state == ST_BUSY)
                count_error(s, E_CONN, "server closed the connection (close_notify)");
            slot_close(s, AC_RECONNECT, false);
        } else {
            count_error(s, E_TLS, "SSL_read error %d", e);
            slot_close(s, AC_RECONNECT, false);
        }
        return;
    }
    flush_tls(s);
    parse_responses(s);
}

static void on_read(uv_stream_t *st, ssize_t n, const uv_buf_t *buf)
{
    slot_t *s = st->data;
    (void)buf;
    if (n == 0)
        return;
    if (n < 0) {
        if (s->state == ST_BUSY || (s->state == ST_CONNECTING && !G.stopping))
            count_error(s, E_CONN, "read: %s", uv_strerror((int)n));
        slot_close(s, AC_RECONNECT, false);
        return;
    }
    if (s->tls) {
        if (BIO_write(s->rbio, s->readbuf, (int)n) != (int)n) {
            count_error(s, E_TLS, "BIO_write failed");
            slot_close(s, AC_RECONNECT, false);
            return;
        }
        tls_pump(s);
    } else {
        mdm_buf_append(&s->in, s->readbuf, (size_t)n);
        parse_responses(s);
    }
}

static void on_connect(uv_connect_t *req, int status)
{
    slot_t *s = req->data;
    if (s->state != ST_CONNECTING)
        return;
    if (status != 0) {
        count_error(s, E_CONN, "connect: %s", uv_strerror(status));
        slot_close(s, AC_RECONNECT, false);
        return;
    }
    uv_read_start((uv_stream_t *)&s->tcp, on_alloc, on_read);
    if (!s->tls) {
        s->hs_done = true;
        on_established(s);
        return;
    }
    s->ssl = SSL_new(G.ctx);
    s->rbio = BIO_new(BIO_s_mem());
    s->wbio = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(s->rbio, -1);
    SSL_set_bio(s->ssl, s->rbio, s->wbio);
    SSL_set_tlsext_host_name(s->ssl, "localhost");
    if (!s->admin && s->dev != NULL) {
        if (SSL_use_certificate(s->ssl, s->dev->cert) != 1 ||
            SSL_use_PrivateKey(s->ssl, s->dev->key) != 1) {
            ssl_errors("SSL_use_certificate");
            fatal("cannot use the certificate of device %s", s->dev->udid);
        }
    }
    SSL_set_connect_state(s->ssl);
    tls_pump(s);
}

/* Opens the slot's connection (for its device, if any). */
static void connect_slot(slot_t *s)
{
    struct sockaddr_in addr;
    s->tls = s->admin || G.transport == T_MTLS || G.mode == M_ENROLL;
    if (uv_ip4_addr(G.host, port_of(s), &addr) != 0)
        fatal("bad address %s", G.host);
    if (s->dev)
        device_load(s->dev);
    uv_tcp_init(G.loop, &s->tcp);
    G.open_handles++;
    s->tcp.data = s;
    uv_tcp_nodelay(&s->tcp, 1);
    s->state = ST_CONNECTING;
    s->hs_done = false;
    s->cycles_on_conn = 0;
    s->conn_start_ns = s->op_start_ns = now_ns();
    s->connect_req.data = s;
    int r = uv_tcp_connect(&s->connect_req, &s->tcp, (const struct sockaddr *)&addr, on_connect);
    if (r != 0) {
        count_error(s, E_CONN, "connect: %s", uv_strerror(r));
        slot_close(s, AC_RECONNECT, false);
    }
}

/* Gives a slot's device back: to the free devices, or to the enqueue list. */
static void release_device(slot_t *s)
{
    device_t *d = s->dev;
    if (d == NULL)
        return;
    d->slot = NULL;
    s->dev = NULL;
    if (G.mode == M_ENROLL)
        return;
    if (d->queued)
        ring_push(&G.fifo, d->idx);
    /* Otherwise the enqueue that refills it puts it back. */
}

static void on_closed(uv_handle_t *h)
{
    slot_t *s = h->data;
    G.open_handles--;
    if (s->ssl) {
        SSL_free(s->ssl);
        s->ssl = NULL;
        s->rbio = s->wbio = NULL;
    }
    mdm_buf_reset(&s->in);
    s->state = ST_FREE;
    s->hs_done = false;
    int after = s->after_close;
    s->after_close = AC_NONE;
    if (s->cycle_started && !s->admin && !G.stopping) {
        /* The connection went away in the middle of a cycle. */
        s->cycle_started = false;
        cycle_aborted(s);
    }
    if (G.stopping) {
        if (!s->admin && s->dev) {
            s->dev->slot = NULL;
            s->dev = NULL;
        }
        if (G.open_handles == 0 && G.done)
            uv_stop(G.loop);
        return;
    }
    if (s->admin) {
        /* A POST lost with the connection: put its devices back in line. */
        for (size_t i = 0; i < s->nbatch; i++) {
            G.drained[G.ndrained++] = s->batch[i];
        }
        s->nbatch = 0;
        connect_slot(s);
        return;
    }
    if (after == AC_RECONNECT && s->dev != NULL && !G.new_conn && G.mode != M_ENROLL) {
        connect_slot(s);
        return;
    }
    release_device(s);
    if (G.new_conn || G.mode == M_ENROLL) {
        push_free(s);
    } else {
        slot_setup_keepalive(s);
    }
    dispatch();
}

/* Closes the slot's connection; what follows is chosen by after. */
static void slot_close(slot_t *s, int after, bool notify)
{
    if (s->state == ST_CLOSING || s->state == ST_FREE)
        return;
    if (notify && s->tls && s->hs_done && s->ssl) {
        SSL_shutdown(s->ssl);
        flush_tls(s);
    }
    s->state = ST_CLOSING;
    s->after_close = after;
    uv_read_stop((uv_stream_t *)&s->tcp);
    uv_close((uv_handle_t *)&s->tcp, on_closed);
}

/* ---- cycles -------------------------------------------------------------- */

static void start_request(slot_t *s)
{
    s->state = ST_BUSY;
    s->req_start_ns = s->req_sent_ns = s->op_start_ns = now_ns();
    s->requests_in_cycle++;
    send_bytes(s, s->out.data, s->out.len);
}

/* Sends the first request of a cycle on an established connection. */
static void cycle_first_request(slot_t *s)
{
    mdm_buf_t body = MDM_BUF_INIT;
    s->step = 0;
    s->requests_in_cycle = 0;
    switch (G.mode) {
    case M_ENROLL:
        body_authenticate(&body, s->dev);
        build_put(s, "/mdm/checkin", "application/x-apple-aspen-mdm-checkin", &body);
        break;
    case M_HEALTHZ:
        mdm_buf_reset(&s->out);
        mdm_buf_printf(&s->out, "GET /healthz HTTP/1.1\r\nHost: %s:%d\r\n\r\n", G.host,
                       port_of(s));
        break;
    default:
        body_idle(&body, s->dev);
        build_put(s, "/mdm/connect", "application/x-apple-aspen-mdm", &body);
        break;
    }
    mdm_buf_free(&body);
    start_request(s);
    /* The first request of an open-loop cycle counts from its scheduled
     * start (a wait for a free connection is latency too). */
    if (G.rate > 0 && !G.new_conn)
        s->req_start_ns = s->cycle_start_ns;
}

/* Begins a cycle on a slot; sched is its (scheduled) start. */
static void cycle_begin(slot_t *s, uint64_t sched)
{
    s->cycle_start_ns = sched;
    s->cycle_started = true;
    if (G.rate > 0 && G.measuring && now_ns() - sched > 1000000)
        G.late_starts++;
    s->cycle_failed = false;
    s->cmds_in_cycle = 0;
    if (G.new_conn || G.mode == M_ENROLL) {
        /* Take the next device and open a connection for it. */
        uint32_t idx = (uint32_t)ring_pop(&G.fifo);
        s->dev = &G.devs[idx];
        s->dev->slot = s;
        connect_slot(s);
        return;
    }
    cycle_first_request(s);
}

static void record_request(slot_t *s, uint64_t t)
{
    if (!G.measuring || s->admin)
        return;
    G.requests++;
    samples_add(&G.lat_req, (double)(t - s->req_start_ns) / 1e6);
    if (G.rate > 0)
        samples_add(&G.lat_svc, (double)(t - s->req_sent_ns) / 1e6);
}

static void check_window_end(void);

/* A cycle cut short by a lost connection or a time-out. */
static void cycle_aborted(slot_t *s)
{
    if (G.mode == M_ENROLL) {
        G.enroll_failed++;
        check_window_end();
        return;
    }
    device_t *d = s->dev;
    if (G.mode == M_COMMAND && d != NULL && !d->draining) {
        d->queued = false;
        d->draining = true;
        G.drained[G.ndrained++] = d->idx;
        admin_maybe_post();
    }
}

/* The cycle of s is over (ok or not); the slot moves on. */
static void cycle_end(slot_t *s, bool ok)
{
    uint64_t t = now_ns();
    s->cycle_started = false;
    s->state = ST_READY;
    s->cycles_on_conn++;
    if (ok) {
        G.all_cycles++;
        if (G.measuring) {
            G.cycles++;
            if (s->cmds_in_cycle > 0)
                G.cmd_cycles++;
            samples_add(&G.lat_cycle, (double)(t - s->cycle_start_ns) / 1e6);
        }
    }
    if (G.mode == M_ENROLL) {
        if (ok)
            G.enroll_done++;
        else
            G.enroll_failed++;
    }
    device_t *d = s->dev;
    if (G.mode == M_COMMAND && d != NULL) {
        /* Its command was consumed (or the cycle failed): enqueue again. */
        d->queued = false;
        if (!d->draining) {
            d->draining = true;
            G.drained[G.ndrained++] = d->idx;
        }
        admin_maybe_post();
    }
    check_window_end();
    if (G.stopping)
        return;
    if (G.new_conn || G.mode == M_ENROLL) {
        slot_close(s, AC_FREE, true);
        return;
    }
    if (G.rotate > 0 && s->cycles_on_conn >= G.rotate) {
        slot_close(s, AC_NEWDEV, true);
        return;
    }
    if (d != NULL && d->queued)
        push_free(s);
    /* Otherwise the bulk enqueue makes the slot free again. */
    dispatch();
}

static bool find_command_uuid(const char *body, size_t len, char out[40])
{
    const char *k = memmem(body, len, "<key>CommandUUID</key>", 22);
    if (k == NULL)
        return false;
    const char *end = body + len;
    const char *v = memmem(k, (size_t)(end - k), "<string>", 8);
    if (v == NULL)
        return false;
    v += 8;
    const char *ve = memmem(v, (size_t)(end - v), "</string>", 9);
    if (ve == NULL || ve - v > 39 || ve == v)
        return false;
    memcpy(out, v, (size_t)(ve - v));
    out[ve - v] = '\0';
    return true;
}

static void admin_response(slot_t *s, const resp_t *r);

static void handle_response(slot_t *s, const resp_t *r)
{
    uint64_t t = now_ns();
    if (s->admin) {
        admin_response(s, r);
        return;
    }
    if (s->state != ST_BUSY) {
        count_error(s, E_PROTO, "a response nobody asked for (status %d)", r->status);
        slot_close(s, AC_RECONNECT, false);
        return;
    }
    record_request(s, t);
    if (r->status != 200) {
        count_error(s, E_HTTP, "HTTP %d to request %d of the cycle: %.*s", r->status,
                    s->requests_in_cycle, (int)(r->body_len > 200 ? 200 : r->body_len),
                    r->body);
        bool close = r->close;
        cycle_end(s, false);
        if (close && s->state == ST_READY)
            slot_close(s, AC_RECONNECT, false);
        return;
    }
    mdm_buf_t body = MDM_BUF_INIT;
    char uuid[40];
    switch (G.mode) {
    case M_ENROLL:
        if (s->step == 0) {
            s->step = 1;
            body_token_update(&body, s->dev);
            build_put(s, "/mdm/checkin", "application/x-apple-aspen-mdm-checkin", &body);
            mdm_buf_free(&body);
            start_request(s);
            return;
        }
        cycle_end(s, true);
        break;
    case M_HEALTHZ:
        cycle_end(s, true);
        break;
    default:
        if (r->body_len == 0) {
            cycle_end(s, true);
            break;
        }
        if (!find_command_uuid(r->body, r->body_len, uuid)) {
            count_error(s, E_PROTO, "a 200 body without CommandUUID: %.*s",
                        (int)(r->body_len > 200 ? 200 : r->body_len), r->body);
            cycle_end(s, false);
            break;
        }
        s->cmds_in_cycle++;
        body_ack(&body, s->dev, uuid);
        build_put(s, "/mdm/connect", "application/x-apple-aspen-mdm", &body);
        mdm_buf_free(&body);
        start_request(s);
        return;
    }
    if (r->close && s->state == ST_READY)
        slot_close(s, AC_RECONNECT, false);
}

/* The connection of s is ready for requests (TLS handshake done). */
static void on_established(slot_t *s)
{
    s->state = ST_READY;
    if (s->admin) {
        admin_maybe_post();
        return;
    }
    if (G.new_conn || G.mode == M_ENROLL) {
        /* The cycle began before the connection. */
        cycle_first_request(s);
        return;
    }
    if (s->dev->queued)
        push_free(s);
    dispatch();
}

/* Keep-alive: gives a slot without a device the next free one and
 * connects, or parks it until a device is free. */
static void slot_setup_keepalive(slot_t *s)
{
    if (G.fifo.n == 0) {
        G.needdev[G.nneeddev++] = s;
        return;
    }
    uint32_t idx = (uint32_t)ring_pop(&G.fifo);
    s->dev = &G.devs[idx];
    s->dev->slot = s;
    connect_slot(s);
}

/* Starts what can start: cycles on free slots (closed loop: at once; open
 * loop: one per arrival waiting in the backlog). */
static void dispatch(void)
{
    if (G.stopping)
        return;
    while (G.nneeddev > 0 && G.fifo.n > 0)
        slot_setup_keepalive(G.needdev[--G.nneeddev]);
    while (G.nfree > 0) {
        if ((G.new_conn || G.mode == M_ENROLL) && G.fifo.n == 0)
            break;
        uint64_t sched;
        if (G.rate > 0) {
            if (G.backlog.n == 0)
                break;
            sched = ring_pop(&G.backlog);
        } else {
            sched = now_ns();
        }
        slot_t *s = pop_free();
        cycle_begin(s, sched);
        if (G.stopping)
            return;
    }
}

/* ---- bulk enqueue (admin API) ------------------------------------------- */

static void admin_maybe_post(void);

static void on_post_gap(uv_timer_t *t)
{
    (void)t;
    G.post_gap_armed = false;
    admin_maybe_post();
}

static void admin_maybe_post(void)
{
    slot_t *s = &G.admin;
    if (!G.use_admin || s->state != ST_READY || G.ndrained == 0 || G.stopping)
        return;
    if (G.rate > 0) {
        uint64_t now = now_ns(), due = G.last_post_ns + (uint64_t)POST_GAP_MS * 1000000u;
        if (now < due) {
            if (!G.post_gap_armed) {
                G.post_gap_armed = true;
                uv_timer_start(&G.post_gap, on_post_gap, (due - now) / 1000000u + 1, 0);
            }
            return;
        }
        G.last_post_ns = now;
    }
    size_t n = G.ndrained > MAX_TARGETS_PER_POST ? MAX_TARGETS_PER_POST : G.ndrained;
    mdm_buf_t body = MDM_BUF_INIT;
    mdm_buf_puts(&body, "{\"request_type\":\"ProfileList\",\"nopush\":true,\"targets\":[");
    s->batch = mdm_realloc(s->batch, n * sizeof(uint32_t));
    for (size_t i = 0; i < n; i++) {
        uint32_t idx = G.drained[G.ndrained - n + i];
        s->batch[i] = idx;
        mdm_buf_printf(&body, "%s\"%s\"", i ? "," : "", G.devs[idx].udid);
    }
    G.ndrained -= n;
    s->nbatch = n;
    mdm_buf_puts(&body, "]}");
    mdm_buf_reset(&s->out);
    mdm_buf_printf(&s->out,
                   "POST /v1/commands HTTP/1.1\r\nHost: %s:%d\r\nAuthorization: Bearer %s\r\n"
                   "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n",
                   G.host, G.port, G.api_key, body.len);
    mdm_buf_append(&s->out, body.data, body.len);
    mdm_buf_free(&body);
    s->state = ST_BUSY;
    s->req_start_ns = s->op_start_ns = now_ns();
    send_bytes(s, s->out.data, s->out.len);
}

static void admin_response(slot_t *s, const resp_t *r)
{
    uint64_t t = now_ns();
    if (r->status != 201 && r->status != 207)
        fatal("POST /v1/commands: HTTP %d: %.*s", r->status,
              (int)(r->body_len > 500 ? 500 : r->body_len), r->body);
    if (G.measuring) {
        G.posts++;
        G.post_targets += s->nbatch;
        samples_add(&G.lat_post, (double)(t - s->req_start_ns) / 1e6);
    }
    for (size_t i = 0; i < s->nbatch; i++) {
        device_t *d = &G.devs[s->batch[i]];
        d->queued = true;
        d->draining = false;
        if (d->slot != NULL) {
            if (d->slot->state == ST_READY)
                push_free(d->slot);
        } else {
            ring_push(&G.fifo, d->idx);
        }
    }
    s->nbatch = 0;
    s->state = ST_READY;
    if (r->close) {
        slot_close(s, AC_RECONNECT, false);
        return;
    }
    admin_maybe_post();
    dispatch();
}

/* ---- timing -------------------------------------------------------------- */

static void print_report(void);

static void stop_all(void)
{
    if (G.stopping)
        return;
    G.stopping = true;
    G.measuring = false;
    uv_timer_stop(&G.tick);
    uv_timer_stop(&G.post_gap);
    if (G.rate > 0)
        uv_poll_stop(&G.arrive);
    for (int i = 0; i < G.nconn; i++) {
        slot_t *s = &G.slots[i];
        slot_close(s, AC_NONE, false);
    }
    if (G.use_admin && G.admin.state != ST_FREE && G.admin.state != ST_CLOSING)
        slot_close(&G.admin, AC_NONE, false);
    G.done = true;
    uv_close((uv_handle_t *)&G.tick, NULL);
    uv_close((uv_handle_t *)&G.post_gap, NULL);
    uv_close((uv_handle_t *)&G.arrive, NULL);
    uv_close((uv_handle_t *)&G.sigint, NULL);
    if (G.open_handles == 0)
        uv_stop(G.loop);
}

static void end_window(void)
{
    if (!G.measuring)
        return;
    G.tm_end_ns = now_ns();
    print_report();
    stop_all();
}

static void check_window_end(void)
{
    if (G.mode == M_ENROLL) {
        if (G.enroll_done + G.enroll_failed >= G.enroll_to - G.enroll_from) {
            G.tm_end_ns = now_ns();
            G.measuring = true;
            print_report();
            stop_all();
        }
        return;
    }
    if (G.measuring && G.count > 0 && G.cycles >= G.count)
        end_window();
}

static void begin_window(void)
{
    G.measuring = true;
    G.tm_start_ns = now_ns();
    G.server_cpu0 = G.pid > 0 ? proc_cpu(G.pid) : -1;
    G.client_cpu0 = self_cpu();
    G.core0_busy0 = core_busy(0);
    G.core1_busy0 = core_busy(1);
    G.server_wb0 = G.pid > 0 ? proc_write_bytes(G.pid) : -1;
    G.disk_wb0 = disk_written_bytes();
}

static void on_tick(uv_timer_t *t)
{
    (void)t;
    uint64_t now = now_ns();
    double el = (double)(now - G.t0_ns) / 1e9;
    if (G.mode != M_ENROLL) {
        /* Open loop: the window also waits for the backlog of the warm-up
         * (cycles that found no free connection) to drain, so that a
         * stall at the start (every connection's handshake at once, the
         * first bulk enqueue) is not counted as the steady state's
         * latency; at most SETTLE_MAX_S more. warmup_s reports when the
         * window began. */
        bool settled = G.rate == 0 || G.backlog.n == 0 || el >= G.warmup + SETTLE_MAX_S;
        if (!G.measuring && el >= G.warmup && settled && !G.stopping) {
            G.warmup_done = el;
            begin_window();
            return;
        }
        if (G.measuring && G.duration > 0 && now > G.tm_start_ns &&
            (double)(now - G.tm_start_ns) / 1e9 >= G.duration) {
            end_window();
            return;
        }
    }
    /* Time-outs: a connect or request that takes too long. */
    uint64_t limit = (uint64_t)(G.timeout * 1e9);
    for (int i = 0; i < G.nconn; i++) {
        slot_t *s = &G.slots[i];
        if ((s->state == ST_BUSY || s->state == ST_CONNECTING) && now - s->op_start_ns > limit) {
            count_error(s, E_TIMEOUT, "no answer in %.1f s (state %d)", G.timeout, s->state);
            slot_close(s, AC_RECONNECT, false);
        }
    }
    if (G.progress && (uint64_t)(el * 10) % 10 == 0) {
        fprintf(stderr, "mdm_load: t=%.0fs cycles=%llu errors=%llu backlog=%zu\n", el,
                (unsigned long long)G.all_cycles, (unsigned long long)G.all_errors,
                G.backlog.n);
    }
}

/* Open loop: issue the arrivals due by now, woken by a timerfd every
 * ARRIVE_US. It was a busy loop (uv_idle), and /healthz at 12,000/s over
 * 1,000 connections then had a p99 of 80-97 ms with the server 80 % idle
 * (1.1 ms at 3,000/s): the spinning core delivered some loopback packets
 * tens of milliseconds late. With a 500 us tick: 0.75-1.4 ms. (A 200 us
 * tick gave 87 ms once, 1 ms ticks 2.1-2.4 ms.) Starts are up to about
 * ARRIVE_US late, in small bursts; latency still counts from the scheduled
 * start. */
static void on_arrive(uv_poll_t *h, int status, int events)
{
    (void)h;
    (void)status;
    (void)events;
    uint64_t ticks;
    if (read(G.arrive_fd, &ticks, sizeof(ticks)) < 0 && errno != EAGAIN)
        fatal("timerfd read: %s", strerror(errno));
    uint64_t now = now_ns();
    double el = (double)(now - G.t0_ns) / 1e9;
    uint64_t due = (uint64_t)(el * G.rate);
    bool any = false;
    while (G.arrivals < due) {
        uint64_t sched = G.t0_ns + (uint64_t)((double)G.arrivals / G.rate * 1e9);
        ring_push(&G.backlog, sched);
        G.arrivals++;
        any = true;
    }
    if (any) {
        dispatch();
        if (G.measuring && G.backlog.n > G.backlog_max)
            G.backlog_max = G.backlog.n;
    }
}

static void on_sigint(uv_signal_t *h, int sig)
{
    (void)h;
    (void)sig;
    fprintf(stderr, "mdm_load: interrupted\n");
    if (G.measuring)
        end_window();
    else
        stop_all();
}

/* ---- report -------------------------------------------------------------- */

static void print_report(void)
{
    double secs = (double)(G.tm_end_ns - G.tm_start_ns) / 1e9;
    if (G.mode == M_ENROLL)
        secs = (double)(G.tm_end_ns - G.enroll_start_ns) / 1e9;
    double scpu = G.pid > 0 && G.server_cpu0 >= 0 ? proc_cpu(G.pid) - G.server_cpu0 : -1;
    double ccpu = self_cpu() - G.client_cpu0;
    samples_t *all[] = {&G.lat_req, &G.lat_cycle, &G.lat_hs, &G.lat_post, &G.lat_svc};
    for (size_t i = 0; i < 5; i++)
        if (all[i]->n > 0)
            qsort(all[i]->v, all[i]->n, sizeof(double), cmp_double);
    static const char *const mode_names[] = {"idle", "command", "healthz", "enroll"};
    uint64_t errs = 0;
    for (int k = 0; k < E__COUNT; k++)
        errs += G.errors[k];
    printf("label=%s mode=%s transport=%s conn=%s devices=%u connections=%d rotate=%d",
           G.label ? G.label : "-", mode_names[G.mode], G.transport == T_SIG ? "sig" : "mtls",
           G.new_conn ? "new" : "keepalive", G.ndev, G.nconn, G.rotate);
    if (G.rate > 0)
        printf(" target_rate=%.0f", G.rate);
    printf(" secs=%.2f", secs);
    if (G.mode == M_ENROLL) {
        printf(" enrolled=%u failed=%u enroll_per_s=%.1f", G.enroll_done, G.enroll_failed,
               (double)G.enroll_done / secs);
    }
    printf(" cycles=%llu cycles_per_s=%.1f cmd_cycles=%llu requests=%llu req_per_s=%.1f",
           (unsigned long long)G.cycles, (double)G.cycles / secs,
           (unsigned long long)G.cmd_cycles, (unsigned long long)G.requests,
           (double)G.requests / secs);
    printf(" errors=%llu", (unsigned long long)errs);
    for (int k = 0; k < E__COUNT; k++)
        if (G.errors[k])
            printf(" errors_%s=%llu", err_names[k], (unsigned long long)G.errors[k]);
    printf(" p50_ms=%.3f p90_ms=%.3f p99_ms=%.3f p999_ms=%.3f max_ms=%.3f", pct(&G.lat_req, 50),
           pct(&G.lat_req, 90), pct(&G.lat_req, 99), pct(&G.lat_req, 99.9),
           pct(&G.lat_req, 100));
    printf(" cycle_p50_ms=%.3f cycle_p99_ms=%.3f cycle_max_ms=%.3f", pct(&G.lat_cycle, 50),
           pct(&G.lat_cycle, 99), pct(&G.lat_cycle, 100));
    if (G.lat_hs.n)
        printf(" handshakes=%llu hs_p50_ms=%.3f hs_p99_ms=%.3f",
               (unsigned long long)G.handshakes, pct(&G.lat_hs, 50), pct(&G.lat_hs, 99));
    if (G.posts)
        printf(" posts=%llu post_targets=%llu post_p50_ms=%.3f post_max_ms=%.3f",
               (unsigned long long)G.posts, (unsigned long long)G.post_targets,
               pct(&G.lat_post, 50), pct(&G.lat_post, 100));
    if (G.rate > 0)
        printf(" warmup_s=%.2f backlog_max=%zu late_starts=%llu svc_p50_ms=%.3f svc_p99_ms=%.3f"
               " svc_max_ms=%.3f",
               G.warmup_done, G.backlog_max, (unsigned long long)G.late_starts,
               pct(&G.lat_svc, 50), pct(&G.lat_svc, 99), pct(&G.lat_svc, 100));
    if (scpu >= 0)
        printf(" server_cpu_s=%.2f server_cpu_util=%.3f server_cpu_ms_per_req=%.4f"
               " server_cpu_ms_per_cycle=%.4f",
               scpu, scpu / secs, G.requests ? scpu * 1e3 / (double)G.requests : 0,
               G.cycles ? scpu * 1e3 / (double)G.cycles : 0);
    double wb = G.pid > 0 && G.server_wb0 >= 0 ? proc_write_bytes(G.pid) - G.server_wb0 : -1;
    if (wb >= 0 && G.requests > 0)
        printf(" server_write_kb_per_req=%.2f", wb / 1024.0 / (double)G.requests);
    double dw = G.disk_wb0 >= 0 ? disk_written_bytes() - G.disk_wb0 : -1;
    if (dw >= 0 && G.requests > 0)
        printf(" disk_write_kb_per_req=%.2f", dw / 1024.0 / (double)G.requests);
    printf(" client_cpu_util=%.3f", ccpu / secs);
    /* How busy the two cores were, all processes: core0 - server and
     * core1 - client is what other processes took (server on core 0,
     * client on core 1 when pinned as mdm_bench.sh does). */
    double b0 = core_busy(0), b1 = core_busy(1);
    if (b0 >= 0 && G.core0_busy0 >= 0)
        printf(" core0_busy=%.3f core1_busy=%.3f", (b0 - G.core0_busy0) / secs,
               (b1 - G.core1_busy0) / secs);
    putchar('\n');
    fflush(stdout);
}

/* ---- set-up -------------------------------------------------------------- */

static void usage(void)
{
    fputs("usage: mdm_load --data-dir DIR [options]\n"
          "  --host ADDR          server address (127.0.0.1)\n"
          "  --port N             TLS port (mTLS device connections, admin API)\n"
          "  --plain-port N       plain HTTP port (--transport sig)\n"
          "  --devices N          devices to use (1000)\n"
          "  --enroll             enroll the devices not enrolled yet, then run\n"
          "  --enroll-only        enroll the devices not enrolled yet and exit\n"
          "  --reenroll           enroll all N again\n"
          "  --mode M             idle | command | healthz (idle)\n"
          "  --transport T        mtls | sig (mtls; sig: plain listener + Mdm-Signature)\n"
          "  --conn C             keepalive | new (keepalive)\n"
          "  --connections N      concurrent connections (100)\n"
          "  --rotate R           keep-alive: new device and handshake after R cycles (0: never)\n"
          "  --window N           command mode with new/rotate: devices in circulation (4*conns)\n"
          "  --warmup S           seconds before measuring (2)\n"
          "  --duration S         seconds measured (10)\n"
          "  --count N            stop after N cycles measured\n"
          "  --rate R             open loop: start R cycles per second\n"
          "  --api-key KEY        admin API key (command mode; or MOONMDM_API_KEY)\n"
          "  --pid PID            server pid, for its CPU time per request\n"
          "  --timeout S          a request or connect failing after S seconds (10)\n"
          "  --label TEXT         label of the output line\n"
          "  --progress           a progress line every second on stderr\n",
          stderr);
    exit(2);
}

static void parse_args(int argc, char **argv)
{
    G.host = "127.0.0.1";
    G.ndev = 1000;
    G.nconn = 100;
    G.warmup = 2;
    G.duration = 10;
    G.timeout = 10;
    G.mode = M_IDLE;
    G.api_key = getenv("MOONMDM_API_KEY");
    static const struct option opts[] = {
        {"data-dir", required_argument, NULL, 'd'}, {"host", required_argument, NULL, 'H'},
        {"port", required_argument, NULL, 'p'}, {"plain-port", required_argument, NULL, 'P'},
        {"devices", required_argument, NULL, 'n'}, {"enroll", no_argument, NULL, 'e'},
        {"enroll-only", no_argument, NULL, 'E'}, {"reenroll", no_argument, NULL, 'R'},
        {"mode", required_argument, NULL, 'm'}, {"transport", required_argument, NULL, 't'},
        {"conn", required_argument, NULL, 'c'}, {"connections", required_argument, NULL, 'C'},
        {"rotate", required_argument, NULL, 'r'}, {"window", required_argument, NULL, 'W'},
        {"warmup", required_argument, NULL, 'w'}, {"duration", required_argument, NULL, 'D'},
        {"count", required_argument, NULL, 'N'}, {"rate", required_argument, NULL, 'a'},
        {"api-key", required_argument, NULL, 'k'}, {"pid", required_argument, NULL, 'i'},
        {"timeout", required_argument, NULL, 'T'}, {"label", required_argument, NULL, 'l'},
        {"progress", no_argument, NULL, 'g'}, {"help", no_argument, NULL, 'h'},
        {NULL, 0, NULL, 0}};
    int c;
    while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
        switch (c) {
        case 'd': G.data_dir = optarg; break;
        case 'H': G.host = optarg; break;
        case 'p': G.port = atoi(optarg); break;
        case 'P': G.plain_port = atoi(optarg); break;
        case 'n': G.ndev = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'e': G.enroll = true; break;
        case 'E': G.enroll = G.enroll_only = true; break;
        case 'R': G.enroll = G.reenroll = true; break;
        case 'm':
            if (strcmp(optarg, "idle") == 0)
                G.mode = M_IDLE;
            else if (strcmp(optarg, "command") == 0)
                G.mode = M_COMMAND;
            else if (strcmp(optarg, "healthz") == 0)
                G.mode = M_HEALTHZ;
            else
                usage();
            break;
        case 't':
            if (strcmp(optarg, "mtls") == 0)
                G.transport = T_MTLS;
            else if (strcmp(optarg, "sig") == 0)
                G.transport = T_SIG;
            else
                usage();
            break;
        case 'c':
            if (strcmp(optarg, "new") == 0)
                G.new_conn = true;
            else if (strcmp(optarg, "keepalive") == 0)
                G.new_conn = false;
            else
                usage();
            break;
        case 'C': G.nconn = atoi(optarg); break;
        case 'r': G.rotate = atoi(optarg); break;
        case 'W': G.window = (uint32_t)strtoul(optarg, NULL, 10); break;
        case 'w': G.warmup = atof(optarg); break;
        case 'D': G.duration = atof(optarg); break;
        case 'N': G.count = strtoull(optarg, NULL, 10); break;
        case 'a': G.rate = atof(optarg); break;
        case 'k': G.api_key = optarg; break;
        case 'i': G.pid = atoi(optarg); break;
        case 'T': G.timeout = atof(optarg); break;
        case 'l': G.label = optarg; break;
        case 'g': G.progress = true; break;
        default: usage();
        }
    }
    if (G.data_dir == NULL || G.ndev == 0 || G.nconn <= 0)
        usage();
    if (G.port == 0 && (G.transport == T_MTLS || G.enroll || G.mode == M_COMMAND))
        fatal("--port is needed");
    if (G.transport == T_SIG && G.plain_port == 0)
        fatal("--transport sig needs --plain-port");
    if (G.mode == M_COMMAND && (G.api_key == NULL || G.api_key[0] == '\0'))
        fatal("--mode command needs --api-key (or MOONMDM_API_KEY)");
    if (!G.new_conn && G.rotate == 0 && (uint32_t)G.nconn > G.ndev)
        fatal("keep-alive without --rotate needs --connections <= --devices");
}

static void make_ctx(void)
{
    G.ctx = SSL_CTX_new(TLS_client_method());
    SSL_CTX_set_min_proto_version(G.ctx, TLS1_2_VERSION);
    char *ca = mdm_sprintf("%s/ca.crt", G.data_dir);
    if (SSL_CTX_load_verify_locations(G.ctx, ca, NULL) != 1) {
        ssl_errors("loading ca.crt");
        fatal("cannot load %s", ca);
    }
    mdm_free(ca);
    SSL_CTX_set_verify(G.ctx, SSL_VERIFY_PEER, NULL);
    /* Every handshake is a full one: no resumption. */
    SSL_CTX_set_session_cache_mode(G.ctx, SSL_SESS_CACHE_OFF);
    SSL_CTX_set_options(G.ctx, SSL_OP_NO_TICKET);
}

/* Consecutive picks k = 0, 1, 2, ... spread over the population: k times
 * a stride coprime with n, modulo n (a permutation of 0..n-1). */
static uint32_t spread(uint64_t k, uint32_t n)
{
    uint64_t stride = 2654435761u % n;
    for (;; stride++) {
        uint64_t a = stride ? stride : 1, b = n;
        while (b) {
            uint64_t t = a % b;
            a = b;
            b = t;
        }
        if (a == 1)
            break;
    }
    return (uint32_t)((k * (stride ? stride : 1)) % n);
}

static void run_loop(void)
{
    G.t0_ns = now_ns();
    uv_timer_init(G.loop, &G.tick);
    uv_timer_start(&G.tick, on_tick, 100, 100);
    uv_timer_init(G.loop, &G.post_gap);
    G.arrive_fd = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK | TFD_CLOEXEC);
    if (G.arrive_fd < 0)
        fatal("timerfd_create: %s", strerror(errno));
    uv_poll_init(G.loop, &G.arrive, G.arrive_fd);
    if (G.rate > 0) {
        struct itimerspec its = {.it_interval = {0, ARRIVE_US * 1000},
                                 .it_value = {0, ARRIVE_US * 1000}};
        if (timerfd_settime(G.arrive_fd, 0, &its, NULL) != 0)
            fatal("timerfd_settime: %s", strerror(errno));
        uv_poll_start(&G.arrive, UV_READABLE, on_arrive);
    }
    uv_signal_init(G.loop, &G.sigint);
    uv_signal_start(&G.sigint, on_sigint, SIGINT);
    dispatch();
    uv_run(G.loop, UV_RUN_DEFAULT);
    /* Close what is left (handles whose close is under way). */
    uv_run(G.loop, UV_RUN_DEFAULT);
}

static void reset_run_state(void)
{
    G.stopping = G.measuring = G.done = false;
    G.nfree = G.nneeddev = 0;
    G.use_admin = false;
    G.ndrained = 0;
    G.fifo.head = G.fifo.n = 0;
    G.backlog.head = G.backlog.n = 0;
    G.cycles = G.cmd_cycles = G.requests = G.handshakes = G.posts = G.post_targets = 0;
    G.all_cycles = G.all_errors = 0;
    memset(G.errors, 0, sizeof(G.errors));
    G.lat_req.n = G.lat_cycle.n = G.lat_hs.n = G.lat_post.n = G.lat_svc.n = 0;
    G.late_starts = 0;
    G.error_lines = 0;
    G.arrivals = 0;
    G.backlog_max = 0;
    for (uint32_t i = 0; i < G.ndevs; i++) {
        G.devs[i].slot = NULL;
        G.devs[i].queued = true;
        G.devs[i].draining = false;
    }
    for (int i = 0; i < G.nconn; i++) {
        slot_t *s = &G.slots[i];
        memset(s, 0, offsetof(slot_t, in));
        s->id = i;
        mdm_buf_reset(&s->in);
    }
}

/* Enrolls devices [from, to): Authenticate and TokenUpdate over mTLS, one
 * connection per device, ENROLL_CONNS at a time. */
static void enroll(uint32_t from, uint32_t to)
{
    int saved_mode = G.mode, saved_conn = G.nconn;
    bool saved_new = G.new_conn;
    double saved_rate = G.rate;
    const char *saved_label = G.label;
    G.mode = M_ENROLL;
    G.new_conn = true;
    G.rate = 0;
    G.nconn = ENROLL_CONNS;
    G.label = "enroll";
    reset_run_state();
    for (uint32_t i = from; i < to; i++)
        ring_push(&G.fifo, i);
    for (int i = 0; i < G.nconn; i++)
        push_free(&G.slots[i]);
    G.enroll_from = from;
    G.enroll_to = to;
    G.enroll_done = G.enroll_failed = 0;
    G.enroll_start_ns = now_ns();
    G.tm_start_ns = G.enroll_start_ns;
    G.server_cpu0 = G.pid > 0 ? proc_cpu(G.pid) : -1;
    G.client_cpu0 = self_cpu();
    G.core0_busy0 = core_busy(0);
    G.core1_busy0 = core_busy(1);
    G.server_wb0 = G.pid > 0 ? proc_write_bytes(G.pid) : -1;
    G.disk_wb0 = disk_written_bytes();
    fprintf(stderr, "mdm_load: enrolling devices %u..%u\n", from, to - 1);
    G.measuring = true;
    run_loop();
    G.label = saved_label;
    if (G.enroll_failed > 0 || G.enroll_done < to - from)
        fatal("enrollment: %u of %u failed", to - from - G.enroll_done, to - from);
    G.file_enrolled = to > G.file_enrolled ? to : G.file_enrolled;
    devfile_save();
    G.mode = saved_mode;
    G.nconn = saved_conn;
    G.new_conn = saved_new;
    G.rate = saved_rate;
}

static void prepare_load(void)
{
    reset_run_state();
    uint32_t n = G.ndev;
    bool picks = G.new_conn || G.rotate > 0;
    uint32_t window = n;
    if (G.mode == M_COMMAND) {
        window = picks ? (G.window ? G.window : (uint32_t)G.nconn * 4) : (uint32_t)G.nconn;
        if (window > n)
            window = n;
    }
    if (G.mode == M_COMMAND) {
        G.use_admin = true;
        memset(&G.admin, 0, offsetof(slot_t, in));
        G.admin.admin = true;
        G.admin.id = -1;
    }
    /* Devices in the order they will be taken, spread over all n. */
    for (uint32_t k = 0; k < window; k++) {
        uint32_t idx = spread(k, n);
        device_t *d = &G.devs[idx];
        if (!picks && k < (uint32_t)G.nconn) {
            /* A keep-alive slot's own device. */
            slot_t *s = &G.slots[k];
            s->dev = d;
            d->slot = s;
        }
        if (G.mode == M_COMMAND) {
            d->queued = false;
            d->draining = true;
            G.drained[G.ndrained++] = idx;
        } else if (d->slot == NULL) {
            ring_push(&G.fifo, idx);
        }
    }
    if (G.new_conn) {
        for (int i = 0; i < G.nconn; i++)
            push_free(&G.slots[i]);
    } else {
        for (int i = 0; i < G.nconn; i++) {
            slot_t *s = &G.slots[i];
            if (s->dev)
                connect_slot(s);
            else
                slot_setup_keepalive(s);
        }
    }
    if (G.use_admin)
        connect_slot(&G.admin);
}

int main(int argc, char **argv)
{
    parse_args(argc, argv);
    signal(SIGPIPE, SIG_IGN);
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
    G.loop = uv_default_loop();
    devfile_load();
    devfile_ensure(G.ndev);
    make_ctx();
    int maxconn = G.nconn > ENROLL_CONNS ? G.nconn : ENROLL_CONNS;
    G.slots = mdm_calloc((size_t)maxconn, sizeof(slot_t));
    G.free_slots = mdm_calloc((size_t)maxconn + 1, sizeof(slot_t *));
    G.needdev = mdm_calloc((size_t)maxconn + 1, sizeof(slot_t *));
    G.drained = mdm_calloc(G.ndevs + 1, sizeof(uint32_t));
    ring_init(&G.fifo, G.ndevs + 1);
    ring_init(&G.backlog, 4096);
    int saved_nconn = G.nconn;
    G.nconn = maxconn;
    for (int i = 0; i < maxconn; i++)
        G.slots[i].id = i;
    G.nconn = saved_nconn;

    if (G.enroll) {
        uint32_t from = G.reenroll ? 0 : G.file_enrolled;
        if (from < G.ndev)
            enroll(from, G.ndev);
        else
            fprintf(stderr, "mdm_load: devices 0..%u are enrolled already\n", G.ndev - 1);
    } else if (G.file_enrolled < G.ndev) {
        fatal("only %u devices of %s are enrolled; add --enroll", G.file_enrolled,
              G.data_dir);
    }
    if (!G.enroll_only) {
        prepare_load();
        run_loop();
    }

    /* Free everything (a clean exit under valgrind). */
    for (int i = 0; i < maxconn; i++) {
        mdm_buf_free(&G.slots[i].in);
        mdm_buf_free(&G.slots[i].out);
        mdm_free(G.slots[i].batch);
    }
    mdm_buf_free(&G.admin.in);
    mdm_buf_free(&G.admin.out);
    mdm_free(G.admin.batch);
    for (uint32_t i = 0; i < G.ndevs; i++) {
        X509_free(G.devs[i].cert);
        EVP_PKEY_free(G.devs[i].key);
    }
    mdm_free(G.devs);
    mdm_free(G.file);
    mdm_free(G.slots);
    mdm_free(G.free_slots);
    mdm_free(G.needdev);
    mdm_free(G.drained);
    mdm_free(G.fifo.v);
    mdm_free(G.backlog.v);
    mdm_free(G.lat_req.v);
    mdm_free(G.lat_cycle.v);
    mdm_free(G.lat_hs.v);
    mdm_free(G.lat_post.v);
    mdm_free(G.lat_svc.v);
    SSL_CTX_free(G.ctx);
    uv_loop_close(G.loop);
    return 0;
}
