#include "mdm/reconcile.h"

#include <stdio.h>
#include <string.h>

#include "crypto/keys.h"
#include "mdm/enqueue.h"
#include "mdm/mdm.h"
#include "mdm/profiles.h"
#include "util/alloc.h"
#include "util/log.h"
#include "util/misc.h"
#include "util/plist.h"

/* ---- installed table ----------------------------------------------------- */

static void ikey(mdm_buf_t *k, const char *eid, const char *identifier)
{
    mdm_buf_reset(k);
    mdm_buf_puts(k, eid);
    mdm_buf_putc(k, '\0');
    if (identifier)
        mdm_buf_puts(k, identifier);
}

static int inst_load(mdm_txn_t *txn, const char *eid, const char *identifier, plist_t *out)
{
    mdm_buf_t k = MDM_BUF_INIT;
    ikey(&k, eid, identifier);
    mdm_val_t v;
    int rc = mdm_txn_get(txn, MDM_T_INSTALLED, MDM_VAL(k.data, k.len), &v);
    mdm_buf_free(&k);
    if (rc != 0)
        return rc;
    return mdm_plist_load_stored(v.data, v.len, out) == 0 ? 0 : MDM_EPARSE;
}

static int inst_save(mdm_txn_t *txn, const char *eid, const char *identifier, plist_t d)
{
    mdm_buf_t k = MDM_BUF_INIT, b = MDM_BUF_INIT;
    ikey(&k, eid, identifier);
    mdm_plist_to_bin_buf(d, &b);
    int rc = mdm_txn_put(txn, MDM_T_INSTALLED, MDM_VAL(k.data, k.len), MDM_VAL(b.data, b.len), 0);
    mdm_buf_free(&k);
    mdm_buf_free(&b);
    return rc;
}

