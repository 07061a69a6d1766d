/* One-time SCEP challenges. See challenge.h for the layout. */
#include "scep/challenge.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <string.h>

#include "util/alloc.h"
#include "util/encode.h"
#include "util/misc.h"

#define VALUE_VERSION 3
#define V3_HEAD 19 /* + the UDID, then the owner */
#define V2_HEAD 18
#define V1_HEAD 17

static const char OWNER_PREFIX[] = "scepowner"; /* + '\0' + 32 bytes */
#define OWNER_PREFIX_LEN sizeof(OWNER_PREFIX)
static const char UDID_PREFIX[] = "scepudid"; /* + '\0' + 32 bytes */
static const char SLOT_PREFIX[] = "scepslot"; /* + '\0' + 32 bytes */
#define SLOT_PREFIX_LEN sizeof(SLOT_PREFIX)

static int digest_of(const char *text, unsigned char out[32])
{
    unsigned int n = 0;
    if (EVP_Digest(text, strlen(text), out, &n, EVP_sha256(), NULL) != 1 || n != 32)
        return MDM_ECRYPTO;
    return 0;
}

static bool purpose_ok(int purpose)
{
    return purpose == MDM_CHALLENGE_SCEP || purpose == MDM_CHALLENGE_OTA;
}

const char *mdm_challenge_purpose_name(int purpose)
{
    return purpose == MDM_CHALLENGE_SCEP ? "scep" : purpose == MDM_CHALLENGE_OTA ? "ota" : "?";
}

/* The offset of the owner in a value, and the UDID's (len 0 when none). */
static int value_layout(mdm_val_t v, size_t *udid_at, size_t *udid_len, size_t *owner_at)
{
    const unsigned char *p = v.data;
    *udid_at = *udid_len = 0;
    if (v.len == 0)
        return MDM_EPARSE;
    switch (p[0]) {
    case 1: *owner_at = V1_HEAD; break;
    case 2: *owner_at = V2_HEAD; break;
    case VALUE_VERSION:
        if (v.len < V3_HEAD)
            return MDM_EPARSE;
        *udid_at = V3_HEAD;
        *udid_len = p[V3_HEAD - 1];
        *owner_at = V3_HEAD + *udid_len;
        break;
    default: return MDM_EPARSE;
    }
    if (v.len < *owner_at || v.len - *owner_at > MDM_CHALLENGE_OWNER_MAX)
        return MDM_EPARSE;
    return 0;
}

static int decode_value(mdm_val_t v, mdm_challenge_t *out)
{
    const unsigned char *p = v.data;
    size_t udid_at, udid_len, head;
    int rc = value_layout(v, &udid_at, &udid_len, &head);
    if (rc != 0)
        return rc;
    out->expires_ms = (int64_t)mdm_be64_get(p + 1);
    out->created_ms = (int64_t)mdm_be64_get(p + 9);
    out->purpose = head == V1_HEAD ? MDM_CHALLENGE_SCEP : p[V1_HEAD];
    memcpy(out->udid, p + udid_at, udid_len);
    out->udid[udid_len] = '\0';
    memcpy(out->owner, p + head, v.len - head);
    out->owner[v.len - head] = '\0';
    return 0;
}

/* A name of at most max bytes without NUL; NULL reads as "". */
static bool name_ok(const char *name, size_t max)
{
    return name == NULL || strlen(name) <= max;
}

int mdm_challenge_create(mdm_txn_t *txn, const char *owner, int purpose, uint64_t ttl_ms,
                         mdm_challenge_t *out)
{
    return mdm_challenge_create_for(txn, owner, NULL, purpose, ttl_ms, out);
}

