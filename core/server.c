#include "server.h"

#include <openssl/pem.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>

#include "api/apikeys.h"
#include "api/guard.h"
#include "mdm/profiles_dir.h"
#include "modules.h"
#include "net/http_internal.h"
#include "net/tls.h"
#include "util/alloc.h"
#include "util/encode.h"
#include "util/log.h"
#include "util/misc.h"

/* ---- built-in routes ----------------------------------------------------- */

static int health_fn(mdm_txn_t *txn, void *arg)
{
    uint64_t *v = arg;
    return mdm_meta_get_u64(txn, "schema_version", v);
}

static void handle_healthz(mdm_req_t *req)
{
    uint64_t v = 0;
    int rc = mdm_store_view(req->server->store, health_fn, &v);
    if (rc != 0) {
        mdm_log(MDM_LOG_ERROR, req->id, "health.store_unreadable", "error=\"%s\"",
                mdm_strerror(rc));
        mdm_resp_text(req, 503, "store unreadable");
        return;
    }
    mdm_resp_send(req, 200, "text/plain; charset=utf-8", "ok\n", 3);
}

static void handle_version(mdm_req_t *req)
{
    char body[160];
    int n = snprintf(body, sizeof(body), "{\"name\":\"moonmdm\",\"version\":\"%s\",\"schema\":%d}\n",
                     MOONMDM_VERSION, MDM_STORE_SCHEMA_VERSION);
    mdm_resp_send(req, 200, "application/json", body, (size_t)n);
}

static void handle_metrics(mdm_req_t *req)
{
    mdm_server_t *s = req->server;
    mdm_store_stats_t st;
    if (mdm_store_stats(s->store, &st) == 0) {
        mdm_metric_set(mdm_metric(MDM_METRIC_GAUGE, "moonmdm_store_map_bytes", NULL,
                                  "Bytes reserved by the store map"),
                       (int64_t)st.map_size);
        mdm_metric_set(mdm_metric(MDM_METRIC_GAUGE, "moonmdm_store_used_bytes", NULL,
                                  "Bytes used in the store"),
                       (int64_t)st.used_bytes);
        mdm_metric_set(mdm_metric(MDM_METRIC_COUNTER, "moonmdm_store_commits_total", NULL,
                                  "Store batch commits"),
                       (int64_t)st.commits);
        mdm_metric_set(mdm_metric(MDM_METRIC_COUNTER, "moonmdm_store_committed_updates_total",
                                  NULL,
                                  "Updates (one per request that changed the store) in those "
                                  "commits"),
                       (int64_t)st.committed_updates);
        mdm_metric_set(mdm_metric(MDM_METRIC_COUNTER, "moonmdm_store_commit_failures_total",
                                  NULL, "Store batch commits that failed"),
                       (int64_t)st.commit_failures);
        mdm_metric_set(mdm_metric(MDM_METRIC_COUNTER, "moonmdm_store_map_grows_total", NULL,
                                  "Times the store map was grown"),
                       (int64_t)st.grows);
    }
    mdm_metric_set(mdm_metric(MDM_METRIC_GAUGE, "moonmdm_uptime_seconds", NULL,
                              "Seconds since the server started"),
                   (mdm_now_ms() - s->started_ms) / 1000);
    mdm_buf_reset(&req->resp_body);
    mdm_metrics_render(&req->resp_body);
    mdm_resp_send_buf(req, 200, "text/plain; version=0.0.4; charset=utf-8");
}

struct status_ctx {
    mdm_store_stats_t st;
};

