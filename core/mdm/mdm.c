#include "mdm/mdm.h"

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "apns/apns.h"
#include "crypto/certdb.h"
#include "crypto/keys.h"
#include "mdm/queue.h"
#include "mdm/reconcile.h"
#include "mdm/sigcache.h"
#include "policy.h"
#include "scep/challenge.h"
#include "scep/service.h"
#include "util/alloc.h"
#include "util/encode.h"
#include "util/log.h"
#include "util/misc.h"
#include "util/plist.h"
#include "util/plistjson.h"

#define SHARED_IPAD_USER "FFFFFFFF-FFFF-FFFF-FFFF-FFFFFFFFFFFF"
#define CERT_CACHE_TTL_MS (10 * 60 * 1000)

/* ---- records ------------------------------------------------------------- */

static int load_dict(mdm_txn_t *txn, int table, const char *key, plist_t *out)
{
    *out = NULL;
    mdm_val_t v;
    int rc = mdm_txn_get(txn, table, MDM_VAL_STR(key), &v);
    if (rc != 0)
        return rc;
    if (mdm_plist_load_stored(v.data, v.len, out) != 0 || plist_get_node_type(*out) != PLIST_DICT) {
        plist_free(*out);
        *out = NULL;
        return MDM_EPARSE;
    }
    return 0;
}

static int save_dict(mdm_txn_t *txn, int table, const char *key, plist_t rec)
{
    mdm_buf_t b = MDM_BUF_INIT;
    mdm_plist_to_bin_buf(rec, &b);
    int rc = mdm_txn_put(txn, table, MDM_VAL_STR(key), MDM_VAL(b.data, b.len), 0);
    mdm_buf_free(&b);
    return rc;
}

int mdm_enrollment_load(mdm_txn_t *txn, const char *eid, plist_t *out)
{
    return load_dict(txn, MDM_T_ENROLLMENTS, eid, out);
}

int mdm_enrollment_save(mdm_txn_t *txn, const char *eid, plist_t rec)
{
    return save_dict(txn, MDM_T_ENROLLMENTS, eid, rec);
}

int mdm_device_load(mdm_txn_t *txn, const char *device_id, plist_t *out)
{
    return load_dict(txn, MDM_T_DEVICES, device_id, out);
}

int mdm_device_save(mdm_txn_t *txn, const char *device_id, plist_t rec)
{
    return save_dict(txn, MDM_T_DEVICES, device_id, rec);
}

/* Calls fn for each user channel of a device ("<device_id>:..."). */
static int for_each_user_channel(mdm_txn_t *txn, const char *device_id,
                                 int (*fn)(mdm_txn_t *, const char *, void *), void *arg)
{
    char prefix[MDM_EID_MAX + 2];
    int pl = snprintf(prefix, sizeof(prefix), "%s:", device_id);
    if (pl <= 0 || (size_t)pl >= sizeof(prefix))
        return MDM_EINVAL;
    /* Collect first: fn may change the table under the cursor. */
    char **ids = NULL;
    size_t n = 0;
    mdm_cursor_t *c = NULL;
    int rc = mdm_cursor_open(txn, MDM_T_ENROLLMENTS, &c);
    if (rc == 0) {
        mdm_val_t k, v, p = MDM_VAL(prefix, (size_t)pl);
        for (rc = mdm_cursor_seek(c, p, &k, &v); rc == 0 && mdm_val_has_prefix(k, p);
             rc = mdm_cursor_next(c, &k, &v)) {
            ids = mdm_realloc(ids, (n + 1) * sizeof(*ids));
            ids[n++] = mdm_strndup(k.data, k.len);
        }
        if (rc == MDM_ENOTFOUND)
            rc = 0;
    }
    mdm_cursor_close(c);
    for (size_t i = 0; i < n; i++) {
        if (rc == 0)
            rc = fn(txn, ids[i], arg);
        mdm_free(ids[i]);
    }
    mdm_free(ids);
    return rc;
}

static int forget_channel(mdm_txn_t *txn, const char *eid, void *arg)
{
    (void)arg;
    int rc = mdm_queue_forget(txn, eid);
    if (rc == 0)
        rc = mdm_reconcile_forget(txn, eid);
    if (rc == 0) {
        rc = mdm_txn_del(txn, MDM_T_ENROLLMENTS, MDM_VAL_STR(eid));
        if (rc == MDM_ENOTFOUND)
            rc = 0;
    }
    return rc;
}

int mdm_device_forget(mdm_txn_t *txn, const char *device_id)
{
    int rc = for_each_user_channel(txn, device_id, forget_channel, NULL);
    if (rc == 0)
        rc = forget_channel(txn, device_id, NULL);
    if (rc == 0)
        rc = mdm_certauth_unbind(txn, device_id);
    if (rc == 0) {
        rc = mdm_txn_del(txn, MDM_T_DEVICES, MDM_VAL_STR(device_id));
        if (rc == MDM_ENOTFOUND)
            rc = 0;
    }
    return rc;
}

/* ---- identity ------------------------------------------------------------ */

bool mdm_device_id_ok(const char *id)
{
    if (id == NULL || id[0] == '\0' || strlen(id) > MDM_DEVICE_ID_MAX)
        return false;
    /* Ids become store keys and log values: keep them to printable text
     * without the separator of user channels. */
    for (const char *p = id; *p; p++)
        if ((unsigned char)*p <= ' ' || *p == ':' || (unsigned char)*p >= 0x7f)
            return false;
    return true;
}

int mdm__resolve_ids(plist_t msg, char eid[MDM_EID_MAX + 1], char device_id[MDM_EID_MAX + 1],
                     bool *user_channel, const char **why)
{
    const char *udid = mdm_pl_str(msg, "UDID");
    const char *enr = mdm_pl_str(msg, "EnrollmentID");
    const char *user_id = mdm_pl_str(msg, "UserID");
    const char *dev = udid ? udid : enr;
    *user_channel = false;
    *why = "no usable UDID or EnrollmentID in the message";
    if (!mdm_device_id_ok(dev))
        return MDM_EPARSE;
    snprintf(device_id, MDM_EID_MAX + 1, "%s", dev);
    const char *user = NULL;
    if (udid != NULL && user_id != NULL) {
        if (strcmp(user_id, SHARED_IPAD_USER) == 0)
            user = mdm_pl_str(msg, "UserShortName");
        else
            user = user_id;
        if (user == NULL) {
            *why = "the Shared iPad user channel's message has no UserShortName";
            return MDM_EPARSE;
        }
    } else if (udid == NULL && mdm_pl_str(msg, "EnrollmentUserID") != NULL) {
        user = mdm_pl_str(msg, "EnrollmentUserID");
    }
    /* A message with user keys that name no user channel (UserID not a
     * string, UserShortName without UserID, ...) is for no channel: taking
     * it for the device's would put a user's push token on the device. */
    static const char *const user_keys[] = {"UserID", "UserShortName", "UserLongName",
                                            "EnrollmentUserID"};
    *why = "user channel keys that name no user channel (UserID must be a string; "
           "UserShortName and UserLongName come with it, EnrollmentUserID with EnrollmentID)";
    if (user == NULL)
        for (size_t i = 0; i < sizeof(user_keys) / sizeof(user_keys[0]); i++)
            if (plist_dict_get_item(msg, user_keys[i]) != NULL)
                return MDM_EPARSE;
    *why = "the user channel's user id is empty, longer than 120 bytes or not text";
    if (user != NULL) {
        if (user[0] == '\0' || strlen(user) > 120)
            return MDM_EPARSE;
        for (const char *p = user; *p; p++)
            if ((unsigned char)*p < ' ' || (unsigned char)*p == 0x7f)
                return MDM_EPARSE;
        snprintf(eid, MDM_EID_MAX + 1, "%s:%s", dev, user);
        *user_channel = true;
    } else {
        snprintf(eid, MDM_EID_MAX + 1, "%s", dev);
    }
    return 0;
}