int mdm_challenge_create_for(mdm_txn_t *txn, const char *owner, const char *udid, int purpose,
                             uint64_t ttl_ms, mdm_challenge_t *out)
{
    if (ttl_ms == 0 || !purpose_ok(purpose) || ttl_ms > (uint64_t)INT64_MAX / 2 ||
        !name_ok(owner, MDM_CHALLENGE_OWNER_MAX) || !name_ok(udid, MDM_CHALLENGE_UDID_MAX))
        return MDM_EINVAL;
    owner = owner == NULL ? "" : owner;
    udid = udid == NULL ? "" : udid;
    size_t olen = strlen(owner), ulen = strlen(udid);
    memset(out, 0, sizeof(*out));
    unsigned char rnd[MDM_CHALLENGE_LEN / 2];
    mdm_random(rnd, sizeof(rnd));
    mdm_hex_encode(out->text, rnd, sizeof(rnd));
    OPENSSL_cleanse(rnd, sizeof(rnd));
    int rc = digest_of(out->text, out->digest);
    if (rc != 0)
        return rc;
    out->created_ms = mdm_now_ms();
    out->expires_ms = out->created_ms + (int64_t)ttl_ms;
    memcpy(out->owner, owner, olen + 1);
    memcpy(out->udid, udid, ulen + 1);
    out->purpose = purpose;

    unsigned char value[V3_HEAD + MDM_CHALLENGE_UDID_MAX + MDM_CHALLENGE_OWNER_MAX];
    value[0] = VALUE_VERSION;
    mdm_be64_put(value + 1, (uint64_t)out->expires_ms);
    mdm_be64_put(value + 9, (uint64_t)out->created_ms);
    value[V1_HEAD] = (unsigned char)purpose;
    value[V3_HEAD - 1] = (unsigned char)ulen;
    memcpy(value + V3_HEAD, udid, ulen);
    memcpy(value + V3_HEAD + ulen, owner, olen);
    /* 128 random bits do not collide; NOOVERWRITE makes sure of it. */
    return mdm_txn_put(txn, MDM_T_CHALLENGES, MDM_VAL(out->digest, 32),
                       MDM_VAL(value, V3_HEAD + ulen + olen), MDM_PUT_NOOVERWRITE);
}

/* Looks a challenge up by text; fills c (digest included). */
static int lookup(mdm_txn_t *txn, const char *text, int purpose, int64_t now_ms,
                  mdm_challenge_t *c)
{
    memset(c, 0, sizeof(*c));
    if (text == NULL || text[0] == '\0')
        return MDM_ENOTFOUND;
    int rc = digest_of(text, c->digest);
    if (rc != 0)
        return rc;
    mdm_val_t v;
    rc = mdm_txn_get(txn, MDM_T_CHALLENGES, MDM_VAL(c->digest, 32), &v);
    if (rc != 0)
        return rc;
    rc = decode_value(v, c);
    if (rc != 0)
        return rc;
    if (c->purpose != purpose)
        return MDM_EAUTH;
    return now_ms >= c->expires_ms ? MDM_EEXPIRED : 0;
}

int mdm_challenge_check(mdm_txn_t *txn, const char *text, int purpose, int64_t now_ms,
                        mdm_challenge_t *out)
{
    mdm_challenge_t c;
    int rc = lookup(txn, text, purpose, now_ms, &c);
    if (out != NULL)
        *out = c;
    return rc;
}

int mdm_challenge_consume(mdm_txn_t *txn, const char *text, int purpose, int64_t now_ms,
                          mdm_challenge_t *out)
{
    mdm_challenge_t c;
    int rc = lookup(txn, text, purpose, now_ms, &c);
    if (rc == 0)
        rc = mdm_txn_del(txn, MDM_T_CHALLENGES, MDM_VAL(c.digest, 32));
    if (out != NULL)
        *out = c;
    return rc;
}

/* The MDM_T_INDEX key of a slot. */
static void slot_key(unsigned char key[SLOT_PREFIX_LEN + 32], const unsigned char slot[32])
{
    memcpy(key, SLOT_PREFIX, SLOT_PREFIX_LEN);
    memcpy(key + SLOT_PREFIX_LEN, slot, 32);
}

int mdm_challenge_create_in_slot(mdm_txn_t *txn, const unsigned char slot[32], const char *owner,
                                 const char *udid, int purpose, uint64_t ttl_ms,
                                 mdm_challenge_t *out)
{
    unsigned char key[SLOT_PREFIX_LEN + 32];
    slot_key(key, slot);
    mdm_val_t v;
    int rc = mdm_txn_get(txn, MDM_T_INDEX, MDM_VAL(key, sizeof(key)), &v);
    if (rc == 0 && v.len == 32) {
        unsigned char prev[32];
        memcpy(prev, v.data, 32);
        rc = mdm_txn_del(txn, MDM_T_CHALLENGES, MDM_VAL(prev, 32));
    }
    if (rc != 0 && rc != MDM_ENOTFOUND)
        return rc;
    rc = mdm_challenge_create_for(txn, owner, udid, purpose, ttl_ms, out);
    if (rc == 0)
        rc = mdm_txn_put(txn, MDM_T_INDEX, MDM_VAL(key, sizeof(key)), MDM_VAL(out->digest, 32), 0);
    return rc;
}

