/* The admin API of the policy engine: status, reload (profiles.dir too),
 * dry runs and the decision log (lua/policy.h does the work). */
#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#include "api/api.h"
#include "mdm/profiles_dir.h"
#include "policy.h"
#include "server.h"
#include "util/alloc.h"
#include "util/buf.h"

#define DECISIONS_DEFAULT 50
#define DECISIONS_MAX 1000

static void handle_status(mdm_req_t *req)
{
    mdm_api_send_json(req, 200, mdm_policy_status_json(req->server));
}

static json_t *error_json(const mdm_policy_error_t *pe, const char *dir)
{
    char text[1200];
    mdm_policy_error_format(pe, dir, text, sizeof(text));
    json_t *o = json_object();
    json_object_set_new(o, "error", json_string("policy"));
    json_object_set_new(o, "detail", json_string(text));
    json_object_set_new(o, "file", json_string(pe->file));
    json_object_set_new(o, "line", json_integer(pe->line));
    json_object_set_new(o, "message", json_string(pe->message));
    return o;
}

/* A profiles.dir file that did not load makes the answer 422 too, with
 * error "profiles": the policy and the other files are in place. A store
 * that could not take the changes makes it 503, as for other writes: the
 * files are fine, and a later reload stores them. */
static int profiles_outcome(mdm_req_t *req, json_t *o, json_t *profiles)
{
    json_t *errors = json_object_get(profiles, "errors");
    size_t n = json_array_size(errors);
    if (n == 0)
        return 200;
    bool store_failed = json_is_true(json_object_get(profiles, "store_failed"));
    json_t *first = json_array_get(errors, 0);
    const char *file = json_string_value(json_object_get(first, "file"));
    char *detail = mdm_sprintf("profiles.dir: %zu error%s (the profiles involved stay as "
                               "stored); %s%s%s", n, n == 1 ? "" : "s", file ? file : "",
                               file ? ": " : "",
                               json_string_value(json_object_get(first, "error")));
    json_object_set_new(o, "error",
                        json_string(store_failed ? "storage_unavailable" : "profiles"));
    json_object_set_new(o, "detail", json_string(detail));
    mdm_free(detail);
    if (!store_failed)
        return 422;
    mdm_resp_header(req, "Retry-After", "5");
    return 503;
}

/* After profiles.dir (as SIGHUP): the policy, then the answer. */
static void reload_policy(mdm_server_t *s, json_t *profiles, void *arg)
{
    mdm_req_t *req = arg;
    bool changed = false;
    mdm_policy_error_t pe;
    int status = 200;
    json_t *o;
    if (mdm_policy_reload(s, &changed, &pe) != 0) {
        o = error_json(&pe, NULL);
        json_object_set_new(o, "kept", mdm_policy_status_json(s));
        status = 422;
    } else {
        o = mdm_policy_status_json(s);
        json_object_set_new(o, "changed", json_boolean(changed));
        status = profiles_outcome(req, o, profiles);
    }
    if (profiles != NULL)
        json_object_set(o, "profiles", profiles);
    mdm_api_send_json(req, status, o);
}

static void handle_reload(mdm_req_t *req)
{
    mdm_profiles_reload(req->server, reload_policy, req);
}

/* POST /v1/policy/eval {"device": ID, "hook": NAME, "dir": optional, "input": optional} */
static void handle_eval(mdm_req_t *req)
{
    json_t *body = mdm_api_body_object(req, 0, "bad_request",
                                       "expected a JSON object {\"device\": ID, \"hook\": NAME}");
    if (body == NULL)
        return;
    const char *device = json_string_value(json_object_get(body, "device"));
    const char *hook = json_string_value(json_object_get(body, "hook"));
    const char *dir = json_string_value(json_object_get(body, "dir"));
    const json_t *input = json_object_get(body, "input");
    mdm_policy_t *p = NULL;
    if (hook == NULL) {
        mdm_resp_json_error(req, 400, "bad_request", "\"hook\" is required");
        goto out;
    }
    if (dir != NULL) {
        mdm_policy_error_t pe;
        if (mdm_policy_load_candidate(req->server, dir, &p, &pe) != 0) {
            mdm_api_send_json(req, 422, error_json(&pe, dir));
            goto out;
        }
    } else {
        p = mdm_policy_acquire(req->server);
    }
    json_t *res = NULL;
    mdm_err_t err = {0};
    int rc = mdm_policy_eval(p, req->server->store, device, hook, input, &res, &err);
    if (rc == MDM_ENOTFOUND)
        mdm_resp_json_error(req, 404, "not_found", err.msg);
    else if (rc == MDM_EINVAL)
        mdm_resp_json_error(req, 400, "bad_request", err.msg);
    else if (rc == MDM_ENOSPACE || rc == MDM_EIO || rc == MDM_EMAPFULL)
        mdm_api_store_error(req, rc);
    else if (rc != 0)
        mdm_resp_json_error(req, 500, "store", err.msg[0] ? err.msg : mdm_strerror(rc));
    else
        mdm_api_send_json(req, 200, res);
out:
    mdm_policy_release(p);
    json_decref(body);
}

static void handle_decisions(mdm_req_t *req)
{
    mdm_buf_t device = MDM_BUF_INIT, hook = MDM_BUF_INIT, limit = MDM_BUF_INIT;
    bool have_device = mdm_req_query(req, "device", &device, true) == 0 && device.len > 0;
    bool have_hook = mdm_req_query(req, "hook", &hook, true) == 0 && hook.len > 0;
    long n = DECISIONS_DEFAULT;
    if (mdm_req_query(req, "limit", &limit, true) == 0 && limit.len > 0) {
        char *end = NULL;
        n = strtol(limit.data, &end, 10);
        if (*end != '\0' || n <= 0) {
            mdm_resp_json_error(req, 400, "bad_request", "limit must be a positive number");
            goto out;
        }
        if (n > DECISIONS_MAX)
            n = DECISIONS_MAX;
    }
    if (have_hook && mdm_policy_hook_parse(hook.data) < 0) {
        mdm_resp_json_error(req, 400, "bad_request", "unknown hook");
        goto out;
    }
    mdm_policy_flush_decisions(req->server);
    json_t *o = NULL;
    int rc = mdm_policy_decisions_json(req->server->store, have_device ? device.data : NULL,
                                       have_hook ? hook.data : NULL, (size_t)n, &o);
    if (rc != 0)
        mdm_api_store_error(req, rc);
    else
        mdm_api_send_json(req, 200, o);
out:
    mdm_buf_free(&device);
    mdm_buf_free(&hook);
    mdm_buf_free(&limit);
}

void mdm_api_policy_register(mdm_server_t *s)
{
    mdm_router_t *r = &s->router;
    mdm_router_add(r, MDM_GET, "/v1/policy", handle_status, MDM_AUTH_API_READ, "v1_policy");
    mdm_router_add(r, MDM_POST, "/v1/policy/reload", handle_reload, MDM_AUTH_API_ADMIN,
                   "v1_policy_reload");
    mdm_router_add(r, MDM_POST, "/v1/policy/eval", handle_eval, MDM_AUTH_API_ADMIN,
                   "v1_policy_eval");
    mdm_router_add(r, MDM_GET, "/v1/decisions", handle_decisions, MDM_AUTH_API_READ,
                   "v1_decisions");
}
