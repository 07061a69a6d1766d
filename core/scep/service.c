/* The SCEP service: HTTP routes, the enrollment flow, the CRL and the admin
 * API for challenges and certificates. See service.h. */
#include "scep/service.h"

#include <jansson.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <plist/plist.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "api/api.h"
#include "config.h"
#include "crypto/certdb.h"
#include "crypto/keys.h"
#include "mdm/certauth.h"
#include "mdm/mdm.h"
#include "net/http.h"
#include "net/router.h"
#include "scep/challenge.h"
#include "scep/csrview.h"
#include "scep/scep.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/encode.h"
#include "util/log.h"
#include "util/misc.h"

#define DAY_MS (24LL * 3600 * 1000)
/* A pending request not polled to an end within this time is dropped. */
#define PENDING_TTL_MS (7 * DAY_MS)
/* Expired challenges and stale pending requests are swept this often. */
#define PRUNE_EVERY_MS (10LL * 60 * 1000)
#define PRUNE_BATCH 1000
/* Phase-3 slot entries looked at per pruning (each costs a read or two). */
#define SLOT_PRUNE_BATCH 500
/* CRLs are valid for a week and rebuilt at least daily. */
#define CRL_VALIDITY_MS (7 * DAY_MS)
#define CRL_REFRESH_MS DAY_MS
#define DEFAULT_MAX_INFLIGHT 512
/* The longest lifetime /v1/challenges gives a challenge. */
#define CHALLENGE_TTL_MAX_MS (365 * (uint64_t)DAY_MS)

#define CT_PKI "application/x-pki-message"
#define CT_TEXT "text/plain; charset=utf-8"

static const char CAPS[] = "POSTPKIOperation\n"
                           "SHA-1\n"
                           "SHA-256\n"
                           "SHA-512\n"
                           "AES\n"
                           "DES3\n"
                           "SCEPStandard\n"
                           "Renewal\n";

static const char PENDING_PREFIX[] = "sceppend"; /* + '\0' + transactionID */
#define PENDING_PREFIX_LEN sizeof(PENDING_PREFIX)
/* What a transaction was answered with, so that a request sent again after
 * SUCCESS (the reply was lost) gets the same certificate. Same length of
 * prefix as PENDING_PREFIX. */
static const char DONE_PREFIX[] = "scepdone"; /* + '\0' + transactionID */
#define RESEND_WINDOW_MS DAY_MS

struct crl_waiter {
    mdm_scep_done_fn done;
    void *arg;
};

typedef struct crl_job {
    uv_work_t work;
    mdm_scep_service_t *svc;
    mdm_revoked_t *list;
    size_t n;
    uint64_t number;
    uint64_t seq;
    int64_t built_ms;
    mdm_buf_t der;
    int rc;
    mdm_err_t err;
} crl_job_t;

struct mdm_scep_service {
    uv_loop_t *loop;
    mdm_store_t *store;
    mdm_ca_t *ca;
    X509 *ra_cert;
    EVP_PKEY *ra_key;
    mdm_scep_keys_t keys;
    X509 *signer_cert;       /* RA, else CA: signs CertReps */
    EVP_PKEY *signer_key;
    char *static_challenge;
    size_t max_inflight;
    size_t inflight;
    mdm_scep_decide_fn decide;
    void *decide_udata;
    int64_t last_prune_ms;
    unsigned char slot_from[32]; /* where the next pruning of phase-3 slots goes on */

    mdm_buf_t cacert;        /* GetCACert body */
    const char *cacert_ctype;

    mdm_buf_t crl;           /* the cached CRL */
    bool crl_valid;
    uint64_t crl_seq;        /* "revocations" when it was built */
    int64_t crl_built_ms;
    bool crl_building;
    struct crl_waiter *waiters;
    size_t nwaiters, cap_waiters;

    /* HTTP glue */
    char *crl_path;
    uint64_t default_ttl_ms;
};

/* ---- pending requests ---------------------------------------------------- */

typedef struct pending_rec {
    int type;                  /* PKCSReq or RenewalReq */
    int64_t created_ms;
    unsigned char *csr;
    size_t csr_len;
    unsigned char *signer_pub; /* DER SubjectPublicKeyInfo of the request's signer */
    size_t signer_pub_len;
    char owner[MDM_CHALLENGE_OWNER_MAX + 1];
    char udid[MDM_CHALLENGE_UDID_MAX + 1]; /* "" when not issued for one device */
    bool renewal;
    unsigned char old_fp[32];
} pending_rec_t;

static void pending_free(pending_rec_t *p)
{
    mdm_free(p->csr);
    mdm_free(p->signer_pub);
    memset(p, 0, sizeof(*p));
}

/* The store key of a record of transaction txid: prefix + '\0' + txid. */
#define TXID_KEY_MAX (PENDING_PREFIX_LEN + MDM_SCEP_TXID_MAX)

static size_t txid_key(unsigned char out[TXID_KEY_MAX], const char *prefix, const char *txid)
{
    size_t n = strlen(txid);
    if (n > MDM_SCEP_TXID_MAX)
        n = MDM_SCEP_TXID_MAX;
    memcpy(out, prefix, PENDING_PREFIX_LEN);
    memcpy(out + PENDING_PREFIX_LEN, txid, n);
    return PENDING_PREFIX_LEN + n;
}

static size_t pending_key(unsigned char out[TXID_KEY_MAX], const char *txid)
{
    return txid_key(out, PENDING_PREFIX, txid);
}

/* Stores a pending request; MDM_EEXIST when one with this transactionID is
 * already pending (it is never replaced). */
static int pending_put(mdm_txn_t *txn, const char *txid, const pending_rec_t *p)
{
    unsigned char key[TXID_KEY_MAX];
    size_t klen = pending_key(key, txid);
    plist_t d = plist_new_dict();
    plist_dict_set_item(d, "type", plist_new_uint((uint64_t)p->type));
    plist_dict_set_item(d, "created", plist_new_uint((uint64_t)p->created_ms));
    plist_dict_set_item(d, "csr", plist_new_data((const char *)p->csr, p->csr_len));
    plist_dict_set_item(d, "signer_pub",
                        plist_new_data((const char *)p->signer_pub, p->signer_pub_len));
    plist_dict_set_item(d, "owner", plist_new_string(p->owner));
    if (p->udid[0] != '\0')
        plist_dict_set_item(d, "udid", plist_new_string(p->udid));
    if (p->renewal)
        plist_dict_set_item(d, "old_fp", plist_new_data((const char *)p->old_fp, 32));
    char *bin = NULL;
    uint32_t blen = 0;
    plist_to_bin(d, &bin, &blen);
    plist_free(d);
    int rc = MDM_EIO;
    if (bin != NULL && blen > 0)
        rc = mdm_txn_put(txn, MDM_T_INDEX, MDM_VAL(key, klen), MDM_VAL(bin, blen),
                         MDM_PUT_NOOVERWRITE);
    if (bin != NULL)
        plist_to_bin_free(bin);
    return rc;
}

static unsigned char *plist_data_copy(plist_t d, const char *name, size_t *len)
{
    plist_t it = plist_dict_get_item(d, name);
    *len = 0;
    if (it == NULL || plist_get_node_type(it) != PLIST_DATA)
        return NULL;
    char *p = NULL;
    uint64_t n = 0;
    plist_get_data_val(it, &p, &n);
    unsigned char *copy = n > 0 && p != NULL ? mdm_memdup(p, (size_t)n) : NULL;
    free(p);
    *len = copy ? (size_t)n : 0;
    return copy;
}

static uint64_t plist_uint(plist_t d, const char *name)
{
    plist_t it = plist_dict_get_item(d, name);
    uint64_t v = 0;
    if (it != NULL && plist_get_node_type(it) == PLIST_UINT)
        plist_get_uint_val(it, &v);
    return v;
}

/* Copies the string name of d to out ("" when there is none). */
static void plist_string_copy(plist_t d, const char *name, char *out, size_t n)
{
    plist_t it = plist_dict_get_item(d, name);
    out[0] = '\0';
    if (it == NULL || plist_get_node_type(it) != PLIST_STRING)
        return;
    char *s = NULL;
    plist_get_string_val(it, &s);
    snprintf(out, n, "%s", s ? s : "");
    free(s);
}

static int pending_decode(mdm_val_t v, pending_rec_t *out)
{
    memset(out, 0, sizeof(*out));
    if (v.len == 0 || v.len > UINT32_MAX)
        return MDM_EPARSE;
    plist_t d = NULL;
    plist_from_bin(v.data, (uint32_t)v.len, &d);
    if (d == NULL)
        return MDM_EPARSE;
    int rc = MDM_EPARSE;
    if (plist_get_node_type(d) != PLIST_DICT)
        goto out;
    out->type = (int)plist_uint(d, "type");
    out->created_ms = (int64_t)plist_uint(d, "created");
    out->csr = plist_data_copy(d, "csr", &out->csr_len);
    out->signer_pub = plist_data_copy(d, "signer_pub", &out->signer_pub_len);
    plist_string_copy(d, "owner", out->owner, sizeof(out->owner));
    plist_string_copy(d, "udid", out->udid, sizeof(out->udid));
    size_t fplen = 0;
    unsigned char *fp = plist_data_copy(d, "old_fp", &fplen);
    if (fp != NULL && fplen == 32) {
        out->renewal = true;
        memcpy(out->old_fp, fp, 32);
    }
    mdm_free(fp);
    if (out->csr == NULL || out->signer_pub == NULL)
        goto out;
    rc = 0;
out:
    plist_free(d);
    if (rc != 0)
        pending_free(out);
    return rc;
}

static int pending_get(mdm_txn_t *txn, const char *txid, pending_rec_t *out)
{
    unsigned char key[TXID_KEY_MAX];
    size_t klen = pending_key(key, txid);
    mdm_val_t v;
    memset(out, 0, sizeof(*out));
    int rc = mdm_txn_get(txn, MDM_T_INDEX, MDM_VAL(key, klen), &v);
    if (rc != 0)
        return rc;
    return pending_decode(v, out);
}

