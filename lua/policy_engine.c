/* The policy on the server: the current revision, hot reload (file watch
 * with a debounce, SIGHUP, API), status for GET /v1/policy, dry runs
 * (eval), and the decision log's queries and pruning.
 *
 * Reload builds a new state, validates it, and only then swaps it in; a
 * request that acquired the old revision keeps it until it releases it. */
#include <stdio.h>
#include <string.h>

#include <uv.h>

#include "sandbox_internal.h"
#include "server.h"
#include "util/alloc.h"
#include "util/log.h"
#include "util/misc.h"
#include "util/plist.h"
#include "util/plistjson.h"

#define DEBOUNCE_MS 200
/* The timer writes buffered decision log entries every tick and prunes
 * what is over policy.decision_log_max or older than decision_log_age (a
 * count and a look at the oldest entry when nothing is), up to PRUNE_BATCH
 * entries a tick: 32,000 a second, more than hooks write here. While a
 * prune finds a full batch the next tick comes after PRUNE_AGAIN_MS
 * (160,000 a second). Each run is a write, and in an iteration without
 * other writes a commit of its own, so they are kept few: re-running every
 * 10 ms, 500 at a time, took 100 commits a second while catching up, and
 * each flush stalled the loop. */
#define PRUNE_INTERVAL_MS 250
#define PRUNE_AGAIN_MS 50
#define PRUNE_BATCH 8000
#define DECISIONS_SCAN_MAX 100000

typedef struct engine engine_t;

typedef struct watch {
    uv_fs_event_t h;           /* first: the handle's address is the watch's */
    engine_t *e;
} watch_t;

struct engine {
    mdm_server_t *server;
    mdm_policy_settings_t set;
    mdm_policy_t *current;
    uint64_t reloads;          /* successful loads after the first */
    uint64_t failures;         /* failed reloads */
    bool has_error;
    mdm_policy_error_t last_error;
    int64_t last_error_at;
    uv_timer_t debounce;
    uv_timer_t prune;
    watch_t **watches;
    size_t nwatches;
    int open_handles;          /* timers still to be closed at shutdown */
    mdm__log_sink_t sink;      /* decision log entries waiting for the timer */
    mdm_metric_t *m_reload_ok, *m_reload_failed, *m_pruned;
};

static engine_t *engine_of(mdm_server_t *s)
{
    return s->policy;
}

mdm_policy_t *mdm_policy_acquire(mdm_server_t *s)
{
    engine_t *e = engine_of(s);
    if (e == NULL || e->current == NULL)
        return mdm_policy_new_empty();
    return mdm_policy_ref(e->current);
}

static const char *hooks_text(const mdm_policy_t *p, char *buf, size_t len)
{
    buf[0] = '\0';
    size_t off = 0;
    for (int h = 0; h < MDM_POLICY_HOOK__COUNT; h++) {
        if (!mdm_policy_has_hook(p, h))
            continue;
        int n = snprintf(buf + off, len - off, "%s%s", off ? "," : "", mdm_policy_hook_name(h));
        if (n < 0 || (size_t)n >= len - off)
            break;
        off += (size_t)n;
    }
    return off ? buf : "-";
}

/* ---- watching ---------------------------------------------------------------- */

static void watch_closed(uv_handle_t *h)
{
    mdm_free(h);
}

static void watches_close(engine_t *e)
{
    for (size_t i = 0; i < e->nwatches; i++)
        if (!uv_is_closing((uv_handle_t *)&e->watches[i]->h))
            uv_close((uv_handle_t *)&e->watches[i]->h, watch_closed);
    mdm_free(e->watches);
    e->watches = NULL;
    e->nwatches = 0;
}

static void debounce_cb(uv_timer_t *t);

static void watch_cb(uv_fs_event_t *h, const char *filename, int events, int status)
{
    (void)filename;
    (void)events;
    (void)status;
    watch_t *w = (watch_t *)h;
    /* Editors write in several steps: reload once the directory is quiet. */
    uv_timer_start(&w->e->debounce, debounce_cb, DEBOUNCE_MS, 0);
}

