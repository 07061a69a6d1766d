/* Fuzz target: HTTP/1.1 requests end to end through the real server.
 *
 * Set up once: a data directory like `moonmdm init` makes (the fixed CA,
 * server identity and SCEP RA of fuzz_keys.h, a store with two API keys of
 * known value, a config file with small limits and short timeouts), loaded
 * with mdm_config_load and served by mdm_server_init + mdm_server_listen on
 * a plain listener at 127.0.0.1:0, with the proxy certificate header
 * enabled so that device requests carry an identity without TLS.
 *
 * For each input: open a TCP connection, write the input, half-close, read
 * whatever comes back, and run the loop until the server has closed the
 * connection. Every byte goes through llhttp, the limits, pipelining,
 * routing, the API key check and the handlers (SCEP, MDM, OTA, enrollment,
 * the admin API), with state kept in the store from one input to the next
 * as on a real server.
 *
 * Property checked (abort() when broken): the server closes every
 * connection within 8 s (before libFuzzer's -timeout=10) once the client
 * has sent everything and half-closed: no request is left unanswered and
 * no connection is left open.
 *
 * Seeds (tests/fuzz/make_seeds.py) may use the API keys below, the device
 * certificate of fuzz_keys.h in X-Client-Cert, and SCEP messages encrypted
 * to the fixed RA. MOONMDM_FUZZ_LOG=1 sends the server's log to stderr. */
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "api/apikeys.h"
#include "api/metrics.h"
#include "config.h"
#include "server.h"
#include "store/store.h"
#include "util/alloc.h"
#include "util/encode.h"
#include "util/log.h"
#include "util/misc.h"

#include "fuzz_keys.h"
#include "fuzz_tmpdir.h"

/* API keys with known values, so that seeds can authenticate:
 * "mdm_<id>_<secret>" with the secret below (its SHA-256 is stored). */
#define FUZZ_ADMIN_KEY_ID "f022f022f022f022"
#define FUZZ_READ_KEY_ID "f022f022f022f0ad"
#define FUZZ_KEY_SECRET "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef"

/* Wall-clock bound on one input; the server's own timeouts are 500 ms.
 * MOONMDM_FUZZ_DEADLINE_MS overrides it (slow runs under valgrind). */
#define INPUT_DEADLINE_MS 8000
#define TICK_MS 50

static uv_loop_t loop;
static mdm_server_t server;
static mdm_config_t cfg;
static char dir[64];
static int port;
static int64_t deadline_ms = INPUT_DEADLINE_MS;

typedef struct client {
    uv_poll_t poll;
    int fd;
    const uint8_t *data;
    size_t len, off;
    bool shut;      /* our side half-closed */
    bool done;      /* the server closed its side */
    bool polling;
} client_t;

static void die(const char *what, const char *detail)
{
    fprintf(stderr, "fuzz_http: %s%s%s\n", what, detail ? ": " : "", detail ? detail : "");
    abort();
}