static int pending_del(mdm_txn_t *txn, const char *txid)
{
    unsigned char key[TXID_KEY_MAX];
    size_t klen = pending_key(key, txid);
    return mdm_txn_del(txn, MDM_T_INDEX, MDM_VAL(key, klen));
}

/* Deletes the records under prefix that keep() does not keep, at most max. */
static int index_prune(mdm_txn_t *txn, const char *prefix_text,
                       bool (*keep)(mdm_val_t v, int64_t now_ms), int64_t now_ms, size_t max,
                       size_t *removed)
{
    mdm_cursor_t *c = NULL;
    mdm_val_t k, v;
    size_t n = 0;
    mdm_val_t prefix = MDM_VAL(prefix_text, PENDING_PREFIX_LEN);
    int rc = mdm_cursor_open(txn, MDM_T_INDEX, &c);
    if (rc != 0)
        return rc;
    for (rc = mdm_cursor_seek(c, prefix, &k, &v); rc == 0; rc = mdm_cursor_next(c, &k, &v)) {
        if (!mdm_val_has_prefix(k, prefix))
            break;
        if (keep(v, now_ms))
            continue;
        rc = mdm_cursor_del(c);
        if (rc != 0 || ++n == max)
            break;
    }
    if (rc == MDM_ENOTFOUND)
        rc = 0;
    mdm_cursor_close(c);
    *removed = n;
    return rc;
}

static bool pending_keep(mdm_val_t v, int64_t now_ms)
{
    pending_rec_t p;
    bool keep = pending_decode(v, &p) == 0 && now_ms - p.created_ms < PENDING_TTL_MS;
    pending_free(&p);
    return keep;
}

/* ---- transactions answered with SUCCESS ---------------------------------- */

/* Value: created_ms (8, big-endian), the request type (1), the signer's
 * id (32, see signer_id), SHA-256 of the CSR's public key (32), serial
 * (1..20). */
#define DONE_HEAD (8 + 1 + 32 + 32)

typedef struct done_rec {
    int64_t created_ms;
    int type;                      /* PKCSReq or RenewalReq */
    unsigned char signer_id[32];
    unsigned char csr_key[32];
    unsigned char serial[MDM_SERIAL_MAX];
    size_t serial_len;
} done_rec_t;

static int pubkey_sha256(EVP_PKEY *k, unsigned char out[32])
{
    unsigned char *der = NULL;
    int n = k != NULL ? i2d_PUBKEY(k, &der) : -1;
    unsigned int dl = 0;
    int ok = n > 0 && EVP_Digest(der, (size_t)n, out, &dl, EVP_sha256(), NULL) == 1 && dl == 32;
    OPENSSL_free(der);
    return ok ? 0 : MDM_ECRYPTO;
}

/* Who signed a request of type: the SHA-256 of its public key for a
 * PKCSReq (whose signer is a throw-away certificate of the CSR's key), of
 * its certificate for a RenewalReq (the certificate being renewed). */
static int signer_id(int type, X509 *signer, unsigned char out[32])
{
    if (type == MDM_SCEP_RENEWALREQ)
        return mdm_cert_sha256(signer, out) == 0 ? 0 : MDM_ECRYPTO;
    return pubkey_sha256(X509_get0_pubkey(signer), out);
}

static int done_decode(mdm_val_t v, done_rec_t *out)
{
    const unsigned char *p = v.data;
    if (v.len <= DONE_HEAD || v.len > DONE_HEAD + MDM_SERIAL_MAX)
        return MDM_EPARSE;
    out->created_ms = (int64_t)mdm_be64_get(p);
    out->type = p[8];
    memcpy(out->signer_id, p + 9, 32);
    memcpy(out->csr_key, p + 41, 32);
    out->serial_len = v.len - DONE_HEAD;
    memcpy(out->serial, p + DONE_HEAD, out->serial_len);
    return 0;
}

static bool done_keep(mdm_val_t v, int64_t now_ms)
{
    done_rec_t d;
    return done_decode(v, &d) == 0 && now_ms - d.created_ms < RESEND_WINDOW_MS;
}

static int done_put(mdm_txn_t *txn, const char *txid, const done_rec_t *d)
{
    unsigned char key[TXID_KEY_MAX], value[DONE_HEAD + MDM_SERIAL_MAX];
    size_t klen = txid_key(key, DONE_PREFIX, txid);
    mdm_be64_put(value, (uint64_t)d->created_ms);
    value[8] = (unsigned char)d->type;
    memcpy(value + 9, d->signer_id, 32);
    memcpy(value + 41, d->csr_key, 32);
    memcpy(value + DONE_HEAD, d->serial, d->serial_len);
    return mdm_txn_put(txn, MDM_T_INDEX, MDM_VAL(key, klen),
                       MDM_VAL(value, DONE_HEAD + d->serial_len), 0);
}

static int done_get(mdm_txn_t *txn, const char *txid, done_rec_t *out)
{
    unsigned char key[TXID_KEY_MAX];
    size_t klen = txid_key(key, DONE_PREFIX, txid);
    mdm_val_t v;
    int rc = mdm_txn_get(txn, MDM_T_INDEX, MDM_VAL(key, klen), &v);
    return rc != 0 ? rc : done_decode(v, out);
}

/* ---- revocation ---------------------------------------------------------- */

int mdm_scep_revoke(mdm_txn_t *txn, const unsigned char *serial, size_t len, int reason,
                    int64_t now_ms)
{
    int rc = mdm_certdb_revoke(txn, serial, len, reason, now_ms);
    if (rc != 0)
        return rc;
    /* The phase-3 challenge handed to this identity goes with it. */
    mdm_certrec_t rec;
    rc = mdm_certdb_get_by_serial(txn, serial, len, &rec);
    if (rc == 0)
        rc = mdm_challenge_slot_clear(txn, rec.sha256);
    mdm_certrec_free(&rec);
    if (rc != 0)
        return rc;
    uint64_t seq = 0;
    rc = mdm_meta_get_u64(txn, "revocations", &seq);
    if (rc != 0 && rc != MDM_ENOTFOUND)
        return rc;
    return mdm_meta_put_u64(txn, "revocations", seq + 1);
}

const char *mdm_scep_caps(void)
{
    return CAPS;
}

/* ---- the PKIOperation flow ----------------------------------------------- */

typedef struct scep_job {
    uv_work_t work;
    mdm_scep_service_t *svc;
    char reqid[24];
    char remote[64];
    mdm_scep_done_fn done;
    void *done_arg;
    unsigned char *msg;
    size_t msg_len;

    /* parse stage (thread pool) */
    int parse_rc;
    mdm_scep_msg_t m;
    int chain_rc;
    char chain_err[300];

    /* decided on the loop */
    int request_type;          /* PKCSReq or RenewalReq */
    bool issue;
    int status;                /* reply status when not issuing */
    int fail_info;
    char reason[400];
    X509_REQ *csr;             /* what to issue from: m.csr or owned_csr */
    X509_REQ *owned_csr;       /* the CSR of a pending request */
    bool consume_challenge;    /* a one-time challenge to consume */
    bool from_pending;         /* a pending request to remove */
    bool renewal;
    unsigned char old_fp[32];
    char owner[MDM_CHALLENGE_OWNER_MAX + 1];
    char udid[MDM_CHALLENGE_UDID_MAX + 1]; /* the device the certificate is for, or "" */

    bool resent;               /* sent again: issued is the earlier answer's */

    /* respond stage (thread pool) */
    X509 *issued;
    unsigned char new_fp[32];
    char serial_hex[MDM_SERIAL_HEX_MAX];
    char subject[256];
    bool issue_failed;
    mdm_buf_t out;
    int build_rc;
    char build_err[512];

    /* store stage */
    int lost_fail;
    const char *lost_reason;
} scep_job_t;

static void job_free(scep_job_t *job)
{
    mdm_scep_msg_free(&job->m);
    X509_REQ_free(job->owned_csr);
    X509_free(job->issued);
    mdm_free(job->msg);
    mdm_buf_free(&job->out);
    mdm_free(job);
}

static void job_finish(scep_job_t *job, int status, const char *ctype, const void *body,
                       size_t len)
{
    mdm_scep_service_t *svc = job->svc;
    job->done(job->done_arg, status, ctype, body, len);
    svc->inflight--;
    job_free(job);
}

static void job_finish_text(scep_job_t *job, int status, const char *text)
{
    job_finish(job, status, CT_TEXT, text, strlen(text));
}

static void respond_work(uv_work_t *w);
static void respond_after(uv_work_t *w, int status);

static void queue_respond(scep_job_t *job)
{
    int r = uv_queue_work(job->svc->loop, &job->work, respond_work, respond_after);
    if (r != 0) {
        mdm_log(MDM_LOG_ERROR, job->reqid, "scep.queue_failed", "error=\"%s\"", uv_strerror(r));
        job_finish_text(job, 500, "internal error\n");
    }
}

/* Answers FAILURE with failInfo (no envelope) and logs why. */
static void job_fail(scep_job_t *job, int fail_info, const char *reason)
{
    char q[512], t[MDM_SCEP_TXID_MAX + 8];
    job->issue = false;
    job->status = MDM_SCEP_FAILURE;
    job->fail_info = fail_info;
    snprintf(job->reason, sizeof(job->reason), "%s", reason);
    mdm_log(MDM_LOG_WARN, job->reqid, "scep.failure", "txid=%s type=%s fail_info=%s reason=%s",
            mdm_logq(t, sizeof(t), job->m.txid), mdm_scep_msgtype_name(job->m.type),
            mdm_scep_failinfo_name(fail_info), mdm_logq(q, sizeof(q), reason));
    queue_respond(job);
}

static void job_store_error(scep_job_t *job, int rc)
{
    char t[MDM_SCEP_TXID_MAX + 8];
    mdm_log(MDM_LOG_ERROR, job->reqid, "scep.store_error", "txid=%s error=\"%s\"",
            mdm_logq(t, sizeof(t), job->m.txid), mdm_strerror(rc));
    job_finish_text(job, 500, "internal error\n");
}

