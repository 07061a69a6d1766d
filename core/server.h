/* The server object: owns the loop, the listeners, every subsystem, the
 * signals and the shutdown. Everything mutable lives in it (no other global
 * state), so a later multi-process mode needs no rewrite. */
#ifndef MDM_SERVER_H
#define MDM_SERVER_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stdint.h>
#include <uv.h>

#include "api/metrics.h"
#include "config.h"
#include "net/http.h"
#include "net/router.h"
#include "store/store.h"
#include "util/buf.h"
#include "util/err.h"

typedef struct mdm_listener {
    uv_tcp_t tcp;
    mdm_server_t *server;
    bool tls;
    char addr[80];
    int port;                 /* the bound port (useful with port 0) */
} mdm_listener_t;

typedef struct mdm_conn_list {
    mdm_conn_t *head;
} mdm_conn_list_t;

/* Metrics the HTTP layer updates on every request, and those of the loop
 * and its batch commits (core/server.c). */
typedef struct mdm_http_metrics {
    mdm_metric_t *open_connections;
    mdm_metric_t *connections_total;
    mdm_metric_t *connections_rejected;
    mdm_metric_t *tls_handshake_failures;
    mdm_metric_t *timeouts;
    mdm_metric_t *bad_requests;
    mdm_histogram_t *latency;
    mdm_histogram_t *commit_latency;
    mdm_histogram_t *loop_busy;
} mdm_http_metrics_t;

struct json_t;
typedef void (*mdm_server_hook_fn)(mdm_server_t *s);

struct mdm_server {
    uv_loop_t *loop;
    mdm_config_t *cfg;
    mdm_store_t *store;
    SSL_CTX *ssl_ctx;
    X509_STORE *client_ca_store;  /* device CAs, for certificates from a proxy header */
    mdm_router_t router;

    mdm_listener_t *listeners;
    size_t nlisteners;

    mdm_conn_t *conns;            /* every open connection (intrusive list) */
    size_t nconns;
    mdm_conn_t *awaiting_commit;  /* connections with responses held for the batch commit */
    mdm_conn_t *hs_held_head, *hs_held_tail; /* handshakes held for a later iteration */
    uv_idle_t hs_idle;            /* runs them */

    uv_check_t commit_check;
    /* Event loop busy time (loop.busy): where the last iteration ended,
     * the loop's idle time then, and when a long one was last logged. */
    uint64_t iter_end_ns, iter_idle_ns, busy_logged_ns, iter_requests;
    /* Of the last iteration's busy time: held handshakes (so far in this
     * one), and the rest (core/net/http.c shares the loop between them). */
    uint64_t iter_hs_ns, iter_other_ns;
    unsigned busy_unlogged;
    uv_signal_t sig_int, sig_term, sig_hup;
    uv_timer_t shutdown_timer;
    bool stopping;
    bool commit_failed;           /* the last batch commit failed */
    int exit_code;

    uint64_t next_request;
    char request_prefix[8];
    int64_t started_ms;

    mdm_http_metrics_t metrics;
    mdm_buf_t scratch;            /* ciphertext staging for writes */
    mdm_buf_t out;                /* plaintext staging for responses */
    mdm_req_t *req_pool;          /* finished requests kept for reuse */
    size_t req_pool_n;
    char http_date[40];           /* Date header value, refreshed each second */
    int64_t http_date_sec;
    unsigned char *read_buf;      /* shared by every connection's reads */
    size_t read_buf_size;

    /* Subsystems register their state here as they are added. */
    struct mdm_ca *ca;
    struct mdm_guard *api_guard;  /* failed API key attempts */
    void *api;
    void *mdm;
    void *scep;
    void *policy;
    void *apns;
    void *profiles;
    void *enroll;

    /* Sends a push to one enrollment and fills result with {"apns_id"} or
     * {"error"} (set by the APNs service; NULL: push not configured). */
    void (*push_fn)(mdm_server_t *s, const char *eid, struct json_t *result);

    /* The APNs topic new enrollments should use (set by the APNs service:
     * the topic of a loaded push certificate), or NULL. */
    const char *(*topic_fn)(mdm_server_t *s);

    /* Called on SIGHUP (policy reload). */
    mdm_server_hook_fn on_reload;
};

/* Sets up the server from a loaded config: opens the store, builds the TLS
 * context and the routes. Nothing listens yet. */
int mdm_server_init(mdm_server_t *s, uv_loop_t *loop, mdm_config_t *cfg, mdm_err_t *err);

/* Binds every listener of the config and starts accepting. */
int mdm_server_listen(mdm_server_t *s, mdm_err_t *err);

/* Stops accepting, lets in-flight requests finish (bounded by
 * http.shutdown_grace), then stops the loop. Safe to call twice. */
void mdm_server_stop(mdm_server_t *s);

/* Commits the open store batch now and answers the responses that waited
 * for it (503 when the commit failed). Handlers that answer later, after
 * asynchronous work, call it first so that a failed commit is not reported
 * as a success. Returns the commit's result. */
int mdm_server_commit(mdm_server_t *s);

/* Frees everything (after uv_run has returned). */
void mdm_server_free(mdm_server_t *s);

/* Handles a request whose headers and body are complete (called by the
 * HTTP layer): cert header, routing, authentication, the handler. */
void mdm__server_dispatch(mdm_server_t *s, mdm_req_t *req);

/* Routes and authorizes a request whose headers are complete and whose
 * body is still to come (Expect: 100-continue), so that a request that
 * cannot succeed is answered before its body is invited. Answers and
 * returns false when it may not go on; dispatch then skips these checks. */
bool mdm__server_precheck(mdm_server_t *s, mdm_req_t *req);

/* Called by the HTTP layer when a connection is gone. */
void mdm__server_conn_closed(mdm_server_t *s, mdm_conn_t *c);

#endif