/* Watches every directory of the set (inotify is not recursive). */
static void watches_sync(engine_t *e)
{
    watches_close(e);
    if (!e->server->cfg->policy_watch)
        return;
    mdm_strlist_t dirs = {0};
    if (mdm__policy_dirs(e->set.dir, &dirs) != 0) {
        mdm__strlist_free(&dirs);
        return;
    }
    for (size_t i = 0; i < dirs.n; i++) {
        watch_t *w = mdm_calloc(1, sizeof(*w));
        w->e = e;
        char *path = dirs.v[i][0] ? mdm_sprintf("%s/%s", e->set.dir, dirs.v[i])
                                  : mdm_strdup(e->set.dir);
        uv_fs_event_init(e->server->loop, &w->h);
        int rc = uv_fs_event_start(&w->h, watch_cb, path, 0);
        if (rc != 0) {
            mdm_log(MDM_LOG_WARN, NULL, "policy.watch_failed", "dir=\"%s\" error=\"%s\"", path,
                    uv_strerror(rc));
            uv_close((uv_handle_t *)&w->h, watch_closed);
        } else {
            uv_unref((uv_handle_t *)&w->h);
            e->watches = mdm_realloc(e->watches, (e->nwatches + 1) * sizeof(*e->watches));
            e->watches[e->nwatches++] = w;
        }
        mdm_free(path);
    }
    mdm__strlist_free(&dirs);
}

/* ---- reload ------------------------------------------------------------------- */

int mdm_policy_load_candidate(mdm_server_t *s, const char *dir, mdm_policy_t **out,
                              mdm_policy_error_t *e)
{
    engine_t *en = engine_of(s);
    if (en == NULL)
        return MDM_ESTATE;
    mdm_policy_settings_t set = en->set;
    set.dir = dir;
    set.decision_log = false;
    return mdm__policy_load(&set, MDM__MODE_SERVER, NULL, out, e);
}

int mdm_policy_reload(mdm_server_t *s, bool *changed, mdm_policy_error_t *e)
{
    engine_t *en = engine_of(s);
    mdm_policy_error_t local;
    if (e == NULL)
        e = &local;
    if (changed != NULL)
        *changed = false;
    if (en == NULL) {
        memset(e, 0, sizeof(*e));
        snprintf(e->message, sizeof(e->message), "the policy service is not running");
        return MDM_ESTATE;
    }
    mdm_policy_t *p = NULL;
    uint64_t t0 = mdm_mono_ns();
    int rc = mdm__policy_load(&en->set, MDM__MODE_SERVER, NULL, &p, e);
    double ms = (double)(mdm_mono_ns() - t0) / 1e6;
    if (rc != 0) {
        en->failures++;
        en->has_error = true;
        en->last_error = *e;
        en->last_error_at = mdm_now_ms();
        mdm_metric_add(en->m_reload_failed, 1);
        char fq[300], mq[700];
        mdm_log(MDM_LOG_ERROR, NULL, "policy.reload_failed",
                "dir=\"%s\" file=%s line=%d error=%s kept=%.12s", en->set.dir,
                mdm_logq(fq, sizeof(fq), e->file[0] ? e->file : NULL), e->line,
                mdm_logq(mq, sizeof(mq), e->message),
                en->current ? mdm_policy_revision(en->current) : "-");
        watches_sync(en);
        return rc;
    }
    en->reloads++;
    en->has_error = false;
    mdm_metric_add(en->m_reload_ok, 1);
    bool differs = en->current == NULL || strcmp(mdm_policy_revision(en->current),
                                                 mdm_policy_revision(p)) != 0;
    char hooks[128];
    if (differs) {
        mdm_policy_t *old = en->current;
        en->current = p;
        mdm_log(MDM_LOG_INFO, NULL, "policy.reloaded",
                "revision=%.12s previous=%.12s files=%zu hooks=%s load_ms=%.1f",
                mdm_policy_revision(p), old ? mdm_policy_revision(old) : "-", p->files.n,
                hooks_text(p, hooks, sizeof(hooks)), ms);
        mdm_policy_release(old);
    } else {
        mdm_log(MDM_LOG_INFO, NULL, "policy.reload_unchanged", "revision=%.12s",
                mdm_policy_revision(p));
        mdm_policy_release(p);
    }
    if (changed != NULL)
        *changed = differs;
    watches_sync(en);
    return 0;
}

