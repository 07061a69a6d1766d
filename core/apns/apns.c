/* The APNs push service (see apns.h).
 *
 * A push moves through these states:
 *
 *   intake -> WAITING -> IN_FLIGHT -> FINISHED -> DONE (kept for the
 *                ^           |                    coalesce window) -> freed
 *                |           v
 *              (ready) <- RETRY (backoff heap)
 *
 * Intake and dispatch run in slices from a uv_idle handle, so that a burst
 * of 100,000 pushes never holds the loop for long: each slice reads its
 * enrollments in one store view, and each batch of finished pushes writes
 * its enrollment updates in one store update before any waiter hears the
 * result, so that a caller told "token_invalid" finds it stored. Accepted
 * pushes are not written (a burst would rewrite every record), except those
 * of the sweep, whose last_push_at keeps it from pushing a silent device
 * more than once per apns.sweep_after. */
#include "apns/apns.h"

#include <curl/curl.h>
#include <jansson.h>
#include <limits.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api.h"
#include "crypto/keys.h"
#include "mdm/mdm.h"
#include "util/alloc.h"
#include "util/encode.h"
#include "util/log.h"
#include "util/misc.h"
#include "util/plist.h"

#define PRODUCTION_URL "https://api.push.apple.com"
#define SANDBOX_URL "https://api.sandbox.push.apple.com"

#define INTAKE_SLICE 1024
#define DISPATCH_SLICE 32
#define SWEEP_SLICE 1000
#define HOUSEKEEPING_MS 1000
#define EXPIRY_CHECK_MS (3600 * 1000)
#define EXPIRY_WARN_MS (30LL * 86400 * 1000)
#define EXPIRY_REPEAT_MS (86400LL * 1000)
#define RETRY_CAP_MS (5 * 60 * 1000)
#define RESP_MAX 4096
#define CONNECT_TIMEOUT_MS 10000
#define MAX_STREAMS 1000

enum push_state { P_WAITING, P_IN_FLIGHT, P_RETRY, P_FINISHED, P_DONE };

/* A pooled curl handle, configured once; the certificate blobs are set
 * again only when the next request uses another certificate. */
typedef struct easy {
    CURL *h;
    char cert_sha[65];
} easy_t;

typedef struct waiter {
    mdm_apns_result_fn cb;
    void *arg;
    size_t index;
    bool coalesced;
    struct waiter *next;
} waiter_t;

typedef struct intake {
    char *eid;
    waiter_t *w;              /* NULL: fire and forget */
    bool record;              /* store last_push_at when accepted (sweep) */
    struct intake *next;
} intake_t;

typedef struct apns apns_t;
typedef struct topic_slots topic_slots_t;

typedef struct push {
    char *eid;
    uint32_t hash;
    struct push *hnext;       /* hash bucket chain */
    bool in_hash;
    bool detached;            /* in the table only for shutdown: lookups skip it */
    struct push *next;        /* the queue it is on */
    int state;
    waiter_t *waiters;
    int attempts;             /* requests sent */
    int64_t token_read_ms;    /* when the request's token was read (wall clock) */
    bool seen;                /* the device was heard from since it was made */
    int64_t retry_at_ms;      /* mono_ms() */
    int64_t done_ms;          /* mono_ms() */
    uint64_t sent_ns;

    /* the request (while WAITING..IN_FLIGHT) */
    unsigned char *token;
    size_t token_len;
    char *body;
    char topic[MDM_TOPIC_MAX + 1];
    char cert_sha[65];        /* the certificate the request went out with */
    char apns_id[40];         /* sent as apns-id */
    easy_t *easy;
    topic_slots_t *slots;     /* the topic whose slot the request holds */
    struct curl_slist *headers;
    mdm_buf_t resp;
    char resp_apns_id[40];

    /* the outcome */
    int status;
    int http_status;
    char reason[48];
    char *error;
    bool mark_invalid;
    bool record;              /* store last_push_at when accepted */
} push_t;

typedef struct sockctx {
    uv_poll_t poll;
    curl_socket_t fd;
    apns_t *a;
    struct sockctx *prev, *next;
} sockctx_t;

typedef struct push_queue {
    push_t *head, *tail;
    size_t n;
} pqueue_t;

/* One topic's part of apns.max_in_flight: its unanswered requests, and its
 * pushes that wait for one of them to end (held without their token, which
 * is read again when they go out). */
struct topic_slots {
    char topic[MDM_TOPIC_MAX + 1];
    size_t in_flight;
    size_t picked;            /* taken from held by the dispatch slice under way */
    pqueue_t held;
};

struct apns {
    mdm_server_t *s;
    const mdm_config_t *cfg;
    char *base_url;
    bool closing;
    CURLM *multi;
    uv_timer_t curl_timer, retry_timer, housekeeping_timer, sweep_timer, sweep_step_timer;
    uv_idle_t idle;
    bool idle_on;
    sockctx_t *socks;
    mdm_pushcerts_t certs;
    char primary_topic[MDM_TOPIC_MAX + 1];
    STACK_OF(X509) *extra_ca;

    push_t **buckets;
    size_t nbuckets, nentries;

    intake_t *intake_head, *intake_tail;
    size_t nintake;
    pqueue_t waiting, ready, finished, done;
    push_t **heap;            /* RETRY, by retry_at_ms */
    size_t heap_n, heap_cap;
    size_t in_flight;
    topic_slots_t **topics;   /* every topic that has sent a request */
    size_t ntopics, next_topic, nheld;
    easy_t **easy_pool;
    size_t easy_pool_n;

    char *sweep_cursor;       /* next enrollment id to look at, or NULL */
    bool sweeping;
    int64_t next_expiry_check_ms; /* mono_ms() */

    mdm_metric_t *m_results[MDM_PUSH_ERROR + 1];
    mdm_metric_t *m_retries, *m_coalesced, *m_in_flight, *m_queued, *m_invalidated,
        *m_sweep, *m_requests;
    mdm_histogram_t *m_latency;
};

static const char *const status_names[] = {
    "pushed", "no_token", "token_invalid", "disabled", "unknown_enrollment", "not_configured",
    "error",
};

const char *mdm_push_status_name(int status)
{
    if (status < 0 || status > MDM_PUSH_ERROR)
        return "error";
    return status_names[status];
}

static void pump(apns_t *a);

/* Milliseconds on the monotonic clock: the deadlines kept in memory (the
 * coalesce window, retries, housekeeping) must not move when the wall
 * clock steps. */
static int64_t mono_ms(void)
{
    return (int64_t)(mdm_mono_ns() / 1000000);
}

/* ---- queues, hash, heap -------------------------------------------------- */

static void q_push(pqueue_t *q, push_t *p)
{
    p->next = NULL;
    if (q->tail)
        q->tail->next = p;
    else
        q->head = p;
    q->tail = p;
    q->n++;
}

static push_t *q_pop(pqueue_t *q)
{
    push_t *p = q->head;
    if (p == NULL)
        return NULL;
    q->head = p->next;
    if (q->head == NULL)
        q->tail = NULL;
    p->next = NULL;
    q->n--;
    return p;
}

static uint32_t hash_str(const char *s)
{
    uint32_t h = 2166136261u;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 16777619u;
    return h;
}

static push_t *hash_find(apns_t *a, const char *eid, uint32_t h)
{
    for (push_t *p = a->buckets[h & (a->nbuckets - 1)]; p != NULL; p = p->hnext)
        if (p->hash == h && !p->detached && strcmp(p->eid, eid) == 0)
            return p;
    return NULL;
}

static void hash_grow(apns_t *a)
{
    size_t nb = a->nbuckets * 2;
    push_t **b = mdm_calloc(nb, sizeof(*b));
    for (size_t i = 0; i < a->nbuckets; i++) {
        push_t *p = a->buckets[i];
        while (p != NULL) {
            push_t *next = p->hnext;
            p->hnext = b[p->hash & (nb - 1)];
            b[p->hash & (nb - 1)] = p;
            p = next;
        }
    }
    mdm_free(a->buckets);
    a->buckets = b;
    a->nbuckets = nb;
}

static void hash_add(apns_t *a, push_t *p)
{
    if (a->nentries >= a->nbuckets)
        hash_grow(a);
    push_t **slot = &a->buckets[p->hash & (a->nbuckets - 1)];
    p->hnext = *slot;
    *slot = p;
    p->in_hash = true;
    a->nentries++;
}

static void hash_del(apns_t *a, push_t *p)
{
    if (!p->in_hash)
        return;
    push_t **pp = &a->buckets[p->hash & (a->nbuckets - 1)];
    while (*pp != NULL && *pp != p)
        pp = &(*pp)->hnext;
    if (*pp == p)
        *pp = p->hnext;
    p->hnext = NULL;
    p->in_hash = false;
    a->nentries--;
}

static void heap_push(apns_t *a, push_t *p)
{
    if (a->heap_n == a->heap_cap) {
        a->heap_cap = a->heap_cap ? a->heap_cap * 2 : 64;
        a->heap = mdm_realloc(a->heap, a->heap_cap * sizeof(*a->heap));
    }
    size_t i = a->heap_n++;
    while (i > 0) {
        size_t parent = (i - 1) / 2;
        if (a->heap[parent]->retry_at_ms <= p->retry_at_ms)
            break;
        a->heap[i] = a->heap[parent];
        i = parent;
    }
    a->heap[i] = p;
}

static push_t *heap_pop(apns_t *a)
{
    if (a->heap_n == 0)
        return NULL;
    push_t *top = a->heap[0];
    push_t *last = a->heap[--a->heap_n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= a->heap_n)
            break;
        if (c + 1 < a->heap_n && a->heap[c + 1]->retry_at_ms < a->heap[c]->retry_at_ms)
            c++;
        if (last->retry_at_ms <= a->heap[c]->retry_at_ms)
            break;
        a->heap[i] = a->heap[c];
        i = c;
    }
    if (a->heap_n > 0)
        a->heap[i] = last;
    return top;
}

