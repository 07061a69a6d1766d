/* The admin API of devices and commands, and the NanoMDM-compatible
 * enqueue and push routes. JSON in and out (jansson); errors are
 * {"error": "...", "detail": "..."}; a malformed body changes nothing. */
#include <errno.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api.h"
#include "api/apikeys.h"
#include "apns/apns.h"
#include "config.h"
#include "crypto/certdb.h"
#include "mdm/certauth.h"
#include "mdm/cmdschema.h"
#include "mdm/enqueue.h"
#include "mdm/mdm.h"
#include "mdm/queue.h"
#include "mdm/reconcile.h"
#include "server.h"
#include "util/alloc.h"
#include "util/encode.h"
#include "util/jsonw.h"
#include "util/log.h"
#include "util/misc.h"
#include "util/plist.h"
#include "util/plistjson.h"

#define MAX_TARGETS 100000

/* ---- helpers ------------------------------------------------------------- */

/* Sends JSON already serialized (text from json_dumps, freed here). */
static void send_json_text(mdm_req_t *req, int status, char *text)
{
    mdm_buf_reset(&req->resp_body);
    if (text != NULL) {
        mdm_buf_puts(&req->resp_body, text);
        mdm_buf_putc(&req->resp_body, '\n');
        free(text);
    }
    mdm_resp_send_buf(req, status, "application/json");
}

/* Sends a 200 answer written as JSON text (out is taken, left empty). */
static void send_answer(mdm_req_t *req, mdm_buf_t *out)
{
    mdm_buf_free(&req->resp_body);
    req->resp_body = *out;
    *out = (mdm_buf_t)MDM_BUF_INIT;
    mdm_resp_send_buf(req, 200, "application/json");
}

