/* One-time SCEP challenges. See challenge.h for the layout. */
#include "scep/challenge.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <stdbool.h>
#include <string.h>

#include "util/encode.h"
#include "util/misc.h"

#define VALUE_VERSION 2
#define VALUE_HEAD 18
#define V1_HEAD 17

static const char OWNER_PREFIX[] = "scepowner"; /* + '\0' + 32 bytes */
#define OWNER_PREFIX_LEN sizeof(OWNER_PREFIX)
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

static int decode_value(mdm_val_t v, mdm_challenge_t *out)
{
    const unsigned char *p = v.data;
    size_t head = v.len > 0 && p[0] == 1 ? V1_HEAD : VALUE_HEAD;
    if (v.len < head || (p[0] != 1 && p[0] != VALUE_VERSION) ||
        v.len - head > MDM_CHALLENGE_OWNER_MAX)
        return MDM_EPARSE;
    out->expires_ms = (int64_t)mdm_be64_get(p + 1);
    out->created_ms = (int64_t)mdm_be64_get(p + 9);
    out->purpose = head == V1_HEAD ? MDM_CHALLENGE_SCEP : p[V1_HEAD];
    memcpy(out->owner, p + head, v.len - head);
    out->owner[v.len - head] = '\0';
    return 0;
}

int mdm_challenge_create(mdm_txn_t *txn, const char *owner, int purpose, uint64_t ttl_ms,
                         mdm_challenge_t *out)
{
    if (owner == NULL)
        owner = "";
    size_t olen = strlen(owner);
    if (ttl_ms == 0 || !purpose_ok(purpose) || ttl_ms > (uint64_t)INT64_MAX / 2 || olen > MDM_CHALLENGE_OWNER_MAX ||
        memchr(owner, '\0', olen) != NULL)
        return MDM_EINVAL;
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
    out->purpose = purpose;

    unsigned char value[VALUE_HEAD + MDM_CHALLENGE_OWNER_MAX];
    value[0] = VALUE_VERSION;
    mdm_be64_put(value + 1, (uint64_t)out->expires_ms);
    mdm_be64_put(value + 9, (uint64_t)out->created_ms);
    value[V1_HEAD] = (unsigned char)purpose;
    memcpy(value + VALUE_HEAD, owner, olen);
    /* 128 random bits do not collide; NOOVERWRITE makes sure of it. */
    return mdm_txn_put(txn, MDM_T_CHALLENGES, MDM_VAL(out->digest, 32),
                       MDM_VAL(value, VALUE_HEAD + olen), MDM_PUT_NOOVERWRITE);
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

int mdm_challenge_create_in_slot(mdm_txn_t *txn, const unsigned char slot[32], const char *owner,
                                 int purpose, uint64_t ttl_ms, mdm_challenge_t *out)
{
    unsigned char key[SLOT_PREFIX_LEN + 32];
    memcpy(key, SLOT_PREFIX, SLOT_PREFIX_LEN);
    memcpy(key + SLOT_PREFIX_LEN, slot, 32);
    mdm_val_t v;
    int rc = mdm_txn_get(txn, MDM_T_INDEX, MDM_VAL(key, sizeof(key)), &v);
    if (rc == 0 && v.len == 32) {
        unsigned char prev[32];
        memcpy(prev, v.data, 32);
        rc = mdm_txn_del(txn, MDM_T_CHALLENGES, MDM_VAL(prev, 32));
    }
    if (rc != 0 && rc != MDM_ENOTFOUND)
        return rc;
    rc = mdm_challenge_create(txn, owner, purpose, ttl_ms, out);
    if (rc == 0)
        rc = mdm_txn_put(txn, MDM_T_INDEX, MDM_VAL(key, sizeof(key)), MDM_VAL(out->digest, 32), 0);
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

static void owner_key(unsigned char out[OWNER_PREFIX_LEN + 32], const unsigned char fp[32])
{
    memcpy(out, OWNER_PREFIX, OWNER_PREFIX_LEN);
    memcpy(out + OWNER_PREFIX_LEN, fp, 32);
}

int mdm_challenge_owner_record(mdm_txn_t *txn, const unsigned char cert_sha256[32],
                               const char *owner)
{
    unsigned char key[OWNER_PREFIX_LEN + 32];
    owner_key(key, cert_sha256);
    if (owner == NULL || owner[0] == '\0') {
        int rc = mdm_txn_del(txn, MDM_T_INDEX, MDM_VAL(key, sizeof(key)));
        return rc == MDM_ENOTFOUND ? 0 : rc;
    }
    if (strlen(owner) > MDM_CHALLENGE_OWNER_MAX)
        return MDM_EINVAL;
    return mdm_txn_put(txn, MDM_T_INDEX, MDM_VAL(key, sizeof(key)), MDM_VAL_STR(owner), 0);
}

int mdm_challenge_owner_of_cert(mdm_txn_t *txn, const unsigned char cert_sha256[32], char *out,
                                size_t n)
{
    unsigned char key[OWNER_PREFIX_LEN + 32];
    mdm_val_t v;
    owner_key(key, cert_sha256);
    int rc = mdm_txn_get(txn, MDM_T_INDEX, MDM_VAL(key, sizeof(key)), &v);
    if (rc != 0)
        return rc;
    if (n == 0)
        return MDM_EINVAL;
    size_t len = v.len < n - 1 ? v.len : n - 1;
    memcpy(out, v.data, len);
    out[len] = '\0';
    return 0;
}
