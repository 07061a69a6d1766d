/* HTTP/1.1 connections: TLS (or plain TCP) from libuv, llhttp parsing with
 * limits, pipelined requests answered in order, keep-alive, timeouts, and
 * responses held back until the store batch they depend on is committed. */
#include "net/http.h"

#include <llhttp.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "net/http_internal.h"
#include "net/tls.h"
#include "server.h"
#include "util/alloc.h"
#include "util/encode.h"
#include "util/log.h"
#include "util/misc.h"

enum deadline_kind { DL_NONE, DL_READ, DL_IDLE, DL_WRITE, DL_LINGER };

/* After an error answer the client may still be sending (a body we refused):
 * read and drop its bytes for a while before closing, so that the close
 * does not reset the connection before the client has read the answer. */
#define LINGER_MS 2000
#define LINGER_MAX_BYTES (4u << 20)

/* TLS handshakes cost about a millisecond of processor time each, and an
 * iteration of the event loop handles every connection that has input:
 * when a thousand devices connect at once (woken by a push), handshakes
 * would hold the loop for a second, and the answers already made in that
 * iteration would wait until its end for their commit and their write.
 * Once an iteration has worked this long, handshake input is held for a
 * later one, so that established connections are served between slices
 * of handshakes; each iteration then gives the held ones a slice of this
 * length. */
#define HANDSHAKE_SLICE_MS 10

struct mdm_conn {
    uv_tcp_t tcp;
    uv_timer_t timer;
    mdm_server_t *server;
    mdm_listener_t *listener;
    mdm_conn_t *prev, *next;       /* server->conns */
    mdm_conn_t *commit_next;       /* server->awaiting_commit */
    bool in_commit_list;
    /* Handshake input held for a later iteration of the loop (see
     * HANDSHAKE_SLICE_MS); the connection does not read meanwhile. */
    mdm_buf_t hs_held;
    mdm_conn_t *hs_next;           /* server->hs_held_head */
    bool hs_queued;

    bool is_tls;
    mdm_tls_t tls;
    X509 *peer_cert;
    unsigned char peer_fp[32];     /* SHA-256 of peer_cert's DER, once per connection */
    bool peer_fp_ok;
    int64_t peer_not_before, peer_not_after; /* its validity, seconds since 1970 */

    llhttp_t parser;
    mdm_buf_t in;                  /* plaintext not yet parsed */
    size_t in_off;
    mdm_req_t *cur;                /* the request being parsed */
    mdm_buf_t url, hfield, hval;
    mdm_header_t *hdrs;
    size_t nhdrs, hdrs_cap;
    size_t header_bytes;
    /* Raw bytes of the request head so far, whitespace llhttp skips
     * included: head_mark is where the head starts in the chunk being
     * parsed (NULL: at its start, or not known yet when head_began). */
    size_t head_raw;
    const char *head_mark;
    bool head_began;
    int error_status;              /* set by a parser callback that refuses */
    const char *error_detail;

    mdm_req_t *pipe_head, *pipe_tail;
    size_t npipe;                  /* requests complete and not yet sent */

    size_t writes_pending;
    size_t write_bytes_pending;
    int64_t deadline;              /* loop time in ms */
    int deadline_kind;
    int64_t read_deadline;         /* the request in progress must be complete by then */
    int handles_open;

    bool reading;
    bool blocked;                  /* parsing stopped: too many requests queued, or paused */
    mdm_req_t *paused_by;          /* parse nothing more until it is answered */
    bool closing;
    bool close_when_done;
    bool no_more_requests;         /* shutting down: nothing after the request in progress */
    bool answered_early;           /* the request was answered at its head: parse no more */
    bool in_parse;
    bool eof;
    bool linger;                   /* drain input before closing (error answers) */
    bool lingering;
    size_t linger_bytes;
    uv_shutdown_t shutdown;        /* our side's end, sent before lingering */
    char remote[64];
};

typedef struct write_req {
    uv_write_t req;
    mdm_conn_t *conn;
    size_t len;
    char data[];
} write_req_t;

static llhttp_settings_t parser_settings;
static bool parser_settings_ready;

static void conn_parse(mdm_conn_t *c);
static void conn_flush(mdm_conn_t *c);

/* An ASN.1 time as seconds since 1970, or 0 when it does not convert. */
static int64_t asn1_time_s(const ASN1_TIME *t)
{
    struct tm tm;
    if (t == NULL || ASN1_TIME_to_tm(t, &tm) != 1)
        return 0;
    return (int64_t)timegm(&tm);
}
static void conn_maybe_free(mdm_conn_t *c);
static void conn_update_reading(mdm_conn_t *c);

/* ---- requests ------------------------------------------------------------ */

#define REQ_POOL_MAX 1024

static void format_request_id(mdm_server_t *s, char out[24])
{
    static const char hx[] = "0123456789abcdef";
    uint64_t n = ++s->next_request;
    size_t p = strlen(s->request_prefix);
    memcpy(out, s->request_prefix, p);
    /* At least 8 hex digits, more when the counter needs them. */
    int digits = 8;
    while (digits < 16 && (n >> (4 * digits)) != 0)
        digits++;
    for (int i = digits - 1; i >= 0; i--)
        out[p++] = hx[(n >> (4 * i)) & 15];
    out[p] = '\0';
}

static mdm_req_t *req_new(mdm_conn_t *c)
{
    mdm_server_t *s = c->server;
    mdm_req_t *req = s->req_pool;
    if (req != NULL) {
        s->req_pool = req->next;
        s->req_pool_n--;
        /* Keep the arena's first chunk and the response buffers. */
        mdm_arena_t arena = req->arena;
        mdm_buf_t head = req->resp_head, body = req->resp_body;
        memset(req, 0, sizeof(*req));
        req->arena = arena;
        req->resp_head = head;
        req->resp_body = body;
    } else {
        req = mdm_calloc(1, sizeof(*req));
        mdm_arena_init(&req->arena, 4096);
    }
    req->server = s;
    req->conn = c;
    req->tls = c->is_tls;
    memcpy(req->remote_addr, c->remote, sizeof(req->remote_addr));
    format_request_id(s, req->id);
    return req;
}

static void account_request(mdm_req_t *req);

/* Whether req->peer_cert is the request's to free: a certificate from a
 * proxy header is, and so is a TLS connection's once the request took a
 * reference of its own (it outlived its connection); otherwise it is the
 * connection's. */
static bool req_owns_cert(const mdm_req_t *req)
{
    return req->peer_cert != NULL &&
           (req->peer_cert_ref ||
            (req->peer_cert_source != NULL && strcmp(req->peer_cert_source, "tls") != 0));
}

static void req_free(mdm_req_t *req)
{
    mdm_server_t *s = req->server;
    if (req->responded)
        account_request(req); /* a held answer whose connection went away */
    if (req_owns_cert(req))
        X509_free(req->peer_cert);
    mdm_free(req->body);
    req->body = NULL;
    req->body_cap = 0;
    if (s->req_pool_n < REQ_POOL_MAX && !s->stopping) {
        mdm_arena_reset(&req->arena);
        if (req->resp_body.cap > 65536)
            mdm_buf_free(&req->resp_body);
        if (req->resp_head.cap > 4096)
            mdm_buf_free(&req->resp_head);
        mdm_buf_reset(&req->resp_head);
        mdm_buf_reset(&req->resp_body);
        req->next = s->req_pool;
        s->req_pool = req;
        s->req_pool_n++;
        return;
    }
    mdm_arena_free(&req->arena);
    mdm_buf_free(&req->resp_head);
    mdm_buf_free(&req->resp_body);
    mdm_free(req);
}