static void parse_work(uv_work_t *w)
{
    scep_job_t *job = w->data;
    mdm_scep_service_t *svc = job->svc;
    job->parse_rc = mdm_scep_parse(job->msg, job->msg_len, &svc->keys, &job->m);
    if (job->parse_rc == 0 && job->m.fail_info == MDM_SCEP_NOFAIL &&
        job->m.type == MDM_SCEP_RENEWALREQ) {
        mdm_err_t err = {0};
        job->chain_rc = mdm_ca_verify_cert(svc->ca, job->m.signer, NULL, &err);
        snprintf(job->chain_err, sizeof(job->chain_err), "%.290s", err.msg);
    }
}

/* The store functions below may run more than once (map growth): they
 * change nothing but the store and fields they set on every run. */

struct view_challenge {
    const char *text;
    mdm_challenge_t c;
};

static int view_challenge_fn(mdm_txn_t *txn, void *arg)
{
    struct view_challenge *v = arg;
    return mdm_challenge_check(txn, v->text, MDM_CHALLENGE_SCEP, mdm_now_ms(), &v->c);
}

static int store_pending_fn(mdm_txn_t *txn, void *arg)
{
    scep_job_t *job = arg;
    job->lost_fail = MDM_SCEP_NOFAIL;
    if (job->consume_challenge) {
        int rc = mdm_challenge_consume(txn, job->m.challenge, MDM_CHALLENGE_SCEP, mdm_now_ms(),
                                       NULL);
        if (rc == MDM_ENOTFOUND || rc == MDM_EEXPIRED) {
            job->lost_fail = MDM_SCEP_BADREQUEST;
            job->lost_reason = "the challenge was used or expired while the request was checked";
            return MDM_ESTATE;
        }
        if (rc != 0)
            return rc;
    }
    pending_rec_t p;
    memset(&p, 0, sizeof(p));
    unsigned char *csr = NULL, *pub = NULL;
    int clen = i2d_X509_REQ(job->csr, &csr);
    int plen = i2d_PUBKEY(X509_get0_pubkey(job->m.signer), &pub);
    int rc = MDM_ECRYPTO;
    if (clen > 0 && plen > 0) {
        p.type = job->request_type;
        p.created_ms = mdm_now_ms();
        p.csr = csr;
        p.csr_len = (size_t)clen;
        p.signer_pub = pub;
        p.signer_pub_len = (size_t)plen;
        snprintf(p.owner, sizeof(p.owner), "%s", job->owner);
        snprintf(p.udid, sizeof(p.udid), "%s", job->udid);
        p.renewal = job->renewal;
        memcpy(p.old_fp, job->old_fp, 32);
        rc = pending_put(txn, job->m.txid, &p);
    }
    OPENSSL_free(csr);
    OPENSSL_free(pub);
    if (rc == MDM_EEXIST) {
        /* Another request took this transactionID first: its record stays,
         * and this one's challenge is not consumed (the update rolls back). */
        job->lost_fail = MDM_SCEP_BADREQUEST;
        job->lost_reason = "another request with this transactionID is already pending";
        return MDM_ESTATE;
    }
    return rc;
}