static int inst_del(mdm_txn_t *txn, const char *eid, const char *identifier)
{
    mdm_buf_t k = MDM_BUF_INIT;
    ikey(&k, eid, identifier);
    int rc = mdm_txn_del(txn, MDM_T_INSTALLED, MDM_VAL(k.data, k.len));
    mdm_buf_free(&k);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

/* Calls fn(identifier, record) for each installed entry of eid; collects
 * first so that fn may write. */
static int inst_each(mdm_txn_t *txn, const char *eid,
                     int (*fn)(const char *id, plist_t rec, void *arg), void *arg)
{
    mdm_buf_t k = MDM_BUF_INIT;
    ikey(&k, eid, NULL);
    mdm_cursor_t *c = NULL;
    char **ids = NULL;
    plist_t *recs = NULL;
    size_t n = 0;
    int rc = mdm_cursor_open(txn, MDM_T_INSTALLED, &c);
    if (rc == 0) {
        mdm_val_t p = MDM_VAL(k.data, k.len), ck, cv;
        for (rc = mdm_cursor_seek(c, p, &ck, &cv); rc == 0 && mdm_val_has_prefix(ck, p);
             rc = mdm_cursor_next(c, &ck, &cv)) {
            plist_t d = NULL;
            if (mdm_plist_load_stored(cv.data, cv.len, &d) != 0)
                continue;
            ids = mdm_realloc(ids, (n + 1) * sizeof(*ids));
            recs = mdm_realloc(recs, (n + 1) * sizeof(*recs));
            ids[n] = mdm_strndup((const char *)ck.data + p.len, ck.len - p.len);
            recs[n] = d;
            n++;
        }
        if (rc == MDM_ENOTFOUND)
            rc = 0;
    }
    mdm_cursor_close(c);
    mdm_buf_free(&k);
    for (size_t i = 0; i < n; i++) {
        if (rc == 0)
            rc = fn(ids[i], recs[i], arg);
        mdm_free(ids[i]);
        plist_free(recs[i]);
    }
    mdm_free(ids);
    mdm_free(recs);
    return rc;
}

static int add_to_dict(const char *id, plist_t rec, void *arg)
{
    const char *hash = mdm_pl_str(rec, "hash");
    const char *state = mdm_pl_str(rec, "state");
    /* A profile whose removal failed is still on the device. */
    if (state && (strcmp(state, "installed") == 0 || strcmp(state, "remove_failed") == 0))
        mdm_pl_set_str(arg, id, hash ? hash : "");
    return 0;
}

plist_t mdm__installed_dict(mdm_txn_t *txn, const char *eid)
{
    plist_t d = plist_new_dict();
    inst_each(txn, eid, add_to_dict, d);
    return d;
}

int mdm_reconcile_each(mdm_txn_t *txn, const char *eid,
                       int (*fn)(const char *id, plist_t rec, void *arg), void *arg)
{
    return inst_each(txn, eid, fn, arg);
}

struct forget_ctx {
    mdm_txn_t *txn;
    const char *eid;
};

static int forget_entry(const char *id, plist_t rec, void *arg)
{
    (void)rec;
    struct forget_ctx *f = arg;
    return inst_del(f->txn, f->eid, id);
}

int mdm_reconcile_forget(mdm_txn_t *txn, const char *eid)
{
    struct forget_ctx f = {txn, eid};
    return inst_each(txn, eid, forget_entry, &f);
}

/* ---- the device view ----------------------------------------------------- */

/* The device record of a lazy view, read on first use. */
static plist_t view_device_record(void *arg, bool load)
{
    mdm_policy_view_t *v = arg;
    if (!v->device_read && load && v->detached) {
        v->device_read = true;
        if (v->dev_bin != NULL && (mdm_plist_load_stored(v->dev_bin, v->dev_len, &v->device) != 0 ||
                                   plist_get_node_type(v->device) != PLIST_DICT)) {
            plist_free(v->device);
            v->device = NULL;
        }
    }
    if (!v->device_read && load) {
        v->device_read = true;
        char buf[MDM_EID_MAX + 1];
        const char *did = mdm_rec_str(v->rec, "device_id", buf, sizeof(buf));
        if (mdm_device_load(v->txn, did ? did : v->dev.eid, &v->device) != 0)
            v->device = NULL;
    }
    return v->device;
}

int mdm__policy_view(mdm_txn_t *txn, const char *eid, plist_t e, mdm_policy_view_t *v)
{
    memset(v, 0, sizeof(*v));
    if (e == NULL) {
        int rc = mdm_enrollment_load(txn, eid, &e);
        if (rc != 0)
            return rc;
        v->own_enrollment = true;
    }
    v->enrollment = e;
    v->dev.eid = eid;
    const char *did = mdm_pl_str(e, "device_id");
    if (mdm_device_load(txn, did ? did : eid, &v->device) != 0)
        v->device = NULL;
    v->dev.device = v->device;
    v->installed = mdm__installed_dict(txn, eid);
    v->dev.enrollment = e;
    v->dev.installed = v->installed;
    v->dev.first_checkin = mdm_pl_bool(e, "new_enrollment", false);
    return 0;
}

void mdm__policy_view_rec(mdm_txn_t *txn, const char *eid, mdm_rec_t *rec,
                          mdm_policy_view_t *v)
{
    memset(v, 0, sizeof(*v));
    v->rec = rec;
    v->enrollment = rec->tree;
    v->dev.eid = eid;
    v->txn = txn;
    v->dev.device_record = view_device_record;
    v->dev.record_arg = v;
    v->installed = mdm__installed_dict(txn, eid);
    v->dev.enrollment = rec->tree;
    v->dev.enrollment_rec = rec;
    v->dev.installed = v->installed;
    v->dev.first_checkin = mdm_rec_bool(rec, "new_enrollment", false);
}

void mdm__policy_view_detached(mdm_txn_t *txn, const char *eid, mdm_rec_t *rec,
                               const void *dev_bin, size_t dev_len, mdm_policy_view_t *v)
{
    mdm__policy_view_rec(txn, eid, rec, v);
    v->txn = NULL;
    v->detached = true;
    v->dev_bin = dev_bin;
    v->dev_len = dev_len;
}

void mdm__policy_view_free(mdm_policy_view_t *v)
{
    if (v->own_enrollment)
        plist_free(v->enrollment);
    plist_free(v->device);
    plist_free(v->installed);
    memset(v, 0, sizeof(*v));
}

/* ---- commands from policies ---------------------------------------------- */

int mdm__enqueue_commands(mdm_txn_t *txn, const char *eid, plist_t commands, int64_t now,
                          size_t *n)
{
    *n = 0;
    if (commands == NULL || plist_get_node_type(commands) != PLIST_ARRAY)
        return 0;
    uint32_t count = plist_array_get_size(commands);
    for (uint32_t i = 0; i < count; i++) {
        plist_t cmd = plist_array_get_item(commands, i);
        if (plist_get_node_type(cmd) != PLIST_DICT || mdm_pl_str(cmd, "RequestType") == NULL)
            continue;
        const char *targets[1] = {eid};
        mdm_target_result_t res[1];
        mdm_enqueue_req_t r = {.command = cmd, .targets = targets, .ntargets = 1};
        char uuid[MDM_UUID_LEN + 1];
        int rc = mdm_enqueue(txn, &r, now, uuid, res);
        if (rc != 0)
            return rc;
        if (res[0].status == MDM_TARGET_QUEUED)
            (*n)++;
    }
    return 0;
}

/* ---- reconciliation ------------------------------------------------------ */

bool mdm_reconcile_due(mdm_txn_t *txn, mdm_policy_t *pol, mdm_rec_t *e, mdm_rec_t *device)
{
    if (mdm_rec_bool(e, "reconcile_requested", false))
        return true;
    uint64_t prof = 0;
    (void)mdm_meta_get_u64(txn, "profiles_revision", &prof);
    if (mdm_rec_uint(e, "reconciled_profiles", 0) != prof)
        return true;
    char buf[160];
    const char *rev = mdm_rec_str(e, "reconciled_revision", buf, sizeof(buf));
    const char *cur = pol ? mdm_policy_revision(pol) : NULL;
    if (cur != NULL && (rev == NULL || strcmp(rev, cur) != 0))
        return true;
    int64_t at = mdm_rec_int(e, "reconciled_at", 0);
    return device != NULL && mdm_rec_int(device, "facts_at", 0) > at;
}

static bool strlist_has(const mdm_strlist_t *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++)
        if (strcmp(l->v[i], s) == 0)
            return true;
    return false;
}