/* Frees the pool of finished requests (server shutdown). */
void mdm__http_free_pool(mdm_server_t *s)
{
    while (s->req_pool != NULL) {
        mdm_req_t *r = s->req_pool;
        s->req_pool = r->next;
        mdm_arena_free(&r->arena);
        mdm_buf_free(&r->resp_head);
        mdm_buf_free(&r->resp_body);
        mdm_free(r);
    }
    s->req_pool_n = 0;
}

const char *mdm_req_header(const mdm_req_t *req, const char *name)
{
    for (size_t i = 0; i < req->nheaders; i++)
        if (strcasecmp(req->headers[i].name, name) == 0)
            return req->headers[i].value;
    return NULL;
}

int mdm_req_query_raw(const mdm_req_t *req, const char *name, const char **value, size_t *len)
{
    size_t nl = strlen(name);
    const char *q = req->query;
    while (q != NULL && *q) {
        const char *amp = strchr(q, '&');
        size_t plen = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', plen);
        size_t klen = eq ? (size_t)(eq - q) : plen;
        if (klen == nl && memcmp(q, name, nl) == 0) {
            *value = eq ? eq + 1 : q + plen;
            *len = eq ? plen - klen - 1 : 0;
            return 0;
        }
        q = amp ? amp + 1 : NULL;
    }
    return MDM_ENOTFOUND;
}

int mdm_req_query(const mdm_req_t *req, const char *name, mdm_buf_t *out, bool plus_is_space)
{
    const char *v;
    size_t vlen;
    int rc = mdm_req_query_raw(req, name, &v, &vlen);
    return rc != 0 ? rc : mdm_url_decode(out, v, vlen, plus_is_space);
}

struct query_name {
    const char *p;
    size_t len;
};

static int cmp_query_name(const void *a, const void *b)
{
    const struct query_name *x = a, *y = b;
    size_t n = x->len < y->len ? x->len : y->len;
    int c = memcmp(x->p, y->p, n);
    return c != 0 ? c : (x->len > y->len) - (x->len < y->len);
}

bool mdm_req_query_repeated(mdm_req_t *req, const char **name, size_t *len)
{
    size_t n = 0;
    for (const char *q = req->query; *q; q++)
        n += *q == '&';
    struct query_name *names = mdm_arena_alloc(&req->arena, (n + 1) * sizeof(*names));
    size_t k = 0;
    for (const char *q = req->query; q != NULL && *q;) {
        const char *amp = strchr(q, '&');
        size_t plen = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', plen);
        if (plen > 0)
            names[k++] = (struct query_name){q, eq ? (size_t)(eq - q) : plen};
        q = amp ? amp + 1 : NULL;
    }
    /* Sorted, so that a long query costs n log n, not n squared. */
    qsort(names, k, sizeof(*names), cmp_query_name);
    for (size_t i = 1; i < k; i++) {
        if (cmp_query_name(&names[i - 1], &names[i]) == 0) {
            *name = names[i].p;
            *len = names[i].len;
            return true;
        }
    }
    return false;
}

bool mdm_req_conn_open(const mdm_req_t *req)
{
    return req->conn != NULL && !req->conn->closing;
}

void mdm_req_pause_pipeline(mdm_req_t *req)
{
    mdm_conn_t *c = req->conn;
    if (c == NULL || req->responded || c->closing)
        return;
    c->paused_by = req;
    c->blocked = true;
    conn_update_reading(c);
}

const char *mdm_http_reason(int status)
{
    switch (status) {
    case 100: return "Continue";
    case 200: return "OK";
    case 201: return "Created";
    case 202: return "Accepted";
    case 204: return "No Content";
    case 207: return "Multi-Status";
    case 301: return "Moved Permanently";
    case 302: return "Found";
    case 304: return "Not Modified";
    case 400: return "Bad Request";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "Not Found";
    case 405: return "Method Not Allowed";
    case 408: return "Request Timeout";
    case 409: return "Conflict";
    case 410: return "Gone";
    case 411: return "Length Required";
    case 413: return "Content Too Large";
    case 414: return "URI Too Long";
    case 415: return "Unsupported Media Type";
    case 417: return "Expectation Failed";
    case 422: return "Unprocessable Content";
    case 429: return "Too Many Requests";
    case 431: return "Request Header Fields Too Large";
    case 500: return "Internal Server Error";
    case 501: return "Not Implemented";
    case 502: return "Bad Gateway";
    case 503: return "Service Unavailable";
    case 505: return "HTTP Version Not Supported";
    }
    return "Unknown";
}

void mdm_resp_header(mdm_req_t *req, const char *name, const char *value)
{
    mdm_buf_printf(&req->resp_head, "%s: %s\r\n", name, value);
}

static const char *http_date(mdm_server_t *s)
{
    time_t t = time(NULL);
    if ((int64_t)t != s->http_date_sec) {
        struct tm tm;
        gmtime_r(&t, &tm);
        strftime(s->http_date, sizeof(s->http_date), "%a, %d %b %Y %H:%M:%S GMT", &tm);
        s->http_date_sec = (int64_t)t;
    }
    return s->http_date;
}

static void log_request(mdm_req_t *req)
{
    if (!req->server->cfg->log_requests || !mdm_log_enabled(MDM_LOG_INFO))
        return;
    char qp[300];
    char cert[48] = "-";
    if (req->peer_cert != NULL) {
        unsigned char md[32];
        unsigned int mdlen = 32;
        if (req->peer_fp_ok)
            memcpy(md, req->peer_fp, sizeof(md));
        else if (X509_digest(req->peer_cert, EVP_sha256(), md, &mdlen) != 1)
            mdlen = 0;
        if (mdlen == 32)
            mdm_hex_encode(cert, md, 8);
    }
    double ms = req->start_ns ? (double)(mdm_mono_ns() - req->start_ns) / 1e6 : 0.0;
    mdm_log(req->status >= 500 ? MDM_LOG_WARN : MDM_LOG_INFO, req->id, "http.request",
            "remote=%s method=%s path=%s status=%d bytes=%zu dur_ms=%.3f route=%s "
            "client_cert=%s cert_source=%s",
            req->remote_addr, req->method_name ? req->method_name : "-",
            mdm_logq(qp, sizeof(qp), req->path), req->status, req->resp_body.len, ms,
            req->route ? req->route->name : "-", cert,
            req->peer_cert_source ? req->peer_cert_source : "-");
}

static mdm_metric_t *request_counter(mdm_req_t *req)
{
    mdm_route_t *rt = (mdm_route_t *)req->route;
    if (rt != NULL) {
        for (size_t i = 0; i < sizeof(rt->status_cache) / sizeof(rt->status_cache[0]); i++) {
            if (rt->status_cache[i].status == req->status)
                return rt->status_cache[i].metric;
            if (rt->status_cache[i].status == 0) {
                char labels[160];
                snprintf(labels, sizeof(labels), "route=\"%s\",status=\"%d\"", rt->name,
                         req->status);
                rt->status_cache[i].metric =
                    mdm_metric(MDM_METRIC_COUNTER, "moonmdm_http_requests_total", labels,
                               "HTTP requests answered, by route and status");
                rt->status_cache[i].status = req->status;
                return rt->status_cache[i].metric;
            }
        }
    }
    char labels[160];
    snprintf(labels, sizeof(labels), "route=\"%s\",status=\"%d\"", rt ? rt->name : "none",
             req->status);
    return mdm_metric(MDM_METRIC_COUNTER, "moonmdm_http_requests_total", labels,
                      "HTTP requests answered, by route and status");
}

