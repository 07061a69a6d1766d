/* The push certificate routes of the admin API:
 *
 *   PUT /v1/pushcert   NanoMDM-compatible: the body is the PEM certificate
 *                      and the PEM private key, concatenated. Answers
 *                      {"topic", "not_after", ...}. ?replace=<topic> refuses
 *                      a certificate for another topic (a new certificate
 *                      instead of a renewal orphans every enrolled device).
 *   GET /v1/pushcert   the topics in use, with expiry and state. */
#include <jansson.h>
#include <string.h>

#include "api/api.h"
#include "apns/apns.h"
#include "util/alloc.h"
#include "util/log.h"
#include "util/misc.h"

#define DAY_MS (86400LL * 1000)

static json_t *time_json(int64_t ms)
{
    if (ms <= 0)
        return json_null();
    char t[32];
    mdm_time_format(t, ms);
    return json_string(t);
}

static json_t *pushcert_json(const mdm_pushcert_t *pc, int64_t now)
{
    json_t *o = json_object();
    json_object_set_new(o, "topic", json_string(pc->topic));
    json_object_set_new(o, "not_before", time_json(pc->not_before_ms));
    json_object_set_new(o, "not_after", time_json(pc->not_after_ms));
    json_object_set_new(o, "expires_in_days",
                        json_integer((json_int_t)((pc->not_after_ms - now) / DAY_MS)));
    json_object_set_new(o, "expired", json_boolean(pc->not_after_ms <= now));
    json_object_set_new(o, "expiring_soon", json_boolean(pc->not_after_ms - now < 30 * DAY_MS));
    json_object_set_new(o, "sha256", json_string(pc->sha256));
    json_object_set_new(o, "subject", json_string(pc->subject));
    json_object_set_new(o, "source", json_string(pc->source));
    json_object_set_new(o, "updated_at", time_json(pc->updated_ms));
    json_object_set_new(o, "blocked", json_boolean(pc->blocked));
    if (pc->blocked) {
        json_object_set_new(o, "blocked_reason", json_string(pc->blocked_reason));
        json_object_set_new(o, "blocked_at", time_json(pc->blocked_ms));
    }
    return o;
}

/* Reads ?replace=<topic> into out: 0 (out->len 0 when absent), or
 * MDM_EINVAL for a value that is empty, does not decode or holds a NUL,
 * which must not be taken as "no check". */
static int replace_param(mdm_req_t *req, mdm_buf_t *out)
{
    int rc = mdm_req_query(req, "replace", out, true);
    if (rc == MDM_ENOTFOUND)
        return 0;
    if (rc != 0 || out->len == 0 || memchr(out->data, '\0', out->len) != NULL)
        return MDM_EINVAL;
    return 0;
}

static void handle_pushcert_put(mdm_req_t *req)
{
    mdm_server_t *s = req->server;
    mdm_err_t err = {0};
    mdm_pushcert_t *pc = NULL;
    mdm_buf_t replace = MDM_BUF_INIT;
    if (replace_param(req, &replace) != 0) {
        mdm_resp_json_error(req, 400, "invalid_request",
                            "replace must be the topic the certificate renews "
                            "(?replace=com.apple.mgmt.External.<uuid>)");
        goto out;
    }
    bool has_replace = replace.len > 0;
    int rc = mdm_pushcert_from_pem(req->body, req->body_len, "api", &pc, &err);
    if (rc != 0) {
        mdm_resp_json_error(req, 400, "invalid_pushcert", err.msg);
        goto out;
    }
    char topic[MDM_TOPIC_MAX + 1];
    snprintf(topic, sizeof(topic), "%s", pc->topic);
    bool replaced = false;
    json_t *o = pushcert_json(pc, mdm_now_ms());
    rc = mdm_apns_pushcert_install(s, pc, has_replace ? replace.data : NULL, &replaced, &err);
    pc = NULL;
    if (rc != 0) {
        json_decref(o);
        bool bad = rc == MDM_EEXPIRED || rc == MDM_EINVAL;
        char q[600], tq[MDM_TOPIC_LOGQ_MAX];
        mdm_log(MDM_LOG_WARN, req->id, "api.pushcert_refused", "topic=%s error=%s",
                mdm_logq(tq, sizeof(tq), topic), mdm_logq(q, sizeof(q), err.msg));
        if (bad)
            mdm_resp_json_error(req, 400, "invalid_pushcert", err.msg);
        else
            mdm_api_store_error(req, rc);
        goto out;
    }
    json_object_set_new(o, "replaced", json_boolean(replaced));
    mdm_api_send_json(req, 200, o);
out:
    mdm_buf_free(&replace);
    mdm_pushcert_free(pc);
}

static void handle_pushcert_get(mdm_req_t *req)
{
    const mdm_pushcerts_t *set = mdm_apns_pushcerts(req->server);
    json_t *arr = json_array();
    int64_t now = mdm_now_ms();
    for (size_t i = 0; set != NULL && i < set->n; i++)
        json_array_append_new(arr, pushcert_json(set->v[i], now));
    json_t *o = json_object();
    json_object_set_new(o, "pushcerts", arr);
    mdm_api_send_json(req, 200, o);
}

void mdm_api_push_register(mdm_server_t *s)
{
    mdm_router_add(&s->router, MDM_PUT, "/v1/pushcert", handle_pushcert_put, MDM_AUTH_API_ADMIN,
                   "v1_pushcert_put");
    mdm_router_add(&s->router, MDM_GET, "/v1/pushcert", handle_pushcert_get, MDM_AUTH_API_READ,
                   "v1_pushcert");
}
