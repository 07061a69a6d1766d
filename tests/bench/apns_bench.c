/* apns_bench: a push burst through the real APNs client, with the event
 * loop's latency for other requests measured at the same time.
 *
 * It runs the server in this process (the same code as `moonmdm serve`,
 * from the config file of a data directory made by `moonmdm init`), with
 * apns.url pointing at a stand-in. It first stores --devices enrollments
 * ("bench-000000", ...) with a push token (SHA-256 of the id, so that a
 * static stand-in can have a file for each device path) and a push magic
 * (once; a later run reuses them), then, one second after start, pushes to all of them at once
 * with mdm_apns_push_batch (the call behind the admin API and the policy
 * engine's mass pushes) and times the burst from the call to the last
 * answer.
 *
 * Meanwhile a second thread keeps one TLS connection to the server and
 * sends GET /healthz every millisecond, one at a time, and records each
 * latency: those that started during the burst give its p50/p99/max, those
 * before it the idle baseline. That client thread competes for the CPU too,
 * so the loop's own lag is measured apart: a 1 ms timer on the loop records
 * how late each of its callbacks runs.
 *
 * Output: one line of key=value pairs on stdout. */
#include <errno.h>
#include <getopt.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/sha.h>
#include <openssl/ssl.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "apns/apns.h"
#include "mdm/mdm.h"
#include "server.h"
#include "util/alloc.h"
#include "util/log.h"
#include "util/misc.h"
#include "util/plist.h"

#define SEED_BATCH 10000
#define MAX_SAMPLES 200000

static struct {
    const char *config, *url, *ca_file, *cert, *key, *topic, *policy_dir;
    size_t devices, connections, max_in_flight;
} opt = {.devices = 100000, .connections = 2, .max_in_flight = 1000};

static struct {
    mdm_server_t server;
    int port;
    char **eids;
    size_t done;
    size_t by_status[MDM_PUSH_ERROR + 1];
    char first_error[300];
    uint64_t t0, t1;
    atomic_int phase;          /* 0 before the burst, 1 during, 2 after */
    atomic_bool stop;
    uint64_t *lat_burst, *lat_idle;
    size_t n_burst, n_idle;
    uint64_t *lag;             /* loop lag during the burst */
    size_t n_lag;
    uint64_t lag_last;
    size_t client_errors;
} B;

static char *xstrdup(const char *s)
{
    return s ? mdm_strdup(s) : NULL;
}

static void set_str(char **field, const char *v)
{
    mdm_free(*field);
    *field = xstrdup(v);
}

/* ---- seeding --------------------------------------------------------------- */

struct seed_ctx {
    size_t from, to;
    int64_t now;
};