/* InstallProfile (of one version) or RemoveProfile commands the device
 * answered with Error, at most, before only a forced reconciliation tries
 * again (or, for an install, a new version of the profile). */
#define TRIES 3

struct removal_ctx {
    mdm_txn_t *txn;
    const char *eid;
    const mdm_strlist_t *desired;
    int64_t now;
    bool force;
    mdm_reconcile_stats_t *st;
};

static int queue_command(mdm_txn_t *txn, const char *eid, plist_t cmd, int64_t now,
                         char uuid[MDM_UUID_LEN + 1])
{
    const char *targets[1] = {eid};
    mdm_target_result_t res[1];
    mdm_enqueue_req_t r = {.command = cmd, .targets = targets, .ntargets = 1, .priority = 1};
    return mdm_enqueue(txn, &r, now, uuid, res);
}

/* Whether the command an entry waits for (pending, removing) still waits
 * in the queue: one cancelled, expired, given up after NotNow or cleared
 * at re-enrollment ends without a report, and its entry must not wait for
 * ever. Nor does one whose stored result does not decode: it tells nothing,
 * and the command is harmless to send again. Other errors (I/O) may pass
 * and count as waiting. */
static bool command_waits(mdm_txn_t *txn, const char *eid, plist_t rec)
{
    const char *u = mdm_pl_str(rec, "command_uuid");
    if (u == NULL || u[0] == '\0')
        return false;
    mdm_result_t r;
    int rc = mdm_result_get(txn, eid, u, &r, NULL);
    if (rc == MDM_ENOTFOUND || rc == MDM_EPARSE)
        return false;
    return rc != 0 || !mdm_status_terminal(r.status);
}

static bool str_is(const char *a, const char *b)
{
    return a != NULL && b != NULL && strcmp(a, b) == 0;
}

