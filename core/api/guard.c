#include "api/guard.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#include "util/alloc.h"
#include "util/log.h"

typedef struct entry {
    char *key;                 /* NULL: empty */
    uint32_t failures;
    int64_t first_ms;          /* start of the counting window */
    int64_t locked_until_ms;
    int64_t last_ms;
    uint32_t in_flight;        /* attempts begun and not yet ended */
} entry_t;

struct mdm_guard {
    mdm_guard_opts_t o;
    char *name;
    entry_t *slots;
    size_t nslots;             /* a power of two, twice max_keys */
    size_t used;
    mdm_metric_t *m_lockouts, *m_refused;
};

static uint64_t hash(const char *s)
{
    uint64_t h = 1469598103934665603ull;
    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

mdm_guard_t *mdm_guard_new(const mdm_guard_opts_t *opts)
{
    mdm_guard_t *g = mdm_calloc(1, sizeof(*g));
    g->o = *opts;
    g->name = mdm_strdup(opts->name);
    g->o.name = g->name;
    if (g->o.max_keys == 0)
        g->o.max_keys = 65536;
    g->nslots = 16;
    while (g->nslots < g->o.max_keys * 2)
        g->nslots *= 2;
    g->slots = mdm_calloc(g->nslots, sizeof(*g->slots));
    char labels[64];
    snprintf(labels, sizeof(labels), "endpoint=\"%s\"", g->name);
    g->m_lockouts = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_auth_lockouts_total", labels,
                               "Keys (address or user) locked after repeated failed sign-ins");
    g->m_refused = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_auth_locked_requests_total", labels,
                              "Requests refused because their address or user was locked");
    return g;
}

static void clear_all(mdm_guard_t *g)
{
    for (size_t i = 0; i < g->nslots; i++)
        mdm_free(g->slots[i].key);
    memset(g->slots, 0, g->nslots * sizeof(*g->slots));
    g->used = 0;
}

void mdm_guard_free(mdm_guard_t *g)
{
    if (g == NULL)
        return;
    clear_all(g);
    mdm_free(g->slots);
    mdm_free(g->name);
    mdm_free(g);
}

/* Failures counted now: those within the window. */
static uint32_t recent_failures(const mdm_guard_t *g, const entry_t *e, int64_t now_ms)
{
    if (e->failures == 0 || now_ms - e->first_ms > (int64_t)g->o.window_ms)
        return 0;
    return e->failures;
}

/* Whether a key holds anything: failures in its window, a lock, or
 * attempts in flight. */
static bool holds(const mdm_guard_t *g, const entry_t *e, int64_t now_ms)
{
    return e->in_flight > 0 || e->locked_until_ms > now_ms || recent_failures(g, e, now_ms) > 0;
}

/* Rebuilds the table with only the keys that hold something; true when
 * that made room. */
static bool make_room(mdm_guard_t *g, int64_t now_ms)
{
    entry_t *old = g->slots;
    size_t mask = g->nslots - 1;
    g->slots = mdm_calloc(g->nslots, sizeof(*g->slots));
    g->used = 0;
    for (size_t i = 0; i < g->nslots; i++) {
        if (old[i].key == NULL)
            continue;
        if (!holds(g, &old[i], now_ms)) {
            mdm_free(old[i].key);
            continue;
        }
        size_t at = hash(old[i].key) & mask;
        while (g->slots[at].key != NULL)
            at = (at + 1) & mask;
        g->slots[at] = old[i];
        g->used++;
    }
    mdm_free(old);
    return g->used < g->o.max_keys;
}

/* The entry of key; with create, a new one when there is none (now_ms:
 * what a full table keeps). */
static entry_t *find(mdm_guard_t *g, const char *key, bool create, int64_t now_ms)
{
    size_t mask = g->nslots - 1;
    for (size_t i = 0, at = hash(key) & mask; i < g->nslots; i++, at = (at + 1) & mask) {
        entry_t *e = &g->slots[at];
        if (e->key == NULL) {
            if (!create)
                return NULL;
            if (g->used >= g->o.max_keys) {
                /* Full: drop the keys that hold nothing; if every key
                 * holds something, forget everything rather than refuse
                 * to count. An attacker who fills the table that way
                 * resets only the counters, never bypasses an answer's
                 * check. */
                if (!make_room(g, now_ms)) {
                    mdm_log(MDM_LOG_WARN, NULL, "guard.table_full", "endpoint=%s keys=%zu",
                            g->name, g->used);
                    clear_all(g);
                }
                return find(g, key, true, now_ms);
            }
            e->key = mdm_strdup(key);
            g->used++;
            return e;
        }
        if (strcmp(e->key, key) == 0)
            return e;
    }
    return NULL;
}