static int seed_fn(mdm_txn_t *txn, void *arg)
{
    struct seed_ctx *c = arg;
    for (size_t i = c->from; i < c->to; i++) {
        plist_t e = plist_new_dict();
        unsigned char token[32];
        char magic[37];
        SHA256((const unsigned char *)B.eids[i], strlen(B.eids[i]), token);
        mdm_uuid(magic);
        mdm_pl_set_str(e, "type", "device");
        mdm_pl_set_str(e, "device_id", B.eids[i]);
        mdm_pl_set_data(e, "token", token, sizeof(token));
        mdm_pl_set_str(e, "push_magic", magic);
        mdm_pl_set_str(e, "topic", opt.topic);
        mdm_pl_set_bool(e, "enabled", true);
        mdm_pl_set_int(e, "enrolled_at", c->now);
        mdm_pl_set_int(e, "last_seen_at", c->now);
        int rc = mdm_enrollment_save(txn, B.eids[i], e);
        plist_free(e);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static int count_fn(mdm_txn_t *txn, void *arg)
{
    size_t *n = arg;
    mdm_val_t v;
    /* The last one present means all are (they are written in order). */
    for (size_t lo = 0, hi = opt.devices; lo < hi;) {
        size_t mid = lo + (hi - lo) / 2;
        if (mdm_txn_get(txn, MDM_T_ENROLLMENTS, MDM_VAL_STR(B.eids[mid]), &v) == 0)
            lo = mid + 1, *n = lo;
        else
            hi = mid;
    }
    return 0;
}

static int seed(const mdm_config_t *cfg)
{
    mdm_store_config_t sc = {.path = cfg->store_path, .map_size = cfg->store_map_size,
                             .map_max = cfg->store_map_max, .sync = false,
                             .flags = MDM_STORE_AUTOFLUSH};
    mdm_store_t *st = NULL;
    mdm_err_t err = {0};
    int rc = mdm_store_open(mdm_store_backend(cfg->store_backend), &sc, &st, &err);
    if (rc != 0) {
        fprintf(stderr, "apns_bench: store: %s\n", err.msg);
        return rc;
    }
    size_t have = 0;
    mdm_store_view(st, count_fn, &have);
    struct seed_ctx c = {.now = mdm_now_ms()};
    for (c.from = have; rc == 0 && c.from < opt.devices; c.from = c.to) {
        c.to = c.from + SEED_BATCH < opt.devices ? c.from + SEED_BATCH : opt.devices;
        rc = mdm_store_update(st, seed_fn, &c);
    }
    if (have < opt.devices)
        fprintf(stderr, "apns_bench: stored %zu enrollments\n", opt.devices - have);
    mdm_store_close(st);
    return rc;
}

/* ---- the /healthz client ------------------------------------------------------- */

static int tls_connect(SSL_CTX *ctx, SSL **out)
{
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)B.port)};
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
        close(fd);
        return -1;
    }
    SSL *ssl = SSL_new(ctx);
    SSL_set_fd(ssl, fd);
    if (SSL_connect(ssl) != 1) {
        SSL_free(ssl);
        close(fd);
        return -1;
    }
    *out = ssl;
    return 0;
}

/* One GET /healthz on a kept-alive connection; 0 when "ok" came back. */
static int healthz(SSL *ssl)
{
    static const char req[] = "GET /healthz HTTP/1.1\r\nHost: bench\r\n\r\n";
    if (SSL_write(ssl, req, (int)sizeof(req) - 1) <= 0)
        return -1;
    char buf[2048];
    size_t len = 0;
    for (;;) {
        int n = SSL_read(ssl, buf + len, (int)(sizeof(buf) - 1 - len));
        if (n <= 0)
            return -1;
        len += (size_t)n;
        buf[len] = '\0';
        char *end = strstr(buf, "\r\n\r\n");
        if (end != NULL && strstr(end, "ok\n") != NULL)
            return strncmp(buf, "HTTP/1.1 200", 12) == 0 ? 0 : -1;
        if (len == sizeof(buf) - 1)
            return -1;
    }
}