/* ---- push objects ---------------------------------------------------------- */

static void push_clear_request(push_t *p)
{
    mdm_free(p->body);
    p->body = NULL;
    curl_slist_free_all(p->headers);
    p->headers = NULL;
    mdm_buf_free(&p->resp);
}

static void push_free(push_t *p)
{
    push_clear_request(p);
    waiter_t *w = p->waiters;
    while (w != NULL) {
        waiter_t *next = w->next;
        mdm_free(w);
        w = next;
    }
    mdm_free(p->token);
    mdm_free(p->error);
    mdm_free(p->eid);
    mdm_free(p);
}

static void set_error(push_t *p, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_error(push_t *p, int status, const char *fmt, ...)
{
    p->status = status;
    mdm_free(p->error);
    p->error = NULL;
    if (fmt != NULL) {
        char buf[512];
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(buf, sizeof(buf), fmt, ap);
        va_end(ap);
        p->error = mdm_strdup(buf);
    }
}

/* Moves p to the finished list; pump() delivers it. */
static void finish(apns_t *a, push_t *p)
{
    p->state = P_FINISHED;
    q_push(&a->finished, p);
}

static void deliver_one(push_t *p, waiter_t *w)
{
    mdm_push_result_t r = {
        .status = p->status,
        .apns_id = p->status == MDM_PUSH_PUSHED ? p->apns_id : NULL,
        .error = p->status == MDM_PUSH_PUSHED ? NULL : (p->error ? p->error : "push failed"),
        .http_status = p->http_status,
        .reason = p->reason[0] ? p->reason : NULL,
        .coalesced = w->coalesced,
    };
    if (w->cb != NULL)
        w->cb(w->arg, w->index, &r);
}

/* ---- curl and libuv -------------------------------------------------------- */

static void check_multi_info(apns_t *a);

static void sock_closed(uv_handle_t *h)
{
    mdm_free(h->data);
}

static void sock_release(apns_t *a, sockctx_t *sc)
{
    if (sc->prev)
        sc->prev->next = sc->next;
    else
        a->socks = sc->next;
    if (sc->next)
        sc->next->prev = sc->prev;
    if (uv_is_closing((uv_handle_t *)&sc->poll)) {
        /* Closed by the server's final walk; its callback has run. */
        mdm_free(sc);
        return;
    }
    uv_poll_stop(&sc->poll);
    uv_close((uv_handle_t *)&sc->poll, sock_closed);
}

static void poll_cb(uv_poll_t *h, int status, int events)
{
    sockctx_t *sc = h->data;
    apns_t *a = sc->a;
    int flags = 0;
    if (status < 0)
        flags = CURL_CSELECT_ERR;
    if (events & UV_READABLE)
        flags |= CURL_CSELECT_IN;
    if (events & UV_WRITABLE)
        flags |= CURL_CSELECT_OUT;
    int running = 0;
    curl_multi_socket_action(a->multi, sc->fd, flags, &running);
    check_multi_info(a);
}

static int socket_cb(CURL *e, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)e;
    apns_t *a = userp;
    sockctx_t *sc = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (sc != NULL) {
            curl_multi_assign(a->multi, fd, NULL);
            sock_release(a, sc);
        }
        return 0;
    }
    if (sc == NULL) {
        sc = mdm_calloc(1, sizeof(*sc));
        sc->fd = fd;
        sc->a = a;
        if (uv_poll_init_socket(a->s->loop, &sc->poll, fd) != 0) {
            mdm_free(sc);
            return -1;
        }
        sc->poll.data = sc;
        uv_unref((uv_handle_t *)&sc->poll);
        sc->next = a->socks;
        if (a->socks)
            a->socks->prev = sc;
        a->socks = sc;
        curl_multi_assign(a->multi, fd, sc);
    }
    int ev = 0;
    if (what & CURL_POLL_IN)
        ev |= UV_READABLE;
    if (what & CURL_POLL_OUT)
        ev |= UV_WRITABLE;
    uv_poll_start(&sc->poll, ev, poll_cb);
    return 0;
}

static void curl_timer_cb(uv_timer_t *t)
{
    apns_t *a = t->data;
    int running = 0;
    curl_multi_socket_action(a->multi, CURL_SOCKET_TIMEOUT, 0, &running);
    check_multi_info(a);
}

static int timer_cb(CURLM *m, long timeout_ms, void *userp)
{
    (void)m;
    apns_t *a = userp;
    if (timeout_ms < 0)
        uv_timer_stop(&a->curl_timer);
    else
        uv_timer_start(&a->curl_timer, curl_timer_cb, (uint64_t)timeout_ms, 0);
    return 0;
}

/* The TLS alerts by which a peer refuses the client certificate. */
static const struct {
    int alert;
    const char *name;
} cert_alerts[] = {
    {SSL_AD_BAD_CERTIFICATE, "bad_certificate"},
    {SSL_AD_UNSUPPORTED_CERTIFICATE, "unsupported_certificate"},
    {SSL_AD_CERTIFICATE_REVOKED, "certificate_revoked"},
    {SSL_AD_CERTIFICATE_EXPIRED, "certificate_expired"},
    {SSL_AD_CERTIFICATE_UNKNOWN, "certificate_unknown"},
    {SSL_AD_UNKNOWN_CA, "unknown_ca"},
    {SSL_AD_ACCESS_DENIED, "access_denied"},
    {SSL_AD_CERTIFICATE_REQUIRED, "certificate_required"},
};

static const char *cert_alert_name(int alert);

/* What the alert callback of a TLS context needs: curl makes one context
 * per connection, and a connection uses one push certificate. Freed with
 * the context. */
typedef struct tls_note {
    apns_t *a;
    char cert_sha[65];
} tls_note_t;

static int tls_note_index = -1;

static void tls_note_free(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl,
                          void *argp)
{
    (void)parent, (void)ad, (void)idx, (void)argl, (void)argp;
    mdm_free(ptr);
}

/* Notes a fatal alert from APNs that refuses the client certificate on
 * the certificate: with TLS 1.3 it comes after the handshake, and curl
 * reports it only as a failed read or write. */
static void tls_info_cb(const SSL *ssl, int where, int ret)
{
    if (!(where & SSL_CB_READ_ALERT) || (ret >> 8) != SSL3_AL_FATAL ||
        cert_alert_name(ret & 0xff) == NULL)
        return;
    tls_note_t *n = SSL_CTX_get_ex_data(SSL_get_SSL_CTX(ssl), tls_note_index);
    for (size_t i = 0; n != NULL && i < n->a->certs.n; i++)
        if (strcmp(n->a->certs.v[i]->sha256, n->cert_sha) == 0)
            n->a->certs.v[i]->tls_alert = ret & 0xff;
}

static CURLcode ssl_ctx_cb(CURL *curl, void *sslctx, void *parm)
{
    apns_t *a = parm;
    SSL_CTX *ctx = sslctx;
    X509_STORE *st = SSL_CTX_get_cert_store(ctx);
    for (int i = 0; a->extra_ca != NULL && i < sk_X509_num(a->extra_ca); i++)
        X509_STORE_add_cert(st, sk_X509_value(a->extra_ca, i));
    char *priv = NULL;
    curl_easy_getinfo(curl, CURLINFO_PRIVATE, &priv);
    const push_t *p = (const push_t *)priv;
    if (p != NULL && tls_note_index >= 0) {
        tls_note_t *n = mdm_calloc(1, sizeof(*n));
        n->a = a;
        snprintf(n->cert_sha, sizeof(n->cert_sha), "%s", p->cert_sha);
        if (SSL_CTX_set_ex_data(ctx, tls_note_index, n) == 1)
            SSL_CTX_set_info_callback(ctx, tls_info_cb);
        else
            mdm_free(n);
    }
    ERR_clear_error();
    return CURLE_OK;
}

/* Whether an apns-id from APNs can be passed on (API answers are JSON,
 * which needs UTF-8): printable ASCII, as APNs's UUIDs are. */
static bool apns_id_printable(const char *v, size_t n)
{
    for (size_t i = 0; i < n; i++)
        if (v[i] < 0x20 || v[i] > 0x7e)
            return false;
    return true;
}

static size_t header_cb(char *buf, size_t size, size_t n, void *ud)
{
    push_t *p = ud;
    size_t len = size * n;
    if (len > 8 && strncasecmp(buf, "apns-id:", 8) == 0) {
        const char *v = buf + 8;
        size_t vl = len - 8;
        while (vl > 0 && (*v == ' ' || *v == '\t'))
            v++, vl--;
        while (vl > 0 && (v[vl - 1] == '\r' || v[vl - 1] == '\n' || v[vl - 1] == ' '))
            vl--;
        if (vl < sizeof(p->resp_apns_id) && apns_id_printable(v, vl))
            snprintf(p->resp_apns_id, sizeof(p->resp_apns_id), "%.*s", (int)vl, v);
    }
    return len;
}

static size_t write_cb(char *buf, size_t size, size_t n, void *ud)
{
    push_t *p = ud;
    size_t len = size * n;
    if (p->resp.len < RESP_MAX)
        mdm_buf_append(&p->resp, buf, len < RESP_MAX - p->resp.len ? len : RESP_MAX - p->resp.len);
    return len;
}