/* Counts and logs an answered request, once, with the status the client
 * gets: a held answer is accounted when the batch commit has decided it. */
static void account_request(mdm_req_t *req)
{
    if (req->accounted)
        return;
    req->accounted = true;
    mdm_server_t *s = req->server;
    if (req->start_ns)
        mdm_histogram_observe_ns(s->metrics.latency, mdm_mono_ns() - req->start_ns);
    mdm_metric_add(request_counter(req), 1);
    log_request(req);
}

void mdm_resp_send_buf(mdm_req_t *req, int status, const char *ctype)
{
    if (req->responded)
        return;
    req->status = status;
    req->responded = true;
    if (ctype != NULL)
        mdm_buf_printf(&req->resp_head, "Content-Type: %s\r\n", ctype);
    mdm_conn_t *c = req->conn;
    if (c == NULL) {
        req_free(req);
        return;
    }
    if (c->paused_by == req)
        c->paused_by = NULL; /* conn_flush parses what follows */
    if (!req->no_hold && mdm_store_pending(c->server->store))
        req->held = true;
    else
        account_request(req);
    if (!c->in_parse)
        conn_flush(c);
}

void mdm_resp_send(mdm_req_t *req, int status, const char *ctype, const void *body, size_t len)
{
    mdm_buf_reset(&req->resp_body);
    if (len)
        mdm_buf_append(&req->resp_body, body, len);
    mdm_resp_send_buf(req, status, ctype);
}

void mdm_resp_text(mdm_req_t *req, int status, const char *text)
{
    mdm_buf_reset(&req->resp_body);
    mdm_buf_puts(&req->resp_body, text);
    if (text[0] && text[strlen(text) - 1] != '\n')
        mdm_buf_putc(&req->resp_body, '\n');
    mdm_resp_send_buf(req, status, "text/plain; charset=utf-8");
}

static void json_escape(mdm_buf_t *b, const char *s)
{
    mdm_buf_putc(b, '"');
    for (; s && *s; s++) {
        unsigned char ch = (unsigned char)*s;
        if (ch == '"' || ch == '\\')
            mdm_buf_printf(b, "\\%c", ch);
        else if (ch < 0x20)
            mdm_buf_printf(b, "\\u%04x", ch);
        else
            mdm_buf_putc(b, (char)ch);
    }
    mdm_buf_putc(b, '"');
}

void mdm_resp_json_error(mdm_req_t *req, int status, const char *error, const char *detail)
{
    mdm_buf_reset(&req->resp_body);
    mdm_buf_puts(&req->resp_body, "{\"error\":");
    json_escape(&req->resp_body, error);
    if (detail != NULL) {
        mdm_buf_puts(&req->resp_body, ",\"detail\":");
        json_escape(&req->resp_body, detail);
    }
    mdm_buf_puts(&req->resp_body, "}\n");
    mdm_resp_send_buf(req, status, "application/json");
}

static void buf_put_uint(mdm_buf_t *b, uint64_t v)
{
    char tmp[24];
    int n = 0;
    do {
        tmp[n++] = (char)('0' + v % 10);
        v /= 10;
    } while (v);
    mdm_buf_reserve(b, (size_t)n);
    while (n > 0)
        b->data[b->len++] = tmp[--n];
    b->data[b->len] = '\0';
}

#define PUT_LIT(b, s) mdm_buf_append((b), (s), sizeof(s) - 1)

/* Serialises the response of req into out (no printf: this runs for
 * every response). */
static void serialize_response(mdm_conn_t *c, mdm_req_t *req, mdm_buf_t *out)
{
    PUT_LIT(out, "HTTP/1.1 ");
    buf_put_uint(out, (uint64_t)req->status);
    mdm_buf_putc(out, ' ');
    mdm_buf_puts(out, mdm_http_reason(req->status));
    PUT_LIT(out, "\r\nDate: ");
    mdm_buf_puts(out, http_date(c->server));
    PUT_LIT(out, "\r\nServer: moonmdm\r\nX-Request-Id: ");
    mdm_buf_puts(out, req->id);
    PUT_LIT(out, "\r\nContent-Length: ");
    buf_put_uint(out, req->resp_body.len);
    PUT_LIT(out, "\r\n");
    /* Only the last response on the connection says so: answered requests
     * pipelined behind this one are still sent. */
    if (req->close_after ||
        ((c->close_when_done || c->server->stopping) && req->next == NULL && c->cur == NULL))
        PUT_LIT(out, "Connection: close\r\n");
    if (req->resp_head.len)
        mdm_buf_append(out, req->resp_head.data, req->resp_head.len);
    PUT_LIT(out, "\r\n");
    if (req->method != MDM_HEAD && req->resp_body.len)
        mdm_buf_append(out, req->resp_body.data, req->resp_body.len);
}

/* ---- timers -------------------------------------------------------------- */

static void conn_timer_cb(uv_timer_t *t);

static void set_deadline(mdm_conn_t *c, int kind, uint64_t ms)
{
    if (c->closing)
        return;
    c->deadline_kind = kind;
    if (kind == DL_NONE) {
        c->deadline = INT64_MAX;
        return;
    }
    int64_t now = (int64_t)uv_now(c->server->loop);
    c->deadline = now + (int64_t)ms;
    /* The timer is re-armed lazily: if it is due before the new deadline it
     * will fire, see the later deadline and sleep again. */
    if (!uv_is_active((uv_handle_t *)&c->timer) ||
        (int64_t)uv_timer_get_due_in(&c->timer) > (int64_t)ms)
        uv_timer_start(&c->timer, conn_timer_cb, ms, 0);
}

/* Puts back the read deadline of the request in progress (a write
 * deadline set meanwhile has no business outliving its writes). */
static void restore_read_deadline(mdm_conn_t *c)
{
    if (c->deadline_kind == DL_READ || c->closing)
        return;
    int64_t now = (int64_t)uv_now(c->server->loop);
    uint64_t left = c->read_deadline > now ? (uint64_t)(c->read_deadline - now) : 0;
    set_deadline(c, DL_READ, left);
}

static void update_idle_deadline(mdm_conn_t *c)
{
    const mdm_config_t *cfg = c->server->cfg;
    if (c->writes_pending > 0)
        set_deadline(c, DL_WRITE, cfg->http_write_timeout_ms);
    else if (c->cur != NULL)
        restore_read_deadline(c); /* the request in progress keeps its own */
    else if (c->npipe > 0)
        set_deadline(c, DL_NONE, 0);
    else
        set_deadline(c, DL_IDLE, cfg->http_idle_timeout_ms);
}

static void queue_error_response(mdm_conn_t *c, int status, const char *detail);

static void conn_timer_cb(uv_timer_t *t)
{
    mdm_conn_t *c = t->data;
    if (c->closing || c->deadline_kind == DL_NONE)
        return;
    int64_t now = (int64_t)uv_now(c->server->loop);
    if (now < c->deadline) {
        uv_timer_start(&c->timer, conn_timer_cb, (uint64_t)(c->deadline - now), 0);
        return;
    }
    switch (c->deadline_kind) {
    case DL_READ:
        mdm_metric_add(c->server->metrics.timeouts, 1);
        if (c->is_tls && !c->tls.established) {
            mdm_log(MDM_LOG_INFO, NULL, "tls.handshake_timeout", "remote=%s", c->remote);
            mdm__conn_close(c);
        } else if (c->cur != NULL && c->npipe == 0) {
            mdm_log(MDM_LOG_INFO, c->cur->id, "http.read_timeout", "remote=%s", c->remote);
            queue_error_response(c, 408, "the request was not complete within the read timeout");
        } else {
            mdm__conn_close(c);
        }
        break;
    case DL_IDLE:
        mdm_log(MDM_LOG_DEBUG, NULL, "http.idle_close", "remote=%s", c->remote);
        mdm__conn_close(c);
        break;
    case DL_LINGER:
        mdm__conn_close(c);
        break;
    case DL_WRITE:
        mdm_metric_add(c->server->metrics.timeouts, 1);
        mdm_log(MDM_LOG_INFO, NULL, "http.write_timeout", "remote=%s", c->remote);
        mdm__conn_close(c);
        break;
    }
}