int mdm__verify_signature(mdm_mdm_t *m, const char *header, const void *body, size_t len,
                          mdm_identity_t *out, const char **why)
{
    memset(out, 0, sizeof(*out));
    mdm_buf_t der = MDM_BUF_INIT;
    CMS_ContentInfo *cms = NULL;
    BIO *data = NULL;
    STACK_OF(X509) *signers = NULL;
    int rc = MDM_EAUTH;
    if (mdm_base64_decode(&der, header, strlen(header)) != 0 || der.len == 0) {
        *why = "Mdm-Signature is not base64";
        goto out;
    }
    int64_t now = mdm_now_ms();
    X509 *kept = NULL;
    int fast = mdm_sigcache_verify(m->sigcache, der.data, der.len, body, len, now, &kept, out->fp);
    if (fast == MDM_SIGCACHE_OK) {
        mdm_metric_add(m->m_sig_cache_hits, 1);
        out->cert = kept;
        out->owned = true;
        out->source = "signature";
        rc = 0;
        goto out;
    }
    const unsigned char *p = (const unsigned char *)der.data;
    cms = d2i_CMS_ContentInfo(NULL, &p, (long)der.len);
    if (cms == NULL || OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed) {
        *why = "Mdm-Signature is not a CMS SignedData";
        goto out;
    }
    /* The body goes in through a buffer BIO, not straight from a memory
     * BIO: for a memory BIO, OpenSSL 3.0's CMS_verify makes a copy of its
     * own that it leaks when it cannot set up the digests (a digest
     * algorithm it does not know), which any client could repeat. */
    data = BIO_new(BIO_f_buffer());
    BIO_push(data, BIO_new_mem_buf(body, (int)len));
    if (CMS_verify(cms, NULL, NULL, data, NULL,
                   CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY | CMS_DETACHED) != 1) {
        *why = "Mdm-Signature does not verify over the body";
        goto out;
    }
    signers = CMS_get0_signers(cms);
    if (signers == NULL || sk_X509_num(signers) != 1) {
        *why = "Mdm-Signature must have exactly one signer";
        goto out;
    }
    X509 *signer = sk_X509_value(signers, 0);
    if (mdm_cert_sha256(signer, out->fp) != 0) {
        *why = "cannot hash the signer certificate";
        goto out;
    }
    if (!mdm_sigcache_known(m->sigcache, out->fp, now)) {
        X509_STORE *store = m->server->client_ca_store;
        if (store == NULL) {
            *why = "no trusted device CA is configured (tls.client_ca)";
            goto out;
        }
        X509_STORE_CTX *ctx = X509_STORE_CTX_new();
        STACK_OF(X509) *untrusted = CMS_get1_certs(cms);
        int ok = X509_STORE_CTX_init(ctx, store, signer, untrusted) == 1 &&
                 X509_verify_cert(ctx) == 1;
        if (!ok)
            *why = X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx));
        X509_STORE_CTX_free(ctx);
        sk_X509_pop_free(untrusted, X509_free);
        if (!ok)
            goto out;
        int64_t nb, na;
        int64_t until = now + CERT_CACHE_TTL_MS;
        if (mdm_cert_validity_ms(signer, &nb, &na) == 0 && na < until)
            until = na;
        mdm_sigcache_put(m->sigcache, out->fp, signer, until);
        mdm_metric_add(m->m_sig_verified, 1);
    }
    X509_up_ref(signer);
    out->cert = signer;
    out->owned = true;
    out->source = "signature";
    rc = 0;
out:
    ERR_clear_error();
    sk_X509_free(signers);
    BIO_free_all(data);
    CMS_ContentInfo_free(cms);
    mdm_buf_free(&der);
    return rc;
}

/* ---- message handling ---------------------------------------------------- */

typedef struct msg_ctx {
    mdm_mdm_t *m;
    mdm_policy_t *pol;
    const mdm_identity_t *id;
    plist_t msg;
    const char *type;
    const void *body;
    size_t len;
    char eid[MDM_EID_MAX + 1];
    char device_id[MDM_EID_MAX + 1];
    bool user_channel;
    int64_t now;
    mdm_outcome_t *out;
    /* facts for the log, set inside the transaction */
    int report_outcome;
    size_t cleared;
    bool revoked_cert;
    bool bound_first_sight; /* logged once the request's changes are stored */
    bool policy_answers; /* UserAuthenticate, GetToken: the checkin hook answers */
    bool enrollment_completed; /* this TokenUpdate is the first since Authenticate */
} msg_ctx_t;