static void handle_status(mdm_req_t *req)
{
    mdm_server_t *s = req->server;
    mdm_store_stats_t st;
    memset(&st, 0, sizeof(st));
    mdm_store_stats(s->store, &st);
    mdm_buf_t *b = &req->resp_body;
    mdm_buf_reset(b);
    char started[32];
    mdm_time_format(started, s->started_ms);
    mdm_buf_printf(b,
                   "{\"version\":\"%s\",\"started_at\":\"%s\",\"uptime_seconds\":%lld,"
                   "\"connections\":%zu,\"store\":{\"backend\":\"%s\",\"map_bytes\":%zu,"
                   "\"used_bytes\":%zu,\"commits\":%llu,\"tables\":{",
                   MOONMDM_VERSION, started, (long long)((mdm_now_ms() - s->started_ms) / 1000),
                   s->nconns, s->cfg->store_backend, st.map_size, st.used_bytes,
                   (unsigned long long)st.commits);
    for (int t = 0; t < MDM_T__COUNT; t++)
        mdm_buf_printf(b, "%s\"%s\":%llu", t ? "," : "", mdm_store_table_name(t),
                       (unsigned long long)st.entries[t]);
    mdm_buf_puts(b, "}}}\n");
    mdm_resp_send_buf(req, 200, "application/json");
}

static const char *auth_name(int auth)
{
    switch (auth) {
    case MDM_AUTH_PUBLIC: return "public";
    case MDM_AUTH_API_READ: return "api_read";
    case MDM_AUTH_API_ADMIN: return "api_admin";
    case MDM_AUTH_DEVICE: return "device";
    }
    return "?";
}

/* The route table: what this server serves and who may call it. */
static void handle_routes(mdm_req_t *req)
{
    static const char *const methods[] = {"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH",
                                          "OPTIONS"};
    mdm_buf_t *b = &req->resp_body;
    mdm_buf_reset(b);
    mdm_buf_puts(b, "{\"routes\":[");
    const mdm_router_t *r = &req->server->router;
    for (size_t i = 0; i < r->n; i++) {
        const mdm_route_t *rt = &r->routes[i];
        mdm_buf_printf(b, "%s{\"pattern\":\"%s\",\"name\":\"%s\",\"auth\":\"%s\",\"methods\":[",
                       i ? "," : "", rt->pattern, rt->name, auth_name(rt->auth));
        int n = 0;
        for (int m = 0; m < 7; m++)
            if (rt->methods & (1u << m))
                mdm_buf_printf(b, "%s\"%s\"", n++ ? "," : "", methods[m]);
        mdm_buf_puts(b, "]}");
    }
    mdm_buf_puts(b, "]}\n");
    mdm_resp_send_buf(req, 200, "application/json");
}

static void register_core_routes(mdm_server_t *s)
{
    mdm_router_add(&s->router, MDM_GET, "/healthz", handle_healthz, MDM_AUTH_PUBLIC, "healthz");
    mdm_router_add(&s->router, MDM_GET, "/version", handle_version, MDM_AUTH_PUBLIC, "version");
    mdm_router_add(&s->router, MDM_GET, "/metrics", handle_metrics, MDM_AUTH_PUBLIC, "metrics");
    mdm_router_add(&s->router, MDM_GET, "/v1/status", handle_status, MDM_AUTH_API_READ,
                   "v1_status");
    mdm_router_add(&s->router, MDM_GET, "/v1/routes", handle_routes, MDM_AUTH_API_READ,
                   "v1_routes");
}

/* ---- dispatch ------------------------------------------------------------ */

/* Reads a client certificate that a TLS-terminating proxy put in a header:
 * RFC 9440 (":base64-DER:"), URL-escaped PEM (nginx $ssl_client_escaped_cert),
 * plain PEM, or bare base64 DER. */
static X509 *parse_cert_header(const char *value)
{
    X509 *x = NULL;
    mdm_buf_t dec = MDM_BUF_INIT;
    size_t len = strlen(value);
    if (len >= 2 && value[0] == ':' && value[len - 1] == ':') {
        if (mdm_base64_decode(&dec, value + 1, len - 2) == 0) {
            const unsigned char *p = (const unsigned char *)dec.data;
            x = d2i_X509(NULL, &p, (long)dec.len);
        }
    } else if (strstr(value, "-----BEGIN") != NULL || strstr(value, "%2D%2D") != NULL ||
               strstr(value, "-----") != NULL) {
        if (mdm_url_decode(&dec, value, len, 0) == 0) {
            BIO *bio = BIO_new_mem_buf(dec.data, (int)dec.len);
            x = PEM_read_bio_X509(bio, NULL, NULL, NULL);
            BIO_free(bio);
        }
    } else if (mdm_base64_decode(&dec, value, len) == 0) {
        const unsigned char *p = (const unsigned char *)dec.data;
        x = d2i_X509(NULL, &p, (long)dec.len);
    }
    mdm_buf_free(&dec);
    return x;
}