/* ---- writing ------------------------------------------------------------- */

static void linger_read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    mdm_conn_t *c = stream->data;
    (void)buf;
    if (c->closing)
        return;
    if (nread < 0) {
        mdm__conn_close(c);
        return;
    }
    c->linger_bytes += (size_t)nread;
    if (c->linger_bytes > LINGER_MAX_BYTES)
        mdm__conn_close(c);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf);

static void on_shutdown(uv_shutdown_t *req, int status)
{
    /* Nothing to do: lingering ends at the client's end, the byte limit or
     * the deadline. (UV_ECANCELED comes when the connection is closed
     * first, before its handles' close callbacks.) */
    (void)req;
    (void)status;
}

/* Everything owed has been written: close, or drain first. Draining keeps
 * what the client still sends from turning our close into a reset that
 * could destroy the answer before the client read it; our side of the
 * connection ends at once, so that the client sees the end right after the
 * answer instead of after the drain. */
static void conn_finish(mdm_conn_t *c)
{
    if (!c->linger || c->eof) {
        mdm__conn_close(c);
        return;
    }
    if (c->lingering)
        return;
    if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
        mdm__conn_close(c);
        return;
    }
    c->lingering = true;
    if (c->reading)
        uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, linger_read_cb) == 0;
    set_deadline(c, DL_LINGER, LINGER_MS);
}

static void after_write(uv_write_t *w, int status)
{
    write_req_t *wr = (write_req_t *)w;
    mdm_conn_t *c = wr->conn;
    c->writes_pending--;
    c->write_bytes_pending -= wr->len;
    mdm_free(wr);
    if (status < 0 && !c->closing) {
        mdm__conn_close(c);
    } else if (c->closing) {
        conn_maybe_free(c);
    } else if (c->writes_pending == 0 && c->close_when_done && c->npipe == 0 &&
               (c->cur == NULL || c->eof)) {
        /* Done (a request cut off by the client's end never completes). */
        conn_finish(c);
    } else {
        update_idle_deadline(c);
        conn_update_reading(c);
    }
}

/* Writes bytes to the socket: synchronously when the kernel takes them,
 * otherwise through a write request that owns a copy. */
static void conn_write_raw(mdm_conn_t *c, const char *p, size_t n)
{
    if (n == 0 || c->closing)
        return;
    if (c->writes_pending == 0) {
        uv_buf_t b = uv_buf_init((char *)p, (unsigned)n);
        int w = uv_try_write((uv_stream_t *)&c->tcp, &b, 1);
        if (w > 0) {
            p += w;
            n -= (size_t)w;
        }
        if (n == 0)
            return;
    }
    write_req_t *wr = mdm_malloc(sizeof(*wr) + n);
    wr->conn = c;
    wr->len = n;
    memcpy(wr->data, p, n);
    uv_buf_t b = uv_buf_init(wr->data, (unsigned)n);
    if (uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, after_write) != 0) {
        mdm_free(wr);
        mdm__conn_close(c);
        return;
    }
    c->writes_pending++;
    c->write_bytes_pending += n;
}

static void conn_send_plain(mdm_conn_t *c, const char *p, size_t n)
{
    if (!c->is_tls) {
        conn_write_raw(c, p, n);
        return;
    }
    if (mdm_tls_write(&c->tls, p, n) != 0) {
        mdm__conn_close(c);
        return;
    }
    mdm_buf_t *scratch = &c->server->scratch;
    size_t mark = scratch->len;
    mdm_tls_take_output(&c->tls, scratch);
    conn_write_raw(c, scratch->data + mark, scratch->len - mark);
    scratch->len = mark;
}

/* Sends the ciphertext OpenSSL produced on its own (handshake, alerts). */
static void conn_send_tls_output(mdm_conn_t *c)
{
    if (!c->is_tls)
        return;
    mdm_buf_t out = MDM_BUF_INIT;
    if (mdm_tls_take_output(&c->tls, &out) > 0)
        conn_write_raw(c, out.data, out.len);
    mdm_buf_free(&out);
}

static void pipe_pop(mdm_conn_t *c)
{
    mdm_req_t *r = c->pipe_head;
    c->pipe_head = r->next;
    if (c->pipe_head == NULL)
        c->pipe_tail = NULL;
    c->npipe--;
}

/* Forgets the requests pipelined behind a response that closes the
 * connection: answered ones are freed, the others are answered into the
 * void when their handlers finish (as when the connection closes). */
static void pipe_drop(mdm_conn_t *c)
{
    while (c->pipe_head != NULL) {
        mdm_req_t *r = c->pipe_head;
        pipe_pop(c);
        if (r->responded) {
            req_free(r);
            continue;
        }
        r->conn = NULL;
        if (c->paused_by == r)
            c->paused_by = NULL;
        /* The connection's certificate goes with it; the request, answered
         * later, keeps a reference of its own. */
        if (r->peer_cert != NULL && !req_owns_cert(r)) {
            X509_up_ref(r->peer_cert);
            r->peer_cert_ref = true;
        }
    }
}

/* Puts the connection on the server's list of those waiting for the batch
 * commit (once). */
static void await_commit(mdm_conn_t *c)
{
    mdm_server_t *s = c->server;
    if (c->in_commit_list)
        return;
    c->in_commit_list = true;
    c->commit_next = s->awaiting_commit;
    s->awaiting_commit = c;
}

/* Sends every answered request at the head of the pipeline, in order, up
 * to one held for the batch commit. */
static void conn_flush(mdm_conn_t *c)
{
    mdm_server_t *s = c->server;
    if (c->closing) {
        while (c->pipe_head != NULL && c->pipe_head->responded) {
            mdm_req_t *r = c->pipe_head;
            pipe_pop(c);
            req_free(r);
        }
        conn_maybe_free(c);
        return;
    }
    if (c->pipe_head == NULL || !c->pipe_head->responded)
        return;
    if (c->pipe_head->held) {
        /* The batch this response may depend on is not on disk yet. */
        await_commit(c);
        return;
    }
    mdm_buf_t *out = &s->out;
    mdm_buf_reset(out);
    while (c->pipe_head != NULL && c->pipe_head->responded && !c->pipe_head->held) {
        mdm_req_t *r = c->pipe_head;
        bool last = r->close_after;
        serialize_response(c, r, out);
        pipe_pop(c);
        req_free(r);
        /* Stop after a response that closes the connection, and only then:
         * close_when_done alone (end of input, an error answer queued
         * behind, shutdown) still owes every answered request its response.
         * Stopping there left the rest in the pipeline with no deadline and
         * reading stopped, and the connection open for good. */
        if (last) {
            c->close_when_done = true;
            pipe_drop(c);
            break;
        }
    }
    conn_send_plain(c, out->data, out->len);
    if (out->cap > (1u << 20))
        mdm_buf_free(out);
    if (c->closing)
        return;
    if (c->pipe_head != NULL && c->pipe_head->responded && c->pipe_head->held)
        await_commit(c); /* sent up to a response that waits for the commit */
    if (s->stopping && c->cur == NULL)
        c->close_when_done = true;
    if (c->close_when_done && c->npipe == 0) {
        /* Drop what else the client pipelined; close once written, and
         * read nothing meanwhile. */
        if (c->writes_pending == 0)
            conn_finish(c);
        else
            conn_update_reading(c);
        return;
    }
    update_idle_deadline(c);
    if (c->blocked && c->paused_by == NULL && !c->no_more_requests &&
        c->npipe < s->cfg->http_max_pipeline) {
        c->blocked = false;
        conn_parse(c);
    }
    conn_update_reading(c);
}