static easy_t *easy_get(apns_t *a)
{
    if (a->easy_pool_n > 0)
        return a->easy_pool[--a->easy_pool_n];
    easy_t *x = mdm_calloc(1, sizeof(*x));
    CURL *e = x->h = curl_easy_init();
    curl_easy_setopt(e, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_2TLS);
    curl_easy_setopt(e, CURLOPT_PIPEWAIT, 1L);
    curl_easy_setopt(e, CURLOPT_SSLCERTTYPE, "PEM");
    curl_easy_setopt(e, CURLOPT_SSLKEYTYPE, "PEM");
    curl_easy_setopt(e, CURLOPT_SSLVERSION, (long)CURL_SSLVERSION_TLSv1_2);
    curl_easy_setopt(e, CURLOPT_SSL_CTX_FUNCTION, ssl_ctx_cb);
    curl_easy_setopt(e, CURLOPT_SSL_CTX_DATA, a);
    long timeout = (long)a->cfg->apns_timeout_ms;
    curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, timeout);
    curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS,
                     timeout < CONNECT_TIMEOUT_MS ? timeout : (long)CONNECT_TIMEOUT_MS);
    curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(e, CURLOPT_TCP_KEEPALIVE, 1L);
    curl_easy_setopt(e, CURLOPT_HEADERFUNCTION, header_cb);
    curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, write_cb);
    return x;
}

static void easy_free(easy_t *x)
{
    curl_easy_cleanup(x->h);
    mdm_free(x);
}

static void easy_put(apns_t *a, easy_t *x)
{
    if (a->easy_pool_n < a->cfg->apns_max_in_flight)
        a->easy_pool[a->easy_pool_n++] = x;
    else
        easy_free(x);
}

/* ---- sending ------------------------------------------------------------- */

/* The apns-expiration header value: 0, or now + apns.expiration in
 * seconds since the epoch. */
static long long expiration_value(const apns_t *a, int64_t now_ms)
{
    if (a->cfg->apns_expiration_ms == 0)
        return 0;
    return (now_ms + (int64_t)a->cfg->apns_expiration_ms) / 1000;
}

/* {"mdm":"<magic>"}, the magic escaped as a JSON string. */
static char *push_body(const char *magic)
{
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_buf_puts(&b, "{\"mdm\":\"");
    for (const unsigned char *c = (const unsigned char *)magic; *c; c++) {
        if (*c == '"' || *c == '\\')
            mdm_buf_printf(&b, "\\%c", *c);
        else if (*c < 0x20)
            mdm_buf_printf(&b, "\\u%04x", *c);
        else
            mdm_buf_putc(&b, (char)*c);
    }
    mdm_buf_puts(&b, "\"}");
    return mdm_buf_steal(&b, NULL);
}

/* Builds the request of p (URL path, headers, body). */
static char *build_request(apns_t *a, push_t *p, const char *magic, int64_t now_ms)
{
    char *hex = mdm_malloc(p->token_len * 2 + 1);
    mdm_hex_encode(hex, p->token, p->token_len);
    char *url = mdm_sprintf("%s/3/device/%s", a->base_url, hex);
    mdm_free(hex);
    p->body = push_body(magic);
    mdm_uuid(p->apns_id);
    char h[MDM_TOPIC_MAX + 64];
    struct curl_slist *l = NULL;
    snprintf(h, sizeof(h), "apns-topic: %s", p->topic);
    l = curl_slist_append(l, h);
    l = curl_slist_append(l, "apns-push-type: mdm");
    l = curl_slist_append(l, "apns-priority: 10");
    snprintf(h, sizeof(h), "apns-expiration: %lld", expiration_value(a, now_ms));
    l = curl_slist_append(l, h);
    snprintf(h, sizeof(h), "apns-id: %s", p->apns_id);
    l = curl_slist_append(l, h);
    l = curl_slist_append(l, "content-type: application/json");
    l = curl_slist_append(l, "Accept:");
    p->headers = l;
    return url;
}

/* Gives back the slot p's request held (of all, and of its topic). */
static void release_slot(apns_t *a, push_t *p)
{
    a->in_flight--;
    if (p->slots != NULL)
        p->slots->in_flight--;
    p->slots = NULL;
}

static void start_transfer(apns_t *a, push_t *p, topic_slots_t *ts, const mdm_pushcert_t *pc,
                           const char *magic)
{
    int64_t now = mdm_now_ms();
    char *url = build_request(a, p, magic, now);
    snprintf(p->cert_sha, sizeof(p->cert_sha), "%s", pc->sha256);
    p->resp_apns_id[0] = '\0';
    easy_t *x = easy_get(a);
    CURL *e = x->h;
    if (strcmp(x->cert_sha, pc->sha256) != 0) {
        struct curl_blob cert = {.data = pc->cert_pem, .len = pc->cert_len,
                                 .flags = CURL_BLOB_COPY};
        struct curl_blob key = {.data = pc->key_pem, .len = pc->key_len,
                                .flags = CURL_BLOB_COPY};
        curl_easy_setopt(e, CURLOPT_SSLCERT_BLOB, &cert);
        curl_easy_setopt(e, CURLOPT_SSLKEY_BLOB, &key);
        snprintf(x->cert_sha, sizeof(x->cert_sha), "%s", pc->sha256);
    }
    curl_easy_setopt(e, CURLOPT_URL, url);
    curl_easy_setopt(e, CURLOPT_HTTPHEADER, p->headers);
    curl_easy_setopt(e, CURLOPT_POSTFIELDS, p->body);
    curl_easy_setopt(e, CURLOPT_POSTFIELDSIZE, (long)strlen(p->body));
    curl_easy_setopt(e, CURLOPT_HEADERDATA, p);
    curl_easy_setopt(e, CURLOPT_WRITEDATA, p);
    curl_easy_setopt(e, CURLOPT_PRIVATE, p);
    mdm_free(url);
    p->easy = x;
    p->state = P_IN_FLIGHT;
    p->attempts++;
    p->sent_ns = mdm_mono_ns();
    a->in_flight++;
    p->slots = ts;
    ts->in_flight++;
    mdm_metric_add(a->m_requests, 1);
    CURLMcode mc = curl_multi_add_handle(a->multi, e);
    if (mc != CURLM_OK) {
        release_slot(a, p);
        p->easy = NULL;
        easy_put(a, x);
        push_clear_request(p);
        set_error(p, MDM_PUSH_ERROR, "cannot start the request: %s", curl_multi_strerror(mc));
        finish(a, p);
    }
}

/* ---- enrollment records ------------------------------------------------------ */

typedef struct prepared {
    push_t *p;
    char *magic;              /* NULL: p already has its outcome */
} prepared_t;

struct prepare_ctx {
    prepared_t *v;
    size_t n;
};

/* Reads what a push needs from the enrollment, or sets its outcome. */
static void prepare_one(mdm_txn_t *txn, prepared_t *pr)
{
    push_t *p = pr->p;
    plist_t e = NULL;
    int rc = mdm_enrollment_load(txn, p->eid, &e);
    if (rc == MDM_ENOTFOUND) {
        set_error(p, MDM_PUSH_UNKNOWN, "no enrollment with this id");
        return;
    }
    if (rc != 0) {
        set_error(p, MDM_PUSH_ERROR, "store: %s", mdm_strerror(rc));
        return;
    }
    size_t tlen = 0;
    const unsigned char *token = mdm_pl_data(e, "token", &tlen);
    const char *magic = mdm_pl_str(e, "push_magic");
    const char *topic = mdm_pl_str(e, "topic");
    if (token == NULL || tlen == 0 || magic == NULL) {
        set_error(p, MDM_PUSH_NO_TOKEN, "no push token (the device has not sent a TokenUpdate)");
    } else if (mdm_pl_bool(e, "token_invalid", false)) {
        set_error(p, MDM_PUSH_TOKEN_INVALID,
                  "APNs refused this push token; waiting for the device's next TokenUpdate");
    } else if (!mdm_pl_bool(e, "enabled", false)) {
        set_error(p, MDM_PUSH_DISABLED, "the enrollment is not active (checked out)");
    } else if (topic == NULL || topic[0] == '\0' || strlen(topic) > MDM_TOPIC_MAX) {
        set_error(p, MDM_PUSH_ERROR, "the enrollment has no APNs topic");
    } else {
        mdm_free(p->token);
        p->token = mdm_memdup(token, tlen);
        p->token_len = tlen;
        p->token_read_ms = mdm_now_ms();
        snprintf(p->topic, sizeof(p->topic), "%s", topic);
        pr->magic = mdm_strdup(magic);
    }
    plist_free(e);
}

static int prepare_fn(mdm_txn_t *txn, void *arg)
{
    struct prepare_ctx *c = arg;
    for (size_t i = 0; i < c->n; i++)
        prepare_one(txn, &c->v[i]);
    return 0;
}

/* Checks that topic has a usable certificate; sets p's outcome otherwise. */
static const mdm_pushcert_t *cert_for(apns_t *a, push_t *p, int64_t now)
{
    if (a->certs.n == 0) {
        set_error(p, MDM_PUSH_NOT_CONFIGURED, "push is not configured (no APNs push certificate)");
        return NULL;
    }
    const mdm_pushcert_t *pc = mdm_pushcerts_find(&a->certs, p->topic);
    char t[32];
    if (pc == NULL) {
        set_error(p, MDM_PUSH_ERROR, "no push certificate for the enrollment's topic %s",
                  p->topic);
    } else if (pc->blocked) {
        mdm_time_format(t, pc->blocked_ms);
        set_error(p, MDM_PUSH_ERROR,
                  "APNs refused the push certificate of topic %s (%s) at %s; pushes stay off "
                  "until a new certificate is installed (PUT /v1/pushcert)",
                  p->topic, pc->blocked_reason, t);
        pc = NULL;
    } else if (pc->not_after_ms <= now) {
        mdm_time_format(t, pc->not_after_ms);
        set_error(p, MDM_PUSH_ERROR, "the push certificate of topic %s expired at %s", p->topic,
                  t);
        pc = NULL;
    }
    return pc;
}

/* ---- topic slots ------------------------------------------------------------ */

