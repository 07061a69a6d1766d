#include "api/api.h"

#include <stdio.h>
#include <string.h>

#include "apns/apns.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/encode.h"

/* One request's pushes: answers arrive one by one from the push service. */
typedef struct push_batch {
    mdm_req_t *req;
    const char **ids;         /* the ids pushed (owned array, borrowed strings) */
    json_t *results;
    size_t pending;
    mdm_api_push_done_fn done;
    void *arg;
} push_batch_t;

static void batch_finish(push_batch_t *b)
{
    json_t *results = b->results;
    mdm_api_push_done_fn done = b->done;
    mdm_req_t *req = b->req;
    void *arg = b->arg;
    mdm_free(b->ids);
    mdm_free(b);
    done(req, results, arg);
    json_decref(results);
}

const char *mdm_api_json_text(mdm_req_t *req, const char *s)
{
    size_t n = strlen(s);
    if (mdm_utf8_valid(s, n))
        return s;
    const unsigned char *u = (const unsigned char *)s;
    mdm_buf_t b = MDM_BUF_INIT;
    for (size_t i = 0; i < n;) {
        size_t k = mdm_utf8_len(u + i, n - i);
        if (k == 0 || u[i] == '%') {
            mdm_buf_printf(&b, "%%%02X", u[i]);
            i++;
        } else {
            mdm_buf_append(&b, s + i, k);
            i += k;
        }
    }
    const char *out = mdm_arena_memdup(&req->arena, b.data, b.len);
    mdm_buf_free(&b);
    return out;
}

static void on_push_result(void *arg, size_t index, const mdm_push_result_t *r)
{
    push_batch_t *b = arg;
    json_t *o = json_object();
    json_object_set_new(o, "status", json_string(mdm_push_status_name(r->status)));
    if (r->apns_id != NULL)
        json_object_set_new(o, "apns_id", json_string(mdm_api_json_text(b->req, r->apns_id)));
    if (r->error != NULL)
        json_object_set_new(o, "error", json_string(mdm_api_json_text(b->req, r->error)));
    if (r->http_status != 0)
        json_object_set_new(o, "apns_status", json_integer(r->http_status));
    if (r->reason != NULL)
        json_object_set_new(o, "apns_reason", json_string(mdm_api_json_text(b->req, r->reason)));
    if (r->coalesced)
        json_object_set_new(o, "coalesced", json_true());
    json_object_set_new(b->results, mdm_api_json_text(b->req, b->ids[index]), o);
    if (--b->pending == 0)
        batch_finish(b);
}

void mdm_api_push_start(mdm_server_t *s, mdm_req_t *req, const char *const *ids, size_t n,
                        const mdm_target_result_t *results, mdm_api_push_done_fn done,
                        void *arg)
{
    push_batch_t *b = mdm_calloc(1, sizeof(*b));
    b->req = req;
    b->results = json_object();
    b->done = done;
    b->arg = arg;
    /* One extra count held until every push is started, so that answers
     * cannot complete the batch half-way through the loop. */
    b->pending = 1;
    const char **want = mdm_malloc((n ? n : 1) * sizeof(*want));
    size_t nwant = 0;
    for (size_t i = 0; i < n; i++) {
        if (results != NULL && results[i].status != MDM_TARGET_QUEUED &&
            results[i].status != MDM_TARGET_DUPLICATE)
            continue;
        want[nwant++] = ids[i];
    }
    b->ids = want;
    if (nwant > 0 && s->apns != NULL &&
        mdm_apns_push_batch(s, want, nwant, on_push_result, b) == 0) {
        b->pending += nwant;
    } else {
        /* No push service at all, or one that is shutting down. */
        for (size_t i = 0; i < nwant; i++) {
            json_t *o = json_object();
            json_object_set_new(o, "status", json_string(s->apns ? "error" : "not_configured"));
            json_object_set_new(o, "error",
                                json_string(s->apns ? "the push service is stopping"
                                                    : "push is not configured (no APNs push "
                                                      "certificate)"));
            json_object_set_new(b->results, mdm_api_json_text(req, want[i]), o);
        }
    }
    if (--b->pending == 0)
        batch_finish(b);
}

void mdm_api_store_error(mdm_req_t *req, int rc)
{
    if (rc == MDM_ENOSPACE || rc == MDM_EIO || rc == MDM_EMAPFULL) {
        mdm_resp_header(req, "Retry-After", "5");
        mdm_resp_json_error(req, 503, "storage_unavailable",
                            "the change could not be written to the store; nothing was saved, "
                            "retry later");
        return;
    }
    mdm_resp_json_error(req, 500, "store", mdm_strerror(rc));
}

/* Whether a string in j, at any depth, holds a NUL character; path (len
 * bytes used) gets where: "user", "targets[2]", "Settings[0].Item". The
 * parser bounds the depth. */
static bool string_with_nul(json_t *j, char *path, size_t cap, size_t len)
{
    size_t i;
    const char *k;
    json_t *v;
    if (json_is_string(j))
        return strlen(json_string_value(j)) != json_string_length(j);
    if (json_is_array(j)) {
        json_array_foreach(j, i, v)
        {
            snprintf(path + len, cap - len, "[%zu]", i);
            if (string_with_nul(v, path, cap, strlen(path)))
                return true;
        }
    } else if (json_is_object(j)) {
        json_object_foreach(j, k, v)
        {
            snprintf(path + len, cap - len, "%s%s", len > 0 ? "." : "", k);
            if (string_with_nul(v, path, cap, strlen(path)))
                return true;
        }
    }
    path[len] = '\0';
    return false;
}

json_t *mdm_api_body_object(mdm_req_t *req, size_t flags, const char *error, const char *detail)
{
    json_error_t je;
    json_t *j = json_loadb((const char *)req->body, req->body_len, flags | JSON_ALLOW_NUL, &je);
    char d[256];
    if (j == NULL || !json_is_object(j)) {
        if (j == NULL)
            snprintf(d, sizeof(d), "the body is not a JSON object: %s (line %d)", je.text, je.line);
        else
            snprintf(d, sizeof(d), "the body must be a JSON object");
        json_decref(j);
        mdm_resp_json_error(req, 400, error, detail != NULL ? detail : d);
        return NULL;
    }
    char path[200];
    path[0] = '\0';
    if (string_with_nul(j, path, sizeof(path), 0)) {
        json_decref(j);
        snprintf(d, sizeof(d), "%s: a NUL character (\\u0000) is not allowed in a string", path);
        mdm_resp_json_error(req, 400, "bad_request", d);
        return NULL;
    }
    return j;
}