void mdm__conn_release_held(mdm_conn_t *c, bool failed)
{
    c->in_commit_list = false;
    c->commit_next = NULL;
    if (failed) {
        for (mdm_req_t *r = c->pipe_head; r != NULL; r = r->next) {
            if (!r->responded || !r->held)
                continue;
            mdm_buf_reset(&r->resp_head);
            mdm_buf_reset(&r->resp_body);
            mdm_buf_puts(&r->resp_body,
                         "{\"error\":\"storage_unavailable\",\"detail\":\"the change could not "
                         "be written to the store; nothing was saved, retry later\"}\n");
            mdm_buf_puts(&r->resp_head, "Content-Type: application/json\r\nRetry-After: 5\r\n");
            r->status = 503;
        }
    }
    for (mdm_req_t *r = c->pipe_head; r != NULL; r = r->next) {
        if (r->responded && r->held)
            account_request(r);
        r->held = false;
    }
    conn_flush(c);
}

mdm_conn_t *mdm__conn_commit_next(mdm_conn_t *c)
{
    return c->commit_next;
}

/* ---- errors from the parser ---------------------------------------------- */

/* Appends a request to the connection's pipeline (answers go out in this
 * order). */
static void pipe_push(mdm_conn_t *c, mdm_req_t *req)
{
    if (c->pipe_tail)
        c->pipe_tail->next = req;
    else
        c->pipe_head = req;
    c->pipe_tail = req;
    c->npipe++;
}

/* The request being parsed is answered before its end: it goes into the
 * pipeline as the last one, and the connection closes after the answers,
 * draining what the client still sends (its body) for a while. */
static void end_with_current(mdm_conn_t *c, mdm_req_t *req)
{
    c->cur = NULL;
    req->close_after = true;
    pipe_push(c, req);
    c->close_when_done = true;
    c->linger = true;
    c->blocked = true; /* parse nothing more */
}

/* Answers the request being parsed (or a new one) with an error and closes
 * the connection after it. */
static void queue_error_response(mdm_conn_t *c, int status, const char *detail)
{
    mdm_req_t *req = c->cur;
    if (req == NULL)
        req = req_new(c);
    req->start_ns = mdm_mono_ns();
    if (req->path == NULL)
        req->path = c->url.len ? mdm_arena_strndup(&req->arena, c->url.data, 200) : NULL;
    end_with_current(c, req);
    mdm_metric_add(c->server->metrics.bad_requests, 1);
    const char *err = status == 431   ? "header_too_large"
                      : status == 413 ? "body_too_large"
                      : status == 408 ? "request_timeout"
                      : status == 501 ? "not_implemented"
                      : status == 505 ? "version_not_supported"
                                      : "bad_request";
    mdm_log(MDM_LOG_INFO, req->id, "http.refused", "remote=%s status=%d reason=\"%s\"", c->remote,
            status, detail);
    mdm_resp_json_error(req, status, err, detail);
    if (c->in_parse)
        return;
    conn_flush(c);
}

/* ---- parser callbacks ---------------------------------------------------- */

#define CONN(p) ((mdm_conn_t *)(p)->data)

static int count_header_bytes(mdm_conn_t *c, size_t n)
{
    c->header_bytes += n;
    if (c->header_bytes > c->server->cfg->http_max_header_bytes) {
        c->error_status = 431;
        c->error_detail = "the request line and headers exceed http.max_header_bytes";
        return -1;
    }
    return 0;
}

static int on_message_begin(llhttp_t *p)
{
    mdm_conn_t *c = CONN(p);
    c->cur = req_new(c);
    c->header_bytes = 0;
    c->nhdrs = 0;
    mdm_buf_reset(&c->url);
    mdm_buf_reset(&c->hfield);
    mdm_buf_reset(&c->hval);
    c->head_raw = 0;
    c->head_mark = NULL;
    c->head_began = true;
    set_deadline(c, DL_READ, c->server->cfg->http_read_timeout_ms);
    c->read_deadline = c->deadline;
    if (mdm_log_enabled(MDM_LOG_DEBUG))
        mdm_log(MDM_LOG_DEBUG, c->cur->id, "http.request_begin", "remote=%s", c->remote);
    return 0;
}

static int on_url(llhttp_t *p, const char *at, size_t n)
{
    mdm_conn_t *c = CONN(p);
    if (c->head_began && c->head_mark == NULL)
        c->head_mark = at;
    if (count_header_bytes(c, n))
        return -1;
    mdm_buf_append(&c->url, at, n);
    return 0;
}

static int on_header_field(llhttp_t *p, const char *at, size_t n)
{
    mdm_conn_t *c = CONN(p);
    if (count_header_bytes(c, n))
        return -1;
    mdm_buf_append(&c->hfield, at, n);
    return 0;
}

static int on_header_value(llhttp_t *p, const char *at, size_t n)
{
    mdm_conn_t *c = CONN(p);
    if (count_header_bytes(c, n + 4))
        return -1;
    mdm_buf_append(&c->hval, at, n);
    return 0;
}

static int on_header_value_complete(llhttp_t *p)
{
    mdm_conn_t *c = CONN(p);
    mdm_req_t *req = c->cur;
    if (req->headers_done) {
        /* A trailer field after a chunked body: counted against the header
         * limit by the callbacks above, otherwise ignored. */
        mdm_buf_reset(&c->hfield);
        mdm_buf_reset(&c->hval);
        return 0;
    }
    if (c->nhdrs == c->hdrs_cap) {
        size_t cap = c->hdrs_cap ? c->hdrs_cap * 2 : 32;
        mdm_header_t *h = mdm_arena_alloc(&req->arena, cap * sizeof(*h));
        if (c->nhdrs)
            memcpy(h, c->hdrs, c->nhdrs * sizeof(*h));
        c->hdrs = h;
        c->hdrs_cap = cap;
    }
    const char *v = c->hval.data ? c->hval.data : "";
    size_t vl = c->hval.len;
    while (vl > 0 && (v[0] == ' ' || v[0] == '\t'))
        v++, vl--;
    while (vl > 0 && (v[vl - 1] == ' ' || v[vl - 1] == '\t'))
        vl--;
    c->hdrs[c->nhdrs].name = mdm_arena_memdup(&req->arena, c->hfield.data ? c->hfield.data : "",
                                              c->hfield.len);
    c->hdrs[c->nhdrs].value = mdm_arena_memdup(&req->arena, v, vl);
    c->nhdrs++;
    mdm_buf_reset(&c->hfield);
    mdm_buf_reset(&c->hval);
    return 0;
}

/* Checks the Transfer-Encoding fields: chunked is the only coding served,
 * once and last. Returns 0, or an error status with *detail set. */