/* The most requests one topic may have unanswered: an equal part of
 * apns.max_in_flight for each topic whose certificate is not blocked, so
 * that a topic whose requests stall (until apns.timeout) cannot take the
 * slots of the others. With one topic, all of them. */
static size_t topic_share(const apns_t *a)
{
    size_t max = a->cfg->apns_max_in_flight, n = 0;
    for (size_t i = 0; i < a->certs.n; i++)
        n += !a->certs.v[i]->blocked;
    return n <= 1 ? max : (max + n - 1) / n;
}

static topic_slots_t *topic_slots(apns_t *a, const char *topic)
{
    for (size_t i = 0; i < a->ntopics; i++)
        if (strcmp(a->topics[i]->topic, topic) == 0)
            return a->topics[i];
    a->topics = mdm_realloc(a->topics, (a->ntopics + 1) * sizeof(*a->topics));
    topic_slots_t *ts = mdm_calloc(1, sizeof(*ts));
    snprintf(ts->topic, sizeof(ts->topic), "%s", topic);
    a->topics[a->ntopics++] = ts;
    return ts;
}

/* Puts p in v[n] for an attempt. The answer of an earlier attempt goes:
 * however this one ends (with another answer, without a request, without
 * an answer), the result tells that and nothing older. */
static void take_for_attempt(prepared_t *v, size_t n, push_t *p)
{
    p->http_status = 0;
    p->reason[0] = '\0';
    v[n].p = p;
    v[n].magic = NULL;
}

/* Holds p until its topic has a free slot. The token is dropped: it is
 * read again when p goes out, so that a TokenUpdate meanwhile counts. */
static void hold(apns_t *a, topic_slots_t *ts, push_t *p)
{
    mdm_free(p->token);
    p->token = NULL;
    p->token_len = 0;
    q_push(&ts->held, p);
    a->nheld++;
}

/* Takes held pushes into v[n..limit), one of each topic in turn (the
 * first topic changes from slice to slice), each topic up to its share.
 * Returns the new n. */
static size_t take_held(apns_t *a, prepared_t *v, size_t n, size_t limit, size_t share)
{
    bool took = true;
    while (n < limit && took) {
        took = false;
        for (size_t k = 0; k < a->ntopics && n < limit; k++) {
            topic_slots_t *ts = a->topics[(a->next_topic + k) % a->ntopics];
            if (ts->held.head == NULL || ts->in_flight + ts->picked >= share)
                continue;
            take_for_attempt(v, n++, q_pop(&ts->held));
            ts->picked++;
            a->nheld--;
            took = true;
        }
    }
    if (a->ntopics > 0)
        a->next_topic = (a->next_topic + 1) % a->ntopics;
    return n;
}

/* Whether a held push may go out now. */
static bool held_can_go(const apns_t *a)
{
    size_t share = topic_share(a);
    for (size_t i = 0; i < a->ntopics; i++)
        if (a->topics[i]->held.head != NULL && a->topics[i]->in_flight < share)
            return true;
    return false;
}

/* Sends p, or holds it while its topic has its share of the slots. */
static void send_or_hold(apns_t *a, push_t *p, const mdm_pushcert_t *pc, const char *magic,
                         size_t share)
{
    topic_slots_t *ts = topic_slots(a, p->topic);
    if (ts->in_flight >= share)
        hold(a, ts, p);
    else
        start_transfer(a, p, ts, pc, magic);
}

/* Starts requests while slots are free (one slice): held pushes whose
 * topic has a free slot first, then retries, then new pushes. */
static void dispatch(apns_t *a)
{
    size_t max = a->cfg->apns_max_in_flight, share = topic_share(a);
    size_t limit = max > a->in_flight ? max - a->in_flight : 0;
    if (limit > DISPATCH_SLICE)
        limit = DISPATCH_SLICE;
    prepared_t v[DISPATCH_SLICE];
    size_t n = take_held(a, v, 0, limit, share);
    while (n < limit) {
        push_t *p = q_pop(&a->ready);
        if (p == NULL)
            p = q_pop(&a->waiting);
        if (p == NULL)
            break;
        take_for_attempt(v, n++, p);
    }
    if (n == 0)
        return;
    struct prepare_ctx c = {.v = v, .n = n};
    int rc = mdm_store_view(a->s->store, prepare_fn, &c);
    int64_t now = mdm_now_ms();
    for (size_t i = 0; i < n; i++) {
        push_t *p = v[i].p;
        if (rc != 0) {
            set_error(p, MDM_PUSH_ERROR, "store: %s", mdm_strerror(rc));
        } else if (v[i].magic != NULL) {
            const mdm_pushcert_t *pc = cert_for(a, p, now);
            if (pc != NULL) {
                send_or_hold(a, p, pc, v[i].magic, share);
                mdm_free(v[i].magic);
                continue;
            }
        }
        mdm_free(v[i].magic);
        finish(a, p);
    }
    for (size_t i = 0; i < a->ntopics; i++)
        a->topics[i]->picked = 0;
}

/* ---- answers ------------------------------------------------------------- */

static bool reason_is(const push_t *p, const char *r)
{
    return strcmp(p->reason, r) == 0;
}

static void parse_reason(push_t *p)
{
    p->reason[0] = '\0';
    if (p->resp.len == 0)
        return;
    json_t *j = json_loadb(p->resp.data, p->resp.len, 0, NULL);
    const char *r = json_string_value(json_object_get(j, "reason"));
    if (r != NULL) {
        size_t i = 0;
        for (; r[i] && i + 1 < sizeof(p->reason); i++)
            p->reason[i] = (r[i] > 0x20 && r[i] < 0x7f && r[i] != '"') ? r[i] : '_';
        p->reason[i] = '\0';
    }
    json_decref(j);
}

/* Schedules another attempt, or gives up after apns.retry_max. */
static void retry_or_fail(apns_t *a, push_t *p, const char *what)
{
    char eq[300];
    if ((uint64_t)p->attempts > a->cfg->apns_retry_max) {
        set_error(p, MDM_PUSH_ERROR, "%s (gave up after %d attempts)", what, p->attempts);
        finish(a, p);
        return;
    }
    uint64_t delay = a->cfg->apns_retry_delay_ms;
    for (int i = 1; i < p->attempts && delay < RETRY_CAP_MS; i++)
        delay *= 2;
    if (delay > RETRY_CAP_MS)
        delay = RETRY_CAP_MS;
    /* Full jitter over the upper half, so that a burst of 429s does not
     * come back all at once. */
    uint32_t r;
    mdm_random(&r, sizeof(r));
    delay = delay / 2 + (delay / 2 ? r % (delay / 2 + 1) : 0);
    p->retry_at_ms = mono_ms() + (int64_t)delay;
    p->state = P_RETRY;
    mdm_metric_add(a->m_retries, 1);
    mdm_log(MDM_LOG_INFO, NULL, "apns.retry", "eid=%s attempt=%d delay_ms=%llu cause=\"%s\"",
            mdm_logq(eq, sizeof(eq), p->eid), p->attempts, (unsigned long long)delay, what);
    heap_push(a, p);
}

/* The labels of a topic's metrics: topic="<topic>", escaped. */
#define TOPIC_LABELS_MAX (2 * MDM_TOPIC_MAX + 16)
static const char *topic_labels(char *buf, const char *topic)
{
    return mdm_metric_label(buf, TOPIC_LABELS_MAX, "topic", topic);
}

/* Stops pushes for p's topic: APNs refused the certificate p went out
 * with, for reason. false when that certificate has been replaced
 * meanwhile: the new one is not judged by this answer. */
static bool block_topic(apns_t *a, push_t *p, const char *reason)
{
    mdm_pushcert_t *pc = mdm_pushcerts_find(&a->certs, p->topic);
    if (pc == NULL || strcmp(pc->sha256, p->cert_sha) != 0)
        return false;
    if (!pc->blocked) {
        pc->blocked = true;
        pc->blocked_ms = mdm_now_ms();
        snprintf(pc->blocked_reason, sizeof(pc->blocked_reason), "%s", reason);
        char labels[TOPIC_LABELS_MAX], tq[MDM_TOPIC_LOGQ_MAX];
        topic_labels(labels, pc->topic);
        mdm_metric_add(mdm_metric(MDM_METRIC_COUNTER, "moonmdm_apns_certificate_rejected_total",
                                  labels, "Refusals of a push certificate by APNs (403, TLS alert) that stopped pushes for a topic"),
                       1);
        mdm_metric_set(mdm_metric(MDM_METRIC_GAUGE, "moonmdm_apns_topic_blocked", labels,
                                  "1 while pushes for the topic are stopped: APNs refused its certificate"),
                       1);
        mdm_log(MDM_LOG_ERROR, NULL, "apns.certificate_rejected",
                "topic=%s reason=%s sha256=%s action=\"pushes for this topic stop until a new "
                "push certificate is installed (PUT /v1/pushcert)\"",
                mdm_logq(tq, sizeof(tq), pc->topic), pc->blocked_reason, pc->sha256);
    }
    return true;
}

/* APNs refused the push certificate p went out with (what: the answer, for
 * people): the topic is blocked, or, when that certificate has been
 * replaced since, p is tried again with the new one. */
static void certificate_refused(apns_t *a, push_t *p, const char *reason, const char *what)
{
    if (!block_topic(a, p, reason)) {
        char why[512]; /* what (under 300 bytes) and the sentence around it */
        snprintf(why, sizeof(why),
                 "APNs refused the push certificate the request went out with (%s), which has "
                 "been replaced since",
                 what);
        retry_or_fail(a, p, why);
        return;
    }
    set_error(p, MDM_PUSH_ERROR,
              "APNs refused the push certificate of topic %s (%s); pushes stay off until a new "
              "certificate is installed (PUT /v1/pushcert)",
              p->topic, what);
    finish(a, p);
}