int mdm_challenge_slot_clear(mdm_txn_t *txn, const unsigned char slot[32])
{
    unsigned char key[SLOT_PREFIX_LEN + 32];
    slot_key(key, slot);
    mdm_val_t v;
    int rc = mdm_txn_get(txn, MDM_T_INDEX, MDM_VAL(key, sizeof(key)), &v);
    if (rc == MDM_ENOTFOUND)
        return 0;
    if (rc == 0 && v.len == 32) {
        unsigned char digest[32];
        memcpy(digest, v.data, 32);
        rc = mdm_txn_del(txn, MDM_T_CHALLENGES, MDM_VAL(digest, 32));
        if (rc == MDM_ENOTFOUND)
            rc = 0;
    }
    return rc != 0 ? rc : mdm_txn_del(txn, MDM_T_INDEX, MDM_VAL(key, sizeof(key)));
}

/* One slot entry read by slot_batch. */
struct slot_ent {
    unsigned char slot[32];
    unsigned char digest[32];
    bool named; /* the value names a challenge (32 bytes) */
};

/* Reads up to max slot entries from the first at or after from into ents
 * (*n of them); from becomes the slot of the entry after them, or all
 * zero when there is none. */
static int slot_batch(mdm_txn_t *txn, unsigned char from[32], size_t max, struct slot_ent *ents,
                      size_t *n)
{
    unsigned char key[SLOT_PREFIX_LEN + 32];
    slot_key(key, from);
    memset(from, 0, 32);
    *n = 0;
    mdm_cursor_t *cur = NULL;
    mdm_val_t k, v, prefix = MDM_VAL(SLOT_PREFIX, SLOT_PREFIX_LEN);
    int rc = mdm_cursor_open(txn, MDM_T_INDEX, &cur);
    if (rc != 0)
        return rc;
    for (rc = mdm_cursor_seek(cur, MDM_VAL(key, sizeof(key)), &k, &v);
         rc == 0 && mdm_val_has_prefix(k, prefix); rc = mdm_cursor_next(cur, &k, &v)) {
        if (k.len != sizeof(key))
            continue; /* no slot of ours */
        if (*n == max) {
            memcpy(from, (const unsigned char *)k.data + SLOT_PREFIX_LEN, 32);
            break;
        }
        struct slot_ent *e = &ents[(*n)++];
        memcpy(e->slot, (const unsigned char *)k.data + SLOT_PREFIX_LEN, 32);
        e->named = v.len == 32;
        if (e->named)
            memcpy(e->digest, v.data, 32);
    }
    mdm_cursor_close(cur);
    return rc == 0 || rc == MDM_ENOTFOUND ? 0 : rc;
}

/* Whether a slot entry is still of use: its challenge is there and the
 * slot's owner can still ask for another. */
static int slot_in_use(mdm_txn_t *txn, const struct slot_ent *e, mdm_challenge_slot_fn live,
                       void *arg, bool *keep)
{
    mdm_val_t v;
    *keep = false;
    if (!e->named)
        return 0;
    int rc = mdm_txn_get(txn, MDM_T_CHALLENGES, MDM_VAL(e->digest, 32), &v);
    if (rc == MDM_ENOTFOUND)
        return 0;
    if (rc != 0)
        return rc;
    *keep = live(txn, e->slot, arg);
    return 0;
}

int mdm_challenge_slot_prune(mdm_txn_t *txn, unsigned char from[32], size_t max,
                             mdm_challenge_slot_fn live, void *arg, size_t *removed)
{
    struct slot_ent *ents = mdm_calloc(max > 0 ? max : 1, sizeof(*ents));
    size_t n = 0;
    *removed = 0;
    int rc = slot_batch(txn, from, max, ents, &n);
    for (size_t i = 0; rc == 0 && i < n; i++) {
        bool keep = false;
        rc = slot_in_use(txn, &ents[i], live, arg, &keep);
        if (rc != 0 || keep)
            continue;
        unsigned char key[SLOT_PREFIX_LEN + 32];
        slot_key(key, ents[i].slot);
        rc = mdm_txn_del(txn, MDM_T_INDEX, MDM_VAL(key, sizeof(key)));
        if (rc == 0)
            ++*removed;
    }
    mdm_free(ents);
    return rc;
}