static void debounce_cb(uv_timer_t *t)
{
    engine_t *e = t->data;
    mdm_policy_reload(e->server, NULL, NULL);
}

static void on_sighup(mdm_server_t *s)
{
    mdm_policy_reload(s, NULL, NULL);
}

/* ---- status ---------------------------------------------------------------------- */

static json_t *time_json(int64_t ms)
{
    char t[32];
    mdm_time_format(t, ms);
    return json_string(t);
}

json_t *mdm_policy_status_json(mdm_server_t *s)
{
    engine_t *e = engine_of(s);
    json_t *o = json_object();
    mdm_policy_t *p = e ? e->current : NULL;
    json_object_set_new(o, "revision", p && p->revision[0] ? json_string(p->revision) : json_null());
    json_object_set_new(o, "name", json_string(p ? p->name : "default"));
    json_object_set_new(o, "loaded_at", p ? time_json(p->loaded_at_ms) : json_null());
    json_object_set_new(o, "dir", json_string(e ? e->set.dir : s->cfg->policy_dir));
    json_t *files = json_array(), *hooks = json_array();
    for (size_t i = 0; p != NULL && i < p->files.n; i++)
        json_array_append_new(files, json_string(p->files.v[i]));
    for (int h = 0; p != NULL && h < MDM_POLICY_HOOK__COUNT; h++)
        if (mdm_policy_has_hook(p, h))
            json_array_append_new(hooks, json_string(mdm_policy_hook_name(h)));
    json_object_set_new(o, "files", files);
    json_object_set_new(o, "hooks", hooks);
    if (e != NULL && e->has_error) {
        json_t *err = json_object();
        json_object_set_new(err, "file", json_string(e->last_error.file));
        json_object_set_new(err, "line", json_integer(e->last_error.line));
        json_object_set_new(err, "message", json_string(e->last_error.message));
        char text[1100];
        mdm_policy_error_format(&e->last_error, NULL, text, sizeof(text));
        json_object_set_new(err, "text", json_string(text));
        json_object_set_new(err, "at", time_json(e->last_error_at));
        json_object_set_new(o, "last_error", err);
    } else {
        json_object_set_new(o, "last_error", json_null());
    }
    json_object_set_new(o, "reloads", json_integer(e ? (json_int_t)e->reloads : 0));
    json_object_set_new(o, "failures", json_integer(e ? (json_int_t)e->failures : 0));
    json_object_set_new(o, "memory_bytes",
                        json_integer(p && p->sb.L ? (json_int_t)p->sb.mem_used : 0));
    return o;
}

/* ---- decision log ------------------------------------------------------------------ */

struct prune_ctx {
    uint64_t max_count, max_age_ms;
    size_t batch, deleted;
};