static const char *cert_alert_name(int alert)
{
    for (size_t i = 0; i < sizeof(cert_alerts) / sizeof(cert_alerts[0]); i++)
        if (cert_alerts[i].alert == alert)
            return cert_alerts[i].name;
    return NULL;
}

/* Whether a failed transfer means the push certificate cannot work: curl
 * could not use it, or APNs refused it with a TLS alert (tls_info_cb noted
 * it on the certificate p went out with). Sets reason ("tls:<alert>") and
 * what (for people). */
static bool tls_cert_refusal(apns_t *a, const push_t *p, CURLcode res, char *reason, size_t rn,
                             char *what, size_t wn)
{
    if (res == CURLE_SSL_CERTPROBLEM) {
        snprintf(reason, rn, "tls:local_certificate_problem");
        snprintf(what, wn, "the TLS library cannot use the certificate or key: %s",
                 curl_easy_strerror(res));
        return true;
    }
    const mdm_pushcert_t *pc = mdm_pushcerts_find(&a->certs, p->topic);
    if (pc == NULL || strcmp(pc->sha256, p->cert_sha) != 0 || pc->tls_alert == 0)
        return false;
    const char *name = cert_alert_name(pc->tls_alert);
    snprintf(reason, rn, "tls:%s", name);
    snprintf(what, wn, "TLS alert %s from APNs", name);
    return true;
}

/* A transfer that got no answer: a refusal of the push certificate blocks
 * the topic like a 403; anything else is retried. */
static void transfer_failed(apns_t *a, push_t *p, CURLcode res)
{
    char reason[64], what[300];
    p->http_status = 0;
    mdm_buf_free(&p->resp);
    if (tls_cert_refusal(a, p, res, reason, sizeof(reason), what, sizeof(what))) {
        certificate_refused(a, p, reason, what);
        return;
    }
    snprintf(what, sizeof(what), "cannot reach APNs: %s", curl_easy_strerror(res));
    retry_or_fail(a, p, what);
}

/* Handles one finished transfer. */
static void on_done(apns_t *a, CURL *e, CURLcode res)
{
    char *priv = NULL;
    curl_easy_getinfo(e, CURLINFO_PRIVATE, &priv);
    push_t *p = (push_t *)priv;
    long code = 0;
    curl_easy_getinfo(e, CURLINFO_RESPONSE_CODE, &code);
    curl_multi_remove_handle(a->multi, e);
    if (p == NULL)
        return;
    easy_put(a, p->easy);
    p->easy = NULL;
    release_slot(a, p);
    mdm_histogram_observe_ns(a->m_latency, mdm_mono_ns() - p->sent_ns);
    curl_slist_free_all(p->headers);
    p->headers = NULL;
    mdm_free(p->body);
    p->body = NULL;
    if (res != CURLE_OK) {
        transfer_failed(a, p, res);
        return;
    }
    p->http_status = (int)code;
    parse_reason(p);
    mdm_buf_free(&p->resp);
    char labels[32];
    snprintf(labels, sizeof(labels), "status=\"%ld\"", code);
    mdm_metric_add(mdm_metric(MDM_METRIC_COUNTER, "moonmdm_apns_responses_total", labels,
                              "Answers from APNs by HTTP status"),
                   1);
    if (code == 200) {
        if (p->resp_apns_id[0])
            snprintf(p->apns_id, sizeof(p->apns_id), "%s", p->resp_apns_id);
        set_error(p, MDM_PUSH_PUSHED, NULL);
        finish(a, p);
    } else if (code == 410 ||
               (code == 400 && (reason_is(p, "BadDeviceToken") ||
                                reason_is(p, "DeviceTokenNotForTopic")))) {
        set_error(p, MDM_PUSH_TOKEN_INVALID,
                  "APNs refused the push token (%ld %s); waiting for the device's next "
                  "TokenUpdate",
                  code, p->reason[0] ? p->reason : "-");
        p->mark_invalid = true;
        finish(a, p);
    } else if (code == 403) {
        char what[80];
        snprintf(what, sizeof(what), "403 %s", p->reason[0] ? p->reason : "-");
        certificate_refused(a, p, p->reason[0] ? p->reason : "403", what);
    } else if (code == 429 || code >= 500) {
        char what[120];
        snprintf(what, sizeof(what), "APNs answered %ld %s", code,
                 p->reason[0] ? p->reason : "-");
        retry_or_fail(a, p, what);
    } else {
        set_error(p, MDM_PUSH_ERROR, "APNs answered %ld %s", code,
                  p->reason[0] ? p->reason : "-");
        finish(a, p);
    }
}

static void arm_retry_timer(apns_t *a);

static void check_multi_info(apns_t *a)
{
    CURLMsg *msg;
    int left = 0;
    while ((msg = curl_multi_info_read(a->multi, &left)) != NULL) {
        if (msg->msg == CURLMSG_DONE)
            on_done(a, msg->easy_handle, msg->data.result);
    }
    arm_retry_timer(a);
    pump(a);
}

/* ---- retries ---------------------------------------------------------------- */

static void retry_timer_cb(uv_timer_t *t)
{
    apns_t *a = t->data;
    int64_t now = mono_ms();
    while (a->heap_n > 0 && a->heap[0]->retry_at_ms <= now) {
        push_t *p = heap_pop(a);
        p->state = P_WAITING;
        q_push(&a->ready, p);
    }
    arm_retry_timer(a);
    pump(a);
}

static void arm_retry_timer(apns_t *a)
{
    if (a->closing)
        return;
    if (a->heap_n == 0) {
        uv_timer_stop(&a->retry_timer);
        return;
    }
    int64_t wait = a->heap[0]->retry_at_ms - mono_ms();
    uv_timer_start(&a->retry_timer, retry_timer_cb, wait > 0 ? (uint64_t)wait : 0, 0);
}

/* ---- finishing: store updates, then the waiters ----------------------------- */

struct write_ctx {
    push_t *head;
    int64_t now;
};

static int write_fn(mdm_txn_t *txn, void *arg)
{
    struct write_ctx *w = arg;
    for (push_t *p = w->head; p != NULL; p = p->next) {
        if (!(p->status == MDM_PUSH_PUSHED && p->record) && !p->mark_invalid)
            continue;
        plist_t e = NULL;
        int rc = mdm_enrollment_load(txn, p->eid, &e);
        if (rc == MDM_ENOTFOUND)
            continue;
        if (rc != 0)
            return rc;
        if (p->mark_invalid) {
            size_t tlen = 0;
            const unsigned char *token = mdm_pl_data(e, "token", &tlen);
            /* A TokenUpdate that came in since the token was read (and
             * sent) brought a new token, or registered this one again: the
             * verdict was about the old. One that came in earlier, while a
             * retry waited, gave the token this verdict is about. */
            if (token == NULL || tlen != p->token_len || memcmp(token, p->token, tlen) != 0 ||
                mdm_pl_int(e, "token_updated_at", 0) >= p->token_read_ms) {
                plist_free(e);
                continue;
            }
            mdm_pl_set_bool(e, "token_invalid", true);
            mdm_pl_set_int(e, "token_invalid_at", w->now);
            mdm_pl_set_str(e, "token_invalid_reason", p->reason[0] ? p->reason : "Unregistered");
        } else {
            mdm_pl_set_int(e, "last_push_at", w->now);
            mdm_pl_set_str(e, "last_push_id", p->apns_id);
        }
        rc = mdm_enrollment_save(txn, p->eid, e);
        plist_free(e);
        if (rc != 0)
            return rc;
    }
    return 0;
}

static void log_result(apns_t *a, push_t *p, size_t nwaiters)
{
    char eq[300], errq[600], idq[128], tq[MDM_TOPIC_LOGQ_MAX];
    uint64_t ms = p->sent_ns ? (mdm_mono_ns() - p->sent_ns) / 1000000 : 0;
    switch (p->status) {
    case MDM_PUSH_PUSHED:
        mdm_log(MDM_LOG_INFO, NULL, "apns.pushed",
                "eid=%s apns_id=%s topic=%s attempts=%d ms=%llu waiters=%zu",
                mdm_logq(eq, sizeof(eq), p->eid), mdm_logq(idq, sizeof(idq), p->apns_id),
                mdm_logq(tq, sizeof(tq), p->topic), p->attempts,
                (unsigned long long)ms, nwaiters);
        break;
    case MDM_PUSH_TOKEN_INVALID:
        if (p->mark_invalid) {
            mdm_metric_add(a->m_invalidated, 1);
            mdm_log(MDM_LOG_INFO, NULL, "apns.token_invalid", "eid=%s http_status=%d reason=%s",
                    mdm_logq(eq, sizeof(eq), p->eid), p->http_status,
                    p->reason[0] ? p->reason : "-");
        }
        break;
    case MDM_PUSH_ERROR:
        mdm_log(MDM_LOG_WARN, NULL, "apns.push_failed",
                "eid=%s http_status=%d reason=%s attempts=%d error=%s",
                mdm_logq(eq, sizeof(eq), p->eid), p->http_status,
                p->reason[0] ? p->reason : "-", p->attempts,
                mdm_logq(errq, sizeof(errq), p->error));
        break;
    default:
        mdm_log(MDM_LOG_DEBUG, NULL, "apns.not_pushed", "eid=%s result=%s",
                mdm_logq(eq, sizeof(eq), p->eid), mdm_push_status_name(p->status));
        break;
    }
}