static void apply_cert_header(mdm_server_t *s, mdm_req_t *req)
{
    const char *v = mdm_req_header(req, s->cfg->proxy_cert_header);
    if (v == NULL || v[0] == '\0' || s->client_ca_store == NULL)
        return;
    X509 *x = parse_cert_header(v);
    if (x == NULL) {
        mdm_log(MDM_LOG_WARN, req->id, "proxy.cert_header_unparsable", "header=%s",
                s->cfg->proxy_cert_header);
        return;
    }
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    int ok = X509_STORE_CTX_init(ctx, s->client_ca_store, x, NULL) == 1 &&
             X509_verify_cert(ctx) == 1;
    if (!ok) {
        mdm_log(MDM_LOG_WARN, req->id, "proxy.cert_header_rejected", "reason=\"%s\"",
                X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
        X509_free(x);
    } else {
        req->peer_cert = x;
        req->peer_cert_source = "header";
    }
    X509_STORE_CTX_free(ctx);
}

/* Extracts an API key from "Bearer <key>" or HTTP Basic (any user name,
 * the key as password), into out. */
static bool api_key_from_request(mdm_req_t *req, char *out, size_t n)
{
    const char *h = mdm_req_header(req, "Authorization");
    if (h == NULL)
        return false;
    if (strncasecmp(h, "Bearer ", 7) == 0) {
        const char *k = h + 7;
        while (*k == ' ')
            k++;
        snprintf(out, n, "%s", k);
        return true;
    }
    if (strncasecmp(h, "Basic ", 6) == 0) {
        mdm_buf_t dec = MDM_BUF_INIT;
        bool ok = false;
        if (mdm_base64_decode(&dec, h + 6, strlen(h + 6)) == 0 && dec.len > 0) {
            const char *colon = memchr(dec.data, ':', dec.len);
            if (colon != NULL) {
                snprintf(out, n, "%s", colon + 1);
                ok = true;
            }
        }
        mdm_buf_free(&dec);
        return ok;
    }
    return false;
}

struct auth_ctx {
    const char *key;
    mdm_apikey_info_t info;
};

static int auth_fn(mdm_txn_t *txn, void *arg)
{
    struct auth_ctx *a = arg;
    return mdm_apikey_verify(txn, a->key, &a->info);
}

/* Checks the admin API key for routes that need one. Answers and returns
 * false when the request may not go on. */
static bool authorize(mdm_server_t *s, mdm_req_t *req, const mdm_route_t *rt)
{
    if (rt->auth != MDM_AUTH_API_READ && rt->auth != MDM_AUTH_API_ADMIN)
        return true;
    if (!s->cfg->api_enabled) {
        mdm_resp_json_error(req, 404, "not_found", "the admin API is disabled (api.enabled)");
        return false;
    }
    char key[256];
    struct auth_ctx a = {.key = key};
    char addr[80];
    mdm_guard_addr_key(req->remote_addr, addr, sizeof(addr));
    int64_t now = mdm_now_ms();
    uint64_t locked = mdm_guard_locked(s->api_guard, addr, now);
    if (locked > 0) {
        char retry[32], detail[128];
        snprintf(retry, sizeof(retry), "%llu", (unsigned long long)(locked + 999) / 1000);
        snprintf(detail, sizeof(detail),
                 "too many failed attempts from this address; retry in %s s", retry);
        mdm_log(MDM_LOG_WARN, req->id, "api.locked_out", "remote=%s retry_after_s=%s",
                req->remote_addr, retry);
        mdm_resp_header(req, "Retry-After", retry);
        mdm_resp_json_error(req, 429, "too_many_failures", detail);
        return false;
    }
    if (!api_key_from_request(req, key, sizeof(key))) {
        mdm_resp_header(req, "WWW-Authenticate", "Bearer realm=\"moonmdm\"");
        mdm_resp_json_error(req, 401, "unauthorized",
                            "this route needs an admin API key: Authorization: Bearer <key>");
        return false;
    }
    int rc = mdm_store_view(s->store, auth_fn, &a);
    if (rc != 0) {
        mdm_guard_fail(s->api_guard, addr, now);
        char pfx[24], pq[100];
        snprintf(pfx, sizeof(pfx), "%.20s", key);
        mdm_log(MDM_LOG_WARN, req->id, "api.auth_failed", "remote=%s key_prefix=%s",
                req->remote_addr, mdm_logq(pq, sizeof(pq), pfx));
        mdm_resp_header(req, "WWW-Authenticate", "Bearer realm=\"moonmdm\"");
        mdm_resp_json_error(req, 401, "unauthorized", "the API key is not valid");
        return false;
    }
    bool is_read = (req->method == MDM_GET || req->method == MDM_HEAD);
    if (a.info.role != MDM_ROLE_ADMIN && (rt->auth == MDM_AUTH_API_ADMIN || !is_read)) {
        mdm_log(MDM_LOG_WARN, req->id, "api.forbidden", "key=%s role=%s route=%s", a.info.id,
                mdm_api_role_name(a.info.role), rt->name);
        mdm_resp_json_error(req, 403, "forbidden", "this API key has the read-only role");
        return false;
    }
    mdm_guard_success(s->api_guard, addr);
    mdm_apikey_info_t *info = mdm_arena_alloc(&req->arena, sizeof(*info));
    *info = a.info;
    req->auth = info;
    return true;
}

/* Admin routes take each query parameter once: a repeated one is refused
 * rather than read as its first (or last) value. */
static bool query_unambiguous(mdm_req_t *req)
{
    const char *name;
    size_t len;
    if (!mdm_req_query_repeated(req, &name, &len))
        return true;
    char detail[160];
    snprintf(detail, sizeof(detail), "query parameter \"%.*s\" is given more than once",
             (int)(len > 64 ? 64 : len), name);
    mdm_resp_json_error(req, 400, "bad_query", detail);
    return false;
}

/* Finds the route and checks who may call it. Answers and returns false
 * when the request may not go on. */
static bool route_and_authorize(mdm_server_t *s, mdm_req_t *req)
{
    int status = 0;
    const mdm_route_t *rt = mdm_router_match(&s->router, req, &status);
    if (rt == NULL) {
        if (status == 405)
            mdm_resp_json_error(req, 405, "method_not_allowed",
                                "the path exists but not for this method");
        else if (status == 400)
            mdm_resp_json_error(req, 400, "bad_path",
                                "a path segment has a bad percent-escape (or %00)");
        else
            mdm_resp_json_error(req, 404, "not_found", "no such path");
        return false;
    }
    req->route = rt;
    if (!authorize(s, req, rt))
        return false;
    bool admin = rt->auth == MDM_AUTH_API_READ || rt->auth == MDM_AUTH_API_ADMIN;
    return !admin || query_unambiguous(req);
}

bool mdm__server_precheck(mdm_server_t *s, mdm_req_t *req)
{
    req->prechecked = route_and_authorize(s, req);
    return req->prechecked;
}

void mdm__server_dispatch(mdm_server_t *s, mdm_req_t *req)
{
    if (!req->tls && s->cfg->proxy_cert_header != NULL)
        apply_cert_header(s, req);
    if (!req->prechecked && !route_and_authorize(s, req))
        return;
    req->route->fn(req);
}

/* ---- commit batching ----------------------------------------------------- */

static void finish_stop(mdm_server_t *s);

int mdm_server_commit(mdm_server_t *s)
{
    int rc = 0;
    if (mdm_store_pending(s->store)) {
        uint64_t t0 = mdm_mono_ns();
        rc = mdm_store_flush(s->store);
        mdm_histogram_observe_ns(s->metrics.commit_latency, mdm_mono_ns() - t0);
        if (rc != 0)
            mdm_log(MDM_LOG_ERROR, NULL, "store.commit_failed",
                    "error=\"%s\" effect=\"responses of this batch answered 503\"",
                    mdm_strerror(rc));
    }
    s->commit_failed = rc != 0;
    mdm_conn_t *c = s->awaiting_commit;
    s->awaiting_commit = NULL;
    while (c != NULL) {
        mdm_conn_t *next = mdm__conn_commit_next(c);
        mdm__conn_release_held(c, rc != 0);
        c = next;
    }
    return rc;
}

/* An iteration of the event loop that works this long without waiting
 * for input delays every connection by as much: logged (loop.busy), at
 * most once a second. */
#define LOOP_BUSY_LOG_NS (200 * 1000000ull)
#define LOOP_BUSY_LOG_EVERY_NS (1000 * 1000000ull)

/* The iteration's busy time: since the previous one ended, less the time
 * the loop waited for input (libuv's idle time), and the commit, which
 * began at start_ns and ends now. */
static void account_iteration(mdm_server_t *s, uint64_t start_ns)
{
    uv_loop_t *loop = s->commit_check.loop;
    uint64_t end = mdm_mono_ns(), idle = uv_metrics_idle_time(loop);
    uint64_t commit_ns = end - start_ns;
    if (s->iter_end_ns != 0 && start_ns >= s->iter_end_ns) {
        uint64_t span = start_ns - s->iter_end_ns, waited = idle - s->iter_idle_ns;
        uint64_t busy = (waited < span ? span - waited : 0) + commit_ns;
        mdm_histogram_observe_ns(s->metrics.loop_busy, busy);
        s->iter_other_ns = busy > s->iter_hs_ns ? busy - s->iter_hs_ns : 0;
        if (busy >= LOOP_BUSY_LOG_NS) {
            if (end - s->busy_logged_ns >= LOOP_BUSY_LOG_EVERY_NS) {
                mdm_log(MDM_LOG_WARN, NULL, "loop.busy",
                        "ms=%.1f commit_ms=%.1f requests=%llu connections=%zu "
                        "earlier_unlogged=%u effect=\"every connection waited as long\"",
                        (double)busy / 1e6, (double)commit_ns / 1e6,
                        (unsigned long long)(s->next_request - s->iter_requests), s->nconns,
                        s->busy_unlogged);
                s->busy_logged_ns = end;
                s->busy_unlogged = 0;
            } else {
                s->busy_unlogged++;
            }
        }
    }
    s->iter_end_ns = end;
    s->iter_idle_ns = idle;
    s->iter_requests = s->next_request;
    s->iter_hs_ns = 0;
}

static void commit_check_cb(uv_check_t *h)
{
    mdm_server_t *s = h->data;
    uint64_t start = mdm_mono_ns();
    /* Releasing responses may let pipelined requests run and write again,
     * so repeat (bounded) until nothing waits. */
    for (int round = 0; round < 64; round++) {
        if (s->awaiting_commit == NULL && !mdm_store_pending(s->store))
            break;
        mdm_server_commit(s);
    }
    account_iteration(s, start);
    if (s->stopping && s->nconns == 0)
        finish_stop(s);
}

/* ---- signals and shutdown ------------------------------------------------ */

/* The second half of SIGHUP: the policy, once profiles.dir is stored (a
 * new policy may name a new profile). */
static void sighup_profiles_done(mdm_server_t *s, json_t *report, void *arg)
{
    (void)report;
    (void)arg;
    if (s->on_reload != NULL)
        s->on_reload(s);
    else
        mdm_log(MDM_LOG_INFO, NULL, "server.sighup_policy",
                "action=none reason=\"policy reload is not available in this build\"");
}

static void on_signal(uv_signal_t *h, int signum)
{
    mdm_server_t *s = h->data;
    if (signum == SIGHUP) {
        mdm_log(MDM_LOG_INFO, NULL, "server.sighup", "action=reload profiles_dir=%s",
                s->cfg->profiles_dir != NULL ? "true" : "false");
        mdm_profiles_reload(s, sighup_profiles_done, NULL);
        return;
    }
    mdm_log(MDM_LOG_INFO, NULL, "server.stopping", "signal=%s in_flight_connections=%zu",
            signum == SIGINT ? "SIGINT" : "SIGTERM", s->nconns);
    mdm_server_stop(s);
}

static void on_shutdown_timeout(uv_timer_t *t)
{
    mdm_server_t *s = t->data;
    mdm_log(MDM_LOG_WARN, NULL, "server.shutdown_grace_expired", "closing_connections=%zu",
            s->nconns);
    mdm_conn_t *c = s->conns;
    while (c != NULL) {
        mdm_conn_t *next = mdm__conn_next(c);
        mdm__conn_close(c);
        c = next;
    }
}

static void close_noop(uv_handle_t *h)
{
    (void)h;
}

static void finish_stop(mdm_server_t *s)
{
    static const int dummy = 0;
    (void)dummy;
    if (uv_is_closing((uv_handle_t *)&s->commit_check))
        return;
    uv_close((uv_handle_t *)&s->commit_check, close_noop);
    uv_close((uv_handle_t *)&s->hs_idle, close_noop);
    uv_close((uv_handle_t *)&s->shutdown_timer, close_noop);
    uv_close((uv_handle_t *)&s->sig_int, close_noop);
    uv_close((uv_handle_t *)&s->sig_term, close_noop);
    uv_close((uv_handle_t *)&s->sig_hup, close_noop);
    mdm_log(MDM_LOG_INFO, NULL, "server.stopped", "requests=%llu",
            (unsigned long long)s->next_request);
}

void mdm_server_stop(mdm_server_t *s)
{
    if (s->stopping)
        return;
    s->stopping = true;
    for (size_t i = 0; i < s->nlisteners; i++)
        if (!uv_is_closing((uv_handle_t *)&s->listeners[i].tcp))
            uv_close((uv_handle_t *)&s->listeners[i].tcp, close_noop);
    mdm_conn_t *c = s->conns;
    while (c != NULL) {
        mdm_conn_t *next = mdm__conn_next(c);
        mdm__conn_close_when_done(c);
        c = next;
    }
    uv_timer_start(&s->shutdown_timer, on_shutdown_timeout, s->cfg->http_shutdown_grace_ms, 0);
    if (s->nconns == 0)
        finish_stop(s);
}

void mdm__server_conn_closed(mdm_server_t *s, mdm_conn_t *c)
{
    (void)c;
    if (s->stopping && s->nconns == 0)
        finish_stop(s);
}

/* ---- set-up -------------------------------------------------------------- */

static void raise_fd_limit(void)
{
    struct rlimit rl;
    if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur < rl.rlim_max) {
        rl.rlim_cur = rl.rlim_max;
        setrlimit(RLIMIT_NOFILE, &rl);
    }
}