/* Whether the version hash of a profile needs no InstallProfile now: it is
 * installed or on its way, or the device refused it TRIES times (a new
 * install answered with Error, or an update it refused while keeping the
 * version it had) and the reconciliation is not forced. A refused version
 * is offered again at later reconciliations (a new policy revision or
 * profile, new device facts) until then. */
static bool install_not_needed(mdm_txn_t *txn, const char *eid, plist_t rec, const char *hash,
                               bool force)
{
    if (rec == NULL)
        return false;
    const char *state = mdm_pl_str(rec, "state");
    bool same = str_is(mdm_pl_str(rec, "hash"), hash);
    if (same && (str_is(state, "installed") ||
                 (str_is(state, "pending") && command_waits(txn, eid, rec))))
        return true;
    bool refused = (same && str_is(state, "failed")) ||
                   (str_is(state, "installed") && str_is(mdm_pl_str(rec, "failed_hash"), hash));
    return refused && !force && mdm_pl_uint(rec, "install_failures", 0) >= TRIES;
}

/* The count of refused installs belongs to the version refused: a new
 * version has tries of its own. */
static void forget_tries_of_other_versions(plist_t rec, const char *hash)
{
    if (!str_is(mdm_pl_str(rec, "hash"), hash) && !str_is(mdm_pl_str(rec, "failed_hash"), hash))
        mdm_pl_remove(rec, "install_failures");
}

static int maybe_remove(const char *id, plist_t rec, void *arg)
{
    struct removal_ctx *r = arg;
    if (strlist_has(r->desired, id))
        return 0;
    const char *state = mdm_pl_str(rec, "state");
    if (state && strcmp(state, "removing") == 0 && command_waits(r->txn, r->eid, rec))
        return 0;
    if (state && strcmp(state, "failed") == 0)
        return inst_del(r->txn, r->eid, id);
    if (state && strcmp(state, "remove_failed") == 0 && !r->force &&
        mdm_pl_uint(rec, "remove_failures", 0) >= TRIES)
        return 0;
    plist_t cmd = plist_new_dict();
    mdm_pl_set_str(cmd, "RequestType", "RemoveProfile");
    mdm_pl_set_str(cmd, "Identifier", id);
    char uuid[MDM_UUID_LEN + 1];
    int rc = queue_command(r->txn, r->eid, cmd, r->now, uuid);
    plist_free(cmd);
    if (rc != 0)
        return rc;
    mdm_pl_set_str(rec, "state", "removing");
    mdm_pl_set_str(rec, "command_uuid", uuid);
    mdm_pl_set_int(rec, "updated_at", r->now);
    r->st->removals++;
    return inst_save(r->txn, r->eid, id, rec);
}

static void store_strlist(plist_t dict, const char *key, const mdm_strlist_t *l)
{
    plist_t a = plist_new_array();
    for (size_t i = 0; i < l->n; i++)
        plist_array_append_item(a, plist_new_string(l->v[i]));
    plist_dict_set_item(dict, key, a);
}

static void strlist_from(plist_t arr, mdm_strlist_t *out)
{
    memset(out, 0, sizeof(*out));
    if (arr == NULL || plist_get_node_type(arr) != PLIST_ARRAY)
        return;
    uint32_t n = plist_array_get_size(arr);
    out->v = mdm_calloc(n ? n : 1, sizeof(char *));
    for (uint32_t i = 0; i < n; i++) {
        plist_t it = plist_array_get_item(arr, i);
        if (plist_get_node_type(it) == PLIST_STRING)
            out->v[out->n++] = mdm_strdup(plist_get_string_ptr(it, NULL));
    }
}

static void strlist_free(mdm_strlist_t *l)
{
    for (size_t i = 0; i < l->n; i++)
        mdm_free(l->v[i]);
    mdm_free(l->v);
    memset(l, 0, sizeof(*l));
}

/* The certificate profiles are encrypted to: the enrollment's identity,
 * or for a user channel (which has none of its own) its device's, since
 * the device decrypts the profiles of every channel. NULL if none. */