static int prune_txn(mdm_txn_t *txn, void *arg)
{
    struct prune_ctx *c = arg;
    uint64_t count = 0;
    int rc = mdm_txn_count(txn, MDM_T_DECISIONS, &count);
    if (rc != 0)
        return rc;
    int64_t cutoff = mdm_now_ms() - (int64_t)c->max_age_ms;
    mdm_cursor_t *cur = NULL;
    rc = mdm_cursor_open(txn, MDM_T_DECISIONS, &cur);
    if (rc != 0)
        return rc;
    mdm_val_t k, v;
    for (rc = mdm_cursor_seek(cur, MDM_VAL(NULL, 0), &k, &v); rc == 0 && c->deleted < c->batch;
         rc = mdm_cursor_next(cur, &k, &v)) {
        int64_t t = k.len >= 8 ? (int64_t)mdm_be64_get(k.data) : 0;
        bool over = count - c->deleted > c->max_count;
        if (!over && t >= cutoff)
            break;
        rc = mdm_cursor_del(cur);
        if (rc != 0)
            break;
        c->deleted++;
    }
    mdm_cursor_close(cur);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

int mdm_policy_decisions_prune(mdm_store_t *store, uint64_t max_count, uint64_t max_age_ms,
                               size_t batch, size_t *deleted)
{
    struct prune_ctx c = {.max_count = max_count, .max_age_ms = max_age_ms, .batch = batch};
    int rc = mdm_store_update(store, prune_txn, &c);
    *deleted = rc == 0 ? c.deleted : 0;
    return rc;
}

void mdm_policy_flush_decisions(mdm_server_t *s)
{
    engine_t *e = engine_of(s);
    if (e != NULL && s->store != NULL)
        mdm__log_sink_flush(s->store, &e->sink);
}

static void prune_cb(uv_timer_t *t)
{
    engine_t *e = t->data;
    mdm__log_sink_flush(e->server->store, &e->sink);
    const mdm_config_t *cfg = e->server->cfg;
    size_t n = 0;
    int rc = mdm_policy_decisions_prune(e->server->store, cfg->policy_decision_log_max,
                                        cfg->policy_decision_log_age_ms, PRUNE_BATCH, &n);
    if (rc != 0) {
        mdm_log(MDM_LOG_WARN, NULL, "policy.decisions_prune_failed", "error=\"%s\"",
                mdm_strerror(rc));
        return;
    }
    mdm_metric_add(e->m_pruned, (int64_t)n);
    if (n == PRUNE_BATCH)
        uv_timer_start(t, prune_cb, PRUNE_AGAIN_MS, PRUNE_INTERVAL_MS);
}

struct query_ctx {
    const char *device, *hook;
    size_t limit;
    json_t *arr;
};

/* One stored entry as a JSON object: JSON text, or a binary plist (the
 * format of earlier versions). NULL when it is neither. */
static json_t *entry_json(const void *data, size_t len)
{
    if (len > 0 && *(const char *)data == '{') {
        json_t *j = json_loadb(data, len, 0, NULL);
        if (j != NULL && !json_is_object(j)) {
            json_decref(j);
            j = NULL;
        }
        return j;
    }
    plist_t e = NULL;
    json_t *j = NULL;
    if (mdm_plist_load(data, len, &e) == 0 && plist_get_node_type(e) == PLIST_DICT)
        j = mdm_plist_to_json(e);
    plist_free(e);
    return j;
}

static int query_txn(mdm_txn_t *txn, void *arg)
{
    struct query_ctx *q = arg;
    mdm_cursor_t *cur = NULL;
    int rc = mdm_cursor_open(txn, MDM_T_DECISIONS, &cur);
    if (rc != 0)
        return rc;
    mdm_val_t k, v;
    size_t scanned = 0;
    for (rc = mdm_cursor_last(cur, &k, &v);
         rc == 0 && json_array_size(q->arr) < q->limit && scanned < DECISIONS_SCAN_MAX;
         rc = mdm_cursor_prev(cur, &k, &v), scanned++) {
        json_t *j = entry_json(v.data, v.len);
        if (j == NULL)
            continue;
        const char *dev = json_string_value(json_object_get(j, "device"));
        const char *hook = json_string_value(json_object_get(j, "hook"));
        bool match = (q->device == NULL || (dev && strcmp(dev, q->device) == 0)) &&
                     (q->hook == NULL || (hook && strcmp(hook, q->hook) == 0));
        if (match) {
            int64_t ms = json_integer_value(json_object_get(j, "time"));
            json_object_set_new(j, "time_ms", json_integer(ms));
            json_object_set_new(j, "time", time_json(ms));
            json_array_append_new(q->arr, j);
        } else {
            json_decref(j);
        }
    }
    mdm_cursor_close(cur);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

int mdm_policy_decisions_json(mdm_store_t *store, const char *device, const char *hook,
                              size_t limit, json_t **out)
{
    struct query_ctx q = {.device = device, .hook = hook, .limit = limit, .arr = json_array()};
    int rc = mdm_store_view(store, query_txn, &q);
    if (rc != 0) {
        json_decref(q.arr);
        *out = NULL;
        return rc;
    }
    json_t *o = json_object();
    json_object_set_new(o, "decisions", q.arr);
    *out = o;
    return 0;
}

/* ---- eval ------------------------------------------------------------------------------ */

struct eval_ctx {
    mdm_policy_t *p;
    const char *device_id;
    int hook;
    const json_t *input;
    json_t *out;
    mdm_err_t *err;
};

/* input[key] as a dictionary plist (def when absent). */
static int input_dict(const json_t *input, const char *key, plist_t def, plist_t *out,
                      mdm_err_t *err)
{
    const json_t *j = input ? json_object_get(input, key) : NULL;
    *out = NULL;
    if (j == NULL) {
        *out = def;
        return 0;
    }
    plist_free(def);
    if (!json_is_object(j))
        return mdm_err_set(err, MDM_EINVAL, "input.%s must be an object", key);
    return mdm_json_to_plist_checked(j, key, MDM_PLIST_MAX_DEPTH, out, err);
}

static json_t *strlist_json(const mdm_strlist_t *l)
{
    json_t *a = json_array();
    for (size_t i = 0; i < l->n; i++)
        json_array_append_new(a, json_string(l->v[i]));
    return a;
}

static int eval_txn(mdm_txn_t *txn, void *arg)
{
    struct eval_ctx *c = arg;
    mdm_policy_device_t dev = {0};
    bool have_dev = false;
    plist_t a = NULL, b = NULL;
    mdm_strlist_t groups = {0};
    mdm_policy_auth_req_t auth = {0};
    mdm_policy_decision_t d = {0};
    json_t *logs = json_array(), *writes = json_array(), *groups_json = NULL;
    bool device_hook = c->hook != MDM_POLICY_HOOK_AUTHENTICATE && c->hook != MDM_POLICY_HOOK_SCEP;
    int rc = 0;
    if (c->device_id != NULL) {
        rc = mdm_policy_device_load(txn, c->device_id, &dev);
        if (rc == MDM_ENOTFOUND) {
            rc = mdm_err_set(c->err, MDM_ENOTFOUND, "no device or enrollment \"%s\"",
                             c->device_id);
            goto out;
        }
        if (rc != 0) {
            rc = mdm_err_set(c->err, rc, "cannot read the device: %s", mdm_strerror(rc));
            goto out;
        }
        have_dev = true;
    } else if (device_hook) {
        rc = mdm_err_set(c->err, MDM_EINVAL, "hook %s needs a device",
                         mdm_policy_hook_name(c->hook));
        goto out;
    }
    mdm__hook_input_t in = {.dev = have_dev ? &dev : NULL};
    const char *udid = have_dev ? c->device_id : "";
    switch (c->hook) {
    case MDM_POLICY_HOOK_AUTHENTICATE: {
        const json_t *req = c->input ? json_object_get(c->input, "req") : NULL;
        auth.username = json_string_value(json_object_get(req, "username"));
        auth.password = json_string_value(json_object_get(req, "password"));
        auth.remote_addr = json_string_value(json_object_get(req, "remote_addr"));
        auth.user_agent = json_string_value(json_object_get(req, "user_agent"));
        in.auth = &auth;
        break;
    }
    case MDM_POLICY_HOOK_SCEP:
        rc = input_dict(c->input, "csr", plist_new_dict(), &a, c->err);
        if (rc == 0)
            rc = input_dict(c->input, "ctx", plist_new_dict(), &b, c->err);
        break;
    case MDM_POLICY_HOOK_CHECKIN: {
        plist_t def = plist_new_dict();
        mdm_pl_set_str(def, "MessageType", "TokenUpdate");
        mdm_pl_set_str(def, "UDID", udid);
        rc = input_dict(c->input, "msg", def, &a, c->err);
        break;
    }
    case MDM_POLICY_HOOK_CONNECT: {
        plist_t def = plist_new_dict();
        mdm_pl_set_str(def, "Status", "Idle");
        mdm_pl_set_str(def, "UDID", udid);
        rc = input_dict(c->input, "report", def, &a, c->err);
        break;
    }
    case MDM_POLICY_HOOK_RESULT:
        rc = input_dict(c->input, "result", plist_new_dict(), &a, c->err);
        break;
    default:
        break;
    }
    if (rc != 0)
        goto out;
    in.a = a;
    in.b = b;
    mdm__call_t tmpl = {.kv = MDM__KV_VIRTUAL, .txn = txn, .logs = logs, .kv_writes = writes};
    uint64_t t0 = mdm_mono_ns();
    if (c->hook == MDM_POLICY_HOOK_PROFILES) {
        /* What the server does: groups first, then profiles. */
        mdm_policy_decision_t g;
        mdm__policy_call(c->p, MDM_POLICY_HOOK_GROUPS, &tmpl, &in, false, &g);
        if (g.status == MDM_POLICY_OK) {
            groups = g.names;
            g.names = (mdm_strlist_t){0};
        } else {
            plist_t last = dev.device ? plist_dict_get_item(dev.device, "groups") : NULL;
            for (uint32_t i = 0; last && plist_get_node_type(last) == PLIST_ARRAY &&
                                 i < plist_array_get_size(last);
                 i++) {
                plist_t x = plist_array_get_item(last, i);
                if (plist_get_node_type(x) == PLIST_STRING)
                    mdm__strlist_push(&groups, plist_get_string_ptr(x, NULL));
            }
        }
        groups_json = json_object();
        json_object_set_new(groups_json, "status", json_string(mdm_policy_status_name(g.status)));
        json_object_set_new(groups_json, "groups", strlist_json(&groups));
        if (g.status == MDM_POLICY_FAILED)
            json_object_set_new(groups_json, "error", json_string(g.error));
        mdm_policy_decision_free(&g);
        in.groups = &groups;
    }
    mdm__policy_call(c->p, c->hook, &tmpl, &in, false, &d);
    uint64_t us = (mdm_mono_ns() - t0) / 1000;
    json_t *o = json_object();
    json_object_set_new(o, "hook", json_string(mdm_policy_hook_name(c->hook)));
    json_object_set_new(o, "device", c->device_id ? json_string(c->device_id) : json_null());
    json_object_set_new(o, "revision", json_string(mdm_policy_revision(c->p)));
    json_object_set_new(o, "status", json_string(mdm_policy_status_name(d.status)));
    json_object_set_new(o, "error", d.status == MDM_POLICY_FAILED ? json_string(d.error)
                                                                   : json_null());
    plist_t dp = mdm__decision_to_plist(c->hook, &d, false);
    json_t *dj = mdm_plist_to_json(dp);
    plist_free(dp);
    json_object_set_new(o, "decision", dj ? dj : json_null());
    if (groups_json != NULL) {
        json_object_set_new(o, "groups", groups_json);
        groups_json = NULL;
    }
    json_object_set_new(o, "logs", logs);
    json_object_set_new(o, "kv_writes", writes);
    logs = writes = NULL;
    json_object_set_new(o, "duration_us", json_integer((json_int_t)us));
    c->out = o;
out:
    json_decref(logs);
    json_decref(writes);
    json_decref(groups_json);
    mdm_policy_decision_free(&d);
    mdm__strlist_free(&groups);
    plist_free(a);
    plist_free(b);
    if (have_dev)
        mdm_policy_device_free(&dev);
    return rc;
}

int mdm_policy_eval(mdm_policy_t *p, mdm_store_t *store, const char *device_id, const char *hook,
                    const json_t *input, json_t **out, mdm_err_t *err)
{
    *out = NULL;
    int h = mdm_policy_hook_parse(hook);
    if (h < 0 || h == MDM_POLICY_HOOK_SELF_TEST)
        return mdm_err_set(err, MDM_EINVAL,
                           "unknown hook \"%s\" (authenticate, scep, checkin, groups, profiles, "
                           "connect or result)",
                           hook ? hook : "");
    if (input != NULL && !json_is_object(input))
        return mdm_err_set(err, MDM_EINVAL, "input must be an object");
    struct eval_ctx c = {.p = p, .device_id = device_id, .hook = h, .input = input, .err = err};
    int rc = mdm_store_view(store, eval_txn, &c);
    if (rc != 0) {
        json_decref(c.out);
        return rc;
    }
    *out = c.out;
    return 0;
}

/* ---- set-up --------------------------------------------------------------------------- */

int mdm_policy_service_init(mdm_server_t *s, mdm_err_t *err)
{
    engine_t *e = mdm_calloc(1, sizeof(*e));
    e->server = s;
    int rc = mdm_policy_settings_from_config(&e->set, s->cfg, err);
    if (rc != 0) {
        mdm_free(e);
        return rc;
    }
    e->set.store = s->store;
    e->set.log_sink = &e->sink;
    e->m_reload_ok = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_policy_reloads_total",
                                "result=\"ok\"", "Policy loads and reloads by result");
    e->m_reload_failed = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_policy_reloads_total",
                                    "result=\"failed\"", "Policy loads and reloads by result");
    e->m_pruned = mdm_metric(MDM_METRIC_COUNTER, "moonmdm_policy_decisions_pruned_total", NULL,
                             "Decision log entries pruned");

    mdm_policy_error_t pe;
    rc = mdm__policy_load(&e->set, MDM__MODE_SERVER, NULL, &e->current, &pe);
    char text[1200], hooks[128];
    if (rc == MDM_ENOTFOUND) {
        /* No policy directory or no init.lua: run with no hooks (the
         * core's defaults, which fail closed). A reload needs a set. */
        mdm_policy_error_format(&pe, e->set.dir, text, sizeof(text));
        char tq[1300];
        mdm_log(MDM_LOG_WARN, NULL, "policy.none", "dir=\"%s\" reason=%s", e->set.dir,
                mdm_logq(tq, sizeof(tq), text));
        e->current = mdm_policy_new_empty();
    } else if (rc != 0) {
        mdm_policy_error_format(&pe, e->set.dir, text, sizeof(text));
        mdm_free(e);
        return mdm_err_set(err, MDM_EPOLICY, "policy: %s", text);
    } else {
        mdm_metric_add(e->m_reload_ok, 1);
        mdm_log(MDM_LOG_INFO, NULL, "policy.loaded", "dir=\"%s\" revision=%.12s files=%zu hooks=%s",
                e->set.dir, mdm_policy_revision(e->current), e->current->files.n,
                hooks_text(e->current, hooks, sizeof(hooks)));
    }
    s->policy = e;
    s->on_reload = on_sighup;
    mdm_api_policy_register(s);

    uv_timer_init(s->loop, &e->debounce);
    e->debounce.data = e;
    uv_unref((uv_handle_t *)&e->debounce);
    uv_timer_init(s->loop, &e->prune);
    e->prune.data = e;
    if (e->set.decision_log && s->store != NULL) {
        uv_timer_start(&e->prune, prune_cb, PRUNE_INTERVAL_MS, PRUNE_INTERVAL_MS);
    }
    uv_unref((uv_handle_t *)&e->prune);
    e->open_handles = 2;
    watches_sync(e);
    return 0;
}