static int check_transfer_codings(const mdm_req_t *req, const char **detail)
{
    size_t chunked = 0, other = 0;
    bool last_chunked = false;
    for (size_t i = 0; i < req->nheaders; i++) {
        if (strcasecmp(req->headers[i].name, "Transfer-Encoding") != 0)
            continue;
        const char *v = req->headers[i].value;
        while (*v) {
            size_t n = strcspn(v, ",");
            size_t lead = strspn(v, " \t");
            size_t len = n > lead ? n - lead : 0;
            while (len > 0 && (v[lead + len - 1] == ' ' || v[lead + len - 1] == '\t'))
                len--;
            if (len > 0) {
                last_chunked = len == 7 && strncasecmp(v + lead, "chunked", 7) == 0;
                chunked += last_chunked;
                other += !last_chunked;
            }
            v += n + (v[n] == ',');
        }
    }
    if (chunked + other == 0)
        return 0;
    if (!last_chunked || chunked > 1) {
        *detail = "malformed request: chunked must be the final transfer coding, once";
        return 400;
    }
    if (other > 0) {
        *detail = "only the chunked transfer coding is supported";
        return 501;
    }
    return 0;
}

static int on_headers_complete(llhttp_t *p)
{
    mdm_conn_t *c = CONN(p);
    mdm_req_t *req = c->cur;
    const mdm_config_t *cfg = c->server->cfg;

    req->headers = c->hdrs;
    req->nheaders = c->nhdrs;
    /* The header array lives in this request's arena: the next request
     * starts a new one. */
    c->hdrs = NULL;
    c->hdrs_cap = 0;
    c->nhdrs = 0;
    req->headers_done = true;
    req->method_name = llhttp_method_name((llhttp_method_t)llhttp_get_method(p));
    req->method = mdm_method_bit(req->method_name);
    req->target = mdm_arena_memdup(&req->arena, c->url.data ? c->url.data : "", c->url.len);
    char *q = strchr(req->target, '?');
    if (q != NULL) {
        req->path = mdm_arena_strndup(&req->arena, req->target, (size_t)(q - req->target));
        req->query = q + 1;
    } else {
        req->path = req->target;
        req->query = "";
    }
    if (llhttp_get_http_major(p) != 1) {
        c->error_status = 505;
        c->error_detail = "only HTTP/1.x is served (answered as HTTP/1.1)";
        return -1;
    }
    int te_status = check_transfer_codings(req, &c->error_detail);
    if (te_status != 0) {
        c->error_status = te_status;
        return -1;
    }
    if (p->flags & F_CONTENT_LENGTH && p->content_length > cfg->http_max_body_bytes) {
        c->error_status = 413;
        c->error_detail = "the body exceeds http.max_body_bytes";
        return -1;
    }
    const char *expect = mdm_req_header(req, "Expect");
    if (expect != NULL) {
        if (strcasecmp(expect, "100-continue") != 0) {
            c->error_status = 417;
            c->error_detail = "only Expect: 100-continue is supported";
            return -1;
        }
        bool body_to_come = (p->flags & F_CHUNKED) || p->content_length > 0;
        if (!body_to_come)
            return 0;
        /* Invite the body only when the request can succeed: a route for
         * it, and the API key it needs. Otherwise the final answer goes
         * now, and the body is not read. */
        req->start_ns = mdm_mono_ns();
        if (!mdm__server_precheck(c->server, req)) {
            end_with_current(c, req);
            c->answered_early = true;
            return -1;
        }
        /* An interim answer may only go out when no earlier response is
         * still owed on this connection; otherwise the client sends the
         * body after its own short wait. */
        if (c->npipe == 0 && c->writes_pending == 0) {
            static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
            conn_send_plain(c, cont, sizeof(cont) - 1);
        }
    }
    return 0;
}

/* The most a body's first allocation takes on a client's word
 * (Content-Length); beyond it the buffer grows as the bytes arrive. */
#define BODY_FIRST_ALLOC (1u << 20)

static int on_body(llhttp_t *p, const char *at, size_t n)
{
    mdm_conn_t *c = CONN(p);
    mdm_req_t *req = c->cur;
    if (req->body_len + n > c->server->cfg->http_max_body_bytes) {
        c->error_status = 413;
        c->error_detail = "the body exceeds http.max_body_bytes";
        return -1;
    }
    size_t need = req->body_len + n + 1;
    if (need > req->body_cap) {
        /* The announced length at once (up to BODY_FIRST_ALLOC), then
         * doubling: growing by each chunk would copy a large body over
         * and over. */
        size_t cap = req->body_cap * 2;
        if (req->body_cap == 0 && (p->flags & F_CONTENT_LENGTH)) {
            uint64_t whole = req->body_len + n + p->content_length + 1;
            cap = whole < BODY_FIRST_ALLOC ? (size_t)whole : BODY_FIRST_ALLOC;
        }
        if (cap < need)
            cap = need;
        req->body = mdm_realloc(req->body, cap);
        req->body_cap = cap;
    }
    memcpy(req->body + req->body_len, at, n);
    req->body_len += n;
    req->body[req->body_len] = '\0';
    return 0;
}

static int on_message_complete(llhttp_t *p)
{
    mdm_conn_t *c = CONN(p);
    mdm_req_t *req = c->cur;
    c->cur = NULL;
    if (req->body == NULL) {
        req->body = mdm_malloc(1);
        req->body[0] = '\0';
    }
    req->close_after = !llhttp_should_keep_alive(p) || p->upgrade;
    req->start_ns = mdm_mono_ns();
    if (c->is_tls && c->peer_cert != NULL) {
        req->peer_cert = c->peer_cert;
        req->peer_cert_source = "tls";
        if (c->peer_fp_ok) {
            memcpy(req->peer_fp, c->peer_fp, sizeof(req->peer_fp));
            req->peer_fp_ok = true;
        }
        req->peer_not_before = c->peer_not_before;
        req->peer_not_after = c->peer_not_after;
    }
    pipe_push(c, req);
    /* Stop here: the request is dispatched before the next one is parsed,
     * so that pipelined requests are handled in order. */
    return HPE_PAUSED;
}

static void init_parser_settings(void)
{
    if (parser_settings_ready)
        return;
    llhttp_settings_init(&parser_settings);
    parser_settings.on_message_begin = on_message_begin;
    parser_settings.on_url = on_url;
    parser_settings.on_header_field = on_header_field;
    parser_settings.on_header_value = on_header_value;
    parser_settings.on_header_value_complete = on_header_value_complete;
    parser_settings.on_headers_complete = on_headers_complete;
    parser_settings.on_body = on_body;
    parser_settings.on_message_complete = on_message_complete;
    parser_settings_ready = true;
}

/* ---- parsing and reading ------------------------------------------------- */