static void *client_main(void *arg)
{
    (void)arg;
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    SSL *ssl = NULL;
    if (tls_connect(ctx, &ssl) != 0) {
        B.client_errors++;
        SSL_CTX_free(ctx);
        return NULL;
    }
    while (!atomic_load(&B.stop)) {
        int phase = atomic_load(&B.phase);
        uint64_t t = mdm_mono_ns();
        if (healthz(ssl) != 0) {
            if (atomic_load(&B.phase) != 2)
                B.client_errors++;
            break;
        }
        uint64_t lat = mdm_mono_ns() - t;
        if (phase == 1 && B.n_burst < MAX_SAMPLES)
            B.lat_burst[B.n_burst++] = lat;
        else if (phase == 0 && B.n_idle < MAX_SAMPLES)
            B.lat_idle[B.n_idle++] = lat;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    SSL_shutdown(ssl);
    int fd = SSL_get_fd(ssl);
    SSL_free(ssl);
    close(fd);
    SSL_CTX_free(ctx);
    return NULL;
}

/* ---- the burst ------------------------------------------------------------------- */

static void on_result(void *arg, size_t index, const mdm_push_result_t *r)
{
    (void)arg, (void)index;
    B.by_status[r->status]++;
    if (r->status != MDM_PUSH_PUSHED && B.first_error[0] == '\0')
        snprintf(B.first_error, sizeof(B.first_error), "%s", r->error ? r->error : "?");
    if (++B.done == opt.devices) {
        B.t1 = mdm_mono_ns();
        atomic_store(&B.phase, 2);
        mdm_server_stop(&B.server);
    }
}

static void start_burst(uv_timer_t *t)
{
    (void)t;
    atomic_store(&B.phase, 1);
    B.t0 = mdm_mono_ns();
    int rc = mdm_apns_push_batch(&B.server, (const char *const *)B.eids, opt.devices, on_result,
                                 NULL);
    if (rc != 0) {
        fprintf(stderr, "apns_bench: push_batch: %s\n", mdm_strerror(rc));
        mdm_server_stop(&B.server);
    }
}

static void lag_cb(uv_timer_t *t)
{
    (void)t;
    uint64_t now = mdm_mono_ns();
    if (atomic_load(&B.phase) == 1 && B.lag_last != 0 && B.n_lag < MAX_SAMPLES) {
        uint64_t gap = now - B.lag_last;
        B.lag[B.n_lag++] = gap > 1000000 ? gap - 1000000 : 0;
    }
    B.lag_last = now;
}

static int cmp_u64(const void *a, const void *b)
{
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

static double pct_ms(uint64_t *v, size_t n, double p)
{
    if (n == 0)
        return 0;
    size_t i = (size_t)(p * (double)(n - 1) + 0.5);
    return (double)v[i] / 1e6;
}

static void close_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

static const char usage[] =
    "usage: apns_bench --config FILE --url URL --topic TOPIC --cert PEM --key PEM\n"
    "                  [--ca-file PEM] [--devices N] [--connections C] [--max-in-flight M]\n"
    "                  [--policy-dir DIR]\n";

int main(int argc, char **argv)
{
    static const struct option lo[] = {
        {"config", 1, NULL, 'c'},      {"url", 1, NULL, 'u'},     {"ca-file", 1, NULL, 'a'},
        {"cert", 1, NULL, 'C'},        {"key", 1, NULL, 'K'},     {"topic", 1, NULL, 't'},
        {"devices", 1, NULL, 'n'},     {"connections", 1, NULL, 'x'},
        {"max-in-flight", 1, NULL, 'm'}, {"policy-dir", 1, NULL, 'p'}, {NULL, 0, NULL, 0}};
    int ch;
    while ((ch = getopt_long(argc, argv, "", lo, NULL)) != -1) {
        switch (ch) {
        case 'c': opt.config = optarg; break;
        case 'u': opt.url = optarg; break;
        case 'a': opt.ca_file = optarg; break;
        case 'C': opt.cert = optarg; break;
        case 'K': opt.key = optarg; break;
        case 't': opt.topic = optarg; break;
        case 'n': opt.devices = strtoul(optarg, NULL, 10); break;
        case 'x': opt.connections = strtoul(optarg, NULL, 10); break;
        case 'm': opt.max_in_flight = strtoul(optarg, NULL, 10); break;
        case 'p': opt.policy_dir = optarg; break;
        default: fputs(usage, stderr); return 2;
        }
    }
    if (!opt.config || !opt.url || !opt.topic || !opt.cert || !opt.key || opt.devices == 0) {
        fputs(usage, stderr);
        return 2;
    }
    mdm_log_setup(MDM_LOG_WARN, 2);
    mdm_config_t cfg;
    mdm_err_t err = {0};
    if (mdm_config_load(&cfg, opt.config, &err) != 0) {
        fprintf(stderr, "apns_bench: %s\n", err.msg);
        return 1;
    }
    if (opt.policy_dir != NULL)
        set_str(&cfg.policy_dir, opt.policy_dir);
    set_str(&cfg.apns_url, opt.url);
    set_str(&cfg.apns_ca_file, opt.ca_file);
    set_str(&cfg.apns_cert, opt.cert);
    set_str(&cfg.apns_key, opt.key);
    cfg.apns_connections = opt.connections;
    cfg.apns_max_in_flight = opt.max_in_flight;
    cfg.apns_sweep_interval_ms = 0;
    cfg.tls_allow_insecure_key_mode = true;
    cfg.log_requests = false;
    for (size_t i = 0; i < cfg.listen.n; i++)
        mdm_free(cfg.listen.v[i]);
    cfg.listen.v = mdm_realloc(cfg.listen.v, sizeof(*cfg.listen.v));
    cfg.listen.n = 1;
    cfg.listen.v[0] = mdm_strdup("127.0.0.1:0");
    for (size_t i = 0; i < cfg.listen_plain.n; i++)
        mdm_free(cfg.listen_plain.v[i]);
    cfg.listen_plain.n = 0;

    B.eids = mdm_calloc(opt.devices, sizeof(*B.eids));
    for (size_t i = 0; i < opt.devices; i++)
        B.eids[i] = mdm_sprintf("bench-%06zu", i);
    if (seed(&cfg) != 0)
        return 1;
    B.lat_burst = mdm_calloc(MAX_SAMPLES, sizeof(uint64_t));
    B.lat_idle = mdm_calloc(MAX_SAMPLES, sizeof(uint64_t));
    B.lag = mdm_calloc(MAX_SAMPLES, sizeof(uint64_t));

    uv_loop_t loop;
    uv_loop_init(&loop);
    int rc = mdm_server_init(&B.server, &loop, &cfg, &err);
    if (rc == 0)
        rc = mdm_server_listen(&B.server, &err);
    if (rc != 0) {
        fprintf(stderr, "apns_bench: %s\n", err.msg);
        return 1;
    }
    B.port = B.server.listeners[0].port;
    pthread_t client;
    pthread_create(&client, NULL, client_main, NULL);
    uv_timer_t burst;
    uv_timer_init(&loop, &burst);
    uv_timer_start(&burst, start_burst, 1000, 0);
    uv_timer_t lag;
    uv_timer_init(&loop, &lag);
    uv_timer_start(&lag, lag_cb, 1, 1);
    uv_unref((uv_handle_t *)&lag);
    uv_run(&loop, UV_RUN_DEFAULT);
    atomic_store(&B.stop, true);
    pthread_join(client, NULL);
    uv_walk(&loop, close_cb, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    mdm_server_free(&B.server);
    uv_loop_close(&loop);

    double secs = (double)(B.t1 - B.t0) / 1e9;
    qsort(B.lat_burst, B.n_burst, sizeof(uint64_t), cmp_u64);
    qsort(B.lat_idle, B.n_idle, sizeof(uint64_t), cmp_u64);
    qsort(B.lag, B.n_lag, sizeof(uint64_t), cmp_u64);
    printf("devices=%zu connections=%zu max_in_flight=%zu seconds=%.3f pushes_per_s=%.0f "
           "pushed=%zu errors=%zu healthz_during_n=%zu healthz_during_p50_ms=%.3f "
           "healthz_during_p99_ms=%.3f healthz_during_max_ms=%.3f healthz_idle_n=%zu "
           "healthz_idle_p50_ms=%.3f healthz_idle_p99_ms=%.3f loop_lag_p50_ms=%.3f "
           "loop_lag_p99_ms=%.3f loop_lag_max_ms=%.3f client_errors=%zu",
           opt.devices, opt.connections, opt.max_in_flight, secs,
           secs > 0 ? (double)B.done / secs : 0, B.by_status[MDM_PUSH_PUSHED],
           B.done - B.by_status[MDM_PUSH_PUSHED], B.n_burst, pct_ms(B.lat_burst, B.n_burst, 0.5),
           pct_ms(B.lat_burst, B.n_burst, 0.99),
           B.n_burst ? (double)B.lat_burst[B.n_burst - 1] / 1e6 : 0, B.n_idle,
           pct_ms(B.lat_idle, B.n_idle, 0.5), pct_ms(B.lat_idle, B.n_idle, 0.99),
           pct_ms(B.lag, B.n_lag, 0.5), pct_ms(B.lag, B.n_lag, 0.99),
           B.n_lag ? (double)B.lag[B.n_lag - 1] / 1e6 : 0, B.client_errors);
    if (B.first_error[0])
        printf(" first_error=\"%s\"", B.first_error);
    printf("\n");
    for (size_t i = 0; i < opt.devices; i++)
        mdm_free(B.eids[i]);
    mdm_free(B.eids);
    mdm_free(B.lat_burst);
    mdm_free(B.lat_idle);
    mdm_free(B.lag);
    mdm_metrics_reset();
    mdm_config_free(&cfg);
    return B.done == opt.devices && B.by_status[MDM_PUSH_PUSHED] == opt.devices ? 0 : 1;
}