static void engine_destroy(engine_t *e)
{
    mdm_buf_free(&e->sink.buf);
    mdm_policy_release(e->current);
    mdm_free(e->watches);
    mdm_free(e);
}

static void timer_closed(uv_handle_t *h)
{
    engine_t *e = h->data;
    if (--e->open_handles == 0)
        engine_destroy(e);
}

void mdm_policy_service_free(mdm_server_t *s)
{
    engine_t *e = engine_of(s);
    if (e == NULL)
        return;
    s->policy = NULL;
    s->on_reload = NULL;
    if (s->store != NULL)
        mdm__log_sink_flush(s->store, &e->sink);
    /* Handles the server's final walk has closed are done with (it ran the
     * loop after the walk); the others close now. */
    for (size_t i = 0; i < e->nwatches; i++) {
        if (uv_is_closing((uv_handle_t *)&e->watches[i]->h))
            mdm_free(e->watches[i]);
        else
            uv_close((uv_handle_t *)&e->watches[i]->h, watch_closed);
    }
    uv_handle_t *timers[] = {(uv_handle_t *)&e->debounce, (uv_handle_t *)&e->prune};
    int closing = 0;
    for (size_t i = 0; i < 2; i++) {
        if (uv_is_closing(timers[i])) {
            e->open_handles--;
        } else {
            uv_close(timers[i], timer_closed);
            closing++;
        }
    }
    if (closing == 0) {
        engine_destroy(e);
        return;
    }
    uv_run(s->loop, UV_RUN_NOWAIT);
}