void mdm_api_send_json(mdm_req_t *req, int status, json_t *j)
{
    char *s = json_dumps(j, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(j);
    send_json_text(req, status, s);
}

static json_t *json_time(int64_t ms)
{
    if (ms <= 0)
        return json_null();
    char t[32];
    mdm_time_format(t, ms);
    return json_string(t);
}

static void set_str(json_t *o, const char *k, const char *v)
{
    json_object_set_new(o, k, v ? json_string(v) : json_null());
}

/* Answers 400 bad_query for a query parameter of ours with a bad value. */
static void bad_query(mdm_req_t *req, const char *name, const char *want)
{
    char detail[200];
    snprintf(detail, sizeof(detail), "query parameter \"%s\": %s", name, want);
    mdm_resp_json_error(req, 400, "bad_query", detail);
}

/* Reads a non-negative integer query parameter into *out (def when absent
 * or empty; at most max). Answers 400 and returns false on another value. */
static bool query_long(mdm_req_t *req, const char *name, long def, long max, long *out)
{
    mdm_buf_t b = MDM_BUF_INIT;
    int rc = mdm_req_query(req, name, &b, true);
    bool ok = rc == 0 || rc == MDM_ENOTFOUND;
    *out = def;
    if (rc == 0 && b.len > 0) {
        /* Digits only: strtol would also take a sign, spaces, and clamp an
         * overflow without a word. */
        ok = b.len <= 18 && strspn(b.data, "0123456789") == b.len;
        long x = ok ? strtol(b.data, NULL, 10) : 0;
        *out = x > max ? max : x;
    }
    mdm_buf_free(&b);
    if (!ok)
        bad_query(req, name, "expected a number, 0 or more");
    return ok;
}

/* Reads a boolean query parameter into *out (-1 absent, 0 false, 1 true):
 * true, 1 or empty; false or 0. Answers 400 and returns false on another
 * value. */
static bool query_bool(mdm_req_t *req, const char *name, int *out)
{
    mdm_buf_t b = MDM_BUF_INIT;
    int rc = mdm_req_query(req, name, &b, true);
    *out = -1;
    if (rc == 0) {
        if (b.len == 0 || strcmp(b.data, "1") == 0 || strcasecmp(b.data, "true") == 0)
            *out = 1;
        else if (strcmp(b.data, "0") == 0 || strcasecmp(b.data, "false") == 0)
            *out = 0;
    }
    mdm_buf_free(&b);
    if (rc != MDM_ENOTFOUND && *out == -1) {
        bad_query(req, name, "expected true, 1, false or 0");
        return false;
    }
    return true;
}

/* Reads the "cursor" query parameter (an enrollment id this server gave as
 * next_cursor) into *cur; *cursor points at it, or is NULL when absent.
 * Answers 400 and returns false on a bad one. */
static bool query_cursor(mdm_req_t *req, mdm_buf_t *cur, const char **cursor)
{
    *cursor = NULL;
    int crc = mdm_req_query(req, "cursor", cur, true);
    if (crc == 0 && cur->len > 0)
        *cursor = cur->data;
    if (crc == MDM_EPARSE) {
        bad_query(req, "cursor", "a bad percent-escape");
        return false;
    }
    if (cur->len > MDM_ENROLLMENT_ID_MAX) {
        mdm_resp_json_error(req, 400, "bad_request",
                            "cursor: not one this server gave (longer than an enrollment id)");
        return false;
    }
    return true;
}

/* ---- devices ------------------------------------------------------------- */

/* The enrollment as JSON: no secrets, only whether they are present. */
static json_t *enrollment_json(const char *eid, plist_t e)
{
    json_t *o = json_object();
    set_str(o, "id", eid);
    set_str(o, "type", mdm_pl_str(e, "type"));
    set_str(o, "device_id", mdm_pl_str(e, "device_id"));
    bool enabled = mdm_pl_bool(e, "enabled", false);
    int64_t enrolled = mdm_pl_int(e, "enrolled_at", 0);
    int64_t checked_out = mdm_pl_int(e, "checked_out_at", 0);
    json_object_set_new(o, "enabled", json_boolean(enabled));
    json_object_set_new(o, "enrolled", json_boolean(enrolled > 0 && checked_out == 0));
    json_object_set_new(o, "token_invalid", json_boolean(mdm_pl_bool(e, "token_invalid", false)));
    json_object_set_new(o, "push_token", json_boolean(mdm_pl_data(e, "token", NULL) != NULL));
    json_object_set_new(o, "unlock_token",
                        json_boolean(mdm_pl_data(e, "unlock_token", NULL) != NULL));
    json_object_set_new(o, "bootstrap_token",
                        json_boolean(mdm_pl_data(e, "bootstrap_token", NULL) != NULL));
    json_object_set_new(o, "awaiting_configuration",
                        json_boolean(mdm_pl_bool(e, "awaiting_configuration", false)));
    json_object_set_new(o, "new_enrollment",
                        json_boolean(mdm_pl_bool(e, "new_enrollment", false)));
    set_str(o, "topic", mdm_pl_str(e, "topic"));
    set_str(o, "user", mdm_pl_str(e, "user"));
    set_str(o, "user_short_name", mdm_pl_str(e, "user_short_name"));
    json_object_set_new(o, "token_updates", json_integer((json_int_t)mdm_pl_uint(e, "token_updates", 0)));
    json_object_set_new(o, "authenticated_at", json_time(mdm_pl_int(e, "authenticated_at", 0)));
    json_object_set_new(o, "enrolled_at", json_time(enrolled));
    json_object_set_new(o, "last_seen_at", json_time(mdm_pl_int(e, "last_seen_at", 0)));
    json_object_set_new(o, "checked_out_at", json_time(checked_out));
    return o;
}

static json_t *strings_json(plist_t arr)
{
    json_t *a = json_array();
    if (arr != NULL && plist_get_node_type(arr) == PLIST_ARRAY) {
        uint32_t n = plist_array_get_size(arr);
        for (uint32_t i = 0; i < n; i++) {
            plist_t it = plist_array_get_item(arr, i);
            if (plist_get_node_type(it) == PLIST_STRING)
                json_array_append_new(a, json_string(plist_get_string_ptr(it, NULL)));
        }
    }
    return a;
}

static void device_facts_json(json_t *o, plist_t dev)
{
    json_object_set_new(o, "tags", strings_json(plist_dict_get_item(dev, "tags")));
    json_object_set_new(o, "groups", strings_json(plist_dict_get_item(dev, "groups")));
    static const char *const keys[] = {"serial", "model", "model_name", "product", "os_version",
                                       "build_version", "device_name", "imei", "meid"};
    for (size_t i = 0; i < sizeof(keys) / sizeof(keys[0]); i++)
        set_str(o, keys[i], mdm_pl_str(dev, keys[i]));
}

struct list_ctx {
    json_t *arr;
    int enrolled, enabled;
    long limit;
    char next[MDM_EID_MAX + 1];
    const char *cursor;
};

/* Loads a device channel's enrollment when it passes the list's filters
 * (user channels are listed with their device). */
static plist_t list_match(const struct list_ctx *l, mdm_val_t k, mdm_val_t v)
{
    plist_t e = NULL;
    if (memchr(k.data, ':', k.len) != NULL || mdm_plist_load(v.data, v.len, &e) != 0)
        return NULL;
    bool enabled = mdm_pl_bool(e, "enabled", false);
    bool enrolled = mdm_pl_int(e, "enrolled_at", 0) > 0 &&
                    mdm_pl_int(e, "checked_out_at", 0) == 0;
    if ((l->enabled >= 0 && enabled != (l->enabled == 1)) ||
        (l->enrolled >= 0 && enrolled != (l->enrolled == 1))) {
        plist_free(e);
        return NULL;
    }
    return e;
}

static int list_fn(mdm_txn_t *txn, void *arg)
{
    struct list_ctx *l = arg;
    mdm_cursor_t *c = NULL;
    int rc = mdm_cursor_open(txn, MDM_T_ENROLLMENTS, &c);
    if (rc != 0)
        return rc;
    mdm_val_t k, v;
    mdm_val_t start = l->cursor ? MDM_VAL_STR(l->cursor) : MDM_VAL(NULL, 0);
    long n = 0;
    for (rc = mdm_cursor_seek(c, start, &k, &v); rc == 0; rc = mdm_cursor_next(c, &k, &v)) {
        plist_t e = list_match(l, k, v);
        if (e == NULL)
            continue;
        /* The next page starts at the next entry the filters keep, so that
         * a next_cursor never leads to an empty page. */
        if (n == l->limit) {
            snprintf(l->next, sizeof(l->next), "%.*s", (int)k.len, (const char *)k.data);
            plist_free(e);
            break;
        }
        char eid[MDM_EID_MAX + 1];
        snprintf(eid, sizeof(eid), "%.*s", (int)k.len, (const char *)k.data);
        json_t *o = enrollment_json(eid, e);
        plist_free(e);
        plist_t dev = NULL;
        if (mdm_device_load(txn, eid, &dev) == 0) {
            device_facts_json(o, dev);
            plist_free(dev);
        }
        json_array_append_new(l->arr, o);
        n++;
    }
    mdm_cursor_close(c);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

static void handle_devices(mdm_req_t *req)
{
    struct list_ctx l = {0};
    if (!query_bool(req, "enrolled", &l.enrolled) || !query_bool(req, "enabled", &l.enabled) ||
        !query_long(req, "limit", 100, 1000, &l.limit))
        return;
    mdm_buf_t cur = MDM_BUF_INIT;
    if (!query_cursor(req, &cur, &l.cursor)) {
        mdm_buf_free(&cur);
        return;
    }
    l.arr = json_array();
    if (l.limit == 0)
        l.limit = 100;
    int rc = mdm_store_view(req->server->store, list_fn, &l);
    mdm_buf_free(&cur);
    if (rc != 0) {
        json_decref(l.arr);
        mdm_api_store_error(req, rc);
        return;
    }
    json_t *o = json_object();
    json_object_set_new(o, "devices", l.arr);
    json_object_set_new(o, "next_cursor", l.next[0] ? json_string(l.next) : json_null());
    mdm_api_send_json(req, 200, o);
}

struct show_ctx {
    const char *id;
    json_t *out;
};

static int user_channel_json(mdm_txn_t *txn, const char *device_id, json_t *arr)
{
    char prefix[MDM_EID_MAX + 2];
    int pl = snprintf(prefix, sizeof(prefix), "%s:", device_id);
    mdm_cursor_t *c = NULL;
    int rc = mdm_cursor_open(txn, MDM_T_ENROLLMENTS, &c);
    if (rc != 0)
        return rc;
    mdm_val_t k, v, p = MDM_VAL(prefix, (size_t)pl);
    for (rc = mdm_cursor_seek(c, p, &k, &v); rc == 0 && mdm_val_has_prefix(k, p);
         rc = mdm_cursor_next(c, &k, &v)) {
        plist_t e = NULL;
        if (mdm_plist_load(v.data, v.len, &e) != 0)
            continue;
        char eid[MDM_EID_MAX + 1];
        snprintf(eid, sizeof(eid), "%.*s", (int)k.len, (const char *)k.data);
        json_t *o = enrollment_json(eid, e);
        size_t qn = 0;
        mdm_queue_length(txn, eid, &qn);
        json_object_set_new(o, "queue_length", json_integer((json_int_t)qn));
        json_array_append_new(arr, o);
        plist_free(e);
    }
    mdm_cursor_close(c);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

/* One entry of GET /v1/devices/{id} "profiles": where reconciliation
 * stands with the profile on this enrollment. */
static int profile_entry_json(const char *id, plist_t rec, void *arg)
{
    json_t *o = json_object();
    set_str(o, "identifier", id);
    set_str(o, "state", mdm_pl_str(rec, "state"));
    set_str(o, "hash", mdm_pl_str(rec, "hash"));
    if (mdm_pl_str(rec, "failed_hash") != NULL)
        set_str(o, "refused_hash", mdm_pl_str(rec, "failed_hash"));
    set_str(o, "command_uuid", mdm_pl_str(rec, "command_uuid"));
    json_object_set_new(o, "updated_at", json_time(mdm_pl_int(rec, "updated_at", 0)));
    static const char *const counts[] = {"install_failures", "remove_failures"};
    for (size_t i = 0; i < 2; i++) {
        uint64_t n = mdm_pl_uint(rec, counts[i], 0);
        if (n > 0)
            json_object_set_new(o, counts[i], json_integer((json_int_t)n));
    }
    json_array_append_new(arg, o);
    return 0;
}

static int show_fn(mdm_txn_t *txn, void *arg)
{
    struct show_ctx *s = arg;
    plist_t e = NULL, dev = NULL;
    int rc = mdm_enrollment_load(txn, s->id, &e);
    if (rc != 0)
        return rc;
    json_t *o = enrollment_json(s->id, e);
    if (mdm_device_load(txn, mdm_pl_str(e, "device_id") ? mdm_pl_str(e, "device_id") : s->id,
                        &dev) == 0) {
        device_facts_json(o, dev);
        plist_t facts = plist_dict_get_item(dev, "facts");
        json_object_set_new(o, "facts", facts ? mdm_plist_to_json(facts) : json_object());
        json_object_set_new(o, "facts_at", json_time(mdm_pl_int(dev, "facts_at", 0)));
        plist_free(dev);
    }
    size_t qn = 0;
    mdm_queue_length(txn, s->id, &qn);
    json_object_set_new(o, "queue_length", json_integer((json_int_t)qn));
    json_t *profiles = json_array();
    mdm_reconcile_each(txn, s->id, profile_entry_json, profiles);
    json_object_set_new(o, "profiles", profiles);
    unsigned char fp[32];
    if (mdm_certauth_current(txn, s->id, fp) == 0) {
        json_t *cert = json_object();
        char hex[65];
        mdm_hex_encode(hex, fp, 32);
        set_str(cert, "sha256", hex);
        mdm_certrec_t rec;
        memset(&rec, 0, sizeof(rec));
        if (mdm_certdb_get_by_fingerprint(txn, fp, &rec) == 0) {
            set_str(cert, "serial", rec.serial_hex);
            set_str(cert, "subject", rec.subject);
            json_object_set_new(cert, "not_before", json_time(rec.not_before_ms));
            json_object_set_new(cert, "not_after", json_time(rec.not_after_ms));
            json_object_set_new(cert, "revoked", json_boolean(rec.revoked));
            mdm_certrec_free(&rec);
        }
        json_object_set_new(o, "identity_certificate", cert);
    } else {
        json_object_set_new(o, "identity_certificate", json_null());
    }
    json_t *users = json_array();
    if (strchr(s->id, ':') == NULL)
        user_channel_json(txn, s->id, users);
    json_object_set_new(o, "user_channels", users);
    plist_free(e);
    s->out = o;
    return 0;
}

static void handle_device(mdm_req_t *req)
{
    struct show_ctx s = {.id = req->params[0]};
    int rc = mdm_store_view(req->server->store, show_fn, &s);
    if (rc == MDM_ENOTFOUND) {
        mdm_resp_json_error(req, 404, "not_found", "no enrollment with this id");
        return;
    }
    if (rc != 0) {
        json_decref(s.out);
        mdm_api_store_error(req, rc);
        return;
    }
    mdm_api_send_json(req, 200, s.out);
}

static int forget_fn(mdm_txn_t *txn, void *arg)
{
    const char *id = arg;
    mdm_val_t v;
    int rc = mdm_txn_get(txn, MDM_T_ENROLLMENTS, MDM_VAL_STR(id), &v);
    if (rc == MDM_ENOTFOUND)
        rc = mdm_txn_get(txn, MDM_T_DEVICES, MDM_VAL_STR(id), &v);
    if (rc != 0)
        return rc;
    return mdm_device_forget(txn, id);
}

static void handle_device_delete(mdm_req_t *req)
{
    const char *id = req->params[0];
    if (strchr(id, ':') != NULL) {
        mdm_resp_json_error(req, 400, "bad_request",
                            "delete the device (its UDID); user channels go with it");
        return;
    }
    int rc = mdm_store_update(req->server->store, forget_fn, (void *)id);
    if (rc == MDM_ENOTFOUND) {
        mdm_resp_json_error(req, 404, "not_found", "no device with this id");
        return;
    }
    if (rc != 0) {
        mdm_api_store_error(req, rc);
        return;
    }
    char q[300];
    mdm_log(MDM_LOG_INFO, req->id, "api.device_deleted", "device=%s key=%s",
            mdm_logq(q, sizeof(q), id), req->auth ? ((mdm_apikey_info_t *)req->auth)->id : "-");
    json_t *o = json_object();
    set_str(o, "deleted", id);
    mdm_api_send_json(req, 200, o);
}

/* ---- results ------------------------------------------------------------- */

/* A target of a command in GET /v1/commands/{uuid}, without its report. */
static json_t *target_json(const mdm_result_t *r)
{
    json_t *o = json_object();
    set_str(o, "status", r->status);
    json_object_set_new(o, "queued_at", json_time(r->queued_ms));
    json_object_set_new(o, "sent_at", json_time(r->sent_ms));
    json_object_set_new(o, "updated_at", json_time(r->updated_ms));
    json_object_set_new(o, "completed_at", json_time(r->completed_ms));
    json_object_set_new(o, "notnow_count", json_integer((json_int_t)r->notnow_count));
    return o;
}

/* One command of an enrollment, for GET /v1/devices/{id}/commands: what
 * its listing shows, without the report (a device can have thousands). */
typedef struct cmd_row {
    char uuid[MDM_UUID_LEN + 1];
    char status[32];
    char request_type[MDM_RTYPE_MAX];
    int64_t queued_ms, sent_ms, updated_ms, completed_ms;
    uint64_t notnow_count, seq;
} cmd_row_t;

struct dev_cmds_ctx {
    const char *id;
    cmd_row_t *rows;
    size_t n, cap;
};

static int collect_fn(const mdm_result_t *r, void *arg)
{
    struct dev_cmds_ctx *d = arg;
    if (d->n == d->cap) {
        d->cap = d->cap ? 2 * d->cap : 64;
        d->rows = mdm_realloc(d->rows, d->cap * sizeof(*d->rows));
    }
    cmd_row_t *x = &d->rows[d->n++];
    snprintf(x->uuid, sizeof(x->uuid), "%s", r->uuid);
    snprintf(x->status, sizeof(x->status), "%s", r->status);
    snprintf(x->request_type, sizeof(x->request_type), "%s", r->request_type);
    x->queued_ms = r->queued_ms;
    x->sent_ms = r->sent_ms;
    x->updated_ms = r->updated_ms;
    x->completed_ms = r->completed_ms;
    x->notnow_count = r->notnow_count;
    x->seq = r->seq;
    return 0;
}

/* Newest first: by enqueue time, then by enqueue order (commands queued in
 * one millisecond, as a policy's are), then by UUID. */
static int cmp_newest_first(const void *a, const void *b)
{
    const cmd_row_t *x = a, *y = b;
    if (x->queued_ms != y->queued_ms)
        return x->queued_ms > y->queued_ms ? -1 : 1;
    if (x->seq != y->seq)
        return x->seq > y->seq ? -1 : 1;
    return strcmp(y->uuid, x->uuid);
}

/* A row's place in that order, as next_cursor gives it: "queued.seq.uuid". */
static void row_cursor(const cmd_row_t *x, mdm_buf_t *out)
{
    mdm_buf_printf(out, "%lld.%llu.%s", (long long)x->queued_ms, (unsigned long long)x->seq,
                   x->uuid);
}

static bool parse_row_cursor(const char *s, cmd_row_t *x)
{
    memset(x, 0, sizeof(*x));
    char *end = NULL;
    errno = 0;
    long long q = strtoll(s, &end, 10);
    if (errno != 0 || end == s || *end != '.')
        return false;
    const char *t = end + 1;
    unsigned long long seq = strtoull(t, &end, 10);
    if (errno != 0 || end == t || *end != '.' || t[0] == '-' || strlen(end + 1) > MDM_UUID_LEN)
        return false;
    x->queued_ms = q;
    x->seq = seq;
    snprintf(x->uuid, sizeof(x->uuid), "%s", end + 1);
    return true;
}

static void member_time(mdm_buf_t *b, bool *first, const char *key, int64_t ms)
{
    mdm_jsonw_key(b, first, key);
    if (ms <= 0) {
        mdm_buf_puts(b, "null");
        return;
    }
    char t[32];
    mdm_time_format(t, ms);
    mdm_jsonw_str(b, t, strlen(t));
}

static void row_json(mdm_buf_t *b, const cmd_row_t *x)
{
    bool first = true;
    mdm_buf_putc(b, '{');
    mdm_jsonw_member_str(b, &first, "command_uuid", x->uuid);
    mdm_jsonw_member_str(b, &first, "request_type", x->request_type);
    mdm_jsonw_member_str(b, &first, "status", x->status);
    member_time(b, &first, "queued_at", x->queued_ms);
    member_time(b, &first, "sent_at", x->sent_ms);
    member_time(b, &first, "updated_at", x->updated_ms);
    member_time(b, &first, "completed_at", x->completed_ms);
    mdm_jsonw_member_int(b, &first, "notnow_count", (int64_t)x->notnow_count);
    mdm_buf_putc(b, '}');
}

static int dev_cmds_fn(mdm_txn_t *txn, void *arg)
{
    struct dev_cmds_ctx *d = arg;
    d->n = 0;
    mdm_val_t v;
    int rc = mdm_txn_get(txn, MDM_T_ENROLLMENTS, MDM_VAL_STR(d->id), &v);
    if (rc != 0)
        return rc;
    return mdm_results_of_enrollment(txn, d->id, collect_fn, d);
}

static void handle_device_commands(mdm_req_t *req)
{
    struct dev_cmds_ctx d = {.id = req->params[0]};
    long limit = 0;
    const char *cursor = NULL;
    mdm_buf_t cur = MDM_BUF_INIT;
    cmd_row_t from;
    if (!query_long(req, "limit", 0, 1000, &limit) || !query_cursor(req, &cur, &cursor)) {
        mdm_buf_free(&cur);
        return;
    }
    if (cursor != NULL && !parse_row_cursor(cursor, &from)) {
        mdm_buf_free(&cur);
        bad_query(req, "cursor", "not one this server gave (a next_cursor)");
        return;
    }
    mdm_buf_free(&cur);
    int rc = mdm_store_view(req->server->store, dev_cmds_fn, &d);
    if (rc != 0) {
        mdm_free(d.rows);
        if (rc == MDM_ENOTFOUND)
            mdm_resp_json_error(req, 404, "not_found", "no enrollment with this id");
        else
            mdm_api_store_error(req, rc);
        return;
    }
    if (d.n > 1)
        qsort(d.rows, d.n, sizeof(*d.rows), cmp_newest_first);
    size_t start = 0;
    while (cursor != NULL && start < d.n && cmp_newest_first(&d.rows[start], &from) < 0)
        start++;
    size_t end = limit > 0 && d.n - start > (size_t)limit ? start + (size_t)limit : d.n;
    mdm_buf_t out = MDM_BUF_INIT;
    mdm_buf_puts(&out, "{");
    bool first = true;
    mdm_jsonw_member_str(&out, &first, "id", d.id);
    mdm_buf_puts(&out, ",\"commands\":[");
    for (size_t i = start; i < end; i++) {
        if (i > start)
            mdm_buf_putc(&out, ',');
        row_json(&out, &d.rows[i]);
    }
    mdm_buf_puts(&out, "],\"next_cursor\":");
    if (end < d.n) {
        mdm_buf_t c = MDM_BUF_INIT;
        row_cursor(&d.rows[end], &c);
        mdm_jsonw_str(&out, c.data, c.len);
        mdm_buf_free(&c);
    } else {
        mdm_buf_puts(&out, "null");
    }
    mdm_buf_puts(&out, "}\n");
    mdm_free(d.rows);
    send_answer(req, &out);
}

/* The answer of GET /v1/commands/{uuid} is written as text: a skeleton made
 * in the read view (the command and every target's status, small), and the
 * targets' reports, copied out of the view, to be converted into their
 * places one at a time. The JSON tree of a 20,000-app report takes about
 * ten times its plist's size, so building whole trees took 160 MB for five
 * such targets; written one at a time, the answer costs its own size plus
 * one report's parse. */
typedef struct raw_result {
    size_t at; /* where in the skeleton its JSON goes */
    mdm_buf_t raw;
} raw_result_t;

/* The reports one answer holds, at most (at least one target's, whatever
 * its size): past this the page ends early, with next_cursor, even when
 * no limit was asked for. */
#define ANSWER_RESULTS_MAX (16u << 20)

struct cmd_show_ctx {
    const char *uuid;
    const char *cursor;           /* the first target to show, or NULL */
    long limit;                   /* targets to show, 0: all */
    long shown;
    bool with_results;            /* the reports too */
    char next[sizeof(((mdm_result_t *)0)->eid)]; /* the first target not shown ("": none) */
    mdm_buf_t text;               /* the skeleton */
    raw_result_t *raws;
    size_t nraws, raws_cap;
    size_t raw_bytes;
};

/* cmd_target_fn's way of ending the walk once a page is full. */
#define PAGE_FULL 1

/* Appends o's members (o freed) without the closing brace. */
static void append_open_object(mdm_buf_t *b, json_t *o)
{
    char *t = json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII);
    json_decref(o);
    size_t n = t ? strlen(t) : 0;
    if (n >= 2)
        mdm_buf_append(b, t, n - 1);
    else
        mdm_buf_putc(b, '{');
    free(t);
}

static int cmd_target_fn(const mdm_result_t *r, void *arg)
{
    struct cmd_show_ctx *c = arg;
    bool report = c->with_results && r->raw != NULL;
    if ((c->limit > 0 && c->shown == c->limit) ||
        (report && c->shown > 0 && c->raw_bytes + r->raw_len > ANSWER_RESULTS_MAX)) {
        snprintf(c->next, sizeof(c->next), "%s", r->eid);
        return PAGE_FULL;
    }
    json_t *o = target_json(r);
    if (c->with_results && !report)
        json_object_set_new(o, "result", json_null());
    if (c->shown++ > 0)
        mdm_buf_putc(&c->text, ',');
    mdm_jsonw_str(&c->text, r->eid, strlen(r->eid));
    mdm_buf_putc(&c->text, ':');
    append_open_object(&c->text, o);
    if (report) {
        if (c->nraws == c->raws_cap) {
            c->raws_cap = c->raws_cap ? 2 * c->raws_cap : 8;
            c->raws = mdm_realloc(c->raws, c->raws_cap * sizeof(*c->raws));
        }
        mdm_buf_puts(&c->text, ",\"result\":");
        raw_result_t *x = &c->raws[c->nraws++];
        x->at = c->text.len;
        x->raw = (mdm_buf_t)MDM_BUF_INIT;
        mdm_buf_append(&x->raw, r->raw, r->raw_len);
        c->raw_bytes += r->raw_len;
    }
    mdm_buf_putc(&c->text, '}');
    return 0;
}

static void raws_free(struct cmd_show_ctx *c)
{
    for (size_t i = 0; i < c->nraws; i++)
        mdm_buf_free(&c->raws[i].raw);
    mdm_free(c->raws);
    c->raws = NULL;
    c->nraws = c->raws_cap = 0;
    c->raw_bytes = 0;
}

static int cmd_show_fn(mdm_txn_t *txn, void *arg)
{
    struct cmd_show_ctx *c = arg;
    mdm_buf_reset(&c->text);
    raws_free(c);
    c->shown = 0;
    c->next[0] = '\0';
    mdm_command_info_t info;
    mdm_buf_t plist = MDM_BUF_INIT;
    int rc = mdm_command_get(txn, c->uuid, &info, &plist);
    if (rc != 0) {
        mdm_buf_free(&plist);
        return rc;
    }
    json_t *o = json_object();
    set_str(o, "command_uuid", c->uuid);
    set_str(o, "request_type", info.request_type);
    json_object_set_new(o, "priority", json_integer(info.priority));
    json_object_set_new(o, "created_at", json_time(info.created_ms));
    json_object_set_new(o, "expires_at", json_time(info.expires_ms));
    plist_t p = NULL;
    if (mdm_plist_load(plist.data, plist.len, &p) == 0) {
        json_object_set_new(o, "command", mdm_plist_to_json(plist_dict_get_item(p, "Command")));
        plist_free(p);
    }
    mdm_buf_free(&plist);
    append_open_object(&c->text, o);
    mdm_buf_puts(&c->text, ",\"targets\":{");
    rc = mdm_results_of_command_from(txn, c->uuid, c->cursor, cmd_target_fn, c);
    return rc == PAGE_FULL ? 0 : rc;
}

/* The answer: the skeleton with each report, as JSON, in its place (null
 * when it does not convert). Each report is freed once written. Safe in
 * the thread pool: it touches only c and out. */
static void show_assemble(struct cmd_show_ctx *c, mdm_buf_t *out)
{
    size_t from = 0;
    mdm_buf_reserve(out, c->text.len + c->raw_bytes + 2);
    for (size_t i = 0; i < c->nraws; i++) {
        raw_result_t *x = &c->raws[i];
        mdm_buf_append(out, c->text.data + from, x->at - from);
        from = x->at;
        /* A binary report (as large ones are stored) is written straight
         * from its bytes; other ones, and what that leaves, through a tree. */
        if (mdm_bplist_write_json(x->raw.data, x->raw.len, out) != 0) {
            plist_t p = NULL;
            if (mdm_plist_load(x->raw.data, x->raw.len, &p) != 0 ||
                mdm_plist_write_json(p, 0, out, NULL) != 0)
                mdm_buf_puts(out, "null");
            plist_free(p);
        }
        mdm_buf_free(&x->raw);
    }
    mdm_buf_append(out, c->text.data + from, c->text.len - from);
    mdm_buf_putc(out, '\n');
    raws_free(c);
    mdm_buf_free(&c->text);
}

/* The reports of a command's targets can add up to megabytes (an
 * InstalledApplicationList of thousands of apps per device): from this many
 * bytes on, they are converted, and the answer written, in the thread
 * pool, so that the loop serves everyone else meanwhile. */
#define RESULTS_IN_POOL_BYTES (64u << 10)

typedef struct show_job {
    uv_work_t work;
    mdm_req_t *req;
    struct cmd_show_ctx c;
    mdm_buf_t out;
} show_job_t;

static void show_work(uv_work_t *w)
{
    show_job_t *j = w->data;
    show_assemble(&j->c, &j->out);
}

static void show_after(uv_work_t *w, int status)
{
    show_job_t *j = w->data;
    if (status != 0)
        mdm_resp_json_error(j->req, 500, "internal", "the answer could not be built");
    else
        send_answer(j->req, &j->out);
    mdm_buf_free(&j->out);
    raws_free(&j->c);
    mdm_buf_free(&j->c.text);
    mdm_free(j);
}

static void handle_command(mdm_req_t *req)
{
    struct cmd_show_ctx c = {.uuid = req->params[0]};
    int results = -1;
    mdm_buf_t cur = MDM_BUF_INIT;
    if (!query_long(req, "limit", 0, 1000, &c.limit) || !query_bool(req, "results", &results) ||
        !query_cursor(req, &cur, &c.cursor)) {
        mdm_buf_free(&cur);
        return;
    }
    c.with_results = results != 0;
    int rc = mdm_store_view(req->server->store, cmd_show_fn, &c);
    mdm_buf_free(&cur);
    c.cursor = NULL;
    if (rc != 0) {
        mdm_buf_free(&c.text);
        raws_free(&c);
        if (rc == MDM_ENOTFOUND)
            mdm_resp_json_error(req, 404, "not_found",
                                "no such command (or its results were pruned)");
        else
            mdm_api_store_error(req, rc);
        return;
    }
    mdm_buf_puts(&c.text, "},\"next_cursor\":");
    if (c.next[0])
        mdm_jsonw_str(&c.text, c.next, strlen(c.next));
    else
        mdm_buf_puts(&c.text, "null");
    mdm_buf_putc(&c.text, '}');
    if (c.raw_bytes >= RESULTS_IN_POOL_BYTES) {
        show_job_t *j = mdm_calloc(1, sizeof(*j));
        j->req = req;
        j->c = c;
        j->work.data = j;
        if (uv_queue_work(req->server->loop, &j->work, show_work, show_after) == 0)
            return;
        c = j->c; /* not started: write it here */
        mdm_free(j);
    }
    mdm_buf_t out = MDM_BUF_INIT;
    show_assemble(&c, &out);
    send_answer(req, &out);
}

struct cancel_ctx {
    const char *eid, *uuid;
};

static int cancel_fn(mdm_txn_t *txn, void *arg)
{
    struct cancel_ctx *c = arg;
    return mdm_queue_cancel(txn, c->eid, c->uuid, mdm_now_ms());
}

static void handle_cancel(mdm_req_t *req)
{
    struct cancel_ctx c = {.eid = req->params[0], .uuid = req->params[1]};
    int rc = mdm_store_update(req->server->store, cancel_fn, &c);
    if (rc == MDM_ENOTFOUND) {
        mdm_resp_json_error(req, 404, "not_found",
                            "this command is not waiting in this enrollment's queue");
        return;
    }
    if (rc != 0) {
        mdm_api_store_error(req, rc);
        return;
    }
    json_t *o = json_object();
    set_str(o, "command_uuid", c.uuid);
    set_str(o, "id", c.eid);
    set_str(o, "status", "Canceled");
    mdm_api_send_json(req, 200, o);
}

/* ---- enqueue ------------------------------------------------------------- */

struct enq_ctx {
    mdm_enqueue_req_t r;
    char uuid[MDM_UUID_LEN + 1];
    mdm_target_result_t *results;
};

static int enq_fn(mdm_txn_t *txn, void *arg)
{
    struct enq_ctx *e = arg;
    return mdm_enqueue(txn, &e->r, mdm_now_ms(), e->uuid, e->results);
}

/* Answers a command the store refused: in NanoMDM's shape on its route
 * ({"command_error", "command_uuid"}), else as {"error", "detail"}. */
static void enqueue_refused(mdm_req_t *req, const struct enq_ctx *e, bool nano, int status,
                            const char *error, const char *detail)
{
    if (!nano) {
        mdm_resp_json_error(req, status, error, detail);
        return;
    }
    json_t *o = json_object();
    set_str(o, "command_error", detail);
    if (e->r.uuid != NULL)
        set_str(o, "command_uuid", e->r.uuid);
    mdm_api_send_json(req, status, o);
}

/* Runs the enqueue and reports store failures; returns false if answered.
 * nano: refusals take NanoMDM's shape. */
static bool run_enqueue(mdm_req_t *req, struct enq_ctx *e, bool nano)
{
    e->results = mdm_arena_alloc(&req->arena, (e->r.ntargets ? e->r.ntargets : 1) *
                                                  sizeof(*e->results));
    int rc = mdm_store_update(req->server->store, enq_fn, e);
    if (rc == MDM_EEXIST) {
        enqueue_refused(req, e, nano, 409, "conflict", "a command with this CommandUUID exists");
        return false;
    }
    if (rc == MDM_EINVAL) {
        enqueue_refused(req, e, nano, 400, "bad_request",
                        "the command cannot be queued (its CommandUUID, RequestType or ttl)");
        return false;
    }
    /* Durable before devices are woken to fetch it: pushes go out before
     * the answer, so commit the batch now. Without pushes the enqueue joins
     * the loop's batch: its answer is held until that batch is committed
     * (and becomes a 503 if the commit fails), like every other write. */
    if (rc == 0 && !e->r.nopush && req->server->apns != NULL)
        rc = mdm_server_commit(req->server);
    if (rc != 0) {
        mdm_api_store_error(req, rc);
        return false;
    }
    size_t queued = 0;
    for (size_t i = 0; i < e->r.ntargets; i++)
        queued += e->results[i].status == MDM_TARGET_QUEUED;
    mdm_log(MDM_LOG_INFO, req->id, "api.enqueued",
            "command=%s request_type=%s targets=%zu queued=%zu key=%s", e->uuid,
            mdm_pl_str(e->r.command, "RequestType"), e->r.ntargets, queued,
            req->auth ? ((mdm_apikey_info_t *)req->auth)->id : "-");
    return true;
}

/* Splits a comma-separated list of ids as received (not decoded) at its
 * commas, then decodes each id into the request arena: a comma escaped as
 * %2C stays in its id. Empty items are skipped. Returns false on a bad
 * escape. */
static bool split_ids(mdm_req_t *req, const char *s, size_t len, bool plus_is_space,
                      const char ***out, size_t *count)
{
    size_t n = 1;
    for (size_t i = 0; i < len; i++)
        n += s[i] == ',';
    const char **ids = mdm_arena_alloc(&req->arena, n * sizeof(char *));
    size_t k = 0;
    bool ok = true;
    mdm_buf_t dec = MDM_BUF_INIT;
    for (size_t start = 0, i = 0; i <= len && ok; i++) {
        if (i < len && s[i] != ',')
            continue;
        mdm_buf_reset(&dec);
        ok = mdm_url_decode(&dec, s + start, i - start, plus_is_space) == 0;
        if (ok && dec.len > 0)
            ids[k++] = mdm_arena_memdup(&req->arena, dec.data, dec.len);
        start = i + 1;
    }
    mdm_buf_free(&dec);
    *out = ids;
    *count = k;
    return ok;
}

static bool is_plist_body(mdm_req_t *req)
{
    const char *ct = mdm_req_header(req, "Content-Type");
    if (ct != NULL && (strncasecmp(ct, "application/x-apple-plist", 25) == 0 ||
                       strncasecmp(ct, "application/xml", 15) == 0 ||
                       strncasecmp(ct, "text/xml", 8) == 0))
        return true;
    return req->body_len >= 8 && (memcmp(req->body, "bplist00", 8) == 0 ||
                                  memcmp(req->body, "<?xml", 5) == 0);
}

static json_t *targets_json(mdm_req_t *req, const struct enq_ctx *e)
{
    json_t *t = json_object();
    for (size_t i = 0; i < e->r.ntargets; i++) {
        json_t *o = json_object();
        set_str(o, "status", mdm_target_status_name(e->results[i].status));
        if (e->results[i].dup_uuid[0])
            set_str(o, "existing_command_uuid", e->results[i].dup_uuid);
        /* An id that is not UTF-8 is no JSON key: shown %-escaped. */
        json_object_set_new(t, mdm_api_json_text(req, e->r.targets[i]), o);
    }
    return t;
}

/* An answer that waits for the pushes: the body so far and its status. */
struct answer_ctx {
    json_t *o;
    int status;
};

static void commands_pushed(mdm_req_t *req, json_t *push, void *arg)
{
    struct answer_ctx *ac = arg;
    json_object_set(ac->o, "push", push);
    mdm_api_send_json(req, ac->status, ac->o);
}

static void handle_commands_post(mdm_req_t *req)
{
    struct enq_ctx e;
    memset(&e, 0, sizeof(e));
    mdm_err_t err = {0};
    json_t *root = NULL;
    plist_t cmd = NULL;
    char uuid[64] = "";
    if (is_plist_body(req)) {
        /* A raw command plist; targets and options in the query. */
        if (mdm_command_unwrap((const char *)req->body, req->body_len, &cmd, uuid, &err) != 0 ||
            mdm_command_validate(cmd, &err) != 0) {
            mdm_resp_json_error(req, 400, "invalid_command", err.msg);
            goto out;
        }
        const char *t;
        size_t tlen;
        if (mdm_req_query_raw(req, "targets", &t, &tlen) == 0 &&
            !split_ids(req, t, tlen, true, (const char ***)&e.r.targets, &e.r.ntargets)) {
            bad_query(req, "targets", "a bad percent-escape");
            goto out;
        }
        if (e.r.ntargets > MAX_TARGETS) {
            mdm_resp_json_error(req, 400, "bad_request", "targets: at most 100000 a request");
            goto out;
        }
        int nopush, dedupe;
        if (!query_bool(req, "nopush", &nopush) || !query_bool(req, "dedupe", &dedupe))
            goto out;
        e.r.nopush = nopush == 1;
        e.r.dedupe = dedupe == 1;
        mdm_buf_t q = MDM_BUF_INIT;
        if (mdm_req_query(req, "priority", &q, true) == 0) {
            char *end = NULL;
            long pr = strtol(q.data, &end, 10);
            if (q.len == 0 || *end != '\0' || pr < 0 || pr > 255) {
                mdm_buf_free(&q);
                mdm_resp_json_error(req, 400, "bad_request", "priority: expected 0 to 255");
                goto out;
            }
            e.r.priority = (int)pr;
        }
        mdm_buf_free(&q);
        mdm_buf_t ttl = MDM_BUF_INIT;
        uint64_t ms = 0;
        if (mdm_req_query(req, "ttl", &ttl, true) == 0 &&
            (mdm_parse_duration_ms(ttl.data, &ms) != 0 || ms == 0 ||
             ms > (uint64_t)MDM_TTL_MAX_MS)) {
            mdm_buf_free(&ttl);
            mdm_resp_json_error(req, 400, "bad_request",
                                "ttl: expected a duration like 1h, at most 3650d");
            goto out;
        }
        mdm_buf_free(&ttl);
        e.r.ttl_ms = (int64_t)ms;
    } else {
        root = mdm_api_body_object(req, JSON_REJECT_DUPLICATES, "bad_json", NULL);
        if (root == NULL)
            goto out;
        const char *rt = json_string_value(json_object_get(root, "request_type"));
        json_t *targets = json_object_get(root, "targets");
        if (rt == NULL) {
            mdm_resp_json_error(req, 400, "bad_request", "request_type: missing or not a string");
            goto out;
        }
        if (!json_is_array(targets) || json_array_size(targets) == 0 ||
            json_array_size(targets) > MAX_TARGETS) {
            mdm_resp_json_error(req, 400, "bad_request",
                                "targets: expected a non-empty array of enrollment ids");
            goto out;
        }
        e.r.ntargets = json_array_size(targets);
        const char **ids = mdm_arena_alloc(&req->arena, e.r.ntargets * sizeof(char *));
        for (size_t i = 0; i < e.r.ntargets; i++) {
            ids[i] = json_string_value(json_array_get(targets, i));
            if (ids[i] == NULL) {
                mdm_resp_json_error(req, 400, "bad_request", "targets: every entry must be a string");
                goto out;
            }
        }
        e.r.targets = ids;
        json_t *params = json_object();
        const char *key;
        json_t *val;
        bool bad = false;
        json_object_foreach(root, key, val)
        {
            if (strcmp(key, "request_type") == 0 || strcmp(key, "targets") == 0)
                continue;
            if (strcmp(key, "priority") == 0) {
                bad |= !json_is_integer(val) || json_integer_value(val) < 0 ||
                       json_integer_value(val) > 255;
                e.r.priority = (int)json_integer_value(val);
            } else if (strcmp(key, "ttl") == 0) {
                uint64_t ms = 0;
                if (json_is_integer(val) && json_integer_value(val) > 0 &&
                    json_integer_value(val) <= MDM_TTL_MAX_MS / 1000)
                    ms = (uint64_t)json_integer_value(val) * 1000;
                else if (!json_is_string(val) ||
                         mdm_parse_duration_ms(json_string_value(val), &ms) != 0 || ms == 0 ||
                         ms > (uint64_t)MDM_TTL_MAX_MS)
                    bad = true;
                e.r.ttl_ms = (int64_t)ms;
            } else if (strcmp(key, "dedupe") == 0) {
                bad |= !json_is_boolean(val);
                e.r.dedupe = json_is_true(val);
            } else if (strcmp(key, "nopush") == 0) {
                bad |= !json_is_boolean(val);
                e.r.nopush = json_is_true(val);
            } else if (strcmp(key, "command_uuid") == 0) {
                const char *u = json_string_value(val);
                bad |= u == NULL || !mdm_command_uuid_ok(u);
                snprintf(uuid, sizeof(uuid), "%s", u && mdm_command_uuid_ok(u) ? u : "");
            } else {
                json_object_set(params, key, val);
            }
        }
        if (bad) {
            json_decref(params);
            mdm_resp_json_error(req, 400, "bad_request",
                                "priority (0..255), ttl (\"1h\" or seconds, at most 3650 days), "
                                "dedupe, nopush (booleans) and command_uuid (1 to 36 printable "
                                "ASCII characters, no space) have the wrong type or value");
            goto out;
        }
        int rc = mdm_command_build_json(rt, params, &cmd, &err);
        json_decref(params);
        if (rc != 0) {
            mdm_resp_json_error(req, 400, "invalid_command", err.msg);
            goto out;
        }
    }
    if (e.r.ntargets == 0) {
        mdm_resp_json_error(req, 400, "bad_request", "no targets");
        goto out;
    }
    e.r.command = cmd;
    e.r.uuid = uuid[0] ? uuid : NULL;
    if (!run_enqueue(req, &e, false))
        goto out;
    json_t *o = json_object();
    set_str(o, "command_uuid", e.uuid);
    set_str(o, "request_type", mdm_pl_str(cmd, "RequestType"));
    json_object_set_new(o, "targets", targets_json(req, &e));
    size_t queued = 0;
    for (size_t i = 0; i < e.r.ntargets; i++)
        queued += e.results[i].status == MDM_TARGET_QUEUED ||
                  e.results[i].status == MDM_TARGET_DUPLICATE;
    struct answer_ctx *ac = mdm_arena_alloc(&req->arena, sizeof(*ac));
    ac->o = o;
    ac->status = queued == e.r.ntargets ? 201 : queued ? 207 : 404;
    if (e.r.nopush) {
        mdm_api_send_json(req, ac->status, o);
    } else {
        /* The ids point into the JSON body, which goes before the answer. */
        const char **ids = mdm_arena_alloc(&req->arena, e.r.ntargets * sizeof(char *));
        for (size_t i = 0; i < e.r.ntargets; i++)
            ids[i] = mdm_arena_strdup(&req->arena, e.r.targets[i]);
        mdm_api_push_start(req->server, req, ids, e.r.ntargets, e.results, commands_pushed, ac);
    }
out:
    json_decref(root);
    plist_free(cmd);
}

/* A NanoMDM enqueue answer waiting for its pushes. */
struct nano_enq_ctx {
    json_t *o;
    const char *const *targets;
    const mdm_target_result_t *results;
    size_t n;
    const char *uuid, *request_type;
};

/* Copies a push result into NanoMDM's per-id status: push_result (the
 * apns-id) or push_error. Returns true when pushed. */
static bool nano_push_status(json_t *s, json_t *pr)
{
    if (pr == NULL)
        return false;
    const char *perr = json_string_value(json_object_get(pr, "error"));
    const char *pid = json_string_value(json_object_get(pr, "apns_id"));
    if (pid)
        set_str(s, "push_result", pid);
    if (perr)
        set_str(s, "push_error", perr);
    return pid != NULL;
}

static void nano_enqueue_answer(mdm_req_t *req, json_t *push, void *arg)
{
    struct nano_enq_ctx *c = arg;
    json_t *o = c->o;
    json_t *status = json_object();
    /* As NanoMDM counts: an id fails when its enqueue or its push failed;
     * 200 when none failed, 500 when all did, 207 in between. */
    size_t failed = 0;
    for (size_t i = 0; i < c->n; i++) {
        json_t *s = json_object();
        const char *id = mdm_api_json_text(req, c->targets[i]);
        bool bad = c->results[i].status != MDM_TARGET_QUEUED &&
                   c->results[i].status != MDM_TARGET_DUPLICATE;
        if (bad)
            set_str(s, "command_error", mdm_target_status_name(c->results[i].status));
        if (push != NULL) {
            json_t *pr = json_object_get(push, id);
            nano_push_status(s, pr);
            bad |= pr != NULL && json_object_get(pr, "error") != NULL;
        }
        /* An id named twice is one enrollment, counted once. */
        if (json_object_get(status, id) == NULL)
            failed += bad;
        json_object_set_new(status, id, s);
    }
    size_t ids = json_object_size(status);
    if (ids > 0)
        json_object_set_new(o, "status", status);
    else
        json_decref(status);
    if (push == NULL)
        json_object_set_new(o, "no_push", json_true());
    set_str(o, "command_uuid", c->uuid);
    set_str(o, "request_type", c->request_type);
    mdm_api_send_json(req, failed == 0 ? 200 : failed < ids ? 207 : 500, o);
}

/* NanoMDM: PUT /v1/enqueue/{id,id,...} with a raw command plist. */
static void handle_nano_enqueue(mdm_req_t *req)
{
    struct enq_ctx e;
    memset(&e, 0, sizeof(e));
    mdm_err_t err = {0};
    plist_t cmd = NULL;
    char uuid[64] = "";
    json_t *o = json_object();
    if (mdm_command_unwrap((const char *)req->body, req->body_len, &cmd, uuid, &err) != 0 ||
        mdm_command_validate(cmd, &err) != 0) {
        set_str(o, "command_error", err.msg);
        mdm_api_send_json(req, 400, o);
        goto out;
    }
    /* The router has checked the escapes of the path. */
    split_ids(req, req->raw_params[0], strlen(req->raw_params[0]), false,
              (const char ***)&e.r.targets, &e.r.ntargets);
    if (e.r.ntargets == 0) {
        set_str(o, "command_error", "no enrollment ids in the path");
        mdm_api_send_json(req, 400, o);
        goto out;
    }
    int nopush;
    if (!query_bool(req, "nopush", &nopush)) {
        json_decref(o);
        goto out;
    }
    e.r.command = cmd;
    e.r.uuid = uuid[0] ? uuid : NULL;
    e.r.nopush = nopush == 1;
    if (!run_enqueue(req, &e, true)) {
        json_decref(o);
        goto out;
    }
    struct nano_enq_ctx *c = mdm_arena_alloc(&req->arena, sizeof(*c));
    c->o = o;
    c->targets = e.r.targets;
    c->results = e.results;
    c->n = e.r.ntargets;
    c->uuid = mdm_arena_strdup(&req->arena, e.uuid);
    c->request_type = mdm_arena_strdup(&req->arena, mdm_pl_str(cmd, "RequestType"));
    if (e.r.nopush)
        nano_enqueue_answer(req, NULL, c);
    else
        mdm_api_push_start(req->server, req, c->targets, c->n, c->results,
                           nano_enqueue_answer, c);
out:
    plist_free(cmd);
}

struct nano_push_ctx {
    const char **ids;
    size_t n;
};

static void nano_push_answer(mdm_req_t *req, json_t *res, void *arg)
{
    struct nano_push_ctx *c = arg;
    json_t *status = json_object();
    size_t ok = 0;
    for (size_t i = 0; i < c->n; i++) {
        json_t *s = json_object();
        const char *id = mdm_api_json_text(req, c->ids[i]);
        bool pushed = nano_push_status(s, json_object_get(res, id));
        /* An id named twice is one enrollment, counted once (as in the
         * enqueue answer). */
        if (json_object_get(status, id) == NULL)
            ok += pushed;
        json_object_set_new(status, id, s);
    }
    size_t ids = json_object_size(status);
    json_t *o = json_object();
    json_object_set_new(o, "status", status);
    mdm_api_send_json(req, ok == ids ? 200 : ok ? 207 : 500, o);
}

/* NanoMDM: GET|POST /v1/push/{id,id,...}. */
static void handle_nano_push(mdm_req_t *req)
{
    struct nano_push_ctx *c = mdm_arena_alloc(&req->arena, sizeof(*c));
    /* The router has checked the escapes of the path. */
    split_ids(req, req->raw_params[0], strlen(req->raw_params[0]), false, &c->ids, &c->n);
    if (c->n == 0) {
        json_t *o = json_object();
        set_str(o, "push_error", "no enrollment ids in the path");
        mdm_api_send_json(req, 400, o);
        return;
    }
    mdm_api_push_start(req->server, req, c->ids, c->n, NULL, nano_push_answer, c);
}

/* ---- tags and reconciliation -------------------------------------------- */

struct tags_ctx {
    const char *id;
    json_t *tags;
};

/* Marks one enrollment for reconciliation at its next Idle. */
static int request_reconcile(mdm_txn_t *txn, const char *eid)
{
    plist_t e = NULL;
    int rc = mdm_enrollment_load(txn, eid, &e);
    if (rc != 0)
        return rc;
    mdm_pl_set_bool(e, "reconcile_requested", true);
    rc = mdm_enrollment_save(txn, eid, e);
    plist_free(e);
    return rc;
}

static int tags_fn(mdm_txn_t *txn, void *arg)
{
    struct tags_ctx *t = arg;
    plist_t dev = NULL;
    int rc = mdm_device_load(txn, t->id, &dev);
    if (rc != 0)
        return rc;
    plist_t arr = plist_new_array();
    size_t i;
    json_t *v;
    json_array_foreach(t->tags, i, v) plist_array_append_item(arr, plist_new_string(json_string_value(v)));
    plist_dict_set_item(dev, "tags", arr);
    rc = mdm_device_save(txn, t->id, dev);
    plist_free(dev);
    /* Groups may depend on tags: look again at the next check-in. */
    if (rc == 0) {
        rc = request_reconcile(txn, t->id);
        if (rc == MDM_ENOTFOUND)
            rc = 0;
    }
    return rc;
}

static void handle_tags_put(mdm_req_t *req)
{
    static const char bad[] = "expected {\"tags\": [...]}: at most 64 strings of 1 to 64 bytes";
    json_t *root = mdm_api_body_object(req, 0, "bad_request", bad);
    if (root == NULL)
        return;
    json_t *tags = json_object_get(root, "tags");
    bool ok = json_is_array(tags) && json_array_size(tags) <= 64;
    size_t i;
    json_t *v;
    json_array_foreach(tags, i, v)
    {
        const char *t = json_string_value(v);
        if (t == NULL || t[0] == '\0' || strlen(t) > 64)
            ok = false;
    }
    if (!ok) {
        json_decref(root);
        mdm_resp_json_error(req, 400, "bad_request", bad);
        return;
    }
    struct tags_ctx t = {.id = req->params[0], .tags = tags};
    int rc = mdm_store_update(req->server->store, tags_fn, &t);
    if (rc != 0) {
        json_decref(root);
        if (rc == MDM_ENOTFOUND)
            mdm_resp_json_error(req, 404, "not_found", "no device with this id");
        else
            mdm_api_store_error(req, rc);
        return;
    }
    json_t *o = json_object();
    set_str(o, "id", req->params[0]);
    json_object_set(o, "tags", tags);
    json_decref(root);
    mdm_api_send_json(req, 200, o);
}

static int reconcile_one_fn(mdm_txn_t *txn, void *arg)
{
    return request_reconcile(txn, arg);
}

static void handle_reconcile_one(mdm_req_t *req)
{
    int rc = mdm_store_update(req->server->store, reconcile_one_fn, req->params[0]);
    if (rc != 0) {
        if (rc == MDM_ENOTFOUND)
            mdm_resp_json_error(req, 404, "not_found", "no enrollment with this id");
        else
            mdm_api_store_error(req, rc);
        return;
    }
    const char *ids[1] = {req->params[0]};
    int queued = mdm_apns_push_many(req->server, ids, 1);
    json_t *o = json_object();
    set_str(o, "id", req->params[0]);
    set_str(o, "reconcile", "at the next check-in");
    json_object_set_new(o, "pushes_queued", json_integer(queued > 0 ? queued : 0));
    mdm_api_send_json(req, 202, o);
}

struct reconcile_all_ctx {
    char **ids;
    size_t n;
};

static int reconcile_all_fn(mdm_txn_t *txn, void *arg)
{
    struct reconcile_all_ctx *r = arg;
    for (size_t i = 0; i < r->n; i++)
        mdm_free(r->ids[i]);
    r->n = 0;
    mdm_cursor_t *c = NULL;
    int rc = mdm_cursor_open(txn, MDM_T_ENROLLMENTS, &c);
    if (rc != 0)
        return rc;
    mdm_val_t k, v;
    for (rc = mdm_cursor_seek(c, MDM_VAL(NULL, 0), &k, &v); rc == 0;
         rc = mdm_cursor_next(c, &k, &v)) {
        plist_t e = NULL;
        if (mdm_plist_load(v.data, v.len, &e) != 0)
            continue;
        if (mdm_pl_bool(e, "enabled", false)) {
            r->ids = mdm_realloc(r->ids, (r->n + 1) * sizeof(char *));
            r->ids[r->n++] = mdm_strndup(k.data, k.len);
        }
        plist_free(e);
    }
    mdm_cursor_close(c);
    if (rc != MDM_ENOTFOUND)
        return rc;
    for (size_t i = 0; i < r->n; i++) {
        rc = request_reconcile(txn, r->ids[i]);
        if (rc != 0)
            return rc;
    }
    return 0;
}

/* POST /v1/reconcile: every enabled enrollment reconciles at its next
 * check-in, and is woken up for it. */
static void handle_reconcile_all(mdm_req_t *req)
{
    struct reconcile_all_ctx r = {0};
    int rc = mdm_store_update(req->server->store, reconcile_all_fn, &r);
    json_t *o = json_object();
    if (rc == 0) {
        json_object_set_new(o, "enrollments", json_integer((json_int_t)r.n));
        int queued = mdm_apns_push_many(req->server, (const char *const *)r.ids, r.n);
        json_object_set_new(o, "pushes_queued", json_integer(queued > 0 ? queued : 0));
    }
    for (size_t i = 0; i < r.n; i++)
        mdm_free(r.ids[i]);
    mdm_free(r.ids);
    if (rc != 0) {
        json_decref(o);
        mdm_api_store_error(req, rc);
        return;
    }
    mdm_api_send_json(req, 202, o);
}

void mdm_api_mdm_register(mdm_server_t *s)
{
    mdm_router_t *r = &s->router;
    mdm_router_add(r, MDM_GET, "/v1/devices", handle_devices, MDM_AUTH_API_READ, "v1_devices");
    mdm_router_add(r, MDM_GET, "/v1/devices/{id}", handle_device, MDM_AUTH_API_READ,
                   "v1_device");
    mdm_router_add(r, MDM_DELETE, "/v1/devices/{id}", handle_device_delete, MDM_AUTH_API_ADMIN,
                   "v1_device_delete");
    mdm_router_add(r, MDM_GET, "/v1/devices/{id}/commands", handle_device_commands,
                   MDM_AUTH_API_READ, "v1_device_commands");
    mdm_router_add(r, MDM_DELETE, "/v1/devices/{id}/commands/{uuid}", handle_cancel,
                   MDM_AUTH_API_ADMIN, "v1_command_cancel");
    mdm_router_add(r, MDM_PUT, "/v1/devices/{id}/tags", handle_tags_put, MDM_AUTH_API_ADMIN,
                   "v1_device_tags");
    mdm_router_add(r, MDM_POST, "/v1/devices/{id}/reconcile", handle_reconcile_one,
                   MDM_AUTH_API_ADMIN, "v1_device_reconcile");
    mdm_router_add(r, MDM_POST, "/v1/reconcile", handle_reconcile_all, MDM_AUTH_API_ADMIN,
                   "v1_reconcile");
    mdm_router_add(r, MDM_POST, "/v1/commands", handle_commands_post, MDM_AUTH_API_ADMIN,
                   "v1_commands");
    mdm_router_add(r, MDM_GET, "/v1/commands/{uuid}", handle_command, MDM_AUTH_API_READ,
                   "v1_command");
    mdm_router_add(r, MDM_PUT, "/v1/enqueue/{ids}", handle_nano_enqueue, MDM_AUTH_API_ADMIN,
                   "v1_enqueue");
    mdm_router_add(r, MDM_GET | MDM_POST, "/v1/push/{ids}", handle_nano_push,
                   MDM_AUTH_API_ADMIN, "v1_push");
}