int mdm_server_init(mdm_server_t *s, uv_loop_t *loop, mdm_config_t *cfg, mdm_err_t *err)
{
    memset(s, 0, sizeof(*s));
    s->loop = loop;
    s->cfg = cfg;
    s->started_ms = mdm_now_ms();
    unsigned char pfx[2];
    mdm_random(pfx, sizeof(pfx));
    mdm_hex_encode(s->request_prefix, pfx, sizeof(pfx));
    s->read_buf_size = 64 * 1024;
    s->read_buf = mdm_malloc(s->read_buf_size);
    mdm_router_init(&s->router);
    raise_fd_limit();

    s->metrics.open_connections = mdm_metric(MDM_METRIC_GAUGE, "moonmdm_http_open_connections",
                                             NULL, "Open client connections");
    s->metrics.connections_total = mdm_metric(MDM_METRIC_COUNTER,
                                              "moonmdm_http_connections_total", NULL,
                                              "Client connections accepted");
    s->metrics.connections_rejected = mdm_metric(
        MDM_METRIC_COUNTER, "moonmdm_http_connections_rejected_total", NULL,
        "Connections closed at accept because http.max_connections was reached");
    s->metrics.tls_handshake_failures = mdm_metric(
        MDM_METRIC_COUNTER, "moonmdm_tls_handshake_failures_total", NULL, "Failed TLS handshakes");
    s->metrics.timeouts = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_http_timeouts_total", NULL,
                                     "Connections cut off by a read or write timeout");
    s->metrics.bad_requests = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_http_refused_total", NULL,
                                         "Requests refused by the HTTP layer (400/408/413/431)");
    s->metrics.latency = mdm_histogram("moonmdm_http_request_duration_seconds", NULL,
                                       "Time from a complete request to its response");
    s->metrics.commit_latency =
        mdm_histogram("moonmdm_store_commit_duration_seconds", NULL,
                      "Time of a store batch commit, its flush to disk included (the "
                      "event loop waits for it)");
    s->metrics.loop_busy =
        mdm_histogram("moonmdm_loop_busy_seconds", NULL,
                      "Time an event loop iteration worked without waiting for input: "
                      "requests, timers and the batch commit");
    /* For the busy time: libuv then counts the time it waits for input. */
    uv_loop_configure(loop, UV_METRICS_IDLE_TIME);

    const mdm_store_ops_t *ops = mdm_store_backend(cfg->store_backend);
    if (ops == NULL)
        return mdm_err_set(err, MDM_ECONFIG, "store.backend: unknown backend \"%s\"",
                           cfg->store_backend);
    mdm_store_config_t sc = {
        .path = cfg->store_path,
        .map_size = cfg->store_map_size,
        .map_max = cfg->store_map_max,
        .sync = cfg->store_sync,
        .flags = 0,
    };
    int rc = mdm_store_open(ops, &sc, &s->store, err);
    if (rc != 0)
        return rc;

    if (cfg->listen.n > 0) {
        rc = mdm_tls_server_ctx(cfg, &s->ssl_ctx, &s->client_ca_store, err);
        if (rc != 0)
            return rc;
    } else if (cfg->tls_client_ca.n > 0) {
        rc = mdm_tls_load_ca_store(&cfg->tls_client_ca, &s->client_ca_store, err);
        if (rc != 0)
            return rc;
    }
    mdm_guard_opts_t go = {.name = "api",
                           .threshold = cfg->security_auth_fail_threshold,
                           .backoff_ms = cfg->security_auth_backoff_ms,
                           .backoff_max_ms = cfg->security_auth_backoff_max_ms,
                           .window_ms = cfg->security_auth_window_ms};
    s->api_guard = mdm_guard_new(&go);
    register_core_routes(s);
    rc = mdm__modules_init(s, err);
    if (rc != 0)
        return rc;

    uv_idle_init(loop, &s->hs_idle);
    s->hs_idle.data = s;
    uv_check_init(loop, &s->commit_check);
    s->commit_check.data = s;
    uv_check_start(&s->commit_check, commit_check_cb);
    uv_timer_init(loop, &s->shutdown_timer);
    s->shutdown_timer.data = s;
    uv_unref((uv_handle_t *)&s->shutdown_timer);
    uv_signal_init(loop, &s->sig_int);
    uv_signal_init(loop, &s->sig_term);
    uv_signal_init(loop, &s->sig_hup);
    s->sig_int.data = s->sig_term.data = s->sig_hup.data = s;
    uv_signal_start(&s->sig_int, on_signal, SIGINT);
    uv_signal_start(&s->sig_term, on_signal, SIGTERM);
    uv_signal_start(&s->sig_hup, on_signal, SIGHUP);
    signal(SIGPIPE, SIG_IGN);
    return 0;
}