int mdm_challenge_prune(mdm_txn_t *txn, int64_t now_ms, size_t max, size_t *removed)
{
    mdm_cursor_t *cur = NULL;
    mdm_val_t k, v;
    size_t n = 0;
    int rc = mdm_cursor_open(txn, MDM_T_CHALLENGES, &cur);
    if (rc != 0)
        return rc;
    for (rc = mdm_cursor_seek(cur, MDM_VAL(NULL, 0), &k, &v); rc == 0;
         rc = mdm_cursor_next(cur, &k, &v)) {
        mdm_challenge_t c;
        /* An unreadable value is of no use to anybody: drop it too. */
        if (decode_value(v, &c) == 0 && c.expires_ms > now_ms)
            continue;
        rc = mdm_cursor_del(cur);
        if (rc != 0)
            break;
        if (++n == max)
            break;
    }
    if (rc == MDM_ENOTFOUND)
        rc = 0;
    mdm_cursor_close(cur);
    if (removed != NULL)
        *removed = n;
    return rc;
}

int mdm_challenge_list(mdm_txn_t *txn, mdm_challenge_fn fn, void *arg)
{
    mdm_cursor_t *cur = NULL;
    mdm_val_t k, v;
    int rc = mdm_cursor_open(txn, MDM_T_CHALLENGES, &cur);
    if (rc != 0)
        return rc;
    for (rc = mdm_cursor_seek(cur, MDM_VAL(NULL, 0), &k, &v); rc == 0;
         rc = mdm_cursor_next(cur, &k, &v)) {
        mdm_challenge_t c;
        memset(&c, 0, sizeof(c));
        if (k.len != 32 || decode_value(v, &c) != 0)
            continue;
        memcpy(c.digest, k.data, 32);
        rc = fn(&c, arg);
        if (rc != 0)
            break;
    }
    if (rc == MDM_ENOTFOUND)
        rc = 0;
    mdm_cursor_close(cur);
    return rc;
}

/* The MDM_T_INDEX key of a certificate's entry under prefix (of the
 * length of OWNER_PREFIX or shorter); returns its length. */
static size_t cert_key(unsigned char out[OWNER_PREFIX_LEN + 32], const char *prefix,
                       const unsigned char fp[32])
{
    size_t n = strlen(prefix) + 1;
    memcpy(out, prefix, n);
    memcpy(out + n, fp, 32);
    return n + 32;
}

/* Records value (max bytes at most) for a certificate; "" or NULL removes
 * the entry. */
static int cert_name_put(mdm_txn_t *txn, const char *prefix, const unsigned char fp[32],
                         const char *value, size_t max)
{
    unsigned char key[OWNER_PREFIX_LEN + 32];
    size_t klen = cert_key(key, prefix, fp);
    if (value == NULL || value[0] == '\0') {
        int rc = mdm_txn_del(txn, MDM_T_INDEX, MDM_VAL(key, klen));
        return rc == MDM_ENOTFOUND ? 0 : rc;
    }
    if (strlen(value) > max)
        return MDM_EINVAL;
    return mdm_txn_put(txn, MDM_T_INDEX, MDM_VAL(key, klen), MDM_VAL_STR(value), 0);
}

static int cert_name_get(mdm_txn_t *txn, const char *prefix, const unsigned char fp[32],
                         char *out, size_t n)
{
    unsigned char key[OWNER_PREFIX_LEN + 32];
    mdm_val_t v;
    size_t klen = cert_key(key, prefix, fp);
    int rc = mdm_txn_get(txn, MDM_T_INDEX, MDM_VAL(key, klen), &v);
    if (rc != 0)
        return rc;
    if (n == 0)
        return MDM_EINVAL;
    size_t len = v.len < n - 1 ? v.len : n - 1;
    memcpy(out, v.data, len);
    out[len] = '\0';
    return 0;
}

int mdm_challenge_owner_record(mdm_txn_t *txn, const unsigned char cert_sha256[32],
                               const char *owner)
{
    return cert_name_put(txn, OWNER_PREFIX, cert_sha256, owner, MDM_CHALLENGE_OWNER_MAX);
}

int mdm_challenge_owner_of_cert(mdm_txn_t *txn, const unsigned char cert_sha256[32], char *out,
                                size_t n)
{
    return cert_name_get(txn, OWNER_PREFIX, cert_sha256, out, n);
}

int mdm_challenge_udid_record(mdm_txn_t *txn, const unsigned char cert_sha256[32],
                              const char *udid)
{
    return cert_name_put(txn, UDID_PREFIX, cert_sha256, udid, MDM_CHALLENGE_UDID_MAX);
}

int mdm_challenge_udid_of_cert(mdm_txn_t *txn, const unsigned char cert_sha256[32], char *out,
                               size_t n)
{
    return cert_name_get(txn, UDID_PREFIX, cert_sha256, out, n);
}