static int del_pending_fn(mdm_txn_t *txn, void *arg)
{
    scep_job_t *job = arg;
    int rc = pending_del(txn, job->m.txid);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

/* Remembers what the transaction was answered with, for a resend. */
static int record_done(mdm_txn_t *txn, scep_job_t *job)
{
    done_rec_t d = {.created_ms = mdm_now_ms(), .type = job->request_type};
    if (signer_id(d.type, job->m.signer, d.signer_id) != 0 ||
        pubkey_sha256(X509_REQ_get0_pubkey(job->csr), d.csr_key) != 0 ||
        mdm_cert_serial(job->issued, d.serial, &d.serial_len) != 0)
        return MDM_ECRYPTO;
    return done_put(txn, job->m.txid, &d);
}

static int store_issued_fn(mdm_txn_t *txn, void *arg)
{
    scep_job_t *job = arg;
    mdm_certrec_t old;
    memset(&old, 0, sizeof(old));
    job->lost_fail = MDM_SCEP_NOFAIL;
    int rc = 0;
    if (job->consume_challenge) {
        rc = mdm_challenge_consume(txn, job->m.challenge, MDM_CHALLENGE_SCEP, mdm_now_ms(), NULL);
        if (rc == MDM_ENOTFOUND || rc == MDM_EEXPIRED) {
            job->lost_fail = MDM_SCEP_BADREQUEST;
            job->lost_reason = "the challenge was used by another request at the same time";
            return MDM_ESTATE;
        }
        if (rc != 0)
            return rc;
    }
    if (job->from_pending) {
        rc = pending_del(txn, job->m.txid);
        if (rc == MDM_ENOTFOUND) {
            job->lost_fail = MDM_SCEP_BADCERTID;
            job->lost_reason = "the pending request was answered by another poll at the same time";
            return MDM_ESTATE;
        }
        if (rc != 0)
            return rc;
    }
    if (job->renewal) {
        rc = mdm_certdb_get_by_fingerprint(txn, job->old_fp, &old);
        if (rc == MDM_ENOTFOUND || (rc == 0 && old.revoked)) {
            job->lost_fail = MDM_SCEP_BADCERTID;
            job->lost_reason = "the certificate being renewed was revoked meanwhile";
            rc = MDM_ESTATE;
            goto out;
        }
        if (rc != 0)
            goto out;
    }
    rc = mdm_certdb_put(txn, job->issued, job->m.txid);
    if (rc == 0)
        rc = record_done(txn, job);
    if (rc == 0 && job->owner[0] != '\0')
        rc = mdm_challenge_owner_record(txn, job->new_fp, job->owner);
    if (rc == 0 && job->udid[0] != '\0')
        rc = mdm_challenge_udid_record(txn, job->new_fp, job->udid);
    if (rc == 0 && job->renewal) {
        unsigned char serial[MDM_SERIAL_MAX];
        size_t slen = 0;
        rc = mdm_cert_serial(job->issued, serial, &slen);
        if (rc == 0 && old.enrollment_id[0] != '\0')
            rc = mdm_certdb_set_enrollment(txn, serial, slen, old.enrollment_id);
        if (rc == 0) {
            rc = mdm_certauth_rebind(txn, job->old_fp, job->new_fp);
            if (rc == MDM_ENOTFOUND)
                rc = 0;
        }
        /* The old certificate is superseded: revoked (reason 4), so that
         * it cannot renew again once its successor is revoked. */
        if (rc == 0)
            rc = mdm_scep_revoke(txn, old.serial, old.serial_len, 4, mdm_now_ms());
    }
out:
    mdm_certrec_free(&old);
    return rc;
}

/* Answers FAILURE; a pending request that the job continues is dropped
 * with it (its transaction is over). */
static void job_fail_final(scep_job_t *job, int fail_info, const char *reason)
{
    if (job->from_pending) {
        int rc = mdm_store_update(job->svc->store, del_pending_fn, job);
        if (rc != 0) {
            job_store_error(job, rc);
            return;
        }
    }
    job_fail(job, fail_info, reason);
}

/* Asks the decision hook and goes on accordingly. */
static void decide_and_go(scep_job_t *job)
{
    mdm_scep_service_t *svc = job->svc;
    mdm_csr_view_t view;
    mdm_err_t kerr = {0};
    if (mdm_ca_check_device_key(X509_REQ_get0_pubkey(job->csr), &kerr) != 0) {
        job_fail_final(job, MDM_SCEP_BADREQUEST, kerr.msg);
        return;
    }
    const char *why = mdm_csr_view_make(job->csr, &view);
    if (why != NULL) {
        job_fail_final(job, MDM_SCEP_BADREQUEST, why);
        return;
    }
    const char *subject = view.subject;
    snprintf(job->subject, sizeof(job->subject), "%.250s", subject);
    mdm_scep_decision_ctx_t ctx = {
        .reqid = job->reqid,
        .message_type = job->m.type,
        .request_type = job->request_type,
        .transaction_id = job->m.txid,
        .subject = subject,
        .cn = view.cn,
        .sans = (const char *const *)view.sans,
        .nsans = view.nsans,
        .owner = job->owner,
        .challenge = job->request_type == MDM_SCEP_PKCSREQ ? job->m.challenge : NULL,
        .challenge_ok = job->request_type == MDM_SCEP_PKCSREQ,
        .remote_addr = job->remote[0] ? job->remote : NULL,
        .csr = job->csr,
        .renewing = job->renewal && job->m.type == MDM_SCEP_RENEWALREQ ? job->m.signer : NULL,
    };
    char reason[256] = "";
    int d = svc->decide ? svc->decide(svc->decide_udata, &ctx, reason, sizeof(reason))
                        : MDM_SCEP_DECIDE_ISSUE;
    reason[sizeof(reason) - 1] = '\0';
    mdm_csr_view_free(&view);

    char msg[400], q[300], t[MDM_SCEP_TXID_MAX + 8];
    int rc;
    switch (d) {
    case MDM_SCEP_DECIDE_ISSUE:
        job->issue = true;
        queue_respond(job);
        return;
    case MDM_SCEP_DECIDE_PENDING:
        if (!job->from_pending) {
            rc = mdm_store_update(svc->store, store_pending_fn, job);
            if (rc == MDM_ESTATE) {
                job_fail(job, job->lost_fail, job->lost_reason);
                return;
            }
            if (rc != 0) {
                job_store_error(job, rc);
                return;
            }
        }
        mdm_log(MDM_LOG_INFO, job->reqid, "scep.pending", "txid=%s type=%s subject=%s reason=%s",
                mdm_logq(t, sizeof(t), job->m.txid), mdm_scep_msgtype_name(job->m.type),
                mdm_logq(msg, sizeof(msg), subject), mdm_logq(q, sizeof(q), reason));
        job->issue = false;
        job->status = MDM_SCEP_PENDING;
        queue_respond(job);
        return;
    default:
        if (d != MDM_SCEP_DECIDE_DENY)
            snprintf(reason, sizeof(reason), "the decision hook returned %d", d);
        snprintf(msg, sizeof(msg), "denied by policy: %s", reason[0] ? reason : "no reason given");
        job_fail_final(job, MDM_SCEP_BADREQUEST, msg);
        return;
    }
}

/* PKCSReq: the challenge must be the static one or a live one-time one. */
static bool check_challenge(scep_job_t *job)
{
    mdm_scep_service_t *svc = job->svc;
    const char *ch = job->m.challenge;
    if (ch == NULL || ch[0] == '\0') {
        job_fail(job, MDM_SCEP_BADREQUEST, "the CSR has no challengePassword");
        return false;
    }
    if (svc->static_challenge != NULL &&
        mdm_consttime_eq(ch, strlen(ch), svc->static_challenge, strlen(svc->static_challenge))) {
        job->owner[0] = job->udid[0] = '\0';
        job->consume_challenge = false;
        return true;
    }
    struct view_challenge v = {.text = ch};
    int rc = mdm_store_view(svc->store, view_challenge_fn, &v);
    if (rc == MDM_ENOTFOUND) {
        job_fail(job, MDM_SCEP_BADREQUEST, "the challenge is wrong or was already used");
        return false;
    }
    if (rc == MDM_EEXPIRED) {
        job_fail(job, MDM_SCEP_BADREQUEST, "the challenge has expired");
        return false;
    }
    if (rc == MDM_EAUTH) {
        job_fail(job, MDM_SCEP_BADREQUEST,
                 "the challenge is for the OTA profile service (phase 1), not for SCEP");
        return false;
    }
    if (rc != 0) {
        job_store_error(job, rc);
        return false;
    }
    snprintf(job->owner, sizeof(job->owner), "%s", v.c.owner);
    snprintf(job->udid, sizeof(job->udid), "%s", v.c.udid);
    job->consume_challenge = true;
    return true;
}

struct view_renewal {
    const unsigned char *fp;
    bool revoked;
    bool superseded; /* its enrollment is bound to another certificate now */
    char owner[MDM_CHALLENGE_OWNER_MAX + 1];
    char udid[MDM_CHALLENGE_UDID_MAX + 1];
};

static int view_renewal_fn(mdm_txn_t *txn, void *arg)
{
    struct view_renewal *v = arg;
    mdm_certrec_t r;
    int rc = mdm_certdb_get_by_fingerprint(txn, v->fp, &r);
    if (rc != 0)
        return rc;
    v->revoked = r.revoked;
    /* An enrollment that authenticated again with another certificate has
     * moved on: the one it left must not renew, and be named after it. */
    unsigned char cur[32];
    v->superseded = r.enrollment_id[0] != '\0' &&
                    mdm_certauth_current(txn, r.enrollment_id, cur) == 0 &&
                    memcmp(cur, v->fp, 32) != 0;
    mdm_certrec_free(&r);
    rc = mdm_challenge_owner_of_cert(txn, v->fp, v->owner, sizeof(v->owner));
    if (rc == MDM_ENOTFOUND) {
        v->owner[0] = '\0';
        rc = 0;
    }
    if (rc == 0)
        rc = mdm_challenge_udid_of_cert(txn, v->fp, v->udid, sizeof(v->udid));
    if (rc == MDM_ENOTFOUND) {
        v->udid[0] = '\0';
        rc = 0;
    }
    return rc;
}

/* The failInfo (NOFAIL when fine) and reason for what mdm_ca_verify_cert
 * said of the certificate being renewed. */
static int renewal_chain_fail(int chain_rc, const char *chain_err, char *msg, size_t n)
{
    if (chain_rc == MDM_EEXPIRED) {
        snprintf(msg, n, "the certificate being renewed has expired");
        return MDM_SCEP_BADTIME;
    }
    if (chain_rc != 0) {
        snprintf(msg, n, "the certificate being renewed is not from our CA: %.300s", chain_err);
        return MDM_SCEP_BADCERTID;
    }
    return MDM_SCEP_NOFAIL;
}

/* RenewalReq: signed by a certificate of ours that is valid, known and not
 * revoked. */
static bool check_renewal(scep_job_t *job)
{
    mdm_scep_service_t *svc = job->svc;
    char msg[400];
    int fail = renewal_chain_fail(job->chain_rc, job->chain_err, msg, sizeof(msg));
    if (fail != MDM_SCEP_NOFAIL) {
        job_fail(job, fail, msg);
        return false;
    }
    if (mdm_cert_sha256(job->m.signer, job->old_fp) != 0) {
        job_fail(job, MDM_SCEP_BADCERTID, "cannot hash the certificate being renewed");
        return false;
    }
    struct view_renewal v = {.fp = job->old_fp};
    int rc = mdm_store_view(svc->store, view_renewal_fn, &v);
    if (rc == MDM_ENOTFOUND) {
        job_fail(job, MDM_SCEP_BADCERTID, "the certificate being renewed was not issued here");
        return false;
    }
    if (rc != 0) {
        job_store_error(job, rc);
        return false;
    }
    if (v.revoked) {
        job_fail(job, MDM_SCEP_BADCERTID, "the certificate being renewed is revoked");
        return false;
    }
    if (v.superseded) {
        job_fail(job, MDM_SCEP_BADCERTID,
                 "the certificate being renewed is no longer its enrollment's identity (the "
                 "enrollment authenticated with another one since)");
        return false;
    }
    snprintf(job->owner, sizeof(job->owner), "%s", v.owner);
    snprintf(job->udid, sizeof(job->udid), "%s", v.udid);
    job->renewal = true;
    return true;
}

struct view_pending {
    const char *txid;
    pending_rec_t p;
};

static int view_pending_fn(mdm_txn_t *txn, void *arg)
{
    struct view_pending *v = arg;
    pending_free(&v->p);
    return pending_get(txn, v->txid, &v->p);
}

struct view_old {
    const unsigned char *fp;
    mdm_certrec_t rec;
};

static int view_old_fn(mdm_txn_t *txn, void *arg)
{
    struct view_old *v = arg;
    mdm_certrec_free(&v->rec);
    return mdm_certdb_get_by_fingerprint(txn, v->fp, &v->rec);
}

/* The failInfo (NOFAIL when fine) of the certificate a pending renewal
 * renews, checked again now as a RenewalReq is: still known, not revoked,
 * valid and from our CA. */
static int recheck_renewal(scep_job_t *job, char *msg, size_t n, int *store_rc)
{
    struct view_old v = {.fp = job->old_fp};
    *store_rc = mdm_store_view(job->svc->store, view_old_fn, &v);
    int fail = MDM_SCEP_NOFAIL;
    if (*store_rc == MDM_ENOTFOUND || (*store_rc == 0 && v.rec.revoked)) {
        *store_rc = 0;
        snprintf(msg, n, "the certificate being renewed was revoked meanwhile");
        fail = MDM_SCEP_BADCERTID;
    } else if (*store_rc == 0) {
        X509 *old = NULL;
        mdm_err_t err = {0};
        int vrc = mdm_cert_from_der(v.rec.der, v.rec.der_len, &old, &err);
        if (vrc == 0)
            vrc = mdm_ca_verify_cert(job->svc->ca, old, NULL, &err);
        fail = renewal_chain_fail(vrc, err.msg, msg, n);
        X509_free(old);
    }
    mdm_certrec_free(&v.rec);
    return fail;
}

/* A CertPoll, or a request sent again, for a pending transaction. */
static void continue_pending(scep_job_t *job, pending_rec_t *p)
{
    unsigned char *pub = NULL;
    int plen = i2d_PUBKEY(X509_get0_pubkey(job->m.signer), &pub);
    bool same = plen > 0 && (size_t)plen == p->signer_pub_len &&
                memcmp(pub, p->signer_pub, p->signer_pub_len) == 0;
    OPENSSL_free(pub);
    if (!same) {
        job_fail(job, MDM_SCEP_BADREQUEST,
                 "the message is signed with another key than the pending request");
        return;
    }
    const unsigned char *d = p->csr;
    job->owned_csr = d2i_X509_REQ(NULL, &d, (long)p->csr_len);
    if (job->owned_csr == NULL) {
        ERR_clear_error();
        job_fail(job, MDM_SCEP_BADCERTID, "the pending request is unreadable");
        return;
    }
    job->csr = job->owned_csr;
    job->request_type = p->type;
    job->from_pending = true;
    job->renewal = p->renewal;
    memcpy(job->old_fp, p->old_fp, 32);
    snprintf(job->owner, sizeof(job->owner), "%s", p->owner);
    snprintf(job->udid, sizeof(job->udid), "%s", p->udid);
    if (job->renewal) {
        char msg[400];
        int store_rc = 0;
        int fail = recheck_renewal(job, msg, sizeof(msg), &store_rc);
        if (store_rc != 0) {
            job_store_error(job, store_rc);
            return;
        }
        if (fail != MDM_SCEP_NOFAIL) {
            job_fail_final(job, fail, msg);
            return;
        }
    }
    decide_and_go(job);
}

struct view_done {
    const char *txid;
    done_rec_t d;
    mdm_certrec_t rec;
};

static int view_done_fn(mdm_txn_t *txn, void *arg)
{
    struct view_done *v = arg;
    mdm_certrec_free(&v->rec);
    int rc = done_get(txn, v->txid, &v->d);
    if (rc == 0)
        rc = mdm_certdb_get_by_serial(txn, v->d.serial, v->d.serial_len, &v->rec);
    return rc;
}

/* The request is the one that got d sent again (or a poll of it): of
 * the same type, by the same signer, for the same key. */
static bool same_request(scep_job_t *job, const done_rec_t *d)
{
    unsigned char k[32];
    if ((job->m.type != d->type && job->m.type != MDM_SCEP_CERTPOLL) ||
        signer_id(d->type, job->m.signer, k) != 0 || CRYPTO_memcmp(k, d->signer_id, 32) != 0)
        return false;
    if (job->m.csr == NULL)
        return true;
    return pubkey_sha256(X509_REQ_get0_pubkey(job->m.csr), k) == 0 &&
           CRYPTO_memcmp(k, d->csr_key, 32) == 0;
}

/* A request sent again after its transaction got SUCCESS, the reply
 * having been lost (RFC 8894 3.3.1): the same transactionID, signer key
 * and CSR key within RESEND_WINDOW_MS get the certificate already issued,
 * unless it was revoked meanwhile. True when the job was answered. */
static bool answer_resend(scep_job_t *job)
{
    struct view_done v = {.txid = job->m.txid};
    int rc = mdm_store_view(job->svc->store, view_done_fn, &v);
    mdm_err_t err = {0};
    bool match = rc == 0 && mdm_now_ms() - v.d.created_ms < RESEND_WINDOW_MS &&
                 !v.rec.revoked && same_request(job, &v.d) &&
                 mdm_cert_from_der(v.rec.der, v.rec.der_len, &job->issued, &err) == 0;
    if (match) {
        job->resent = true;
        job->status = MDM_SCEP_SUCCESS;
        snprintf(job->serial_hex, sizeof(job->serial_hex), "%s", v.rec.serial_hex);
        snprintf(job->subject, sizeof(job->subject), "%.250s", v.rec.subject);
        queue_respond(job);
    } else if (rc != 0 && rc != MDM_ENOTFOUND) {
        job_store_error(job, rc);
        match = true;
    }
    mdm_certrec_free(&v.rec);
    return match;
}

struct prune_ctx {
    mdm_scep_service_t *svc;
    int64_t now;
    size_t challenges, pending, done, slots;
};

/* The certificate a phase-3 slot is named after (see enroll.c) can still
 * sign a phase 3: it is known, not revoked and not expired. A store error
 * keeps the slot. */
static bool slot_cert_live(mdm_txn_t *txn, const unsigned char fp[32], void *arg)
{
    const struct prune_ctx *p = arg;
    mdm_certrec_t rec;
    int rc = mdm_certdb_get_by_fingerprint(txn, fp, &rec);
    bool live = rc == 0 ? !rec.revoked && rec.not_after_ms > p->now
                        : rc != MDM_ENOTFOUND && rc != MDM_EPARSE;
    mdm_certrec_free(&rec);
    return live;
}

static int prune_fn(mdm_txn_t *txn, void *arg)
{
    struct prune_ctx *p = arg;
    int64_t now = p->now;
    int rc = mdm_challenge_prune(txn, now, PRUNE_BATCH, &p->challenges);
    if (rc == 0)
        rc = index_prune(txn, PENDING_PREFIX, pending_keep, now, PRUNE_BATCH, &p->pending);
    if (rc == 0)
        rc = index_prune(txn, DONE_PREFIX, done_keep, now, PRUNE_BATCH, &p->done);
    if (rc == 0)
        rc = mdm_challenge_slot_prune(txn, p->svc->slot_from, SLOT_PRUNE_BATCH, slot_cert_live,
                                      p, &p->slots);
    return rc;
}

static void maybe_prune(mdm_scep_service_t *svc)
{
    int64_t now = mdm_now_ms();
    if (now - svc->last_prune_ms < PRUNE_EVERY_MS)
        return;
    svc->last_prune_ms = now;
    struct prune_ctx p = {.svc = svc, .now = now};
    int rc = mdm_store_update(svc->store, prune_fn, &p);
    if (rc != 0)
        mdm_log(MDM_LOG_WARN, NULL, "scep.prune_failed", "error=\"%s\"", mdm_strerror(rc));
    else if (p.challenges || p.pending || p.done || p.slots)
        mdm_log(MDM_LOG_INFO, NULL, "scep.pruned",
                "challenges=%zu pending=%zu answered=%zu slots=%zu", p.challenges, p.pending,
                p.done, p.slots);
}

static void parse_after(uv_work_t *w, int status)
{
    scep_job_t *job = w->data;
    mdm_scep_service_t *svc = job->svc;
    mdm_scep_msg_t *m = &job->m;
    char q[300], t[MDM_SCEP_TXID_MAX + 8];
    if (status != 0) {
        job_finish_text(job, 500, "internal error\n");
        return;
    }
    if (job->parse_rc != 0) {
        mdm_log(MDM_LOG_WARN, job->reqid, "scep.bad_message", "bytes=%zu reason=%s",
                job->msg_len, mdm_logq(q, sizeof(q), m->reason));
        char body[300];
        snprintf(body, sizeof(body), "bad SCEP message: %s\n", m->reason);
        job_finish_text(job, 400, body);
        return;
    }
    mdm_log(MDM_LOG_INFO, job->reqid, "scep.request", "txid=%s type=%s digest=%s cipher=%s",
            mdm_logq(t, sizeof(t), m->txid), mdm_scep_msgtype_name(m->type),
            mdm_scep_nid_name(m->digest_nid), mdm_scep_nid_name(m->cipher_nid));
    maybe_prune(svc);
    if (m->fail_info != MDM_SCEP_NOFAIL) {
        job_fail(job, m->fail_info, m->reason);
        return;
    }

    struct view_pending vp = {.txid = m->txid};
    int rc = mdm_store_view(svc->store, view_pending_fn, &vp);
    if (rc == 0) {
        continue_pending(job, &vp.p);
        pending_free(&vp.p);
        return;
    }
    pending_free(&vp.p);
    if (rc != MDM_ENOTFOUND) {
        job_store_error(job, rc);
        return;
    }
    if (answer_resend(job))
        return;
    if (m->type == MDM_SCEP_CERTPOLL) {
        job_fail(job, MDM_SCEP_BADCERTID, "no pending request has this transactionID");
        return;
    }
    job->request_type = m->type;
    job->csr = m->csr;
    if (m->type == MDM_SCEP_PKCSREQ ? !check_challenge(job) : !check_renewal(job))
        return;
    decide_and_go(job);
}

static void respond_work(uv_work_t *w)
{
    scep_job_t *job = w->data;
    mdm_scep_service_t *svc = job->svc;
    mdm_err_t err = {0};
    if (job->issue) {
        /* The parser verified the CSR's signature already. */
        mdm_issue_opts_t io = {.csr_verified = true};
        int rc = mdm_ca_issue_from_csr(svc->ca, job->csr, &io, &job->issued, &err);
        if (rc == 0 && mdm_cert_sha256(job->issued, job->new_fp) != 0)
            rc = mdm_err_set(&err, MDM_ECRYPTO, "cannot hash the new certificate");
        if (rc != 0) {
            X509_free(job->issued);
            job->issued = NULL;
            job->issue = false;
            job->issue_failed = true;
            job->status = MDM_SCEP_FAILURE;
            job->fail_info = MDM_SCEP_BADREQUEST;
            snprintf(job->reason, sizeof(job->reason), "cannot issue: %.380s", err.msg);
            memset(&err, 0, sizeof(err));
        } else {
            job->status = MDM_SCEP_SUCCESS;
            unsigned char serial[MDM_SERIAL_MAX];
            size_t slen = 0;
            if (mdm_cert_serial(job->issued, serial, &slen) == 0)
                mdm_serial_format(serial, slen, job->serial_hex);
        }
    }
    mdm_scep_reply_t r = {
        .signer_cert = svc->signer_cert,
        .signer_key = svc->signer_key,
        .digest_nid = job->m.digest_nid,
        .status = job->status,
        .fail_info = job->fail_info,
        .txid = job->m.txid,
        .txid_type = job->m.txid_type,
        .recipient_nonce = job->m.sender_nonce,
        .recipient_nonce_len = job->m.sender_nonce_len,
        .issued = job->issued,
        .recipient = job->m.signer,
        .cipher_nid = job->m.cipher_nid,
    };
    mdm_buf_reset(&job->out);
    job->build_rc = mdm_scep_certrep(&r, &job->out, &err);
    if (job->build_rc != 0)
        snprintf(job->build_err, sizeof(job->build_err), "%s", err.msg);
}

static void respond_after(uv_work_t *w, int status)
{
    scep_job_t *job = w->data;
    mdm_scep_service_t *svc = job->svc;
    char q[600], t[MDM_SCEP_TXID_MAX + 8], s[300], o[300];
    if (status != 0) {
        job_finish_text(job, 500, "internal error\n");
        return;
    }
    if (job->build_rc != 0) {
        mdm_log(MDM_LOG_ERROR, job->reqid, "scep.certrep_failed", "txid=%s error=%s",
                mdm_logq(t, sizeof(t), job->m.txid), mdm_logq(q, sizeof(q), job->build_err));
        job_finish_text(job, 500, "internal error\n");
        return;
    }
    if (job->issue_failed) {
        job->issue_failed = false;
        mdm_log(MDM_LOG_WARN, job->reqid, "scep.failure", "txid=%s type=%s fail_info=%s reason=%s",
                mdm_logq(t, sizeof(t), job->m.txid), mdm_scep_msgtype_name(job->m.type),
                mdm_scep_failinfo_name(job->fail_info), mdm_logq(q, sizeof(q), job->reason));
    }
    if (job->resent) {
        mdm_log(MDM_LOG_INFO, job->reqid, "scep.resent", "txid=%s type=%s serial=%s subject=%s",
                mdm_logq(t, sizeof(t), job->m.txid), mdm_scep_msgtype_name(job->m.type),
                job->serial_hex, mdm_logq(s, sizeof(s), job->subject));
    } else if (job->issued != NULL) {
        int rc = mdm_store_update(svc->store, store_issued_fn, job);
        if (rc == MDM_ESTATE) {
            /* A race was lost: nothing was stored, and the signed reply is
             * thrown away for a FAILURE. */
            X509_free(job->issued);
            job->issued = NULL;
            job_fail(job, job->lost_fail, job->lost_reason);
            return;
        }
        if (rc != 0) {
            job_store_error(job, rc);
            return;
        }
        mdm_log(MDM_LOG_INFO, job->reqid, "scep.issued",
                "txid=%s type=%s serial=%s subject=%s owner=%s renewal=%s",
                mdm_logq(t, sizeof(t), job->m.txid), mdm_scep_msgtype_name(job->request_type),
                job->serial_hex, mdm_logq(s, sizeof(s), job->subject),
                mdm_logq(o, sizeof(o), job->owner[0] ? job->owner : "-"),
                job->renewal ? "true" : "false");
    }
    job_finish(job, 200, CT_PKI, job->out.data, job->out.len);
}

int mdm_scep_pkioperation(mdm_scep_service_t *svc, const char *reqid, const char *remote_addr,
                          const void *msg, size_t len, mdm_scep_done_fn done, void *arg)
{
    if (len == 0 || len > MDM_SCEP_MSG_MAX)
        return MDM_EINVAL;
    if (svc->inflight >= svc->max_inflight)
        return MDM_ELIMIT;
    scep_job_t *job = mdm_calloc(1, sizeof(*job));
    job->svc = svc;
    snprintf(job->reqid, sizeof(job->reqid), "%s", reqid ? reqid : "-");
    snprintf(job->remote, sizeof(job->remote), "%s", remote_addr ? remote_addr : "");
    job->done = done;
    job->done_arg = arg;
    job->msg = mdm_memdup(msg, len);
    job->msg_len = len;
    job->m.fail_info = MDM_SCEP_NOFAIL;
    job->fail_info = MDM_SCEP_NOFAIL;
    job->work.data = job;
    int r = uv_queue_work(svc->loop, &job->work, parse_work, parse_after);
    if (r != 0) {
        job_free(job);
        return MDM_EIO;
    }
    svc->inflight++;
    return 0;
}

/* ---- CRL ----------------------------------------------------------------- */

static int read_seq_fn(mdm_txn_t *txn, void *arg)
{
    int rc = mdm_meta_get_u64(txn, "revocations", arg);
    if (rc == MDM_ENOTFOUND) {
        *(uint64_t *)arg = 0;
        rc = 0;
    }
    return rc;
}

static int crl_prepare_fn(mdm_txn_t *txn, void *arg)
{
    crl_job_t *j = arg;
    mdm_free(j->list);
    j->list = NULL;
    j->n = 0;
    int rc = read_seq_fn(txn, &j->seq);
    if (rc == 0)
        rc = mdm_certdb_revoked_list(txn, &j->list, &j->n);
    if (rc == 0)
        rc = mdm_certdb_crl_number_next(txn, &j->number);
    return rc;
}

static void crl_work(uv_work_t *w)
{
    crl_job_t *j = w->data;
    j->built_ms = mdm_now_ms();
    j->rc = mdm_ca_crl(j->svc->ca, j->list, j->n, j->number, j->built_ms + CRL_VALIDITY_MS,
                       &j->der, &j->err);
}

static void crl_answer_all(mdm_scep_service_t *svc, int status)
{
    /* Waiters may add waiters (a new request in a callback): take the list. */
    struct crl_waiter *ws = svc->waiters;
    size_t n = svc->nwaiters;
    svc->waiters = NULL;
    svc->nwaiters = svc->cap_waiters = 0;
    for (size_t i = 0; i < n; i++) {
        if (status == 200)
            ws[i].done(ws[i].arg, 200, "application/pkix-crl", svc->crl.data, svc->crl.len);
        else
            ws[i].done(ws[i].arg, status, CT_TEXT, "cannot build the CRL\n", 21);
    }
    mdm_free(ws);
}

static void crl_after(uv_work_t *w, int status)
{
    crl_job_t *j = w->data;
    mdm_scep_service_t *svc = j->svc;
    svc->crl_building = false;
    if (status != 0 || j->rc != 0) {
        mdm_log(MDM_LOG_ERROR, NULL, "scep.crl_failed", "error=\"%s\"",
                status != 0 ? uv_strerror(status) : j->err.msg);
        crl_answer_all(svc, 500);
    } else {
        mdm_buf_reset(&svc->crl);
        mdm_buf_append(&svc->crl, j->der.data, j->der.len);
        svc->crl_valid = true;
        svc->crl_seq = j->seq;
        svc->crl_built_ms = j->built_ms;
        mdm_log(MDM_LOG_INFO, NULL, "scep.crl_built", "crl_number=%llu revoked=%zu bytes=%zu",
                (unsigned long long)j->number, j->n, j->der.len);
        crl_answer_all(svc, 200);
    }
    mdm_free(j->list);
    mdm_buf_free(&j->der);
    mdm_free(j);
}

int mdm_scep_crl(mdm_scep_service_t *svc, const char *reqid, mdm_scep_done_fn done, void *arg)
{
    uint64_t seq = 0;
    int rc = mdm_store_view(svc->store, read_seq_fn, &seq);
    if (rc != 0) {
        mdm_log(MDM_LOG_ERROR, reqid, "scep.store_error", "error=\"%s\"", mdm_strerror(rc));
        return rc;
    }
    if (svc->crl_valid && seq == svc->crl_seq && mdm_now_ms() - svc->crl_built_ms < CRL_REFRESH_MS) {
        done(arg, 200, "application/pkix-crl", svc->crl.data, svc->crl.len);
        return 0;
    }
    if (svc->nwaiters == svc->cap_waiters) {
        svc->cap_waiters = svc->cap_waiters ? svc->cap_waiters * 2 : 8;
        svc->waiters = mdm_realloc(svc->waiters, svc->cap_waiters * sizeof(*svc->waiters));
    }
    svc->waiters[svc->nwaiters++] = (struct crl_waiter){done, arg};
    if (svc->crl_building)
        return 0;
    crl_job_t *j = mdm_calloc(1, sizeof(*j));
    j->svc = svc;
    j->work.data = j;
    rc = mdm_store_update(svc->store, crl_prepare_fn, j);
    int r = rc == 0 ? uv_queue_work(svc->loop, &j->work, crl_work, crl_after) : 0;
    if (rc != 0 || r != 0) {
        mdm_log(MDM_LOG_ERROR, reqid, "scep.crl_failed", "error=\"%s\"",
                rc != 0 ? mdm_strerror(rc) : uv_strerror(r));
        mdm_free(j->list);
        mdm_free(j);
        /* The waiter just added must not be called: this call failed. */
        svc->nwaiters--;
        crl_answer_all(svc, 500);
        return rc != 0 ? rc : MDM_EIO;
    }
    svc->crl_building = true;
    return 0;
}

/* ---- the service object -------------------------------------------------- */

int mdm_scep_service_new(const mdm_scep_service_opts_t *opts, mdm_scep_service_t **out,
                         mdm_err_t *err)
{
    *out = NULL;
    mdm_ca_t *ca = opts->ca;
    if (ca == NULL || opts->store == NULL || opts->loop == NULL)
        return mdm_err_set(err, MDM_EINVAL, "the SCEP service needs a loop, a store and a CA");
    if ((opts->ra_cert == NULL) != (opts->ra_key == NULL))
        return mdm_err_set(err, MDM_ECONFIG,
                           "scep.ra_cert and scep.ra_key must be set together");
    if (opts->ra_cert != NULL) {
        X509 *ra = opts->ra_cert;
        uint32_t ku = X509_get_key_usage(ra);
        if (!mdm_key_matches_cert(opts->ra_key, ra))
            return mdm_err_set(err, MDM_ECONFIG, "the RA key does not match the RA certificate");
        if (!EVP_PKEY_is_a(opts->ra_key, "RSA"))
            return mdm_err_set(err, MDM_ECONFIG,
                               "the RA key must be RSA: SCEP clients encrypt to it with RSA key "
                               "transport");
        if (X509_get_extension_flags(ra) & EXFLAG_CA)
            return mdm_err_set(err, MDM_ECONFIG,
                               "the RA certificate must not be a CA (Apple clients would take "
                               "it for the CA)");
        if ((ku & (KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT)) !=
            (KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT))
            return mdm_err_set(err, MDM_ECONFIG,
                               "the RA certificate needs key usage digitalSignature and "
                               "keyEncipherment (Apple clients choose it by key usage)");
        mdm_err_t verr = {0};
        if (mdm_ca_verify_cert(ca, ra, NULL, &verr) != 0)
            return mdm_err_set(err, MDM_ECONFIG, "the RA certificate is not valid under the CA: %s",
                               verr.msg);
    }

    mdm_scep_service_t *svc = mdm_calloc(1, sizeof(*svc));
    svc->loop = opts->loop;
    svc->store = opts->store;
    svc->ca = ca;
    if (opts->ra_cert != NULL) {
        X509_up_ref(opts->ra_cert);
        EVP_PKEY_up_ref(opts->ra_key);
        svc->ra_cert = opts->ra_cert;
        svc->ra_key = opts->ra_key;
    }
    svc->keys = (mdm_scep_keys_t){
        .ra_cert = svc->ra_cert,
        .ra_key = svc->ra_key,
        .ca_cert = ca->cert,
        .ca_key = ca->key,
        .allow_single_des = opts->allow_single_des,
    };
    svc->signer_cert = svc->ra_cert ? svc->ra_cert : ca->cert;
    svc->signer_key = svc->ra_key ? svc->ra_key : ca->key;
    if (opts->static_challenge != NULL && opts->static_challenge[0] != '\0')
        svc->static_challenge = mdm_strdup(opts->static_challenge);
    svc->max_inflight = opts->max_inflight ? opts->max_inflight : DEFAULT_MAX_INFLIGHT;

    /* GetCACert: the CA alone, or with an RA or intermediates a
     * certs-only bundle (RA first, then the CA and its chain). */
    int rc = 0;
    if (svc->ra_cert == NULL && sk_X509_num(ca->chain) == 0) {
        rc = mdm_cert_to_der(ca->cert, &svc->cacert);
        svc->cacert_ctype = "application/x-x509-ca-cert";
    } else {
        STACK_OF(X509) *certs = sk_X509_new_null();
        if (svc->ra_cert)
            sk_X509_push(certs, svc->ra_cert);
        sk_X509_push(certs, ca->cert);
        for (int i = 0; i < sk_X509_num(ca->chain); i++)
            sk_X509_push(certs, sk_X509_value(ca->chain, i));
        rc = mdm_scep_certs_only(certs, &svc->cacert, err);
        sk_X509_free(certs);
        svc->cacert_ctype = "application/x-x509-ca-ra-cert";
    }
    if (rc != 0) {
        mdm_scep_service_destroy(svc);
        return mdm_err_set(err, rc, "cannot encode the GetCACert answer");
    }
    if (svc->ra_cert == NULL) {
        if (!EVP_PKEY_is_a(ca->key, "RSA"))
            mdm_log(MDM_LOG_WARN, NULL, "scep.no_usable_recipient",
                    "reason=\"the CA key is not RSA and no RA is configured: SCEP clients cannot "
                    "encrypt requests to it; set scep.ra_cert and scep.ra_key (moonmdm init "
                    "makes an RA)\"");
        else if (!(X509_get_key_usage(ca->cert) & KU_KEY_ENCIPHERMENT))
            mdm_log(MDM_LOG_WARN, NULL, "scep.ca_key_usage",
                    "reason=\"the CA certificate lacks keyEncipherment: Apple clients will not "
                    "encrypt SCEP requests to it; configure an RA\"");
    }
    *out = svc;
    return 0;
}

void mdm_scep_service_destroy(mdm_scep_service_t *svc)
{
    if (svc == NULL)
        return;
    X509_free(svc->ra_cert);
    EVP_PKEY_free(svc->ra_key);
    if (svc->static_challenge != NULL) {
        OPENSSL_cleanse(svc->static_challenge, strlen(svc->static_challenge));
        mdm_free(svc->static_challenge);
    }
    mdm_buf_free(&svc->cacert);
    mdm_buf_free(&svc->crl);
    mdm_free(svc->waiters);
    mdm_free(svc->crl_path);
    mdm_free(svc);
}

void mdm_scep_service_set_decision(mdm_scep_service_t *svc, mdm_scep_decide_fn fn, void *udata)
{
    svc->decide = fn;
    svc->decide_udata = udata;
}

/* ---- HTTP ---------------------------------------------------------------- */

static void http_done(void *arg, int status, const char *ctype, const void *body, size_t len)
{
    mdm_req_t *req = arg;
    mdm_resp_send(req, status, ctype, body, len);
}

static void start_pkioperation(mdm_req_t *req, const void *msg, size_t len)
{
    mdm_scep_service_t *svc = req->server->scep;
    int rc = mdm_scep_pkioperation(svc, req->id, req->remote_addr, msg, len, http_done, req);
    if (rc == MDM_ELIMIT) {
        mdm_log(MDM_LOG_WARN, req->id, "scep.busy", "inflight=%zu", svc->inflight);
        mdm_resp_header(req, "Retry-After", "5");
        mdm_resp_text(req, 503, "too many SCEP requests in progress; retry later\n");
    } else if (rc == MDM_EINVAL) {
        mdm_log(MDM_LOG_WARN, req->id, "scep.bad_message", "bytes=%zu reason=\"%s\"", len,
                len == 0 ? "empty message" : "message too large");
        mdm_resp_text(req, 400, len == 0 ? "bad SCEP message: empty\n"
                                         : "bad SCEP message: too large\n");
    } else if (rc != 0) {
        mdm_resp_text(req, 500, "internal error\n");
    }
}

static void handle_scep(mdm_req_t *req)
{
    mdm_scep_service_t *svc = req->server->scep;
    mdm_buf_t op = MDM_BUF_INIT, b64 = MDM_BUF_INIT, der = MDM_BUF_INIT;
    char q[160];
    int rc = mdm_req_query(req, "operation", &op, true);
    if (rc != 0) {
        mdm_log(MDM_LOG_WARN, req->id, "scep.bad_operation", "operation=-");
        mdm_resp_text(req, 400, "missing operation= (GetCACaps, GetCACert or PKIOperation)\n");
        goto out;
    }
    if (strcasecmp(op.data, "PKIOperation") == 0) {
        if (req->method == MDM_POST) {
            start_pkioperation(req, req->body, req->body_len);
            goto out;
        }
        rc = mdm_req_query(req, "message", &b64, false);
        if (rc == 0)
            rc = mdm_base64_decode(&der, b64.data, b64.len);
        if (rc != 0) {
            mdm_log(MDM_LOG_WARN, req->id, "scep.bad_message", "reason=\"%s\"",
                    rc == MDM_ENOTFOUND ? "PKIOperation by GET without message="
                                        : "message= is not base64");
            mdm_resp_text(req, 400,
                          rc == MDM_ENOTFOUND ? "PKIOperation by GET needs message=\n"
                                              : "message= is not valid base64\n");
            goto out;
        }
        start_pkioperation(req, der.data, der.len);
        goto out;
    }
    if (req->method != MDM_GET) {
        mdm_resp_text(req, 405, "only PKIOperation may be sent by POST\n");
        goto out;
    }
    if (strcasecmp(op.data, "GetCACaps") == 0) {
        mdm_resp_send(req, 200, "text/plain", CAPS, sizeof(CAPS) - 1);
    } else if (strcasecmp(op.data, "GetCACert") == 0) {
        mdm_resp_send(req, 200, svc->cacert_ctype, svc->cacert.data, svc->cacert.len);
    } else {
        mdm_log(MDM_LOG_WARN, req->id, "scep.bad_operation", "operation=%s",
                mdm_logq(q, sizeof(q), op.data));
        mdm_resp_text(req, 400,
                      "unsupported operation (GetCACaps, GetCACert and PKIOperation are)\n");
    }
out:
    mdm_buf_free(&op);
    mdm_buf_free(&b64);
    mdm_buf_free(&der);
}

static void handle_crl(mdm_req_t *req)
{
    mdm_scep_service_t *svc = req->server->scep;
    if (mdm_scep_crl(svc, req->id, http_done, req) != 0)
        mdm_resp_text(req, 500, "cannot build the CRL\n");
}

static void json_send(mdm_req_t *req, int status, json_t *j)
{
    char *text = json_dumps(j, JSON_COMPACT);
    json_decref(j);
    mdm_buf_reset(&req->resp_body);
    mdm_buf_puts(&req->resp_body, text ? text : "{}");
    mdm_buf_putc(&req->resp_body, '\n');
    free(text);
    mdm_resp_send_buf(req, status, "application/json");
}

/* Parses an optional JSON object body; NULL body gives an empty object.
 * NULL after answering 400. */
static json_t *json_body(mdm_req_t *req)
{
    if (req->body_len == 0)
        return json_object();
    return mdm_api_body_object(req, 0, "bad_request", "the body must be a JSON object");
}

struct create_challenge_ctx {
    const char *owner;
    const char *udid; /* NULL: not for one device */
    uint64_t ttl_ms;
    mdm_challenge_t c;
};

static int create_challenge_fn(mdm_txn_t *txn, void *arg)
{
    struct create_challenge_ctx *c = arg;
    return mdm_challenge_create_for(txn, c->owner, c->udid, MDM_CHALLENGE_SCEP, c->ttl_ms,
                                    &c->c);
}

/* The optional "udid" of a challenge request: the device its certificate
 * will be tied to. False when it is there and not a device id. */
static bool challenge_udid(json_t *body, const char **out)
{
    json_t *udid = json_object_get(body, "udid");
    *out = NULL;
    if (udid == NULL || json_is_null(udid))
        return true;
    if (!json_is_string(udid) || !mdm_device_id_ok(json_string_value(udid)))
        return false;
    *out = json_string_value(udid);
    return true;
}

static void handle_challenge_new(mdm_req_t *req)
{
    mdm_scep_service_t *svc = req->server->scep;
    json_t *body = json_body(req);
    char q[300];
    if (body == NULL)
        return;
    struct create_challenge_ctx c = {.owner = "", .ttl_ms = svc->default_ttl_ms};
    json_t *user = json_object_get(body, "user");
    json_t *ttl = json_object_get(body, "ttl");
    if (user != NULL && !json_is_null(user)) {
        if (!json_is_string(user) || strlen(json_string_value(user)) > MDM_CHALLENGE_OWNER_MAX) {
            json_decref(body);
            mdm_resp_json_error(req, 400, "bad_request", "user must be a string of at most 255 bytes");
            return;
        }
        c.owner = json_string_value(user);
    }
    if (!challenge_udid(body, &c.udid)) {
        json_decref(body);
        mdm_resp_json_error(req, 400, "bad_request",
                            "udid must be a string of 1 to 128 printable ASCII characters "
                            "without space or ':'");
        return;
    }
    if (ttl != NULL && !json_is_null(ttl)) {
        uint64_t ms = 0;
        bool ok = false;
        if (json_is_string(ttl))
            ok = mdm_parse_duration_ms(json_string_value(ttl), &ms) == 0;
        else if (json_is_integer(ttl) && json_integer_value(ttl) > 0 &&
                 (uint64_t)json_integer_value(ttl) <= CHALLENGE_TTL_MAX_MS / 1000)
            ok = (ms = (uint64_t)json_integer_value(ttl) * 1000, true);
        if (!ok || ms == 0 || ms > CHALLENGE_TTL_MAX_MS) {
            json_decref(body);
            mdm_resp_json_error(req, 400, "bad_request",
                                "ttl must be a duration such as \"1h\" (at most 365d) or seconds");
            return;
        }
        c.ttl_ms = ms;
    }
    int rc = mdm_store_update(req->server->store, create_challenge_fn, &c);
    if (rc != 0) {
        json_decref(body);
        mdm_log(MDM_LOG_ERROR, req->id, "scep.store_error", "error=\"%s\"", mdm_strerror(rc));
        mdm_api_store_error(req, rc);
        return;
    }
    char expires[32], uq[300];
    mdm_time_format(expires, c.c.expires_ms);
    mdm_log(MDM_LOG_INFO, req->id, "scep.challenge_created",
            "owner=%s udid=%s expires=%s via=api",
            mdm_logq(q, sizeof(q), c.c.owner[0] ? c.c.owner : "-"),
            mdm_logq(uq, sizeof(uq), c.c.udid[0] ? c.c.udid : "-"), expires);
    json_t *j = json_pack("{s:s, s:s, s:s, s:s}", "challenge", c.c.text, "expires_at", expires,
                          "user", c.c.owner, "udid", c.c.udid);
    json_decref(body);
    OPENSSL_cleanse(c.c.text, sizeof(c.c.text));
    json_send(req, 201, j);
}

static json_t *cert_json(const mdm_certrec_t *r, const char *owner, const char *udid)
{
    char nb[32], na[32], ra[32], fp[65];
    mdm_time_format(nb, r->not_before_ms);
    mdm_time_format(na, r->not_after_ms);
    mdm_hex_encode(fp, r->sha256, 32);
    json_t *j = json_pack("{s:s, s:s, s:s, s:s, s:s, s:b, s:s, s:s, s:s}", "serial", r->serial_hex,
                          "subject", r->subject, "sha256", fp, "not_before", nb, "not_after", na,
                          "revoked", r->revoked, "transaction_id", r->transaction_id,
                          "enrollment_id", r->enrollment_id, "owner", owner);
    json_object_set_new(j, "udid", json_string(udid));
    if (r->revoked) {
        mdm_time_format(ra, r->revoked_at_ms);
        json_object_set_new(j, "revoked_at", json_string(ra));
        json_object_set_new(j, "reason", json_integer(r->reason));
    }
    return j;
}

struct list_ctx {
    mdm_txn_t *txn;
    json_t *arr;
};

static int list_cb(const mdm_certrec_t *r, void *arg)
{
    struct list_ctx *l = arg;
    char owner[MDM_CHALLENGE_OWNER_MAX + 1] = "";
    char udid[MDM_CHALLENGE_UDID_MAX + 1] = "";
    if (mdm_challenge_owner_of_cert(l->txn, r->sha256, owner, sizeof(owner)) != 0)
        owner[0] = '\0';
    if (mdm_challenge_udid_of_cert(l->txn, r->sha256, udid, sizeof(udid)) != 0)
        udid[0] = '\0';
    json_array_append_new(l->arr, cert_json(r, owner, udid));
    return 0;
}

struct list_view {
    size_t offset, limit;
    json_t *arr;
};

static int list_view_fn(mdm_txn_t *txn, void *arg)
{
    struct list_view *v = arg;
    json_array_clear(v->arr);
    struct list_ctx l = {.txn = txn, .arr = v->arr};
    return mdm_certdb_list(txn, v->offset, v->limit, list_cb, &l);
}

static bool query_size(mdm_req_t *req, const char *name, size_t def, size_t *out)
{
    mdm_buf_t b = MDM_BUF_INIT;
    int rc = mdm_req_query(req, name, &b, true);
    *out = def;
    bool ok = true;
    if (rc == 0) {
        char *end = NULL;
        unsigned long long v = strtoull(b.data, &end, 10);
        ok = b.len > 0 && end != NULL && *end == '\0';
        *out = (size_t)v;
    } else if (rc != MDM_ENOTFOUND) {
        ok = false;
    }
    mdm_buf_free(&b);
    return ok;
}

static void handle_cert_list(mdm_req_t *req)
{
    struct list_view v;
    if (!query_size(req, "offset", 0, &v.offset) || !query_size(req, "limit", 100, &v.limit) ||
        v.limit == 0 || v.limit > 1000) {
        mdm_resp_json_error(req, 400, "bad_request", "offset >= 0 and limit 1..1000 please");
        return;
    }
    v.arr = json_array();
    int rc = mdm_store_view(req->server->store, list_view_fn, &v);
    if (rc != 0) {
        json_decref(v.arr);
        mdm_api_store_error(req, rc);
        return;
    }
    json_t *j = json_pack("{s:o, s:I, s:I}", "certs", v.arr, "offset", (json_int_t)v.offset,
                          "limit", (json_int_t)v.limit);
    json_send(req, 200, j);
}

struct revoke_ctx {
    unsigned char serial[MDM_SERIAL_MAX];
    size_t len;
    int reason;
    mdm_certrec_t rec;
};

static int revoke_fn(mdm_txn_t *txn, void *arg)
{
    struct revoke_ctx *r = arg;
    mdm_certrec_free(&r->rec);
    int rc = mdm_scep_revoke(txn, r->serial, r->len, r->reason, mdm_now_ms());
    if (rc == 0)
        rc = mdm_certdb_get_by_serial(txn, r->serial, r->len, &r->rec);
    return rc;
}

static void handle_cert_revoke(mdm_req_t *req)
{
    struct revoke_ctx r;
    memset(&r, 0, sizeof(r));
    if (req->nparams < 1 || mdm_serial_parse(req->params[0], r.serial, &r.len) != 0) {
        mdm_resp_json_error(req, 400, "bad_request", "the serial must be hexadecimal");
        return;
    }
    json_t *body = json_body(req);
    if (body == NULL)
        return;
    json_t *reason = json_object_get(body, "reason");
    if (reason != NULL && !json_is_null(reason)) {
        json_int_t v = json_is_integer(reason) ? json_integer_value(reason) : -1;
        if (v < 0 || v > 10 || v == 7 || v == 8) {
            json_decref(body);
            mdm_resp_json_error(req, 400, "bad_request",
                                "reason must be an RFC 5280 CRLReason: 0..10 except 7 and 8 "
                                "(removeFromCRL is for delta CRLs)");
            return;
        }
        r.reason = (int)v;
    }
    json_decref(body);
    int rc = mdm_store_update(req->server->store, revoke_fn, &r);
    if (rc == MDM_ENOTFOUND) {
        mdm_certrec_free(&r.rec);
        mdm_resp_json_error(req, 404, "not_found", "no certificate with this serial was issued");
        return;
    }
    if (rc != 0) {
        mdm_certrec_free(&r.rec);
        mdm_api_store_error(req, rc);
        return;
    }
    mdm_log(MDM_LOG_INFO, req->id, "scep.cert_revoked", "serial=%s reason=%d via=api",
            r.rec.serial_hex, r.rec.reason);
    json_t *j = cert_json(&r.rec, "", "");
    json_object_del(j, "owner");
    json_object_del(j, "udid");
    mdm_certrec_free(&r.rec);
    json_send(req, 200, j);
}

/* The path part of ca.crl_url ("http://host/x/ca.crl" -> "/x/ca.crl"). */
static char *crl_path_of(const char *url)
{
    if (url == NULL || url[0] == '\0')
        return mdm_strdup("/ca.crl");
    const char *p = url;
    const char *scheme = strstr(url, "://");
    if (scheme != NULL) {
        p = strchr(scheme + 3, '/');
        if (p == NULL)
            return mdm_strdup("/ca.crl");
    }
    if (p[0] != '/')
        return mdm_strdup("/ca.crl");
    size_t n = strcspn(p, "?#");
    if (n <= 1 || memchr(p, '{', n) != NULL || memchr(p, '*', n) != NULL)
        return mdm_strdup("/ca.crl");
    return mdm_strndup(p, n);
}

int mdm_scep_service_init(mdm_server_t *s, mdm_err_t *err)
{
    const mdm_config_t *cfg = s->cfg;
    X509 *ra = NULL;
    EVP_PKEY *ra_key = NULL;
    int rc = 0;
    if (cfg->scep_ra_cert != NULL || cfg->scep_ra_key != NULL) {
        if (cfg->scep_ra_cert == NULL || cfg->scep_ra_key == NULL)
            return mdm_err_set(err, MDM_ECONFIG,
                               "scep.ra_cert and scep.ra_key must be set together");
        rc = mdm_cert_read_pem(cfg->scep_ra_cert, &ra, err);
        if (rc == 0)
            rc = mdm_key_read_pem(cfg->scep_ra_key, cfg->tls_allow_insecure_key_mode, &ra_key,
                                  err);
        if (rc != 0)
            goto out;
    }
    mdm_scep_service_opts_t opts = {
        .loop = s->loop,
        .store = s->store,
        .ca = s->ca,
        .ra_cert = ra,
        .ra_key = ra_key,
        .static_challenge = cfg->scep_static_challenge,
        .allow_single_des = cfg->scep_allow_single_des,
    };
    mdm_scep_service_t *svc = NULL;
    mdm_err_t e2 = {0};
    rc = mdm_scep_service_new(&opts, &svc, &e2);
    if (rc != 0) {
        if (ra != NULL)
            mdm_err_set(err, rc, "scep.ra_cert %.200s: %.280s", cfg->scep_ra_cert, e2.msg);
        else
            mdm_err_set(err, rc, "scep: %.480s", e2.msg);
        goto out;
    }
    svc->default_ttl_ms = cfg->scep_challenge_ttl_ms;
    svc->crl_path = crl_path_of(cfg->ca_crl_url);
    s->scep = svc;
    mdm_router_add(&s->router, MDM_GET | MDM_POST, cfg->scep_path, handle_scep, MDM_AUTH_PUBLIC,
                   "scep");
    mdm_router_add(&s->router, MDM_GET, svc->crl_path, handle_crl, MDM_AUTH_PUBLIC, "crl");
    mdm_router_add(&s->router, MDM_POST, "/v1/challenges", handle_challenge_new,
                   MDM_AUTH_API_ADMIN, "v1_challenges_create");
    mdm_router_add(&s->router, MDM_GET, "/v1/certs", handle_cert_list, MDM_AUTH_API_READ,
                   "v1_certs_list");
    mdm_router_add(&s->router, MDM_POST, "/v1/certs/{serial}/revoke", handle_cert_revoke,
                   MDM_AUTH_API_ADMIN, "v1_certs_revoke");
    char kd[80];
    mdm_key_describe(svc->signer_key, kd, sizeof(kd));
    mdm_log(MDM_LOG_INFO, NULL, "scep.ready", "path=%s crl_path=%s ra=%s signer_key=\"%s\"",
            cfg->scep_path, svc->crl_path, svc->ra_cert ? "true" : "false", kd);
out:
    X509_free(ra);
    EVP_PKEY_free(ra_key);
    return rc;
}

void mdm_scep_service_free(mdm_server_t *s)
{
    mdm_scep_service_destroy(s->scep);
    s->scep = NULL;
}

void mdm_scep_prune_due(mdm_server_t *s)
{
    if (s->scep != NULL)
        maybe_prune(s->scep);
}

void mdm_scep_set_decision(mdm_server_t *s, mdm_scep_decide_fn fn, void *udata)
{
    if (s->scep != NULL)
        mdm_scep_service_set_decision(s->scep, fn, udata);
}