static X509 *identity_cert(mdm_txn_t *txn, const char *eid, plist_t e)
{
    X509 *cert = NULL;
    size_t dl = 0;
    const unsigned char *der = mdm_pl_data(e, "cert_der", &dl);
    plist_t dev = NULL;
    const char *did = mdm_pl_str(e, "device_id");
    if (der == NULL && did != NULL && strcmp(did, eid) != 0 &&
        mdm_enrollment_load(txn, did, &dev) == 0)
        der = mdm_pl_data(dev, "cert_der", &dl);
    if (der != NULL)
        mdm_cert_from_der(der, dl, &cert, NULL);
    plist_free(dev);
    return cert;
}

int mdm_reconcile(mdm_server_t *s, mdm_policy_t *pol, mdm_txn_t *txn, const char *reqid,
                  const char *eid, plist_t e, bool force, mdm_reconcile_stats_t *st)
{
    memset(st, 0, sizeof(*st));
    int64_t now = mdm_now_ms();
    mdm_policy_view_t v;
    int rc = mdm__policy_view(txn, eid, e, &v);
    if (rc != 0)
        return rc;
    mdm_policy_decision_t g, p;
    memset(&g, 0, sizeof(g));
    memset(&p, 0, sizeof(p));
    mdm_strlist_t groups = {0};
    bool own_groups = false;

    rc = mdm_policy_groups(pol, txn, reqid, &v.dev, &g);
    if (rc != 0)
        goto out;
    if (g.status == MDM_POLICY_OK) {
        groups = g.names;
        /* Remember them: the device view and the API show the last known
         * groups, and a failing groups() falls back to them. */
        if (v.device != NULL) {
            store_strlist(v.device, "groups", &g.names);
            mdm_pl_set_int(v.device, "groups_at", now);
            const char *did = mdm_pl_str(e, "device_id");
            rc = mdm_device_save(txn, did ? did : eid, v.device);
            if (rc != 0)
                goto out;
        }
    } else {
        strlist_from(v.device ? plist_dict_get_item(v.device, "groups") : NULL, &groups);
        own_groups = true;
    }
    rc = mdm_policy_profiles(pol, txn, reqid, &v.dev, &groups, &p);
    if (rc != 0)
        goto out;
    if (p.status != MDM_POLICY_OK) {
        st->skipped = true;
        snprintf(st->reason, sizeof(st->reason), "%s",
                 p.status == MDM_POLICY_ABSENT ? "the policy does not assign profiles"
                                               : "profiles() failed: keeping what is installed");
        goto stamp;
    }
    const mdm_profiles_t *pr = mdm_profiles_of(s);
    X509 *cert = identity_cert(txn, eid, e);
    for (size_t i = 0; i < p.names.n; i++) {
        const char *id = p.names.v[i];
        mdm_profile_meta_t meta;
        mdm_buf_t xml = MDM_BUF_INIT;
        rc = mdm_profile_get(txn, id, &meta, &xml);
        if (rc == MDM_ENOTFOUND) {
            char q[300];
            mdm_log(MDM_LOG_WARN, reqid, "reconcile.missing_profile", "eid=%s identifier=%s",
                    eid, mdm_logq(q, sizeof(q), id));
            st->missing_profiles++;
            rc = 0;
            mdm_buf_free(&xml);
            continue;
        }
        if (rc != 0) {
            mdm_buf_free(&xml);
            break;
        }
        plist_t rec = NULL;
        int ir = inst_load(txn, eid, id, &rec);
        if (ir != 0 && ir != MDM_ENOTFOUND) {
            rc = ir;
            mdm_buf_free(&xml);
            break;
        }
        bool installed = rec != NULL && mdm_pl_str(rec, "state") != NULL &&
                         strcmp(mdm_pl_str(rec, "state"), "installed") == 0;
        const char *h = rec ? mdm_pl_str(rec, "hash") : NULL;
        bool skip = install_not_needed(txn, eid, rec, meta.hash, force);
        if (!skip) {
            mdm_buf_t payload = MDM_BUF_INIT;
            mdm_err_t err = {0};
            if (pr != NULL)
                rc = mdm_profile_render(pr, xml.data, xml.len, cert, &payload, &err);
            else
                mdm_buf_append(&payload, xml.data, xml.len);
            if (rc == 0) {
                plist_t cmd = plist_new_dict();
                mdm_pl_set_str(cmd, "RequestType", "InstallProfile");
                mdm_pl_set_data(cmd, "Payload", payload.data, payload.len);
                char uuid[MDM_UUID_LEN + 1];
                rc = queue_command(txn, eid, cmd, now, uuid);
                plist_free(cmd);
                if (rc == 0) {
                    if (rec == NULL)
                        rec = plist_new_dict();
                    /* An update: keep what the device has, in case it
                     * refuses the new version. */
                    if (installed && h != NULL && strcmp(h, meta.hash) != 0)
                        mdm_pl_set_str(rec, "installed_hash", h);
                    forget_tries_of_other_versions(rec, meta.hash);
                    mdm_pl_set_str(rec, "hash", meta.hash);
                    mdm_pl_set_str(rec, "state", "pending");
                    mdm_pl_set_str(rec, "command_uuid", uuid);
                    mdm_pl_set_int(rec, "updated_at", now);
                    rc = inst_save(txn, eid, id, rec);
                    st->installs++;
                }
            } else {
                char eq[300], iq[300], errq[600];
                mdm_log(MDM_LOG_ERROR, reqid, "reconcile.render_failed",
                        "eid=%s identifier=%s error=%s", mdm_logq(eq, sizeof(eq), eid),
                        mdm_logq(iq, sizeof(iq), id), mdm_logq(errq, sizeof(errq), err.msg));
                rc = 0;
            }
            mdm_buf_free(&payload);
        }
        plist_free(rec);
        mdm_buf_free(&xml);
        if (rc != 0)
            break;
    }
    X509_free(cert);
    if (rc == 0) {
        struct removal_ctx r = {txn, eid, &p.names, now, force, st};
        rc = inst_each(txn, eid, maybe_remove, &r);
    }
stamp:
    if (rc == 0) {
        const char *rev = mdm_policy_revision(pol);
        if (rev)
            mdm_pl_set_str(e, "reconciled_revision", rev);
        uint64_t prof = 0;
        (void)mdm_meta_get_u64(txn, "profiles_revision", &prof);
        mdm_pl_set_uint(e, "reconciled_profiles", prof);
        mdm_pl_set_int(e, "reconciled_at", now);
        mdm_pl_set_bool(e, "reconcile_requested", false);
    }
out:
    if (own_groups)
        strlist_free(&groups);
    mdm_policy_decision_free(&g);
    mdm_policy_decision_free(&p);
    mdm__policy_view_free(&v);
    return rc;
}

