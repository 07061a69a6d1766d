/* Connects the policy engine's authenticate and scep hooks to enrollment
 * and SCEP (check-in, reports and profiles call the engine directly). */
#include "mdm/policy_glue.h"

#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <strings.h>
#include <string.h>
#include <uv.h>

#include "mdm/enroll.h"
#include "policy.h"
#include "scep/scep.h"
#include "scep/service.h"
#include "util/alloc.h"
#include "util/plist.h"

/* One authenticate request: the hook runs (each run in its own
 * transaction) until no password hash is pending; each pending hash is
 * made in the thread pool between two runs. */
struct auth_call {
    uv_work_t work;
    mdm_server_t *s;
    const mdm_enroll_auth_req_t *req;
    mdm_enroll_auth_t *out;
    mdm_policy_t *pol;
    const char *reqid;
    mdm_policy_pwcheck_t *pw;
    mdm_enroll_auth_done_fn done;
    void *arg;
};

static int auth_txn(mdm_txn_t *txn, void *arg)
{
    struct auth_call *a = arg;
    const mdm_enroll_auth_req_t *r = a->req;
    plist_t extra = plist_new_dict();
    if (r->form != NULL) {
        plist_dict_iter it = NULL;
        plist_dict_new_iter(r->form, &it);
        for (;;) {
            char *k = NULL;
            plist_t v = NULL;
            plist_dict_next_item(r->form, it, &k, &v);
            if (k == NULL)
                break;
            if (strcmp(k, "username") != 0 && strcmp(k, "password") != 0)
                plist_dict_set_item(extra, k, plist_copy(v));
            free(k);
        }
        free(it);
    }
    if (r->bearer != NULL)
        mdm_pl_set_str(extra, "token", r->bearer);
    if (r->device != NULL)
        plist_dict_set_item(extra, "device", plist_copy(r->device));
    mdm_pl_set_str(extra, "method", r->method);
    mdm_pl_set_str(extra, "path", r->path);
    const char *ua = NULL;
    for (size_t i = 0; i < r->nheaders; i++)
        if (strcasecmp(r->headers[i].name, "User-Agent") == 0)
            ua = r->headers[i].value;
    mdm_policy_auth_req_t pr = {.username = r->user,
                                .password = r->password,
                                .remote_addr = r->remote_addr,
                                .user_agent = ua,
                                .extra = extra,
                                .pwcheck = a->pw};
    mdm_policy_decision_t d;
    memset(&d, 0, sizeof(d));
    int rc = mdm_policy_authenticate(a->pol, txn, a->reqid, &pr, &d);
    plist_free(extra);
    if (rc == 0) {
        a->out->allow = d.status == MDM_POLICY_OK && d.allow;
        snprintf(a->out->user, sizeof(a->out->user), "%s", d.user ? d.user : "");
        if (d.status == MDM_POLICY_ABSENT)
            snprintf(a->out->reason, sizeof(a->out->reason),
                     "no authenticate hook in the policy: nobody may enroll");
        else if (d.status == MDM_POLICY_FAILED)
            snprintf(a->out->reason, sizeof(a->out->reason), "authenticate failed: %.200s",
                     d.error);
        else
            snprintf(a->out->reason, sizeof(a->out->reason), "%s", d.reason ? d.reason : "");
    }
    mdm_policy_decision_free(&d);
    return rc;
}

static void auth_finish(struct auth_call *a)
{
    mdm_policy_release(a->pol);
    mdm_policy_pwcheck_free(a->pw);
    mdm_enroll_auth_done_fn done = a->done;
    void *arg = a->arg;
    mdm_free(a);
    done(arg);
}

static void auth_deny(struct auth_call *a, const char *why, const char *detail)
{
    a->out->allow = false;
    a->out->user[0] = '\0';
    snprintf(a->out->reason, sizeof(a->out->reason), "%s: %s", why, detail);
}

static void auth_run(struct auth_call *a);

static void hash_work(uv_work_t *w)
{
    struct auth_call *a = w->data;
    mdm_policy_pwcheck_work(a->pw);
}

static void hash_after(uv_work_t *w, int status)
{
    struct auth_call *a = w->data;
    if (status != 0) {
        auth_deny(a, "the password check did not run", uv_strerror(status));
        auth_finish(a);
        return;
    }
    auth_run(a);
}

static void auth_run(struct auth_call *a)
{
    int rc = mdm_store_update(a->s->store, auth_txn, a);
    if (rc != 0) {
        auth_deny(a, "store", mdm_strerror(rc));
    } else if (mdm_policy_pwcheck_pending(a->pw)) {
        a->work.data = a;
        int r = uv_queue_work(a->s->loop, &a->work, hash_work, hash_after);
        if (r == 0)
            return;
        auth_deny(a, "the password check could not be queued", uv_strerror(r));
    }
    auth_finish(a);
}