uint64_t mdm_guard_locked(mdm_guard_t *g, const char *key, int64_t now_ms)
{
    entry_t *e = find(g, key, false, 0);
    if (e == NULL || e->locked_until_ms <= now_ms)
        return 0;
    mdm_metric_add(g->m_refused, 1);
    return (uint64_t)(e->locked_until_ms - now_ms);
}

uint64_t mdm_guard_fail(mdm_guard_t *g, const char *key, int64_t now_ms)
{
    entry_t *e = find(g, key, true, now_ms);
    if (e == NULL)
        return 0;
    if (e->failures == 0 || now_ms - e->first_ms > (int64_t)g->o.window_ms) {
        e->failures = 0;
        e->first_ms = now_ms;
    }
    e->failures++;
    e->last_ms = now_ms;
    if (e->failures < g->o.threshold)
        return 0;
    uint64_t lock = g->o.backoff_ms;
    for (uint32_t i = (uint32_t)g->o.threshold; i < e->failures && lock < g->o.backoff_max_ms; i++)
        lock *= 2;
    if (lock > g->o.backoff_max_ms)
        lock = g->o.backoff_max_ms;
    e->locked_until_ms = now_ms + (int64_t)lock;
    /* Keep counting within a window that covers the lockout. */
    e->first_ms = now_ms;
    mdm_metric_add(g->m_lockouts, 1);
    char kq[300];
    mdm_log(MDM_LOG_WARN, NULL, "guard.lockout", "endpoint=%s key=%s failures=%u lock_ms=%llu",
            g->name, mdm_logq(kq, sizeof(kq), key), e->failures, (unsigned long long)lock);
    return lock;
}


bool mdm_guard_begin(mdm_guard_t *g, const char *key, int64_t now_ms)
{
    entry_t *e = find(g, key, true, now_ms);
    if (e == NULL)
        return true;
    uint64_t open = (uint64_t)recent_failures(g, e, now_ms) + e->in_flight;
    if (open >= g->o.threshold && e->in_flight > 0) {
        mdm_metric_add(g->m_refused, 1);
        return false;
    }
    e->in_flight++;
    return true;
}

void mdm_guard_end(mdm_guard_t *g, const char *key)
{
    entry_t *e = find(g, key, false, 0);
    if (e != NULL && e->in_flight > 0)
        e->in_flight--;
}

void mdm_guard_success(mdm_guard_t *g, const char *key)
{
    entry_t *e = find(g, key, false, 0);
    if (e != NULL) {
        e->failures = 0;
        e->locked_until_ms = 0;
    }
}

/* The host part of "ip:port" or "[v6]:port" (a zone "%eth0" dropped) in
 * out; false when it does not fit. */
static bool addr_host(const char *remote, char *out, size_t n)
{
    const char *end;
    if (remote[0] == '[') {
        end = strchr(remote, ']');
        remote++;
    } else {
        /* One colon: IPv4 and its port; more: an IPv6 address without one. */
        end = strchr(remote, ':');
        if (end != NULL && strchr(end + 1, ':') != NULL)
            end = NULL;
    }
    size_t len = end ? (size_t)(end - remote) : strlen(remote);
    const char *zone = memchr(remote, '%', len);
    if (zone != NULL)
        len = (size_t)(zone - remote);
    if (len >= n)
        return false;
    memcpy(out, remote, len);
    out[len] = '\0';
    return true;
}

void mdm_guard_addr_key(const char *remote, char *out, size_t n)
{
    char host[INET6_ADDRSTRLEN + 64], text[INET6_ADDRSTRLEN];
    unsigned char a[16];
    if (!addr_host(remote, host, sizeof(host))) {
        snprintf(out, n, "addr:%s", remote);
        return;
    }
    if (inet_pton(AF_INET6, host, a) == 1) {
        static const unsigned char v4mapped[12] = {0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff};
        if (memcmp(a, v4mapped, sizeof(v4mapped)) == 0) {
            inet_ntop(AF_INET, a + 12, text, sizeof(text));
            snprintf(out, n, "addr:%s", text);
            return;
        }
        /* A client holds at least a /64 and can use any address in it. */
        memset(a + 8, 0, 8);
        inet_ntop(AF_INET6, a, text, sizeof(text));
        snprintf(out, n, "addr:%s/64", text);
        return;
    }
    if (inet_pton(AF_INET, host, a) == 1) {
        inet_ntop(AF_INET, a, text, sizeof(text));
        snprintf(out, n, "addr:%s", text);
        return;
    }
    snprintf(out, n, "addr:%s", host);
}