/* ---- results ------------------------------------------------------------- */

struct by_uuid_ctx {
    mdm_txn_t *txn;
    const char *eid, *uuid, *status;
    int64_t now;
    bool found;
};

/* The device answered RemoveProfile with Error: the profile is still on
 * it. The entry stays, and later reconciliations ask again (TRIES
 * in all, then only when forced); a ProfileList without it ends it. */
static int removal_failed(struct by_uuid_ctx *b, const char *id, plist_t rec)
{
    uint64_t failures = mdm_pl_uint(rec, "remove_failures", 0) + 1;
    mdm_pl_set_str(rec, "state", "remove_failed");
    mdm_pl_set_uint(rec, "remove_failures", failures);
    mdm_pl_set_int(rec, "updated_at", b->now);
    char eq[300], iq[300];
    mdm_log(MDM_LOG_WARN, NULL, "reconcile.remove_failed",
            "eid=%s identifier=%s failures=%llu retry=%s", mdm_logq(eq, sizeof(eq), b->eid),
            mdm_logq(iq, sizeof(iq), id), (unsigned long long)failures,
            failures < TRIES ? "next_reconciliation" : "when_forced");
    return inst_save(b->txn, b->eid, id, rec);
}

/* The device answered InstallProfile with Error: counted, and offered
 * again at later reconciliations, TRIES times in all (install_not_needed). */