static void write_file(const char *name, const char *text, mode_t mode)
{
    char *path = mdm_sprintf("%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
    size_t len = strlen(text);
    if (fd < 0 || write(fd, text, len) != (ssize_t)len || close(fd) != 0)
        die("cannot write", path);
    mdm_free(path);
}

static void remove_dir(void)
{
    if (dir[0] != '\0')
        fuzz_remove_tree(dir);
}

static int put_key(mdm_txn_t *txn, const char *id, const char *role)
{
    unsigned char hash[32];
    unsigned int hlen = sizeof(hash);
    EVP_Digest(FUZZ_KEY_SECRET, strlen(FUZZ_KEY_SECRET), hash, &hlen, EVP_sha256(), NULL);
    char hex[65];
    mdm_hex_encode(hex, hash, sizeof(hash));
    /* The record format of core/api/apikeys.c. */
    char *rec = mdm_sprintf("{\"hash\":\"%s\",\"name\":\"fuzz\",\"role\":\"%s\","
                            "\"created\":1700000000000,\"revoked\":0}",
                            hex, role);
    int rc = mdm_txn_put(txn, MDM_T_APIKEYS, MDM_VAL(id, strlen(id)), MDM_VAL(rec, strlen(rec)),
                         0);
    mdm_free(rec);
    return rc;
}

static int put_keys_fn(mdm_txn_t *txn, void *arg)
{
    (void)arg;
    int rc = put_key(txn, FUZZ_ADMIN_KEY_ID, "admin");
    return rc != 0 ? rc : put_key(txn, FUZZ_READ_KEY_ID, "read");
}

/* The store, as `moonmdm init` creates it, with the known API keys. */
static void make_store(void)
{
    char *db = mdm_sprintf("%s/db", dir);
    mdm_store_config_t sc = {.path = db,
                             .map_size = 8u << 20,
                             .sync = false,
                             .flags = MDM_STORE_CREATE | MDM_STORE_AUTOFLUSH};
    mdm_store_t *store = NULL;
    mdm_err_t err = {0};
    if (mdm_store_open(&mdm_store_lmdb, &sc, &store, &err) != 0)
        die("cannot create the store", err.msg);
    if (mdm_store_update(store, put_keys_fn, NULL) != 0)
        die("cannot store the API keys", NULL);
    mdm_store_close(store);
    mdm_free(db);
}

static void close_walk_cb(uv_handle_t *h, void *arg)
{
    (void)arg;
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Stops the server as `moonmdm serve` does at exit, and the thread pool,
 * so that leak checkers see everything freed. */
static void teardown(void)
{
    uv_walk(&loop, close_walk_cb, NULL);
    uv_run(&loop, UV_RUN_DEFAULT);
    mdm_server_free(&server);
    uv_loop_close(&loop);
    mdm_metrics_reset();
    mdm_config_free(&cfg);
    uv_library_shutdown();
}

static void setup(void)
{
    snprintf(dir, sizeof(dir), "/tmp/moonmdm-fuzz-http-XXXXXX");
    if (mkdtemp(dir) == NULL)
        die("mkdtemp", strerror(errno));
    atexit(remove_dir);
    write_file("ca.crt", FUZZ_CA_CERT_PEM, 0644);
    write_file("ca.key", FUZZ_CA_KEY_PEM, 0600);
    write_file("ra.crt", FUZZ_RA_CERT_PEM, 0644);
    write_file("ra.key", FUZZ_RA_KEY_PEM, 0600);
    write_file("server.crt", FUZZ_SERVER_CERT_PEM, 0644);
    write_file("server.key", FUZZ_SERVER_KEY_PEM, 0600);
    make_store();

    /* Small limits and short timeouts keep each input fast; the APNs URL
     * points at a closed local port so that nothing can leave the machine
     * even if an input uploads a push certificate. enroll.ota_trust is
     * absolute: the loader does not resolve that list against the config
     * file's directory. */
    char *conf = mdm_sprintf(
        "return {\n"
        "  data_dir = \"%s\",\n"
        "  listen = {},\n"
        "  listen_plain = { \"127.0.0.1:0\" },\n"
        "  tls = { client_ca = { \"ca.crt\" } },\n"
        "  proxy = { cert_header = \"X-Client-Cert\" },\n"
        "  http = {\n"
        "    max_header_bytes = \"4KiB\", max_body_bytes = \"64KiB\",\n"
        "    read_timeout = \"500ms\", idle_timeout = \"500ms\", write_timeout = \"500ms\",\n"
        "    max_connections = 8, max_pipeline = 4, shutdown_grace = \"1s\",\n"
        "  },\n"
        "  ca = { cert = \"ca.crt\", key = \"ca.key\" },\n"
        "  scep = { ra_cert = \"ra.crt\", ra_key = \"ra.key\",\n"
        "           static_challenge = \"fuzz-challenge\", allow_single_des = true },\n"
        "  mdm = { bind_on_first_sight = true },\n"
        "  enroll = { base_url = \"https://mdm.fuzz.invalid\",\n"
        "             topic = \"com.apple.mgmt.External.f022\",\n"
        "             ota_trust = { \"%s/ca.crt\" } },\n"
        "  store = { path = \"db\", sync = false, map_size = \"8MiB\", map_max = \"1GiB\" },\n"
        "  policy = { watch = false },\n"
        "  apns = { url = \"https://127.0.0.1:9\" },\n"
        "  log = { level = \"info\" },\n"
        "}\n",
        dir, dir);
    write_file("moonmdm.conf.lua", conf, 0600);
    mdm_free(conf);

    char *conf_path = mdm_sprintf("%s/moonmdm.conf.lua", dir);
    mdm_err_t err = {0};
    if (mdm_config_load(&cfg, conf_path, &err) != 0)
        die("config", err.msg);
    mdm_free(conf_path);
    /* The log goes nowhere unless asked for, but is still formatted: log
     * lines quote request data. */
    int log_fd = getenv("MOONMDM_FUZZ_LOG") ? 2 : open("/dev/null", O_WRONLY | O_CLOEXEC);
    mdm_log_setup(getenv("MOONMDM_FUZZ_LOG") ? MDM_LOG_DEBUG : MDM_LOG_INFO, log_fd);

    uv_loop_init(&loop);
    if (mdm_server_init(&server, &loop, &cfg, &err) != 0 || mdm_server_listen(&server, &err) != 0)
        die("server start", err.msg);
    /* Leave SIGINT and SIGTERM to libFuzzer. */
    uv_signal_stop(&server.sig_int);
    uv_signal_stop(&server.sig_term);
    uv_signal_stop(&server.sig_hup);
    port = server.listeners[0].port;
    atexit(teardown);
    const char *d = getenv("MOONMDM_FUZZ_DEADLINE_MS");
    if (d != NULL && atoll(d) > 0)
        deadline_ms = atoll(d);
}

static void poll_cb(uv_poll_t *h, int status, int events);

static void set_poll(client_t *c)
{
    int ev = UV_READABLE | UV_DISCONNECT;
    if (!c->shut)
        ev |= UV_WRITABLE;
    uv_poll_start(&c->poll, ev, poll_cb);
}

static void client_finish(client_t *c)
{
    c->done = true;
    if (c->polling) {
        uv_poll_stop(&c->poll);
        c->polling = false;
    }
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    client_t *c = h->data;
    if (status < 0) {
        client_finish(c);
        return;
    }
    if ((events & UV_WRITABLE) && !c->shut) {
        while (c->off < c->len) {
            ssize_t n = send(c->fd, c->data + c->off, c->len - c->off, MSG_NOSIGNAL);
            if (n > 0) {
                c->off += (size_t)n;
                continue;
            }
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                break;
            /* The server closed on us (an error answer): nothing more to send. */
            c->off = c->len;
        }
        if (c->off == c->len) {
            shutdown(c->fd, SHUT_WR);
            c->shut = true;
            set_poll(c);
        }
    }
    if (events & (UV_READABLE | UV_DISCONNECT)) {
        char buf[16384];
        for (;;) {
            ssize_t n = recv(c->fd, buf, sizeof(buf), 0);
            if (n > 0)
                continue;
            if (n < 0 && (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR))
                break;
            client_finish(c); /* EOF or reset: the server closed */
            return;
        }
    }
}

static void tick_cb(uv_timer_t *t)
{
    (void)t; /* wakes uv_run so that the deadline is checked */
}

static void close_noop(uv_handle_t *h)
{
    (void)h;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (port == 0)
        setup();

    client_t c;
    memset(&c, 0, sizeof(c));
    c.data = data;
    c.len = size;
    c.fd = socket(AF_INET, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (c.fd < 0)
        die("socket", strerror(errno));
    struct sockaddr_in sa;
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = htons((uint16_t)port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (connect(c.fd, (struct sockaddr *)&sa, sizeof(sa)) != 0 && errno != EINPROGRESS)
        die("connect", strerror(errno));
    uv_poll_init(&loop, &c.poll, c.fd);
    c.poll.data = &c;
    c.polling = true;
    set_poll(&c);

    uv_timer_t tick;
    uv_timer_init(&loop, &tick);
    uv_timer_start(&tick, tick_cb, TICK_MS, TICK_MS);

    int64_t start = mdm_now_ms();
    size_t steps = 0;
    while (!c.done || server.nconns > 0) {
        uv_run(&loop, UV_RUN_ONCE);
        steps++;
        if (mdm_now_ms() - start > deadline_ms) {
            char detail[96];
            snprintf(detail, sizeof(detail), "after %zu loop steps: sent %zu of %zu bytes, %s",
                     steps, c.off, c.len,
                     c.done ? "our side saw the close" : "the connection is still open");
            die("the server did not close the connection within the deadline", detail);
        }
    }
    if (c.polling)
        uv_poll_stop(&c.poll);
    uv_close((uv_handle_t *)&c.poll, close_noop);
    uv_close((uv_handle_t *)&tick, close_noop);
    /* Let the close callbacks (ours and the server's) run. */
    uv_run(&loop, UV_RUN_NOWAIT);
    close(c.fd);
    return 0;
}