static void on_connection(uv_stream_t *server, int status)
{
    mdm_listener_t *l = server->data;
    if (status < 0) {
        mdm_log(MDM_LOG_WARN, NULL, "http.accept_failed", "error=\"%s\"", uv_strerror(status));
        return;
    }
    mdm__conn_accept(l->server, l);
}

/* Splits "host:port" or "[v6]:port". */
static int bind_one(mdm_server_t *s, mdm_listener_t *l, const char *spec, bool tls,
                    mdm_err_t *err)
{
    char host[64];
    int port;
    if (mdm_parse_listen(spec, host, sizeof(host), &port) != 0)
        return mdm_err_set(err, MDM_ECONFIG,
                           "%s: \"%s\" is not an IP address and port (want ip:port or [v6]:port)",
                           tls ? "listen" : "listen_plain", spec);
    struct sockaddr_storage ss;
    if (uv_ip4_addr(host, port, (struct sockaddr_in *)&ss) != 0 &&
        uv_ip6_addr(host, port, (struct sockaddr_in6 *)&ss) != 0)
        return mdm_err_set(err, MDM_ECONFIG, "%s: \"%s\" is not an IP address",
                           tls ? "listen" : "listen_plain", host);
    l->server = s;
    l->tls = tls;
    uv_tcp_init(s->loop, &l->tcp);
    l->tcp.data = l;
    int r = uv_tcp_bind(&l->tcp, (struct sockaddr *)&ss, 0);
    if (r == 0)
        r = uv_listen((uv_stream_t *)&l->tcp, 1024, on_connection);
    if (r != 0)
        return mdm_err_set(err, MDM_EIO, "cannot listen on %s: %s", spec, uv_strerror(r));
    struct sockaddr_storage bound;
    int len = sizeof(bound);
    uv_tcp_getsockname(&l->tcp, (struct sockaddr *)&bound, &len);
    l->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                 : ((struct sockaddr_in *)&bound)->sin_port);
    if (bound.ss_family == AF_INET6)
        snprintf(l->addr, sizeof(l->addr), "[%s]:%d", host, l->port);
    else
        snprintf(l->addr, sizeof(l->addr), "%s:%d", host, l->port);
    mdm_log(MDM_LOG_INFO, NULL, "server.listening", "addr=%s port=%d tls=%s", l->addr, l->port,
            tls ? "true" : "false");
    return 0;
}