static void install_failed(struct by_uuid_ctx *b, const char *id, plist_t rec)
{
    uint64_t failures = mdm_pl_uint(rec, "install_failures", 0) + 1;
    mdm_pl_set_uint(rec, "install_failures", failures);
    char eq[300], iq[300];
    mdm_log(MDM_LOG_WARN, NULL, "reconcile.install_failed",
            "eid=%s identifier=%s failures=%llu retry=%s", mdm_logq(eq, sizeof(eq), b->eid),
            mdm_logq(iq, sizeof(iq), id), (unsigned long long)failures,
            failures < TRIES ? "next_reconciliation" : "when_forced");
}

static int result_for_uuid(const char *id, plist_t rec, void *arg)
{
    struct by_uuid_ctx *b = arg;
    const char *u = mdm_pl_str(rec, "command_uuid");
    if (u == NULL || strcmp(u, b->uuid) != 0)
        return 0;
    b->found = true;
    const char *state = mdm_pl_str(rec, "state");
    bool ok = strcmp(b->status, "Acknowledged") == 0;
    if (state && strcmp(state, "removing") == 0)
        return ok ? inst_del(b->txn, b->eid, id) : removal_failed(b, id, rec);
    const char *prev = mdm_pl_str(rec, "installed_hash");
    if (!ok && prev != NULL) {
        /* A refused update: the device keeps the version it had. */
        mdm_pl_set_str(rec, "failed_hash", mdm_pl_str(rec, "hash"));
        mdm_pl_set_str(rec, "hash", prev);
        mdm_pl_set_str(rec, "state", "installed");
    } else {
        mdm_pl_set_str(rec, "state", ok ? "installed" : "failed");
    }
    if (ok) {
        mdm_pl_remove(rec, "failed_hash");
        mdm_pl_remove(rec, "install_failures");
    }
    mdm_pl_remove(rec, "installed_hash");
    mdm_pl_set_int(rec, "updated_at", b->now);
    if (!ok)
        install_failed(b, id, rec);
    return inst_save(b->txn, b->eid, id, rec);
}

struct listed_ctx {
    mdm_txn_t *txn;
    const char *eid;
    plist_t present;   /* dict of identifiers the device reported */
};

static int drop_missing(const char *id, plist_t rec, void *arg)
{
    struct listed_ctx *l = arg;
    const char *state = mdm_pl_str(rec, "state");
    if (state == NULL || (strcmp(state, "installed") != 0 && strcmp(state, "remove_failed") != 0))
        return 0;
    if (plist_dict_get_item(l->present, id) != NULL)
        return 0;
    /* Gone from the device (removed by hand, or a restore): forget it so
     * that the next reconciliation installs it again if wanted. */
    return inst_del(l->txn, l->eid, id);
}

int mdm_reconcile_on_result(mdm_txn_t *txn, const char *eid, const char *request_type,
                            const char *status, const char *uuid, plist_t report, int64_t now)
{
    if (strcmp(request_type, "InstallProfile") == 0 || strcmp(request_type, "RemoveProfile") == 0) {
        struct by_uuid_ctx b = {txn, eid, uuid, status, now, false};
        return inst_each(txn, eid, result_for_uuid, &b);
    }
    if (strcmp(request_type, "ProfileList") == 0 && strcmp(status, "Acknowledged") == 0) {
        plist_t list = plist_dict_get_item(report, "ProfileList");
        if (list == NULL || plist_get_node_type(list) != PLIST_ARRAY)
            return 0;
        struct listed_ctx l = {txn, eid, plist_new_dict()};
        uint32_t n = plist_array_get_size(list);
        for (uint32_t i = 0; i < n; i++) {
            const char *id = mdm_pl_str(plist_array_get_item(list, i), "PayloadIdentifier");
            if (id)
                mdm_pl_set_bool(l.present, id, true);
        }
        int rc = inst_each(txn, eid, drop_missing, &l);
        plist_free(l.present);
        return rc;
    }
    return 0;
}