static void refuse(msg_ctx_t *c, int status, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void refuse(msg_ctx_t *c, int status, const char *fmt, ...)
{
    c->out->status = status;
    mdm_buf_reset(&c->out->body);
    c->out->ctype = NULL;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(c->out->detail, sizeof(c->out->detail), fmt, ap);
    va_end(ap);
}

/* A refusal inside a transaction: roll back, keep the status. */
#define REFUSED MDM_EAUTH

static int check_revoked(msg_ctx_t *c, mdm_txn_t *txn)
{
    unsigned char serial[MDM_SERIAL_MAX];
    size_t sl = 0;
    bool revoked = false;
    if (mdm_cert_serial(c->id->cert, serial, &sl) != 0)
        return 0;
    int rc = mdm_certdb_is_revoked(txn, serial, sl, &revoked);
    if (rc == MDM_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    if (revoked) {
        /* The serial is ours and revoked; a certificate of another CA
         * (tls.client_ca may hold more than one) can have the same one. */
        mdm_certrec_t rec;
        rc = mdm_certdb_get_by_serial(txn, serial, sl, &rec);
        bool same = rc == 0 && memcmp(rec.sha256, c->id->fp, 32) == 0;
        if (rc == 0)
            mdm_certrec_free(&rec);
        if (rc != 0 && rc != MDM_ENOTFOUND)
            return rc;
        if (!same)
            return 0;
        refuse(c, 403, "the identity certificate is revoked");
        return REFUSED;
    }
    return 0;
}

/* Binding on first sight adopts a device this server has not enrolled
 * (one migrated from another server). A device that checked out left: its
 * certificate was unbound, and only a new Authenticate enrolls it again. */
static int check_first_sight_allowed(msg_ctx_t *c, mdm_txn_t *txn)
{
    plist_t e = NULL;
    int rc = mdm_enrollment_load(txn, c->device_id, &e);
    if (rc == MDM_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    bool left = mdm_pl_int(e, "checked_out_at", 0) != 0;
    plist_free(e);
    if (!left)
        return 0;
    refuse(c, 403,
           "the enrollment checked out and its certificate was unbound; binding on first sight "
           "does not bring it back (it needs a new Authenticate)");
    return REFUSED;
}

/* Requires the request's certificate to be bound to this device. */
static int check_binding(msg_ctx_t *c, mdm_txn_t *txn)
{
    char bound[MDM_EID_MAX + 1];
    int rc = mdm_certauth_lookup(txn, c->id->fp, bound, sizeof(bound));
    if (rc == 0) {
        if (strcmp(bound, c->device_id) == 0)
            return 0;
        refuse(c, 403, "the certificate is bound to another enrollment (%s)", bound);
        return REFUSED;
    }
    if (rc != MDM_ENOTFOUND)
        return rc;
    if (c->m->server->cfg->mdm_bind_on_first_sight) {
        unsigned char cur[32];
        int cr = mdm_certauth_current(txn, c->device_id, cur);
        if (cr == MDM_ENOTFOUND) {
            rc = check_first_sight_allowed(c, txn);
            if (rc != 0)
                return rc;
            c->bound_first_sight = true;
            return mdm_certauth_bind(txn, c->id->fp, c->device_id);
        }
    }
    refuse(c, 403, "the certificate is not bound to any enrollment");
    return REFUSED;
}

static void set_device_facts(plist_t dev, plist_t msg)
{
    static const struct {
        const char *msg_key, *rec_key;
    } map[] = {
        {"SerialNumber", "serial"},   {"ProductName", "product"},   {"OSVersion", "os_version"},
        {"BuildVersion", "build_version"}, {"IMEI", "imei"},         {"MEID", "meid"},
        {"DeviceName", "device_name"}, {"Model", "model"},          {"ModelName", "model_name"},
    };
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        const char *v = mdm_pl_str(msg, map[i].msg_key);
        if (v != NULL)
            mdm_pl_set_str(dev, map[i].rec_key, v);
    }
}

static int reset_user_channel(mdm_txn_t *txn, const char *eid, void *arg)
{
    msg_ctx_t *c = arg;
    plist_t e = NULL;
    int rc = mdm_enrollment_load(txn, eid, &e);
    if (rc != 0)
        return rc == MDM_ENOTFOUND ? 0 : rc;
    size_t n = 0;
    rc = mdm_queue_clear(txn, eid, "Cleared", c->now, &n);
    c->cleared += n;
    /* The user's profiles went with the device's MDM profile; the user's
     * next TokenUpdate enrolls the channel again (and reconciles it). */
    if (rc == 0)
        rc = mdm_reconcile_forget(txn, eid);
    mdm_pl_set_bool(e, "enabled", false);
    mdm_pl_set_bool(e, "pending_first_token", true);
    mdm_pl_remove(e, "token");
    mdm_pl_remove(e, "push_magic");
    mdm_pl_remove(e, "unlock_token"); /* the old installation's */
    if (strcmp(c->type, "CheckOut") == 0)
        mdm_pl_set_int(e, "checked_out_at", c->now);
    if (rc == 0)
        rc = mdm_enrollment_save(txn, eid, e);
    plist_free(e);
    return rc;
}

/* Whether this server pushes to topic: the topic of one of its push
 * certificates, or enroll.topic. With neither (push not set up yet) any
 * topic is taken. */
static bool topic_served(mdm_server_t *s, const char *topic)
{
    const mdm_pushcerts_t *set = mdm_apns_pushcerts(s);
    const char *cfg = s->cfg->enroll_topic;
    bool any = (set != NULL && set->n > 0) || (cfg != NULL && cfg[0] != '\0');
    if (!any)
        return true;
    return (set != NULL && mdm_pushcerts_find(set, topic) != NULL) ||
           (cfg != NULL && strcmp(cfg, topic) == 0);
}

/* A device that subscribes to another topic could never be woken. */
static int check_topic(msg_ctx_t *c, const char *topic)
{
    if (topic == NULL || topic_served(c->m->server, topic))
        return 0;
    refuse(c, 403, "%s for topic %.200s, which no push certificate or enroll.topic of this "
           "server has", c->type, topic);
    return REFUSED;
}

/* A certificate issued for one device (the OTA profile service recorded
 * its UDID) authenticates as that device only. */
static int check_issued_for(msg_ctx_t *c, mdm_txn_t *txn)
{
    char udid[MDM_CHALLENGE_UDID_MAX + 1];
    int rc = mdm_challenge_udid_of_cert(txn, c->id->fp, udid, sizeof(udid));
    if (rc == MDM_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    if (strcmp(udid, c->device_id) != 0) {
        refuse(c, 403, "the certificate was issued for device %s", udid);
        return REFUSED;
    }
    return 0;
}

/* Records the request's identity certificate in the enrollment record e:
 * its fingerprint, and the certificate itself, to which profiles are
 * encrypted. */
static void set_identity(msg_ctx_t *c, plist_t e)
{
    mdm_pl_set_data(e, "cert_fp", c->id->fp, 32);
    mdm_buf_t der = MDM_BUF_INIT;
    if (c->id->cert != NULL && mdm_cert_to_der(c->id->cert, &der) == 0)
        mdm_pl_set_data(e, "cert_der", der.data, der.len);
    mdm_buf_free(&der);
}

static int on_authenticate(msg_ctx_t *c, mdm_txn_t *txn)
{
    if (c->user_channel) {
        refuse(c, 400, "Authenticate on a user channel");
        return REFUSED;
    }
    const char *topic = mdm_pl_str(c->msg, "Topic");
    if (topic == NULL || topic[0] == '\0') {
        refuse(c, 400, "Authenticate without Topic");
        return REFUSED;
    }
    int rc = check_topic(c, topic);
    if (rc == 0)
        rc = check_revoked(c, txn);
    if (rc == 0)
        rc = check_issued_for(c, txn);
    if (rc != 0)
        return rc;
    char bound[MDM_EID_MAX + 1];
    rc = mdm_certauth_lookup(txn, c->id->fp, bound, sizeof(bound));
    if (rc == 0 && strcmp(bound, c->device_id) != 0) {
        refuse(c, 403, "the certificate is already bound to another enrollment (%s)", bound);
        return REFUSED;
    }
    if (rc != 0 && rc != MDM_ENOTFOUND)
        return rc;

    plist_t dev = NULL;
    rc = mdm_device_load(txn, c->device_id, &dev);
    if (rc == MDM_ENOTFOUND) {
        dev = plist_new_dict();
        mdm_pl_set_int(dev, "created_at", c->now);
        rc = 0;
    }
    if (rc != 0)
        return rc;
    set_device_facts(dev, c->msg);
    mdm_pl_set_int(dev, "updated_at", c->now);
    rc = mdm_device_save(txn, c->device_id, dev);
    plist_free(dev);
    if (rc != 0)
        return rc;

    plist_t e = NULL;
    rc = mdm_enrollment_load(txn, c->eid, &e);
    if (rc == MDM_ENOTFOUND) {
        e = plist_new_dict();
        mdm_pl_set_str(e, "type", "device");
        mdm_pl_set_str(e, "device_id", c->device_id);
        rc = 0;
    } else if (rc == 0) {
        /* A re-enrollment: what was queued for the old installation is
         * void, and the old push token is dead. */
        size_t n = 0;
        rc = mdm_queue_clear(txn, c->eid, "Cleared", c->now, &n);
        c->cleared += n;
        if (rc == 0)
            rc = for_each_user_channel(txn, c->device_id, reset_user_channel, c);
        /* The managed profiles went with the old MDM profile: the new
         * installation gets them again. */
        if (rc == 0)
            rc = mdm_reconcile_forget(txn, c->eid);
    }
    if (rc != 0) {
        plist_free(e);
        return rc;
    }
    mdm_pl_set_bool(e, "enabled", false);
    mdm_pl_set_bool(e, "pending_first_token", true);
    mdm_pl_set_bool(e, "new_enrollment", false);
    mdm_pl_remove(e, "token");
    mdm_pl_remove(e, "push_magic");
    mdm_pl_remove(e, "unlock_token");
    /* The bootstrap token belongs to the installation that stored it: a
     * new one (or another identity naming this UDID) must not get it. */
    mdm_pl_remove(e, "bootstrap_token");
    mdm_pl_remove(e, "checked_out_at");
    mdm_pl_set_bool(e, "token_invalid", false);
    mdm_pl_set_str(e, "topic", mdm_pl_str(c->msg, "Topic"));
    mdm_pl_set_int(e, "authenticated_at", c->now);
    mdm_pl_set_int(e, "last_seen_at", c->now);
    mdm_pl_set_uint(e, "authenticate_count", mdm_pl_uint(e, "authenticate_count", 0) + 1);
    set_identity(c, e);

    /* The person who enrolled, when the certificate came from a challenge
     * that was issued to someone; else nobody (not whoever owned the
     * previous installation's certificate). */
    char owner[MDM_CHALLENGE_OWNER_MAX + 1];
    if (mdm_challenge_owner_of_cert(txn, c->id->fp, owner, sizeof(owner)) == 0 && owner[0])
        mdm_pl_set_str(e, "user", owner);
    else
        mdm_pl_remove(e, "user");
    mdm_certrec_t rec;
    memset(&rec, 0, sizeof(rec));
    if (mdm_certdb_get_by_fingerprint(txn, c->id->fp, &rec) == 0) {
        if (rec.enrollment_id[0] == '\0' || strcmp(rec.enrollment_id, c->device_id) != 0)
            mdm_certdb_set_enrollment(txn, rec.serial, rec.serial_len, c->device_id);
        mdm_certrec_free(&rec);
    }
    rc = mdm_enrollment_save(txn, c->eid, e);
    plist_free(e);
    if (rc == 0)
        rc = mdm_certauth_bind(txn, c->id->fp, c->device_id);
    return rc;
}

static int seal_into(msg_ctx_t *c, plist_t e, const char *field, const char *purpose,
                     const unsigned char *p, size_t n)
{
    if (p == NULL || n == 0) {
        mdm_pl_remove(e, field);
        return 0;
    }
    char aad[MDM_EID_MAX + 32];
    snprintf(aad, sizeof(aad), "%s:%s", purpose, c->eid);
    mdm_buf_t sealed = MDM_BUF_INIT;
    int rc = mdm_secret_seal(&c->m->secret, aad, p, n, &sealed);
    if (rc == 0)
        mdm_pl_set_data(e, field, sealed.data, sealed.len);
    mdm_buf_free(&sealed);
    return rc;
}

/* A user channel lives under its device's enrollment: while that is not
 * enabled (pending between Authenticate and its first TokenUpdate, checked
 * out, or never seen) no user channel may be enrolled. 409: the message is
 * sound and the identity trusted; the state is not ready. It has no meaning
 * to the device, which sends the user's TokenUpdate again later. */
static int check_device_enabled(msg_ctx_t *c, mdm_txn_t *txn)
{
    plist_t dev = NULL;
    int rc = mdm_enrollment_load(txn, c->device_id, &dev);
    if (rc != 0 && rc != MDM_ENOTFOUND)
        return rc;
    const char *why = rc == MDM_ENOTFOUND                           ? "it never authenticated"
                      : mdm_pl_bool(dev, "enabled", false)          ? NULL
                      : mdm_pl_int(dev, "checked_out_at", 0) != 0   ? "it checked out"
                      : mdm_pl_bool(dev, "pending_first_token", false)
                          ? "it is pending its first TokenUpdate"
                          : "it is disabled";
    plist_free(dev);
    if (why == NULL)
        return 0;
    refuse(c, 409, "user-channel TokenUpdate refused: the device channel is not enabled (%s)",
           why);
    return REFUSED;
}

static int on_token_update(msg_ctx_t *c, mdm_txn_t *txn)
{
    const char *topic = mdm_pl_str(c->msg, "Topic");
    if (topic == NULL || topic[0] == '\0') {
        refuse(c, 400, "TokenUpdate without Topic");
        return REFUSED;
    }
    plist_t unlock_item = plist_dict_get_item(c->msg, "UnlockToken");
    if (unlock_item != NULL && plist_get_node_type(unlock_item) != PLIST_DATA) {
        refuse(c, 400, "UnlockToken is not <data>");
        return REFUSED;
    }
    int rc = check_topic(c, topic);
    if (rc == 0)
        rc = check_revoked(c, txn);
    if (rc == 0)
        rc = check_binding(c, txn);
    if (rc == 0 && c->user_channel)
        rc = check_device_enabled(c, txn);
    if (rc != 0)
        return rc;
    size_t tlen = 0;
    const unsigned char *token = mdm_pl_data(c->msg, "Token", &tlen);
    const char *magic = mdm_pl_str(c->msg, "PushMagic");
    if (token == NULL || tlen == 0 || tlen > 1024 || magic == NULL) {
        refuse(c, 400, "TokenUpdate without Token or PushMagic");
        return REFUSED;
    }
    plist_t e = NULL;
    rc = mdm_enrollment_load(txn, c->eid, &e);
    if (rc == MDM_ENOTFOUND) {
        if (!c->user_channel && !c->m->server->cfg->mdm_bind_on_first_sight) {
            refuse(c, 403, "TokenUpdate for an enrollment that never authenticated");
            return REFUSED;
        }
        e = plist_new_dict();
        mdm_pl_set_str(e, "type", c->user_channel ? "user" : "device");
        mdm_pl_set_str(e, "device_id", c->device_id);
        mdm_pl_set_bool(e, "pending_first_token", true);
        /* Profiles are encrypted to the certificate: one bound on first
         * sight has no Authenticate that would have recorded it. */
        set_identity(c, e);
        rc = 0;
    }
    if (rc != 0)
        return rc;
    /* The names a user channel's TokenUpdate gives are its latest. */
    static const char *const names[][2] = {{"UserID", "user_id"},
                                           {"UserShortName", "user_short_name"},
                                           {"UserLongName", "user_long_name"},
                                           {"EnrollmentUserID", "enrollment_user_id"}};
    for (size_t i = 0; c->user_channel && i < sizeof(names) / sizeof(names[0]); i++) {
        const char *v = mdm_pl_str(c->msg, names[i][0]);
        if (v != NULL)
            mdm_pl_set_str(e, names[i][1], v);
    }
    mdm_pl_set_data(e, "token", token, tlen);
    mdm_pl_set_str(e, "push_magic", magic);
    mdm_pl_set_str(e, "topic", topic);
    size_t ulen = 0;
    const unsigned char *unlock = mdm_pl_data(c->msg, "UnlockToken", &ulen);
    if (unlock != NULL)
        rc = seal_into(c, e, "unlock_token", "unlock", unlock, ulen);
    mdm_pl_set_bool(e, "awaiting_configuration",
                    mdm_pl_bool(c->msg, "AwaitingConfiguration", false));
    mdm_pl_set_bool(e, "enabled", true);
    mdm_pl_set_bool(e, "token_invalid", false);
    mdm_pl_set_uint(e, "token_updates", mdm_pl_uint(e, "token_updates", 0) + 1);
    mdm_pl_set_int(e, "token_updated_at", c->now);
    mdm_pl_set_int(e, "last_seen_at", c->now);
    /* A user channel checked out on its own comes back with a TokenUpdate
     * (there is no Authenticate on a user channel). */
    if (c->user_channel && mdm_pl_int(e, "checked_out_at", 0) != 0) {
        mdm_pl_remove(e, "checked_out_at");
        mdm_pl_set_bool(e, "pending_first_token", true);
    }
    if (mdm_pl_bool(e, "pending_first_token", false)) {
        c->enrollment_completed = true;
        mdm_pl_set_bool(e, "pending_first_token", false);
        mdm_pl_set_bool(e, "new_enrollment", true);
        mdm_pl_set_int(e, "enrolled_at", c->now);
    }
    if (rc == 0)
        rc = mdm_enrollment_save(txn, c->eid, e);
    plist_free(e);
    return rc;
}

static int on_checkout(msg_ctx_t *c, mdm_txn_t *txn)
{
    int rc = check_revoked(c, txn);
    if (rc == 0)
        rc = check_binding(c, txn);
    if (rc != 0)
        return rc;
    plist_t e = NULL;
    rc = mdm_enrollment_load(txn, c->eid, &e);
    if (rc == MDM_ENOTFOUND) {
        refuse(c, 403, "CheckOut for an unknown enrollment");
        return REFUSED;
    }
    if (rc != 0)
        return rc;
    mdm_pl_set_bool(e, "enabled", false);
    mdm_pl_set_int(e, "checked_out_at", c->now);
    mdm_pl_set_int(e, "last_seen_at", c->now);
    rc = mdm_enrollment_save(txn, c->eid, e);
    plist_free(e);
    if (rc != 0 || c->user_channel)
        return rc;
    /* The device left: its identity is worth nothing any more. */
    rc = for_each_user_channel(txn, c->device_id, reset_user_channel, c);
    /* Only a certificate this server issued, found by its fingerprint: a
     * certificate of another CA may share its serial with one of ours. */
    mdm_certrec_t rec;
    int r = rc == 0 ? mdm_certdb_get_by_fingerprint(txn, c->id->fp, &rec) : MDM_ENOTFOUND;
    if (r == 0) {
        r = mdm_scep_revoke(txn, rec.serial, rec.serial_len, 5 /* cessationOfOperation */,
                            c->now);
        mdm_certrec_free(&rec);
        if (r == 0)
            c->revoked_cert = true;
    }
    if (r != 0 && r != MDM_ENOTFOUND)
        rc = r;
    if (rc == 0)
        rc = mdm_certauth_unbind(txn, c->device_id);
    return rc;
}

/* The checks and the enrollment record shared by the bootstrap-token
 * check-ins: the device must be trusted and enrolled. */
static int load_bootstrap_enrollment(msg_ctx_t *c, mdm_txn_t *txn, plist_t *e)
{
    if (c->user_channel) {
        refuse(c, 400, "%s on a user channel (the bootstrap token is the device's)", c->type);
        return REFUSED;
    }
    int rc = check_revoked(c, txn);
    if (rc == 0)
        rc = check_binding(c, txn);
    if (rc != 0)
        return rc;
    rc = mdm_enrollment_load(txn, c->device_id, e);
    if (rc == MDM_ENOTFOUND) {
        refuse(c, 403, "%s for an unknown enrollment", c->type);
        return REFUSED;
    }
    return rc;
}

static int on_set_bootstrap(msg_ctx_t *c, mdm_txn_t *txn)
{
    plist_t e = NULL;
    int rc = load_bootstrap_enrollment(c, txn, &e);
    if (rc != 0)
        return rc;
    size_t n = 0;
    const unsigned char *tok = mdm_pl_data(c->msg, "BootstrapToken", &n);
    /* Absent (or empty) deletes the token; another type is no token. */
    plist_t item = plist_dict_get_item(c->msg, "BootstrapToken");
    if (item != NULL && plist_get_node_type(item) != PLIST_DATA) {
        plist_free(e);
        refuse(c, 400, "BootstrapToken is not <data>");
        return REFUSED;
    }
    char saved_eid[MDM_EID_MAX + 1];
    memcpy(saved_eid, c->eid, sizeof(saved_eid));
    snprintf(c->eid, sizeof(c->eid), "%s", c->device_id);
    rc = seal_into(c, e, "bootstrap_token", "bootstrap", tok, n);
    memcpy(c->eid, saved_eid, sizeof(saved_eid));
    mdm_pl_set_int(e, "last_seen_at", c->now);
    if (rc == 0)
        rc = mdm_enrollment_save(txn, c->device_id, e);
    plist_free(e);
    return rc;
}

static int on_get_bootstrap(msg_ctx_t *c, mdm_txn_t *txn)
{
    plist_t e = NULL;
    int rc = load_bootstrap_enrollment(c, txn, &e);
    if (rc != 0)
        return rc;
    plist_t reply = plist_new_dict();
    size_t n = 0;
    const unsigned char *sealed = mdm_pl_data(e, "bootstrap_token", &n);
    if (sealed != NULL) {
        char aad[MDM_EID_MAX + 32];
        snprintf(aad, sizeof(aad), "bootstrap:%s", c->device_id);
        mdm_buf_t plain = MDM_BUF_INIT;
        if (mdm_secret_open(&c->m->secret, aad, sealed, n, &plain) == 0)
            mdm_pl_set_data(reply, "BootstrapToken", plain.data, plain.len);
        else
            mdm_log(MDM_LOG_ERROR, NULL, "mdm.bootstrap_token_unreadable",
                    "device=%s reason=\"does not open with the data directory's secret.key\"",
                    c->device_id);
        mdm_buf_free(&plain);
    }
    mdm_plist_to_xml_buf(reply, &c->out->body);
    c->out->ctype = "application/xml";
    plist_free(reply);
    plist_free(e);
    return 0;
}

static const char *reqid_of(const msg_ctx_t *c)
{
    return c->out->reqid ? c->out->reqid : "-";
}

/* Keeps the enrollment's copy of its identity current: after a SCEP
 * renewal the device shows a new certificate, bound by the renewal. */
static int refresh_identity(msg_ctx_t *c, mdm_rec_t *en, bool *dirty)
{
    size_t n = 0;
    const unsigned char *fp = mdm_rec_data(en, "cert_fp", &n);
    if (fp != NULL && n == 32 && memcmp(fp, c->id->fp, 32) == 0)
        return 0;
    plist_t e = mdm_rec_tree(en);
    if (e == NULL)
        return MDM_EPARSE;
    /* Without a certificate until now, no profile could be encrypted to
     * the device: reconcile again. */
    if (mdm_pl_data(e, "cert_der", NULL) == NULL)
        mdm_pl_set_bool(e, "reconcile_requested", true);
    set_identity(c, e);
    *dirty = true;
    return 0;
}

/* Runs reconciliation for the enrollment record e (saved by the caller). */
static int reconcile(msg_ctx_t *c, mdm_txn_t *txn, plist_t e, bool force)
{
    mdm_reconcile_stats_t st;
    int rc = mdm_reconcile(c->m->server, c->pol, txn, reqid_of(c), c->eid, e, force, &st);
    if (rc == 0) {
        c->out->installs += st.installs;
        c->out->removals += st.removals;
    }
    return rc;
}

/* UserAuthenticate and GetToken: the checkin hook's respond table is the
 * answer; without one (no hook, a failed hook, reject) the message is
 * declined: 410 to UserAuthenticate ("this user is not managed here"),
 * 400 to GetToken, 403 when the policy rejected it. */
static int policy_answer(msg_ctx_t *c, const mdm_policy_decision_t *d)
{
    bool ua = strcmp(c->type, "UserAuthenticate") == 0;
    if (d != NULL && d->status == MDM_POLICY_OK && !d->reject && d->respond != NULL) {
        plist_t a = plist_copy(d->respond);
        /* TokenData is <data>; a policy gives it as a string of its bytes. */
        plist_t td = ua ? NULL : plist_dict_get_item(a, "TokenData");
        if (td != NULL && PLIST_IS_STRING(td)) {
            uint64_t n = 0;
            const char *s = plist_get_string_ptr(td, &n);
            plist_dict_set_item(a, "TokenData", plist_new_data(s, n));
        }
        mdm_buf_reset(&c->out->body);
        mdm_plist_to_xml_buf(a, &c->out->body);
        plist_free(a);
        c->out->ctype = "application/xml";
        return 0;
    }
    const char *why = d == NULL                            ? "no enrollment to ask the policy for"
                      : d->status == MDM_POLICY_FAILED     ? "the policy failed"
                      : d->reject                          ? "the policy rejected it"
                                                           : "no policy answered it";
    if (d != NULL && d->reject)
        refuse(c, ua ? 410 : 403, "%s declined: %s%s%s", c->type, why, d->reason ? ": " : "",
               d->reason ? d->reason : "");
    else
        refuse(c, ua ? 410 : 400, "%s declined: %s", c->type, why);
    return REFUSED;
}

/* The policy's checkin hook, after the core handled the message (the
 * records are written: the hook sees the device as it now is). */
static int policy_checkin(msg_ctx_t *c, mdm_txn_t *txn)
{
    bool checkout = strcmp(c->type, "CheckOut") == 0;
    mdm_policy_view_t v;
    int rc = mdm__policy_view(txn, c->eid, NULL, &v);
    /* A user not yet enrolled on its channel is asked about through the
     * device's enrollment. */
    if (rc == MDM_ENOTFOUND && c->policy_answers && c->user_channel)
        rc = mdm__policy_view(txn, c->device_id, NULL, &v);
    if (rc == MDM_ENOTFOUND)
        return c->policy_answers ? policy_answer(c, NULL) : 0;
    if (rc != 0)
        return rc;
    mdm_policy_decision_t d;
    memset(&d, 0, sizeof(d));
    rc = mdm_policy_checkin(c->pol, txn, reqid_of(c), &v.dev, c->msg, &d);
    if (rc == 0 && c->policy_answers) {
        rc = policy_answer(c, &d);
    } else if (rc == 0 && d.reject && !checkout) {
        refuse(c, 403, "the policy refused %s: %s", c->type,
               d.status == MDM_POLICY_FAILED ? d.error : d.reason ? d.reason : "no reason given");
        rc = REFUSED;
    }
    if (rc == 0 && !checkout) {
        size_t n = 0;
        rc = mdm__enqueue_commands(txn, c->eid, d.commands, c->now, &n);
        c->out->policy_commands += n;
    }
    /* A new enrollment (or a re-enrollment) gets its profiles right away. */
    if (rc == 0 && strcmp(c->type, "TokenUpdate") == 0 && c->enrollment_completed) {
        rc = reconcile(c, txn, v.enrollment, false);
        if (rc == 0)
            rc = mdm_enrollment_save(txn, c->eid, v.enrollment);
    }
    mdm_policy_decision_free(&d);
    mdm__policy_view_free(&v);
    return rc;
}

static int checkin_core(msg_ctx_t *c, mdm_txn_t *txn);

static int checkin_txn(mdm_txn_t *txn, void *arg)
{
    msg_ctx_t *c = arg;
    c->out->policy_commands = c->out->installs = c->out->removals = 0;
    int rc = checkin_core(c, txn);
    if (rc == 0 && c->out->status == 200)
        rc = policy_checkin(c, txn);
    return rc;
}

static int checkin_core(msg_ctx_t *c, mdm_txn_t *txn)
{
    /* The function may run again when the store grows: start clean. */
    c->out->status = 200;
    c->out->ctype = NULL;
    mdm_buf_reset(&c->out->body);
    c->cleared = 0;
    c->revoked_cert = false;
    c->bound_first_sight = false;
    c->policy_answers = false;
    c->enrollment_completed = false;
    const char *t = c->type;
    if (strcmp(t, "Authenticate") == 0)
        return on_authenticate(c, txn);
    if (strcmp(t, "TokenUpdate") == 0)
        return on_token_update(c, txn);
    if (strcmp(t, "CheckOut") == 0)
        return on_checkout(c, txn);
    if (strcmp(t, "SetBootstrapToken") == 0)
        return on_set_bootstrap(c, txn);
    if (strcmp(t, "GetBootstrapToken") == 0)
        return on_get_bootstrap(c, txn);
    int rc = check_revoked(c, txn);
    if (rc == 0)
        rc = check_binding(c, txn);
    if (rc != 0)
        return rc;
    if (strcmp(t, "UserAuthenticate") == 0 || strcmp(t, "GetToken") == 0) {
        /* The policy's checkin hook answers (policy_answer); by default
         * this server manages no network account and gives no token. */
        c->policy_answers = true;
        return 0;
    }
    if (strcmp(t, "DeclarativeManagement") == 0) {
        refuse(c, 400, "declarative management is not supported by this server");
        return REFUSED;
    }
    refuse(c, 400, "unknown check-in MessageType");
    return REFUSED;
}

static void outcome_init(mdm_outcome_t *out)
{
    out->policy_commands = out->installs = out->removals = 0;
    out->status = 200;
    out->ctype = NULL;
    mdm_buf_reset(&out->body);
    out->eid[0] = out->detail[0] = out->message_type[0] = out->command_uuid[0] = '\0';
}

void mdm__parse_body(const void *body, size_t len, size_t max_bytes, bool report,
                     mdm_parsed_t *out)
{
    out->rc = mdm_plist_load_dict(body, len, max_bytes, &out->msg);
    out->bin = (mdm_buf_t)MDM_BUF_INIT;
    if (out->rc != 0 || !report || (len >= 8 && memcmp(body, "bplist00", 8) == 0))
        return;
    /* Past MDM_PLIST_MAX_NODES values the binary form would not load
     * again (a dense XML plist within the size limit can hold more). */
    size_t values = mdm_plist_to_bin_shared(out->msg, &out->bin);
    if (out->bin.len == 0 || out->bin.len >= len || values > MDM_PLIST_MAX_NODES)
        mdm_buf_free(&out->bin);
}

/* Parses the message (unless pre has it) and resolves its ids; refuses
 * bad input. */
static bool parse_message(msg_ctx_t *c, mdm_mdm_t *m, const mdm_identity_t *id, const void *body,
                          size_t len, mdm_parsed_t *pre)
{
    mdm_outcome_t *out = c->out;
    memset(c, 0, sizeof(*c));
    c->out = out;
    c->m = m;
    c->id = id;
    c->body = body;
    c->len = len;
    c->now = mdm_now_ms();
    int rc;
    if (pre != NULL) {
        rc = pre->rc;
        c->msg = pre->msg;
        pre->msg = NULL;
        if (pre->bin.len > 0) {
            /* The same message, smaller: what a report stores. */
            c->body = pre->bin.data;
            c->len = pre->bin.len;
        }
    } else {
        rc = mdm_plist_load_dict(body, len, m->server->cfg->http_max_body_bytes, &c->msg);
    }
    if (rc != 0) {
        c->out->status = 400;
        snprintf(c->out->detail, sizeof(c->out->detail), "the body is not a plist dictionary");
        return false;
    }
    const char *why = NULL;
    if (mdm__resolve_ids(c->msg, c->eid, c->device_id, &c->user_channel, &why) != 0) {
        c->out->status = 400;
        snprintf(c->out->detail, sizeof(c->out->detail), "%s", why);
        return false;
    }
    snprintf(c->out->eid, sizeof(c->out->eid), "%s", c->eid);
    return true;
}

/* Parses a check-in or report body and reads its kind from `key`
 * (MessageType or Status), recorded in the outcome. False: out holds the
 * refusal. */
static bool begin_message(msg_ctx_t *c, mdm_mdm_t *m, const mdm_identity_t *id, const void *body,
                          size_t len, mdm_parsed_t *pre, mdm_outcome_t *out, const char *key)
{
    outcome_init(out);
    c->out = out;
    c->msg = NULL;
    bool ok = parse_message(c, m, id, body, len, pre);
    c->out = out;
    if (!ok)
        return false;
    c->type = mdm_pl_str(c->msg, key);
    if (c->type == NULL) {
        out->status = 400;
        snprintf(out->detail, sizeof(out->detail), "no %s", key);
        return false;
    }
    snprintf(out->message_type, sizeof(out->message_type), "%s", c->type);
    return true;
}

/* The message's tree at the end of its handling: back to the caller that
 * parsed it ahead, or freed. */
static void end_message(msg_ctx_t *c, mdm_parsed_t *pre)
{
    if (pre != NULL)
        pre->msg = c->msg;
    else
        plist_free(c->msg);
    c->msg = NULL;
}

/* After the request's changes were stored: a binding on first sight that a
 * later refusal rolled back is not told of. */
static void log_first_sight(const msg_ctx_t *c)
{
    if (c->bound_first_sight)
        mdm_log(MDM_LOG_INFO, reqid_of(c), "mdm.bound_on_first_sight", "device=%s",
                c->device_id);
}

void mdm__process_checkin(mdm_mdm_t *m, const mdm_identity_t *id, const void *body, size_t len,
                          mdm_parsed_t *pre, mdm_outcome_t *out)
{
    msg_ctx_t c;
    if (!begin_message(&c, m, id, body, len, pre, out, "MessageType"))
        goto out;
    mdm_metric_add(m->m_checkins, 1);
    c.pol = mdm_policy_acquire(m->server);
    int rc = mdm_store_update(m->server->store, checkin_txn, &c);
    mdm_policy_release(c.pol);
    if (rc == REFUSED) {
        mdm_metric_add(m->m_refused, 1);
        goto out;
    }
    if (rc != 0) {
        refuse(&c, rc == MDM_ENOSPACE ? 503 : 500, "store: %s", mdm_strerror(rc));
        goto out;
    }
    log_first_sight(&c);
    if (c.cleared > 0 || c.revoked_cert)
        snprintf(out->detail, sizeof(out->detail), "cleared_commands=%zu revoked_cert=%s",
                 c.cleared, c.revoked_cert ? "true" : "false");
    /* A push on its way to the old token must not answer for the new one. */
    if (out->status == 200 &&
        (strcmp(c.type, "TokenUpdate") == 0 || strcmp(c.type, "Authenticate") == 0))
        mdm_apns_token_changed(m->server, c.eid);
out:
    end_message(&c, pre);
}

/* ---- command reports ----------------------------------------------------- */

static int merge_device_information(msg_ctx_t *c, mdm_txn_t *txn)
{
    plist_t qr = plist_dict_get_item(c->msg, "QueryResponses");
    if (qr == NULL || plist_get_node_type(qr) != PLIST_DICT)
        return 0;
    plist_t dev = NULL;
    int rc = mdm_device_load(txn, c->device_id, &dev);
    if (rc == MDM_ENOTFOUND) {
        dev = plist_new_dict();
        rc = 0;
    }
    if (rc != 0)
        return rc;
    plist_t facts = plist_dict_get_item(dev, "facts");
    if (facts == NULL || plist_get_node_type(facts) != PLIST_DICT) {
        facts = plist_new_dict();
        plist_dict_set_item(dev, "facts", facts);
    }
    plist_dict_iter it = NULL;
    plist_dict_new_iter(qr, &it);
    for (;;) {
        char *key = NULL;
        plist_t val = NULL;
        plist_dict_next_item(qr, it, &key, &val);
        if (key == NULL)
            break;
        plist_dict_set_item(facts, key, plist_copy(val));
        free(key);
    }
    free(it);
    /* Keep the headline facts current too. */
    static const struct {
        const char *q, *rec;
    } map[] = {{"SerialNumber", "serial"}, {"OSVersion", "os_version"},
               {"BuildVersion", "build_version"}, {"ProductName", "product"},
               {"ModelName", "model_name"}, {"Model", "model"}, {"DeviceName", "device_name"}};
    for (size_t i = 0; i < sizeof(map) / sizeof(map[0]); i++) {
        const char *v = mdm_pl_str(qr, map[i].q);
        if (v)
            mdm_pl_set_str(dev, map[i].rec, v);
    }
    mdm_pl_set_int(dev, "facts_at", c->now);
    rc = mdm_device_save(txn, c->device_id, dev);
    plist_free(dev);
    return rc;
}

/* The policy's result hook for a finished command: commands to queue and
 * facts to keep with the device. */
static int policy_result(msg_ctx_t *c, mdm_txn_t *txn, mdm_rec_t *en, const char *request_type)
{
    if (!mdm_policy_has_hook(c->pol, MDM_POLICY_HOOK_RESULT))
        return 0;
    mdm_policy_view_t v;
    mdm__policy_view_rec(txn, c->eid, en, &v);
    plist_t result = plist_copy(c->msg);
    mdm_pl_set_str(result, "RequestType", request_type);
    mdm_policy_decision_t d;
    memset(&d, 0, sizeof(d));
    int rc = mdm_policy_result(c->pol, txn, reqid_of(c), &v.dev, result, &d);
    plist_free(result);
    if (rc == 0) {
        size_t n = 0;
        rc = mdm__enqueue_commands(txn, c->eid, d.commands, c->now, &n);
        c->out->policy_commands += n;
    }
    if (rc == 0 && d.facts != NULL && plist_dict_get_size(d.facts) > 0) {
        char buf[MDM_EID_MAX + 1];
        const char *did = mdm_rec_str(en, "device_id", buf, sizeof(buf));
        plist_t dev = NULL;
        rc = mdm_device_load(txn, did ? did : c->eid, &dev);
        if (rc == MDM_ENOTFOUND) {
            dev = plist_new_dict();
            rc = 0;
        }
        if (rc == 0) {
            plist_t facts = plist_dict_get_item(dev, "facts");
            if (facts == NULL || plist_get_node_type(facts) != PLIST_DICT) {
                facts = plist_new_dict();
                plist_dict_set_item(dev, "facts", facts);
            }
            plist_dict_iter it = NULL;
            plist_dict_new_iter(d.facts, &it);
            for (;;) {
                char *key = NULL;
                plist_t val = NULL;
                plist_dict_next_item(d.facts, it, &key, &val);
                if (key == NULL)
                    break;
                plist_dict_set_item(facts, key, plist_copy(val));
                free(key);
            }
            free(it);
            mdm_pl_set_int(dev, "facts_at", c->now);
            rc = mdm_device_save(txn, did ? did : c->eid, dev);
        }
        plist_free(dev);
    }
    mdm_policy_decision_free(&d);
    mdm__policy_view_free(&v);
    return rc;
}

/* The policy's connect hook, before the next command is picked. */
static int policy_connect(msg_ctx_t *c, mdm_txn_t *txn, mdm_rec_t *en)
{
    if (!mdm_policy_has_hook(c->pol, MDM_POLICY_HOOK_CONNECT))
        return 0;
    mdm_policy_view_t v;
    mdm__policy_view_rec(txn, c->eid, en, &v);
    mdm_policy_decision_t d;
    memset(&d, 0, sizeof(d));
    int rc = mdm_policy_connect(c->pol, txn, reqid_of(c), &v.dev, c->msg, &d);
    if (rc == 0) {
        size_t n = 0;
        rc = mdm__enqueue_commands(txn, c->eid, d.commands, c->now, &n);
        c->out->policy_commands += n;
    }
    mdm_policy_decision_free(&d);
    mdm__policy_view_free(&v);
    return rc;
}

/* last_seen_at is rewritten at most this often by requests that change
 * nothing else in the enrollment record. */
#define LAST_SEEN_GRANULARITY_MS 60000

/* The enrollment record's tree, to change it (the record is then saved). */
static plist_t edit(mdm_rec_t *en, bool *dirty)
{
    plist_t e = mdm_rec_tree(en);
    if (e != NULL)
        *dirty = true;
    return e;
}

/* The device record of the enrollment en, read in place into out. keep:
 * where to copy its bytes when out must outlive txn (NULL: it need not).
 * False when there is none; a record that does not parse counts as none. */
static bool device_rec(msg_ctx_t *c, mdm_txn_t *txn, mdm_rec_t *en, mdm_buf_t *keep,
                       mdm_rec_t *out)
{
    mdm_rec_init_tree(out, NULL);
    char buf[MDM_EID_MAX + 1];
    const char *did = mdm_rec_str(en, "device_id", buf, sizeof(buf));
    mdm_val_t raw;
    if (mdm_txn_get(txn, MDM_T_DEVICES, MDM_VAL_STR(did ? did : c->eid), &raw) != 0)
        return false;
    if (keep != NULL) {
        mdm_buf_append(keep, raw.data, raw.len);
        raw = MDM_VAL(keep->data, keep->len);
    }
    mdm_rec_init_bin(out, raw.data, raw.len);
    return out->inplace || mdm_rec_tree(out) != NULL;
}

/* Whether the enrollment is due for reconciliation at this Idle. */
static bool reconcile_due(msg_ctx_t *c, mdm_txn_t *txn, mdm_rec_t *en)
{
    mdm_rec_t dev;
    bool have = device_rec(c, txn, en, NULL, &dev);
    bool due = mdm_reconcile_due(txn, c->pol, en, have ? &dev : NULL);
    mdm_rec_free(&dev);
    return due;
}

/* The report against the enrollment record en. The record is read in place
 * and written back only when something in it changed, so that a command
 * report usually neither parses nor rewrites it. */
static int report_on(msg_ctx_t *c, mdm_txn_t *txn, mdm_rec_t *en)
{
    if (!mdm_rec_bool(en, "enabled", false)) {
        refuse(c, 403, "the enrollment is not enabled (no TokenUpdate since Authenticate, or "
                       "checked out)");
        return REFUSED;
    }
    bool dirty = false;
    int rc = 0;
    /* The session tells connections apart for NotNow (a command put off is
     * not offered again in the same session). It needs to move on only
     * when a NotNow was recorded in the current one; a record without
     * the flag (written by an older version) moves on once. */
    uint64_t session = mdm_rec_uint(en, "session", 0);
    if (strcmp(c->type, "Idle") == 0) {
        if (mdm_rec_bool(en, "notnow_in_session", true)) {
            plist_t e = edit(en, &dirty);
            if (e == NULL)
                return MDM_EPARSE;
            session++;
            mdm_pl_set_uint(e, "session", session);
            mdm_pl_set_bool(e, "notnow_in_session", false);
        }
    } else {
        const char *uuid = mdm_pl_str(c->msg, "CommandUUID");
        if (uuid == NULL || uuid[0] == '\0') {
            refuse(c, 400, "report without CommandUUID");
            return REFUSED;
        }
        snprintf(c->out->command_uuid, sizeof(c->out->command_uuid), "%s", uuid);
        char rtype[MDM_RTYPE_MAX];
        rc = mdm_queue_report(txn, c->eid, uuid, c->type, c->body, c->len, c->now,
                              (int64_t)session, c->m->server->cfg->mdm_notnow_max,
                              &c->report_outcome, rtype);
        if (rc == MDM_EINVAL) {
            refuse(c, 400, "unknown Status");
            return REFUSED;
        }
        /* Recorded: the result existed and was waiting. */
        bool recorded = rc == 0 && c->report_outcome == MDM_REPORT_RECORDED;
        if (rc == 0 && c->report_outcome == MDM_REPORT_NOTNOW &&
            !mdm_rec_bool(en, "notnow_in_session", true)) {
            plist_t e = edit(en, &dirty);
            if (e == NULL)
                return MDM_EPARSE;
            mdm_pl_set_bool(e, "notnow_in_session", true);
        }
        if (recorded && strcmp(c->type, "Acknowledged") == 0 &&
            strcmp(rtype, "DeviceInformation") == 0)
            rc = merge_device_information(c, txn);
        if (rc == 0 && recorded) {
            rc = mdm_reconcile_on_result(txn, c->eid, rtype, c->type, uuid, c->msg, c->now);
            if (rc == 0)
                rc = policy_result(c, txn, en, rtype);
        }
        if (rc != 0)
            return rc;
    }
    rc = refresh_identity(c, en, &dirty);
    if (rc != 0)
        return rc;
    int64_t last_seen = mdm_rec_int(en, "last_seen_at", 0);
    if (c->now - last_seen >= LAST_SEEN_GRANULARITY_MS || c->now < last_seen) {
        plist_t e = edit(en, &dirty);
        if (e == NULL)
            return MDM_EPARSE;
        mdm_pl_set_int(e, "last_seen_at", c->now);
    }
    rc = policy_connect(c, txn, en);
    if (rc == 0 && strcmp(c->type, "Idle") == 0 && reconcile_due(c, txn, en)) {
        plist_t e = edit(en, &dirty);
        rc = e == NULL ? MDM_EPARSE : reconcile(c, txn, e, mdm_pl_bool(e, "reconcile_requested", false));
    }
    if (rc != 0)
        return rc;
    if (mdm_rec_bool(en, "new_enrollment", false)) {
        plist_t e = edit(en, &dirty);
        if (e == NULL)
            return MDM_EPARSE;
        mdm_pl_set_bool(e, "new_enrollment", false);
    }
    char uuid[MDM_UUID_LEN + 1];
    rc = mdm_queue_next(txn, c->eid, c->now, (int64_t)session, uuid, &c->out->body);
    if (rc == 0) {
        c->out->ctype = "application/xml";
        snprintf(c->out->command_uuid, sizeof(c->out->command_uuid), "%s", uuid);
    } else if (rc == MDM_ENOTFOUND) {
        rc = 0;
        c->out->command_uuid[0] = '\0';
    }
    if (rc == 0 && dirty)
        rc = mdm_enrollment_save(txn, c->eid, en->tree);
    return rc;
}

static int report_txn(mdm_txn_t *txn, void *arg)
{
    msg_ctx_t *c = arg;
    c->out->status = 200;
    c->out->ctype = NULL;
    mdm_buf_reset(&c->out->body);
    c->out->command_uuid[0] = '\0';
    c->out->policy_commands = c->out->installs = c->out->removals = 0;
    c->report_outcome = -1;
    c->bound_first_sight = false;
    int rc = check_revoked(c, txn);
    if (rc == 0)
        rc = check_binding(c, txn);
    if (rc != 0)
        return rc;
    mdm_val_t raw;
    rc = mdm_txn_get(txn, MDM_T_ENROLLMENTS, MDM_VAL_STR(c->eid), &raw);
    if (rc == MDM_ENOTFOUND) {
        refuse(c, 403, "command report for an unknown enrollment");
        return REFUSED;
    }
    if (rc != 0)
        return rc;
    mdm_rec_t en;
    mdm_rec_init_bin(&en, raw.data, raw.len);
    if (!en.inplace && mdm_rec_tree(&en) == NULL)
        rc = MDM_EPARSE;
    else
        rc = report_on(c, txn, &en);
    mdm_rec_free(&en);
    return rc;
}

struct idle_probe {
    msg_ctx_t *c;
    bool fast;
    bool stale;     /* last_seen_at is to be recorded again */
    mdm_policy_view_t view;
    bool have_view;
    /* Copies of the records the view reads after the read transaction. */
    mdm_buf_t ebin, dbin;
    mdm_rec_t erec;
};

/* Looks, without writing, whether an Idle changes anything but
 * last_seen_at: a bound, enabled enrollment with an empty queue and
 * nothing to reconcile. The records are read in place (no tree). */
static int idle_probe_fn(mdm_txn_t *txn, void *arg)
{
    struct idle_probe *ip = arg;
    msg_ctx_t *c = ip->c;
    ip->fast = false;
    char bound[MDM_EID_MAX + 1];
    if (mdm_certauth_lookup(txn, c->id->fp, bound, sizeof(bound)) != 0 ||
        strcmp(bound, c->device_id) != 0)
        return 0;
    /* A waiting command means a write: look at the queue before reading
     * any record. */
    bool empty = false;
    if (mdm_queue_empty(txn, c->eid, &empty) != 0 || !empty)
        return 0;
    unsigned char serial[MDM_SERIAL_MAX];
    size_t sl = 0;
    bool revoked = false;
    if (mdm_cert_serial(c->id->cert, serial, &sl) == 0 &&
        mdm_certdb_is_revoked(txn, serial, sl, &revoked) == 0 && revoked)
        return 0;
    mdm_val_t raw;
    if (mdm_txn_get(txn, MDM_T_ENROLLMENTS, MDM_VAL_STR(c->eid), &raw) != 0)
        return 0;
    mdm_buf_append(&ip->ebin, raw.data, raw.len);
    mdm_rec_t *en = &ip->erec;
    mdm_rec_init_bin(en, ip->ebin.data, ip->ebin.len);
    if (!en->inplace && mdm_rec_tree(en) == NULL)
        return 0;
    size_t fl = 0;
    const unsigned char *fp = mdm_rec_data(en, "cert_fp", &fl);
    bool quiet = mdm_rec_bool(en, "enabled", false) && !mdm_rec_bool(en, "new_enrollment", false) &&
                 !mdm_rec_bool(en, "reconcile_requested", false) && fp != NULL && fl == 32 &&
                 memcmp(fp, c->id->fp, 32) == 0;
    if (!quiet)
        return 0;
    int64_t last_seen = mdm_rec_int(en, "last_seen_at", 0);
    ip->stale = c->now - last_seen >= LAST_SEEN_GRANULARITY_MS || c->now < last_seen;
    mdm_rec_t dev;
    bool have_dev = device_rec(c, txn, en, &ip->dbin, &dev);
    mdm__policy_view_detached(txn, c->eid, en, have_dev ? ip->dbin.data : NULL, ip->dbin.len,
                              &ip->view);
    /* The hook sees the device as seen now, as it does when the write
     * path records last_seen_at before calling it. */
    if (ip->stale)
        ip->view.dev.seen_at_ms = c->now;
    ip->have_view = true;
    bool due = mdm_reconcile_due(txn, c->pol, en, have_dev ? &dev : NULL);
    mdm_rec_free(&dev);
    ip->fast = !due;
    return 0;
}

/* Records that the device was seen now: the only change an Idle with
 * nothing to do makes. */
static int touch_fn(mdm_txn_t *txn, void *arg)
{
    msg_ctx_t *c = arg;
    plist_t e = NULL;
    int rc = mdm_enrollment_load(txn, c->eid, &e);
    if (rc != 0)
        return rc;
    mdm_pl_set_int(e, "last_seen_at", c->now);
    rc = mdm_enrollment_save(txn, c->eid, e);
    plist_free(e);
    return rc;
}

/* Answers an Idle with nothing to do from a read-only look at the store,
 * so that the commonest request costs no commit, or, when last_seen_at is
 * due to be recorded again, only that write, whose commit the answer does
 * not wait for: "nothing to do" stays true if the write is lost. Returns
 * true when answered. */
static bool idle_fast_path(msg_ctx_t *c)
{
    struct idle_probe ip = {.c = c, .ebin = MDM_BUF_INIT, .dbin = MDM_BUF_INIT};
    bool fast = mdm_store_view(c->m->server->store, idle_probe_fn, &ip) == 0 && ip.fast;
    if (fast && mdm_policy_has_hook(c->pol, MDM_POLICY_HOOK_CONNECT)) {
        mdm_policy_decision_t d;
        memset(&d, 0, sizeof(d));
        bool wants_write = false;
        if (mdm_policy_connect_probe(c->pol, reqid_of(c), &ip.view.dev, c->msg, &d,
                                     &wants_write) != 0 ||
            wants_write)
            fast = false;
        mdm_policy_decision_free(&d);
    }
    if (ip.have_view)
        mdm__policy_view_free(&ip.view);
    mdm_rec_free(&ip.erec);
    mdm_buf_free(&ip.ebin);
    mdm_buf_free(&ip.dbin);
    /* A failed write takes the usual path, which reports it. */
    if (fast && ip.stale && mdm_store_update(c->m->server->store, touch_fn, c) != 0)
        fast = false;
    if (fast) {
        c->out->status = 200;
        c->out->ctype = NULL;
        mdm_buf_reset(&c->out->body);
        c->out->command_uuid[0] = '\0';
        c->out->unchanged = true;
    }
    return fast;
}

void mdm__process_report(mdm_mdm_t *m, const mdm_identity_t *id, const void *body, size_t len,
                         mdm_parsed_t *pre, mdm_outcome_t *out)
{
    msg_ctx_t c;
    if (!begin_message(&c, m, id, body, len, pre, out, "Status"))
        goto out;
    mdm_metric_add(m->m_reports, 1);
    c.pol = mdm_policy_acquire(m->server);
    if (strcmp(c.type, "Idle") == 0 && idle_fast_path(&c)) {
        mdm_policy_release(c.pol);
        mdm_metric_add(m->m_idle_fast, 1);
        mdm_apns_seen(m->server, c.eid);
        goto out;
    }
    int rc = mdm_store_update(m->server->store, report_txn, &c);
    mdm_policy_release(c.pol);
    if (rc == REFUSED) {
        mdm_metric_add(m->m_refused, 1);
        goto out;
    }
    if (rc != 0) {
        refuse(&c, rc == MDM_ENOSPACE ? 503 : 500, "store: %s", mdm_strerror(rc));
        out->command_uuid[0] = '\0';
        goto out;
    }
    log_first_sight(&c);
    static const char *const names[] = {"recorded", "duplicate", "unknown", "notnow",
                                        "notnow_limit"};
    if (c.report_outcome >= 0 && c.report_outcome <= 4)
        snprintf(out->detail, sizeof(out->detail), "report=%s", names[c.report_outcome]);
    if (out->command_uuid[0] && out->body.len > 0)
        mdm_metric_add(m->m_commands_sent, 1);
    /* The device fetched its queue: an earlier push no longer covers
     * commands queued from now on. */
    mdm_apns_seen(m->server, c.eid);
out:
    end_message(&c, pre);
}