static void flush_finished(apns_t *a)
{
    if (a->finished.head == NULL)
        return;
    pqueue_t fin = a->finished;
    memset(&a->finished, 0, sizeof(a->finished));
    struct write_ctx w = {.head = fin.head, .now = mdm_now_ms()};
    bool need = false;
    for (push_t *p = fin.head; p != NULL && !need; p = p->next)
        need = (p->status == MDM_PUSH_PUSHED && p->record) || p->mark_invalid;
    if (need) {
        int rc = mdm_store_update(a->s->store, write_fn, &w);
        if (rc != 0)
            mdm_log(MDM_LOG_ERROR, NULL, "apns.store_update_failed", "error=\"%s\" pushes=%zu",
                    mdm_strerror(rc), fin.n);
    }
    push_t *p;
    while ((p = q_pop(&fin)) != NULL) {
        mdm_metric_add(a->m_results[p->status], 1);
        size_t nw = 0;
        waiter_t *ws = p->waiters;
        p->waiters = NULL;
        for (waiter_t *x = ws; x != NULL; x = x->next)
            nw++;
        log_result(a, p, nw);
        push_clear_request(p);
        mdm_free(p->token);
        p->token = NULL;
        /* Only an accepted push answers later callers; every other outcome
         * is decided again from the record. */
        if (p->status == MDM_PUSH_PUSHED && a->cfg->apns_coalesce_window_ms > 0) {
            p->state = P_DONE;
            p->done_ms = mono_ms();
            q_push(&a->done, p);
        } else {
            hash_del(a, p);
        }
        while (ws != NULL) {
            waiter_t *next = ws->next;
            deliver_one(p, ws);
            mdm_free(ws);
            ws = next;
        }
        if (p->state != P_DONE)
            push_free(p);
    }
}

/* Frees accepted pushes whose coalesce window has passed. */
static void expire_done(apns_t *a, int64_t now)
{
    int64_t window = (int64_t)a->cfg->apns_coalesce_window_ms;
    while (a->done.head != NULL && a->done.head->done_ms + window <= now) {
        push_t *p = q_pop(&a->done);
        hash_del(a, p);
        push_free(p);
    }
}

/* ---- intake ------------------------------------------------------------------- */

void mdm_apns_seen(mdm_server_t *s, const char *eid)
{
    apns_t *a = s->apns;
    if (a == NULL || eid == NULL)
        return;
    push_t *p = hash_find(a, eid, hash_str(eid));
    if (p == NULL)
        return;
    if (p->state == P_DONE)
        hash_del(a, p); /* stays on the done list until it expires */
    else
        p->seen = true; /* still answers callers until it is done */
}

void mdm_apns_token_changed(mdm_server_t *s, const char *eid)
{
    apns_t *a = s->apns;
    if (a == NULL || eid == NULL)
        return;
    push_t *p = hash_find(a, eid, hash_str(eid));
    /* One that has not read the token yet will read the new one; any
     * other (on its way, done) is detached: later requests make a push of
     * their own, and it still answers the callers it had. It stays in the
     * table until it finishes, so that a shutdown finds and answers it. */
    if (p != NULL && !(p->state == P_WAITING && p->token == NULL))
        p->detached = true;
}

static void take_one(apns_t *a, intake_t *it)
{
    uint32_t h = hash_str(it->eid);
    push_t *p = hash_find(a, it->eid, h);
    if (p != NULL && p->state == P_DONE) {
        /* An accepted push answers this one only while the device has not
         * been heard from since the push was made: once it has, it may
         * have fetched its queue before the command this push is for was
         * queued. (mdm_apns_seen marks it, or takes a done push out of
         * the table.) */
        if (!p->seen) {
            mdm_metric_add(a->m_coalesced, 1);
            if (it->w != NULL) {
                it->w->coalesced = true;
                deliver_one(p, it->w);
                mdm_free(it->w);
            }
            mdm_free(it->eid);
            return;
        }
        hash_del(a, p); /* stays on the done list until it expires */
        p = NULL;
    }
    if (p != NULL) {
        mdm_metric_add(a->m_coalesced, 1);
        p->record |= it->record;
        if (it->w != NULL) {
            it->w->coalesced = true;
            it->w->next = p->waiters;
            p->waiters = it->w;
        }
        mdm_free(it->eid);
        return;
    }
    p = mdm_calloc(1, sizeof(*p));
    p->eid = it->eid;
    p->hash = h;
    p->state = P_WAITING;
    p->waiters = it->w;
    p->record = it->record;
    hash_add(a, p);
    q_push(&a->waiting, p);
}

static void take_intake(apns_t *a)
{
    expire_done(a, mono_ms());
    for (size_t i = 0; i < INTAKE_SLICE && a->intake_head != NULL; i++) {
        intake_t *it = a->intake_head;
        a->intake_head = it->next;
        if (a->intake_head == NULL)
            a->intake_tail = NULL;
        a->nintake--;
        take_one(a, it);
        mdm_free(it);
    }
}

/* Pushes waiting for a slot (held by their topic or not), a retry or the
 * intake. */
static size_t queued(const apns_t *a)
{
    return a->waiting.n + a->ready.n + a->nheld + a->nintake + a->heap_n;
}

static bool work_pending(const apns_t *a)
{
    return a->intake_head != NULL || a->finished.head != NULL ||
           ((a->ready.head != NULL || a->waiting.head != NULL || held_can_go(a)) &&
            a->in_flight < a->cfg->apns_max_in_flight);
}

static void idle_cb(uv_idle_t *h)
{
    apns_t *a = h->data;
    take_intake(a);
    dispatch(a);
    flush_finished(a);
    mdm_metric_set(a->m_in_flight, (int64_t)a->in_flight);
    mdm_metric_set(a->m_queued, (int64_t)queued(a));
    if (!work_pending(a)) {
        uv_idle_stop(&a->idle);
        a->idle_on = false;
    }
}

/* Makes sure waiting work gets a slice soon. */
static void kick(apns_t *a)
{
    if (!a->closing && !a->idle_on && work_pending(a)) {
        uv_idle_start(&a->idle, idle_cb);
        a->idle_on = true;
    }
}

/* Delivers what finished, then kicks. */
static void pump(apns_t *a)
{
    if (a->closing)
        return;
    flush_finished(a);
    kick(a);
}

static int push_batch(apns_t *a, const char *const *eids, size_t n, mdm_apns_result_fn cb,
                      void *arg, bool record)
{
    if (a == NULL || a->closing)
        return MDM_ESTATE;
    for (size_t i = 0; i < n; i++) {
        intake_t *it = mdm_malloc(sizeof(*it));
        it->eid = mdm_strdup(eids[i]);
        it->w = NULL;
        it->record = record;
        it->next = NULL;
        if (cb != NULL) {
            it->w = mdm_calloc(1, sizeof(*it->w));
            it->w->cb = cb;
            it->w->arg = arg;
            it->w->index = i;
        }
        if (a->intake_tail)
            a->intake_tail->next = it;
        else
            a->intake_head = it;
        a->intake_tail = it;
        a->nintake++;
    }
    kick(a);
    return 0;
}

int mdm_apns_push_batch(mdm_server_t *s, const char *const *eids, size_t n,
                        mdm_apns_result_fn cb, void *arg)
{
    return push_batch(s->apns, eids, n, cb, arg, false);
}

int mdm_apns_push_many(mdm_server_t *s, const char *const *eids, size_t n)
{
    int rc = push_batch(s->apns, eids, n, NULL, NULL, false);
    return rc != 0 ? rc : n > INT_MAX ? INT_MAX : (int)n;
}

/* The server's synchronous push hook: queues and answers at once. */
static void push_fn(mdm_server_t *s, const char *eid, json_t *result)
{
    int rc = mdm_apns_push_many(s, &eid, 1);
    json_object_set_new(result, "status", json_string(rc > 0 ? "queued" : "error"));
    if (rc <= 0)
        json_object_set_new(result, "error", json_string("the push service is not running"));
}

static const char *topic_fn(mdm_server_t *s)
{
    apns_t *a = s->apns;
    return a != NULL && a->primary_topic[0] ? a->primary_topic : NULL;
}

/* ---- sweep ------------------------------------------------------------------- */

struct sweep_ctx {
    apns_t *a;
    int64_t now;
    char **eids;
    size_t n, cap;
    bool finished;
    size_t looked;
};

static bool sweep_wants(const apns_t *a, plist_t e, int64_t now)
{
    int64_t quiet = now - (int64_t)a->cfg->apns_sweep_after_ms;
    return mdm_pl_bool(e, "enabled", false) && !mdm_pl_bool(e, "token_invalid", false) &&
           mdm_pl_data(e, "token", NULL) != NULL && mdm_pl_int(e, "last_seen_at", 0) < quiet &&
           mdm_pl_int(e, "last_push_at", 0) < quiet;
}

static int sweep_fn(mdm_txn_t *txn, void *arg)
{
    struct sweep_ctx *c = arg;
    apns_t *a = c->a;
    mdm_cursor_t *cur = NULL;
    int rc = mdm_cursor_open(txn, MDM_T_QUEUE, &cur);
    if (rc != 0)
        return rc;
    mdm_val_t k, v;
    const char *start = a->sweep_cursor ? a->sweep_cursor : "";
    rc = mdm_cursor_seek(cur, MDM_VAL(start, strlen(start)), &k, &v);
    while (rc == 0 && c->looked < SWEEP_SLICE) {
        const char *nul = memchr(k.data, '\0', k.len);
        size_t el = nul ? (size_t)(nul - (const char *)k.data) : k.len;
        char eid[MDM_EID_MAX + 2];
        if (el > MDM_EID_MAX) {
            rc = mdm_cursor_next(cur, &k, &v);
            continue;
        }
        memcpy(eid, k.data, el);
        eid[el] = '\0';
        c->looked++;
        plist_t e = NULL;
        if (mdm_enrollment_load(txn, eid, &e) == 0) {
            if (sweep_wants(a, e, c->now)) {
                if (c->n == c->cap) {
                    c->cap = c->cap ? c->cap * 2 : 64;
                    c->eids = mdm_realloc(c->eids, c->cap * sizeof(*c->eids));
                }
                c->eids[c->n++] = mdm_strdup(eid);
            }
            plist_free(e);
        }
        /* The next enrollment: every key of this one starts "<eid>\0". */
        eid[el] = '\1';
        eid[el + 1] = '\0';
        rc = mdm_cursor_seek(cur, MDM_VAL(eid, el + 1), &k, &v);
        if (rc == 0) {
            mdm_free(a->sweep_cursor);
            a->sweep_cursor = mdm_strndup(k.data, k.len);
        }
    }
    mdm_cursor_close(cur);
    if (rc == MDM_ENOTFOUND) {
        c->finished = true;
        rc = 0;
    }
    return rc;
}