int mdm_server_listen(mdm_server_t *s, mdm_err_t *err)
{
    const mdm_config_t *cfg = s->cfg;
    size_t n = cfg->listen.n + cfg->listen_plain.n;
    if (n == 0)
        return mdm_err_set(err, MDM_ECONFIG, "listen: no address to listen on");
    s->listeners = mdm_calloc(n, sizeof(*s->listeners));
    for (size_t i = 0; i < cfg->listen.n; i++) {
        int rc = bind_one(s, &s->listeners[s->nlisteners], cfg->listen.v[i], true, err);
        if (rc != 0)
            return rc;
        s->nlisteners++;
    }
    for (size_t i = 0; i < cfg->listen_plain.n; i++) {
        int rc = bind_one(s, &s->listeners[s->nlisteners], cfg->listen_plain.v[i], false, err);
        if (rc != 0)
            return rc;
        s->nlisteners++;
    }
    return 0;
}

void mdm_server_free(mdm_server_t *s)
{
    mdm__modules_free(s);
    mdm_guard_free(s->api_guard);
    if (s->store != NULL) {
        int rc = mdm_store_flush(s->store);
        if (rc != 0)
            mdm_log(MDM_LOG_ERROR, NULL, "store.final_commit_failed", "error=\"%s\"",
                    mdm_strerror(rc));
        mdm_store_close(s->store);
    }
    SSL_CTX_free(s->ssl_ctx);
    X509_STORE_free(s->client_ca_store);
    mdm_router_free(&s->router);
    mdm_free(s->listeners);
    mdm_free(s->read_buf);
    mdm_buf_free(&s->scratch);
    mdm_buf_free(&s->out);
    mdm__http_free_pool(s);
    memset(s, 0, sizeof(*s));
}