static void enroll_auth(mdm_server_t *s, const mdm_enroll_auth_req_t *req, mdm_enroll_auth_t *out,
                        const char *reqid, mdm_enroll_auth_done_fn done, void *arg)
{
    struct auth_call *a = mdm_calloc(1, sizeof(*a));
    *a = (struct auth_call){.s = s, .req = req, .out = out, .reqid = reqid, .done = done,
                            .arg = arg};
    a->pol = mdm_policy_acquire(s);
    a->pw = mdm_policy_pwcheck_new();
    auth_run(a);
}

struct scep_call {
    mdm_server_t *s;
    const mdm_scep_decision_ctx_t *ctx;
    mdm_policy_t *pol;
    int decision;
    char *reason;
    size_t reason_len;
};

static int scep_txn(mdm_txn_t *txn, void *arg)
{
    struct scep_call *c = arg;
    const mdm_scep_decision_ctx_t *x = c->ctx;
    plist_t csr = plist_new_dict(), ctx = plist_new_dict();
    mdm_pl_set_str(csr, "subject", x->subject);
    if (x->cn != NULL && x->cn[0] != '\0')
        mdm_pl_set_str(csr, "cn", x->cn);
    if (x->csr != NULL) {
        EVP_PKEY *k = X509_REQ_get0_pubkey(x->csr);
        if (k != NULL) {
            mdm_pl_set_str(csr, "key_type", EVP_PKEY_base_id(k) == EVP_PKEY_RSA ? "RSA" : "EC");
            mdm_pl_set_uint(csr, "key_bits", (uint64_t)EVP_PKEY_get_bits(k));
        }
    }
    plist_t sans = plist_new_array();
    for (size_t i = 0; i < x->nsans; i++)
        plist_array_append_item(sans, plist_new_string(x->sans[i]));
    plist_dict_set_item(csr, "sans", sans);
    if (x->challenge != NULL)
        mdm_pl_set_str(csr, "challenge", x->challenge);
    mdm_pl_set_bool(ctx, "challenge_ok", x->challenge_ok);
    if (x->remote_addr != NULL)
        mdm_pl_set_str(ctx, "remote_addr", x->remote_addr);
    mdm_pl_set_str(ctx, "message_type", mdm_scep_msgtype_name(x->request_type));
    mdm_pl_set_bool(ctx, "poll", x->message_type != x->request_type);
    mdm_pl_set_str(ctx, "transaction_id", x->transaction_id);
    if (x->owner && x->owner[0])
        mdm_pl_set_str(ctx, "user", x->owner);
    mdm_policy_decision_t d;
    memset(&d, 0, sizeof(d));
    int rc = mdm_policy_scep(c->pol, txn, x->reqid, csr, ctx, &d);
    plist_free(csr);
    plist_free(ctx);
    if (rc == 0) {
        if (d.status == MDM_POLICY_ABSENT)
            c->decision = MDM_SCEP_DECIDE_ISSUE;
        else if (d.status == MDM_POLICY_FAILED)
            c->decision = MDM_SCEP_DECIDE_DENY;
        else
            c->decision = d.scep == MDM_POLICY_SCEP_ISSUE     ? MDM_SCEP_DECIDE_ISSUE
                          : d.scep == MDM_POLICY_SCEP_PENDING ? MDM_SCEP_DECIDE_PENDING
                                                              : MDM_SCEP_DECIDE_DENY;
        snprintf(c->reason, c->reason_len, "%.200s",
                 d.status == MDM_POLICY_FAILED ? d.error : d.reason ? d.reason : "");
    }
    mdm_policy_decision_free(&d);
    return rc;
}

static int scep_decide(void *udata, const mdm_scep_decision_ctx_t *ctx, char *reason,
                       size_t reason_len)
{
    mdm_server_t *s = udata;
    struct scep_call c = {.s = s, .ctx = ctx, .reason = reason, .reason_len = reason_len,
                          .decision = MDM_SCEP_DECIDE_DENY};
    c.pol = mdm_policy_acquire(s);
    /* Without a scep hook the core's own checks decide: issue. */
    if (!mdm_policy_has_hook(c.pol, MDM_POLICY_HOOK_SCEP)) {
        mdm_policy_release(c.pol);
        return MDM_SCEP_DECIDE_ISSUE;
    }
    int rc = mdm_store_update(s->store, scep_txn, &c);
    mdm_policy_release(c.pol);
    if (rc != 0) {
        snprintf(reason, reason_len, "store: %s", mdm_strerror(rc));
        return MDM_SCEP_DECIDE_DENY;
    }
    return c.decision;
}

void mdm_policy_glue_init(mdm_server_t *s)
{
    mdm_enroll_set_auth(s, enroll_auth);
    mdm_scep_set_decision(s, scep_decide, s);
}