static void sweep_step_cb(uv_timer_t *t)
{
    apns_t *a = t->data;
    struct sweep_ctx c = {.a = a, .now = mdm_now_ms()};
    int rc = mdm_store_view(a->s->store, sweep_fn, &c);
    if (rc != 0) {
        mdm_log(MDM_LOG_WARN, NULL, "apns.sweep_failed", "error=\"%s\"", mdm_strerror(rc));
        c.finished = true;
    }
    if (c.n > 0) {
        mdm_metric_add(a->m_sweep, (int64_t)c.n);
        mdm_log(MDM_LOG_INFO, NULL, "apns.sweep", "pushes=%zu", c.n);
        push_batch(a, (const char *const *)c.eids, c.n, NULL, NULL, true);
    }
    for (size_t i = 0; i < c.n; i++)
        mdm_free(c.eids[i]);
    mdm_free(c.eids);
    if (c.finished) {
        a->sweeping = false;
        mdm_free(a->sweep_cursor);
        a->sweep_cursor = NULL;
    } else {
        uv_timer_start(&a->sweep_step_timer, sweep_step_cb, 1, 0);
    }
}

static void sweep_cb(uv_timer_t *t)
{
    apns_t *a = t->data;
    if (a->sweeping || a->certs.n == 0)
        return;
    a->sweeping = true;
    sweep_step_cb(&a->sweep_step_timer);
}

/* ---- certificates ------------------------------------------------------------ */

static void cert_gauges(apns_t *a, mdm_pushcert_t *pc, int64_t now)
{
    char labels[TOPIC_LABELS_MAX], tq[MDM_TOPIC_LOGQ_MAX];
    topic_labels(labels, pc->topic);
    int64_t left = pc->not_after_ms - now;
    mdm_metric_set(mdm_metric(MDM_METRIC_GAUGE, "moonmdm_apns_certificate_expiry_seconds", labels,
                              "Seconds until the push certificate of a topic expires"),
                   left / 1000);
    mdm_metric_set(mdm_metric(MDM_METRIC_GAUGE, "moonmdm_apns_certificate_expiring", labels,
                              "1 when the push certificate of a topic expires within 30 days"),
                   left < EXPIRY_WARN_MS);
    mdm_metric_set(mdm_metric(MDM_METRIC_GAUGE, "moonmdm_apns_topic_blocked", labels,
                              "1 while pushes for the topic are stopped: APNs refused its certificate"),
                   pc->blocked);
    if (left >= EXPIRY_WARN_MS || now - pc->expiry_warned_ms < EXPIRY_REPEAT_MS)
        return;
    pc->expiry_warned_ms = now;
    char t[32];
    mdm_time_format(t, pc->not_after_ms);
    if (left <= 0)
        mdm_log(MDM_LOG_ERROR, NULL, "apns.pushcert_expired",
                "topic=%s not_after=%s action=\"renew it in the Apple Push Certificates Portal "
                "and install it with PUT /v1/pushcert\"",
                mdm_logq(tq, sizeof(tq), pc->topic), t);
    else
        mdm_log(MDM_LOG_WARN, NULL, "apns.pushcert_expiring",
                "topic=%s not_after=%s days_left=%lld action=\"renew it in the Apple Push "
                "Certificates Portal (keep the same topic) and install it with PUT "
                "/v1/pushcert\"",
                mdm_logq(tq, sizeof(tq), pc->topic), t, (long long)(left / 86400000));
}

static void certs_changed(apns_t *a)
{
    snprintf(a->primary_topic, sizeof(a->primary_topic), "%s",
             a->certs.n ? a->certs.v[0]->topic : "");
    size_t n = a->certs.n ? a->certs.n : 1;
    long per = (long)a->cfg->apns_connections;
    /* curl counts connections per host, whatever the client certificate:
     * apns.connections for each topic, as one total that all topics share.
     * max_in_flight keeps one topic to about apns.connections of them while
     * APNs allows the streams per connection we ask for. When a certificate
     * is replaced, new requests wait for its old connection to drain, then
     * replace it. */
    curl_multi_setopt(a->multi, CURLMOPT_MAX_HOST_CONNECTIONS, per * (long)n);
    curl_multi_setopt(a->multi, CURLMOPT_MAXCONNECTS, per * (long)n + 1);
    int64_t now = mdm_now_ms();
    for (size_t i = 0; i < a->certs.n; i++)
        cert_gauges(a, a->certs.v[i], now);
}

static void housekeeping_cb(uv_timer_t *t)
{
    apns_t *a = t->data;
    int64_t now = mdm_now_ms(), mono = mono_ms();
    expire_done(a, mono);
    mdm_metric_set(a->m_in_flight, (int64_t)a->in_flight);
    mdm_metric_set(a->m_queued, (int64_t)queued(a));
    if (mono >= a->next_expiry_check_ms) {
        a->next_expiry_check_ms = mono + EXPIRY_CHECK_MS;
        for (size_t i = 0; i < a->certs.n; i++)
            cert_gauges(a, a->certs.v[i], now);
    }
}

const mdm_pushcerts_t *mdm_apns_pushcerts(mdm_server_t *s)
{
    apns_t *a = s->apns;
    return a ? &a->certs : NULL;
}

static int save_fn(mdm_txn_t *txn, void *arg)
{
    apns_t *a = ((void **)arg)[0];
    const mdm_pushcert_t *pc = ((void **)arg)[1];
    return mdm_pushcert_save(txn, &a->certs.secret, pc);
}

int mdm_apns_pushcert_install(mdm_server_t *s, mdm_pushcert_t *pc, const char *replace_topic,
                              bool *replaced, mdm_err_t *err)
{
    apns_t *a = s->apns;
    int rc = 0;
    if (a == NULL) {
        rc = mdm_err_set(err, MDM_ESTATE, "the push service is not running");
        goto out;
    }
    rc = mdm_pushcert_check_validity(pc, mdm_now_ms(), err);
    if (rc != 0)
        goto out;
    if (replace_topic != NULL && strcmp(replace_topic, pc->topic) != 0) {
        rc = mdm_err_set(err, MDM_EINVAL,
                         "the certificate is for topic %s, not %s: a new push certificate "
                         "(rather than a renewal of the old one) orphans every device enrolled "
                         "with the old topic",
                         pc->topic, replace_topic);
        goto out;
    }
    pc->source = "api";
    pc->updated_ms = mdm_now_ms();
    void *args[2] = {a, pc};
    rc = mdm_store_update(s->store, save_fn, args);
    if (rc != 0) {
        rc = mdm_err_set(err, rc, "cannot store the push certificate: %s", mdm_strerror(rc));
        goto out;
    }
    mdm_pushcert_t *old = mdm_pushcerts_find(&a->certs, pc->topic);
    char old_sha[65] = "-";
    if (old != NULL)
        snprintf(old_sha, sizeof(old_sha), "%s", old->sha256);
    char t[32], tq[MDM_TOPIC_LOGQ_MAX];
    mdm_time_format(t, pc->not_after_ms);
    mdm_log(MDM_LOG_INFO, NULL, "apns.pushcert_installed",
            "topic=%s sha256=%s not_after=%s replaced=%s", mdm_logq(tq, sizeof(tq), pc->topic), pc->sha256,
            t, old_sha);
    mdm_pushcerts_set(&a->certs, pc, replaced);
    pc = NULL;
    certs_changed(a);
out:
    mdm_pushcert_free(pc);
    return rc;
}

static int load_certs(apns_t *a, mdm_err_t *err)
{
    const mdm_config_t *cfg = a->cfg;
    char *path = mdm_sprintf("%s/secret.key", cfg->data_dir);
    int rc = mdm_secretkey_load(path, true, cfg->tls_allow_insecure_key_mode, &a->certs.secret,
                                err);
    mdm_free(path);
    if (rc != 0)
        return rc;
    mdm_pushcert_t *pc = NULL;
    if ((cfg->apns_cert || cfg->apns_key) && cfg->apns_p12)
        return mdm_err_set(err, MDM_ECONFIG,
                           "apns: set either apns.cert and apns.key or apns.p12, not both");
    if (cfg->apns_cert || cfg->apns_key) {
        if (!cfg->apns_cert || !cfg->apns_key)
            return mdm_err_set(err, MDM_ECONFIG, "apns.cert and apns.key go together");
        rc = mdm_pushcert_from_files(cfg->apns_cert, cfg->apns_key,
                                     cfg->tls_allow_insecure_key_mode, &pc, err);
    } else if (cfg->apns_p12) {
        rc = mdm_pushcert_from_p12(cfg->apns_p12, cfg->apns_p12_password, &pc, err);
    }
    if (rc != 0) {
        char msg[sizeof(err->msg)];
        snprintf(msg, sizeof(msg), "%s", err->msg);
        return mdm_err_set(err, MDM_ECONFIG, "apns: %s", msg);
    }
    if (pc != NULL)
        mdm_pushcerts_set(&a->certs, pc, NULL);
    rc = mdm_pushcerts_load_store(&a->certs, a->s->store, err);
    if (rc != 0)
        return rc;
    for (size_t i = 0; i < a->certs.n; i++) {
        char t[32], tq[MDM_TOPIC_LOGQ_MAX];
        mdm_time_format(t, a->certs.v[i]->not_after_ms);
        mdm_log(MDM_LOG_INFO, NULL, "apns.pushcert_loaded", "topic=%s source=%s not_after=%s",
                mdm_logq(tq, sizeof(tq), a->certs.v[i]->topic), a->certs.v[i]->source, t);
    }
    return 0;
}