static void conn_parse(mdm_conn_t *c)
{
    mdm_server_t *s = c->server;
    c->in_parse = true;
    while (!c->closing && !c->blocked && !c->no_more_requests && c->in_off < c->in.len) {
        if (c->npipe >= s->cfg->http_max_pipeline) {
            c->blocked = true;
            break;
        }
        const char *start = c->in.data + c->in_off;
        size_t avail = c->in.len - c->in_off;
        bool in_head = c->cur != NULL && !c->cur->headers_done;
        c->head_mark = NULL;
        c->head_began = false;
        llhttp_errno_t e = llhttp_execute(&c->parser, start, avail);
        if (e == HPE_OK) {
            c->in_off = c->in.len;
            /* Still in a request head: count what this chunk gave it,
             * including the whitespace no callback reports. */
            if (c->cur != NULL && !c->cur->headers_done &&
                (in_head || c->head_mark != NULL)) {
                const char *from = c->head_mark ? c->head_mark : start;
                c->head_raw += (size_t)(start + avail - from);
                if (c->head_raw > s->cfg->http_max_header_bytes) {
                    queue_error_response(c, 431, "the request line and headers exceed "
                                                 "http.max_header_bytes");
                    break;
                }
            }
            break;
        }
        if (e == HPE_PAUSED || e == HPE_PAUSED_UPGRADE) {
            const char *pos = llhttp_get_error_pos(&c->parser);
            c->in_off += (size_t)(pos - start);
            if (e == HPE_PAUSED_UPGRADE) {
                /* No protocol upgrades: answer, then close. */
                c->blocked = true;
            } else {
                llhttp_resume(&c->parser);
            }
            /* llhttp reports an upgrade request once more after its end:
             * it is dispatched once. */
            mdm_req_t *req = c->pipe_tail;
            if (req != NULL && !req->dispatched) {
                req->dispatched = true;
                mdm__server_dispatch(s, req);
            }
            /* Shutting down: the request that was in progress is the last
             * one this connection gets answered. */
            if (s->stopping && !c->closing) {
                c->no_more_requests = true;
                c->close_when_done = true;
            }
            continue;
        }
        if (c->answered_early) {
            /* Answered at its head (Expect: 100-continue): stop here. */
            c->in_off = c->in.len;
            break;
        }
        if (e == HPE_INVALID_VERSION && !c->error_status) {
            c->error_status = 505; /* a version llhttp does not know */
            c->error_detail = "only HTTP/1.x is served (answered as HTTP/1.1)";
        }
        int status = c->error_status ? c->error_status : 400;
        const char *detail = c->error_detail ? c->error_detail : llhttp_get_error_reason(&c->parser);
        char buf[200];
        if (!c->error_status) {
            snprintf(buf, sizeof(buf), "malformed request: %s", detail ? detail : "parse error");
            detail = buf;
        }
        queue_error_response(c, status, detail);
        c->in_off = c->in.len;
        break;
    }
    if (c->in_off == c->in.len) {
        c->in.len = 0;
        c->in_off = 0;
    } else if (c->in_off > 65536) {
        mdm_buf_consume(&c->in, c->in_off);
        c->in_off = 0;
    }
    c->in_parse = false;
    conn_flush(c);
}

static void alloc_cb(uv_handle_t *h, size_t suggested, uv_buf_t *buf)
{
    mdm_conn_t *c = h->data;
    mdm_server_t *s = c->server;
    /* Reads are handled one at a time on the loop thread, so one buffer is
     * shared by every connection. */
    buf->base = (char *)s->read_buf;
    buf->len = s->read_buf_size;
}

static void on_peer_eof(mdm_conn_t *c)
{
    c->eof = true;
    if (c->npipe == 0 && c->writes_pending == 0) {
        /* Nothing owed (a request cut off by the end is dropped). */
        mdm__conn_close(c);
        return;
    }
    /* Answer what was asked and finish writing, then close. */
    c->close_when_done = true;
    conn_update_reading(c);
}

/* Feeds ciphertext to the TLS layer, then parses the plaintext it gave. */
static void conn_tls_input(mdm_conn_t *c, const char *data, size_t n)
{
    const char *why = NULL;
    int r = mdm_tls_feed(&c->tls, data, n, &c->in, &why);
    conn_send_tls_output(c);
    if (r < 0) {
        if (!c->tls.established) {
            mdm_metric_add(c->server->metrics.tls_handshake_failures, 1);
            mdm_log(MDM_LOG_INFO, NULL, "tls.handshake_failed", "remote=%s reason=\"%s\"",
                    c->remote, why ? why : "?");
        } else {
            mdm_log(MDM_LOG_INFO, NULL, "tls.error", "remote=%s reason=\"%s\"", c->remote,
                    why ? why : "?");
        }
        mdm__conn_close(c);
        return;
    }
    if (r == MDM_TLS_HANDSHAKE_DONE) {
        c->peer_cert = mdm_tls_peer_cert(&c->tls);
        unsigned int mdlen = 0;
        c->peer_fp_ok = c->peer_cert != NULL &&
                        X509_digest(c->peer_cert, EVP_sha256(), c->peer_fp, &mdlen) == 1 &&
                        mdlen == sizeof(c->peer_fp);
        /* The handshake checked the dates, but a connection (or a
         * resumed session) outlives them: requests check them again. */
        if (c->peer_cert != NULL) {
            c->peer_not_before = asn1_time_s(X509_get0_notBefore(c->peer_cert));
            c->peer_not_after = asn1_time_s(X509_get0_notAfter(c->peer_cert));
        }
        if (c->in.len == 0)
            set_deadline(c, DL_IDLE, c->server->cfg->http_idle_timeout_ms);
    }
    if (r == MDM_TLS_CLOSED) {
        /* What came before the close_notify is parsed first. */
        if (c->in.len > c->in_off)
            conn_parse(c);
        if (!c->closing)
            on_peer_eof(c);
        return;
    }
    if (c->in.len > c->in_off)
        conn_parse(c);
}

/* Whether the current iteration of the loop has worked HANDSHAKE_SLICE_MS
 * (uv_now is when it began, or when its poll returned). */
static bool handshake_slice_over(mdm_server_t *s)
{
    return uv_hrtime() / 1000000 >= uv_now(s->loop) + HANDSHAKE_SLICE_MS;
}

/* Holds handshake input for a later iteration: the connection stops
 * reading and joins the server's queue of held handshakes. */
static void hold_handshake(mdm_conn_t *c, const char *data, size_t n)
{
    mdm_server_t *s = c->server;
    mdm_buf_append(&c->hs_held, data, n);
    if (c->hs_queued)
        return;
    c->hs_queued = true;
    c->hs_next = NULL;
    if (s->hs_held_tail != NULL)
        s->hs_held_tail->hs_next = c;
    else
        s->hs_held_head = c;
    s->hs_held_tail = c;
    conn_update_reading(c);
    uv_idle_start(&s->hs_idle, mdm__conn_run_held_handshakes);
}

static void unqueue_handshake(mdm_conn_t *c)
{
    mdm_server_t *s = c->server;
    if (!c->hs_queued)
        return;
    mdm_conn_t *prev = NULL;
    for (mdm_conn_t *p = s->hs_held_head; p != NULL; prev = p, p = p->hs_next) {
        if (p != c)
            continue;
        if (prev != NULL)
            prev->hs_next = c->hs_next;
        else
            s->hs_held_head = c->hs_next;
        if (s->hs_held_tail == c)
            s->hs_held_tail = prev;
        break;
    }
    c->hs_queued = false;
    c->hs_next = NULL;
}

/* The loop's idle handle: held handshakes in arrival order, for a slice of
 * their own in every iteration, at least one handshake: HANDSHAKE_SLICE_MS,
 * or as long as the previous iteration worked on everything else, so that
 * a loop kept busy by established connections shares its time evenly
 * between them and the devices still connecting. */
void mdm__conn_run_held_handshakes(uv_idle_t *h)
{
    mdm_server_t *s = h->data;
    uint64_t start = uv_hrtime(), slice = (uint64_t)HANDSHAKE_SLICE_MS * 1000000;
    if (s->iter_other_ns > slice)
        slice = s->iter_other_ns;
    bool first = true;
    while (s->hs_held_head != NULL && (first || uv_hrtime() - start < slice)) {
        first = false;
        mdm_conn_t *c = s->hs_held_head;
        unqueue_handshake(c);
        mdm_buf_t held = c->hs_held;
        c->hs_held = (mdm_buf_t)MDM_BUF_INIT;
        conn_tls_input(c, held.data, held.len);
        mdm_buf_free(&held);
        conn_update_reading(c);
    }
    s->iter_hs_ns += uv_hrtime() - start;
    if (s->hs_held_head == NULL)
        uv_idle_stop(h);
}