/* ---- set-up ------------------------------------------------------------------- */

static char *base_url_of(const char *url, mdm_err_t *err)
{
    if (url == NULL || strcmp(url, "production") == 0)
        return mdm_strdup(PRODUCTION_URL);
    if (strcmp(url, "sandbox") == 0 || strcmp(url, "development") == 0)
        return mdm_strdup(SANDBOX_URL);
    if (strncmp(url, "https://", 8) != 0 || url[8] == '\0') {
        mdm_err_set(err, MDM_ECONFIG,
                    "apns.url: \"%s\" is not \"production\", \"sandbox\" or an https:// URL", url);
        return NULL;
    }
    size_t n = strlen(url);
    while (n > 8 && url[n - 1] == '/')
        n--;
    return mdm_strndup(url, n);
}

static void init_metrics(apns_t *a)
{
    for (int i = 0; i <= MDM_PUSH_ERROR; i++) {
        char labels[48];
        snprintf(labels, sizeof(labels), "result=\"%s\"", status_names[i]);
        a->m_results[i] = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_apns_pushes_total", labels,
                                     "Pushes by result (coalesced callers count once)");
    }
    a->m_requests = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_apns_requests_total", NULL,
                               "Requests sent to APNs, retries included");
    a->m_retries = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_apns_retries_total", NULL,
                              "Pushes scheduled for another attempt (429, 5xx, connection)");
    a->m_coalesced = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_apns_coalesced_total", NULL,
                                "Push requests answered by a push already under way");
    a->m_invalidated = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_apns_tokens_invalidated_total",
                                  NULL, "Push tokens marked invalid after 410 or 400");
    a->m_sweep = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_apns_sweep_pushes_total", NULL,
                            "Pushes started by the sweep");
    a->m_in_flight = mdm_metric(MDM_METRIC_GAUGE, "moonmdm_apns_in_flight", NULL,
                                "Requests sent to APNs and not yet answered");
    a->m_queued = mdm_metric(MDM_METRIC_GAUGE, "moonmdm_apns_queued", NULL,
                             "Pushes waiting for a slot or a retry");
    a->m_latency = mdm_histogram("moonmdm_apns_request_duration_seconds", NULL,
                                 "Time from sending a request to APNs to its answer");
}

static void init_timer(apns_t *a, uv_timer_t *t)
{
    uv_timer_init(a->s->loop, t);
    t->data = a;
    uv_unref((uv_handle_t *)t);
}

int mdm_apns_service_init(mdm_server_t *s, mdm_err_t *err)
{
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return mdm_err_set(err, MDM_EIO, "curl_global_init failed");
    if (tls_note_index < 0)
        tls_note_index = SSL_CTX_get_ex_new_index(0, NULL, NULL, NULL, tls_note_free);
    apns_t *a = mdm_calloc(1, sizeof(*a));
    a->s = s;
    a->cfg = s->cfg;
    s->apns = a;
    a->nbuckets = 1024;
    a->buckets = mdm_calloc(a->nbuckets, sizeof(*a->buckets));
    a->easy_pool = mdm_calloc(a->cfg->apns_max_in_flight, sizeof(*a->easy_pool));
    init_metrics(a);
    a->multi = curl_multi_init();
    init_timer(a, &a->curl_timer);
    init_timer(a, &a->retry_timer);
    init_timer(a, &a->housekeeping_timer);
    init_timer(a, &a->sweep_timer);
    init_timer(a, &a->sweep_step_timer);
    uv_idle_init(s->loop, &a->idle);
    a->idle.data = a;
    uv_unref((uv_handle_t *)&a->idle);

    a->base_url = base_url_of(a->cfg->apns_url, err);
    if (a->base_url == NULL)
        return MDM_ECONFIG;
    if (a->cfg->apns_ca_file != NULL) {
        int rc = mdm_certs_read_pem(a->cfg->apns_ca_file, &a->extra_ca, err);
        if (rc != 0) {
            char msg[sizeof(err->msg)];
            snprintf(msg, sizeof(msg), "%s", err->msg);
            return mdm_err_set(err, MDM_ECONFIG, "apns.ca_file: %s", msg);
        }
    }
    int rc = load_certs(a, err);
    if (rc != 0)
        return rc;

    long streams = (long)((a->cfg->apns_max_in_flight + a->cfg->apns_connections - 1) /
                          a->cfg->apns_connections);
    curl_multi_setopt(a->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(a->multi, CURLMOPT_SOCKETDATA, a);
    curl_multi_setopt(a->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(a->multi, CURLMOPT_TIMERDATA, a);
    curl_multi_setopt(a->multi, CURLMOPT_PIPELINING, (long)CURLPIPE_MULTIPLEX);
    curl_multi_setopt(a->multi, CURLMOPT_MAX_CONCURRENT_STREAMS,
                      streams < 1 ? 1L : streams > MAX_STREAMS ? (long)MAX_STREAMS : streams);
    certs_changed(a);

    uv_timer_start(&a->housekeeping_timer, housekeeping_cb, HOUSEKEEPING_MS, HOUSEKEEPING_MS);
    if (a->cfg->apns_sweep_interval_ms > 0)
        uv_timer_start(&a->sweep_timer, sweep_cb, a->cfg->apns_sweep_interval_ms,
                       a->cfg->apns_sweep_interval_ms);
    s->push_fn = push_fn;
    s->topic_fn = topic_fn;
    mdm_api_push_register(s);
    char uq[600];
    mdm_log(MDM_LOG_INFO, NULL, "apns.ready",
            "url=%s certificates=%zu connections=%zu max_in_flight=%zu sweep_interval_ms=%llu",
            mdm_logq(uq, sizeof(uq), a->base_url), a->certs.n, a->cfg->apns_connections, a->cfg->apns_max_in_flight,
            (unsigned long long)a->cfg->apns_sweep_interval_ms);
    return 0;
}

static void close_handle(uv_handle_t *h)
{
    if (!uv_is_closing(h))
        uv_close(h, NULL);
}

/* Answers (and frees) waiters with "shutting down". */
static void abandon_waiters(waiter_t *ws)
{
    mdm_push_result_t r = {.status = MDM_PUSH_ERROR, .error = "the server is shutting down"};
    while (ws != NULL) {
        waiter_t *next = ws->next;
        r.coalesced = ws->coalesced;
        if (ws->cb != NULL)
            ws->cb(ws->arg, ws->index, &r);
        mdm_free(ws);
        ws = next;
    }
}

void mdm_apns_service_free(mdm_server_t *s)
{
    apns_t *a = s->apns;
    if (a == NULL)
        return;
    a->closing = true;
    s->push_fn = NULL;
    s->topic_fn = NULL;
    if (a->multi != NULL) {
        curl_multi_setopt(a->multi, CURLMOPT_SOCKETFUNCTION, NULL);
        curl_multi_setopt(a->multi, CURLMOPT_TIMERFUNCTION, NULL);
    }
    /* Every push, wherever it is, gets its answer. */
    flush_finished(a);
    for (size_t i = 0; i < a->nbuckets; i++) {
        push_t *p = a->buckets[i];
        while (p != NULL) {
            push_t *next = p->hnext;
            p->in_hash = false;
            if (p->state == P_IN_FLIGHT && p->easy != NULL) {
                curl_multi_remove_handle(a->multi, p->easy->h);
                easy_free(p->easy);
                p->easy = NULL;
            }
            if (p->state != P_DONE) {
                abandon_waiters(p->waiters);
                p->waiters = NULL;
                push_free(p);
            }
            p = next;
        }
        a->buckets[i] = NULL;
    }
    /* Accepted pushes kept for coalescing, and those that left the hash. */
    push_t *p;
    while ((p = q_pop(&a->done)) != NULL)
        push_free(p);
    while (a->intake_head != NULL) {
        intake_t *it = a->intake_head;
        a->intake_head = it->next;
        abandon_waiters(it->w);
        mdm_free(it->eid);
        mdm_free(it);
    }
    mdm_free(a->heap);
    for (size_t i = 0; i < a->ntopics; i++)
        mdm_free(a->topics[i]);
    mdm_free(a->topics);
    for (sockctx_t *sc = a->socks; sc != NULL; sc = sc->next)
        close_handle((uv_handle_t *)&sc->poll);
    close_handle((uv_handle_t *)&a->curl_timer);
    close_handle((uv_handle_t *)&a->retry_timer);
    close_handle((uv_handle_t *)&a->housekeeping_timer);
    close_handle((uv_handle_t *)&a->sweep_timer);
    close_handle((uv_handle_t *)&a->sweep_step_timer);
    close_handle((uv_handle_t *)&a->idle);
    uv_run(s->loop, UV_RUN_NOWAIT);
    sockctx_t *sc = a->socks;
    while (sc != NULL) {
        sockctx_t *next = sc->next;
        mdm_free(sc);
        sc = next;
    }
    for (size_t i = 0; i < a->easy_pool_n; i++)
        easy_free(a->easy_pool[i]);
    if (a->multi != NULL)
        curl_multi_cleanup(a->multi);
    mdm_free(a->easy_pool);
    mdm_free(a->buckets);
    mdm_free(a->base_url);
    mdm_free(a->sweep_cursor);
    sk_X509_pop_free(a->extra_ca, X509_free);
    mdm_pushcerts_free(&a->certs);
    mdm_free(a);
    s->apns = NULL;
    curl_global_cleanup();
}