static void read_cb(uv_stream_t *stream, ssize_t nread, const uv_buf_t *buf)
{
    mdm_conn_t *c = stream->data;
    if (nread == 0 || c->closing)
        return;
    if (nread < 0) {
        on_peer_eof(c);
        return;
    }
    if (!c->is_tls) {
        mdm_buf_append(&c->in, buf->base, (size_t)nread);
        if (c->in.len > c->in_off)
            conn_parse(c);
        return;
    }
    if (!c->tls.established && (c->hs_queued || handshake_slice_over(c->server))) {
        hold_handshake(c, buf->base, (size_t)nread);
        return;
    }
    conn_tls_input(c, buf->base, (size_t)nread);
}

static void conn_update_reading(mdm_conn_t *c)
{
    if (c->closing || c->lingering)
        return;
    bool want = !c->blocked && !c->eof && !c->close_when_done && !c->hs_queued &&
                c->write_bytes_pending < (4u << 20);
    if (want && !c->reading) {
        if (uv_read_start((uv_stream_t *)&c->tcp, alloc_cb, read_cb) == 0)
            c->reading = true;
    } else if (!want && c->reading) {
        uv_read_stop((uv_stream_t *)&c->tcp);
        c->reading = false;
    }
}

/* ---- lifecycle ----------------------------------------------------------- */

static void conn_free(mdm_conn_t *c)
{
    mdm_server_t *s = c->server;
    if (c->cur)
        req_free(c->cur);
    if (c->is_tls)
        mdm_tls_free(&c->tls);
    X509_free(c->peer_cert);
    mdm_buf_free(&c->in);
    mdm_buf_free(&c->hs_held);
    mdm_buf_free(&c->url);
    mdm_buf_free(&c->hfield);
    mdm_buf_free(&c->hval);
    mdm__server_conn_closed(s, c);
    mdm_free(c);
}

static void conn_maybe_free(mdm_conn_t *c)
{
    if (c->closing && c->handles_open == 0 && c->npipe == 0 && c->writes_pending == 0)
        conn_free(c);
}

static void on_handle_closed(uv_handle_t *h)
{
    mdm_conn_t *c = h->data;
    c->handles_open--;
    conn_maybe_free(c);
}

void mdm__conn_close(mdm_conn_t *c)
{
    if (c->closing)
        return;
    c->closing = true;
    mdm_server_t *s = c->server;
    /* Unlink from the server's lists now, so that nothing finds a
     * connection that is going away. */
    if (c->prev)
        c->prev->next = c->next;
    else if (s->conns == c)
        s->conns = c->next;
    if (c->next)
        c->next->prev = c->prev;
    c->prev = c->next = NULL;
    unqueue_handshake(c);
    if (c->in_commit_list) {
        mdm_conn_t **pp = &s->awaiting_commit;
        while (*pp != NULL && *pp != c)
            pp = &(*pp)->commit_next;
        if (*pp == c)
            *pp = c->commit_next;
        c->in_commit_list = false;
    }
    s->nconns--;
    mdm_metric_add(s->metrics.open_connections, -1);

    /* Requests a handler still works on stay allocated until answered;
     * answered ones are dropped now. */
    if (c->cur) {
        req_free(c->cur);
        c->cur = NULL;
    }
    mdm_req_t **pp = &c->pipe_head;
    c->pipe_tail = NULL;
    while (*pp != NULL) {
        mdm_req_t *r = *pp;
        if (r->responded) {
            *pp = r->next;
            c->npipe--;
            req_free(r);
        } else {
            r->conn = NULL; /* answered into the void */
            *pp = r->next;
            c->npipe--;
        }
    }
    if (c->reading)
        uv_read_stop((uv_stream_t *)&c->tcp);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
}

bool mdm__conn_idle(const mdm_conn_t *c)
{
    return c->cur == NULL && c->npipe == 0 && c->writes_pending == 0;
}

void mdm__conn_close_when_done(mdm_conn_t *c)
{
    if (c->closing)
        return;
    if (mdm__conn_idle(c) && (c->in.len == c->in_off)) {
        mdm__conn_close(c);
        return;
    }
    /* A request in progress is completed and answered; nothing after it is
     * parsed (conn_parse), and its answer is the last. */
    if (c->cur == NULL) {
        c->close_when_done = true;
        c->no_more_requests = true;
        conn_update_reading(c); /* nothing more is read, let alone buffered */
    } else {
        c->blocked = false;
    }
}

mdm_conn_t *mdm__conn_next(const mdm_conn_t *c)
{
    return c->next;
}

void mdm__conn_accept(mdm_server_t *s, mdm_listener_t *l)
{
    init_parser_settings();
    mdm_conn_t *c = mdm_calloc(1, sizeof(*c));
    c->server = s;
    c->listener = l;
    uv_tcp_init(s->loop, &c->tcp);
    c->tcp.data = c;
    c->handles_open = 1;
    if (uv_accept((uv_stream_t *)&l->tcp, (uv_stream_t *)&c->tcp) != 0) {
        c->closing = true;
        uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
        return;
    }
    uv_timer_init(s->loop, &c->timer);
    c->timer.data = c;
    c->handles_open = 2;

    /* Link in first so that a close unlinks consistently. */
    c->next = s->conns;
    if (s->conns)
        s->conns->prev = c;
    s->conns = c;
    s->nconns++;
    mdm_metric_add(s->metrics.open_connections, 1);
    mdm_metric_add(s->metrics.connections_total, 1);

    struct sockaddr_storage ss;
    int len = sizeof(ss);
    if (uv_tcp_getpeername(&c->tcp, (struct sockaddr *)&ss, &len) == 0) {
        char ip[INET6_ADDRSTRLEN] = "?";
        int port = 0;
        if (ss.ss_family == AF_INET) {
            struct sockaddr_in *a = (struct sockaddr_in *)&ss;
            uv_ip4_name(a, ip, sizeof(ip));
            port = ntohs(a->sin_port);
            snprintf(c->remote, sizeof(c->remote), "%s:%d", ip, port);
        } else if (ss.ss_family == AF_INET6) {
            struct sockaddr_in6 *a = (struct sockaddr_in6 *)&ss;
            uv_ip6_name(a, ip, sizeof(ip));
            port = ntohs(a->sin6_port);
            snprintf(c->remote, sizeof(c->remote), "[%s]:%d", ip, port);
        }
    }
    if (s->nconns > s->cfg->http_max_connections || s->stopping) {
        mdm_metric_add(s->metrics.connections_rejected, 1);
        mdm_log(MDM_LOG_WARN, NULL, "http.connection_rejected",
                "remote=%s open=%zu limit=%zu reason=%s", c->remote, s->nconns - 1,
                s->cfg->http_max_connections, s->stopping ? "stopping" : "max_connections");
        mdm__conn_close(c);
        return;
    }
    uv_tcp_nodelay(&c->tcp, 1);
    c->is_tls = l->tls;
    if (c->is_tls && mdm_tls_init(&c->tls, s->ssl_ctx) != 0) {
        mdm__conn_close(c);
        return;
    }
    llhttp_init(&c->parser, HTTP_REQUEST, &parser_settings);
    /* Any HTTP/x.y reaches on_headers_complete, which serves 1.x (a 1.2
     * request is answered as 1.1 would be, RFC 9112 section 2.3) and
     * answers 505 to other majors; llhttp alone refuses 1.2 as invalid. */
    c->parser.lenient_flags |= LENIENT_VERSION;
    c->parser.data = c;
    set_deadline(c, DL_READ, s->cfg->http_read_timeout_ms);
    conn_update_reading(c);
}
