#include "crypto/certdb.h"

#include <ctype.h>
#include <plist/plist.h>
#include <stdlib.h>
#include <string.h>

#include "util/alloc.h"

/* Index key prefixes in MDM_T_INDEX, NUL included. */
static const char FP_PREFIX[] = "certfp";   /* + '\0' + 32 bytes */
static const char REV_PREFIX[] = "certrev"; /* + '\0' + 20 bytes */
#define FP_PREFIX_LEN (sizeof(FP_PREFIX))
#define REV_PREFIX_LEN (sizeof(REV_PREFIX))

void mdm_certrec_free(mdm_certrec_t *rec)
{
    if (rec == NULL)
        return;
    mdm_free(rec->subject);
    mdm_free(rec->transaction_id);
    mdm_free(rec->enrollment_id);
    mdm_free(rec->der);
    memset(rec, 0, sizeof(*rec));
}

void mdm_serial_format(const unsigned char *serial, size_t len, char out[MDM_SERIAL_HEX_MAX])
{
    static const char digits[] = "0123456789ABCDEF";
    if (len > MDM_SERIAL_MAX)
        len = MDM_SERIAL_MAX;
    for (size_t i = 0; i < len; i++) {
        out[2 * i] = digits[serial[i] >> 4];
        out[2 * i + 1] = digits[serial[i] & 0xf];
    }
    out[2 * len] = '\0';
}

static int hexval(int c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = tolower(c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

int mdm_serial_parse(const char *text, unsigned char out[MDM_SERIAL_MAX], size_t *len)
{
    if (text == NULL)
        return MDM_EINVAL;
    while (isspace((unsigned char)*text))
        text++;
    size_t n = strlen(text);
    while (n > 0 && isspace((unsigned char)text[n - 1]))
        n--;
    if (n >= 2 && text[0] == '0' && (text[1] == 'x' || text[1] == 'X')) {
        text += 2;
        n -= 2;
    }
    if (n == 0)
        return MDM_EINVAL;

    /* Bytes are gathered big-endian into a buffer wide enough for any
     * serial plus leading zero bytes, which are dropped at the end. */
    unsigned char tmp[128];
    size_t nb = 0;
    bool grouped = memchr(text, ':', n) != NULL || memchr(text, ' ', n) != NULL;
    if (grouped) {
        /* "0A:1B" or "a:1b" or "0a 1b": each group is one byte. */
        size_t i = 0;
        while (i <= n) {
            size_t start = i;
            while (i < n && text[i] != ':' && text[i] != ' ')
                i++;
            size_t glen = i - start;
            if (glen == 0 || glen > 2 || nb == sizeof(tmp))
                return MDM_EINVAL;
            int v = 0;
            for (size_t k = start; k < i; k++) {
                int h = hexval((unsigned char)text[k]);
                if (h < 0)
                    return MDM_EINVAL;
                v = v * 16 + h;
            }
            tmp[nb++] = (unsigned char)v;
            i++; /* past the separator, or past the end */
        }
    } else {
        /* One number: leading zero digits do not count, an odd count gets
         * a zero nibble in front. */
        size_t i = 0;
        while (i + 1 < n && text[i] == '0')
            i++;
        size_t digits = n - i;
        if (digits > 2 * sizeof(tmp))
            return MDM_EINVAL;
        bool odd = digits % 2 == 1;
        int acc = 0;
        size_t count = 0;
        if (odd)
            count = 1; /* the implied leading zero nibble */
        for (; i < n; i++) {
            int h = hexval((unsigned char)text[i]);
            if (h < 0)
                return MDM_EINVAL;
            acc = acc * 16 + h;
            if (++count == 2) {
                tmp[nb++] = (unsigned char)acc;
                acc = 0;
                count = 0;
            }
        }
    }
    size_t skip = 0;
    while (skip + 1 < nb && tmp[skip] == 0)
        skip++;
    if (nb - skip > MDM_SERIAL_MAX)
        return MDM_EINVAL;
    memcpy(out, tmp + skip, nb - skip);
    *len = nb - skip;
    return 0;
}

/* The table key of a serial: 20 bytes, zero-padded on the left. The input
 * may carry leading zero bytes of its own. */
static int serial_key(const unsigned char *serial, size_t len, unsigned char key[MDM_SERIAL_MAX])
{
    if (serial == NULL || len == 0)
        return MDM_EINVAL;
    while (len > 1 && serial[0] == 0) {
        serial++;
        len--;
    }
    if (len > MDM_SERIAL_MAX)
        return MDM_EINVAL;
    memset(key, 0, MDM_SERIAL_MAX);
    memcpy(key + MDM_SERIAL_MAX - len, serial, len);
    return 0;
}

/* The minimal serial bytes of a table key. */
static void serial_from_key(const unsigned char key[MDM_SERIAL_MAX], unsigned char *out,
                            size_t *len)
{
    size_t skip = 0;
    while (skip + 1 < MDM_SERIAL_MAX && key[skip] == 0)
        skip++;
    memcpy(out, key + skip, MDM_SERIAL_MAX - skip);
    *len = MDM_SERIAL_MAX - skip;
}

static void set_str(plist_t d, const char *key, const char *v)
{
    plist_dict_set_item(d, key, plist_new_string(v ? v : ""));
}

static void set_int(plist_t d, const char *key, int64_t v)
{
    plist_dict_set_item(d, key, plist_new_uint((uint64_t)v));
}

/* Encodes rec as a binary plist; the caller frees *bin with
 * plist_to_bin_free. */
static int rec_encode(const mdm_certrec_t *r, char **bin, uint32_t *len)
{
    plist_t d = plist_new_dict();
    set_str(d, "serial", r->serial_hex);
    set_str(d, "subject", r->subject);
    plist_dict_set_item(d, "sha256", plist_new_data((const char *)r->sha256, 32));
    set_int(d, "not_before", r->not_before_ms);
    set_int(d, "not_after", r->not_after_ms);
    plist_dict_set_item(d, "revoked", plist_new_bool(r->revoked ? 1 : 0));
    set_int(d, "revoked_at", r->revoked_at_ms);
    set_int(d, "reason", r->reason);
    set_str(d, "transaction_id", r->transaction_id);
    set_str(d, "enrollment_id", r->enrollment_id);
    plist_dict_set_item(d, "der", plist_new_data((const char *)r->der, r->der_len));
    *bin = NULL;
    *len = 0;
    plist_to_bin(d, bin, len);
    plist_free(d);
    return *bin != NULL && *len > 0 ? 0 : MDM_EIO;
}

static plist_t get_item(plist_t d, const char *key, plist_type type)
{
    plist_t it = plist_dict_get_item(d, key);
    return it != NULL && plist_get_node_type(it) == type ? it : NULL;
}

/* A string member copied into our own allocation ("" when absent). */
static char *get_str(plist_t d, const char *key)
{
    plist_t it = get_item(d, key, PLIST_STRING);
    char *s = NULL;
    if (it != NULL)
        plist_get_string_val(it, &s);
    char *copy = mdm_strdup(s ? s : "");
    free(s);
    return copy;
}

static int64_t get_int(plist_t d, const char *key)
{
    plist_t it = get_item(d, key, PLIST_UINT);
    uint64_t v = 0;
    if (it != NULL)
        plist_get_uint_val(it, &v);
    return (int64_t)v;
}

static unsigned char *get_data(plist_t d, const char *key, size_t *len)
{
    plist_t it = get_item(d, key, PLIST_DATA);
    *len = 0;
    if (it == NULL)
        return NULL;
    char *p = NULL;
    uint64_t n = 0;
    plist_get_data_val(it, &p, &n);
    unsigned char *copy = mdm_memdup(p ? p : "", (size_t)n);
    free(p);
    *len = (size_t)n;
    return copy;
}

static int rec_decode(const void *data, size_t len, mdm_certrec_t *out)
{
    memset(out, 0, sizeof(*out));
    if (len == 0 || len > UINT32_MAX)
        return MDM_EPARSE;
    plist_t d = NULL;
    plist_from_bin(data, (uint32_t)len, &d);
    if (d == NULL)
        return MDM_EPARSE;
    int rc = MDM_EPARSE;
    if (plist_get_node_type(d) != PLIST_DICT)
        goto out;

    char *hex = get_str(d, "serial");
    int prc = mdm_serial_parse(hex, out->serial, &out->serial_len);
    mdm_free(hex);
    if (prc != 0)
        goto out;
    mdm_serial_format(out->serial, out->serial_len, out->serial_hex);
    out->subject = get_str(d, "subject");
    size_t fplen = 0;
    unsigned char *fp = get_data(d, "sha256", &fplen);
    if (fp == NULL || fplen != 32) {
        mdm_free(fp);
        goto out;
    }
    memcpy(out->sha256, fp, 32);
    mdm_free(fp);
    out->not_before_ms = get_int(d, "not_before");
    out->not_after_ms = get_int(d, "not_after");
    plist_t rv = get_item(d, "revoked", PLIST_BOOLEAN);
    uint8_t b = 0;
    if (rv != NULL)
        plist_get_bool_val(rv, &b);
    out->revoked = b != 0;
    out->revoked_at_ms = get_int(d, "revoked_at");
    out->reason = (int)get_int(d, "reason");
    out->transaction_id = get_str(d, "transaction_id");
    out->enrollment_id = get_str(d, "enrollment_id");
    out->der = get_data(d, "der", &out->der_len);
    if (out->der == NULL || out->der_len == 0)
        goto out;
    rc = 0;
out:
    plist_free(d);
    if (rc != 0)
        mdm_certrec_free(out);
    return rc;
}

static int rec_store(mdm_txn_t *txn, const unsigned char key[MDM_SERIAL_MAX],
                     const mdm_certrec_t *r)
{
    char *bin = NULL;
    uint32_t blen = 0;
    int rc = rec_encode(r, &bin, &blen);
    if (rc == 0)
        rc = mdm_txn_put(txn, MDM_T_CERTS, MDM_VAL(key, MDM_SERIAL_MAX), MDM_VAL(bin, blen), 0);
    if (bin)
        plist_to_bin_free(bin);
    return rc;
}

static int rec_load(mdm_txn_t *txn, const unsigned char key[MDM_SERIAL_MAX], mdm_certrec_t *out)
{
    mdm_val_t v;
    memset(out, 0, sizeof(*out));
    int rc = mdm_txn_get(txn, MDM_T_CERTS, MDM_VAL(key, MDM_SERIAL_MAX), &v);
    if (rc != 0)
        return rc;
    return rec_decode(v.data, v.len, out);
}

static void fp_key(unsigned char out[FP_PREFIX_LEN + 32], const unsigned char sha256[32])
{
    memcpy(out, FP_PREFIX, FP_PREFIX_LEN);
    memcpy(out + FP_PREFIX_LEN, sha256, 32);
}

static void rev_key(unsigned char out[REV_PREFIX_LEN + MDM_SERIAL_MAX],
                    const unsigned char key[MDM_SERIAL_MAX])
{
    memcpy(out, REV_PREFIX, REV_PREFIX_LEN);
    memcpy(out + REV_PREFIX_LEN, key, MDM_SERIAL_MAX);
}

int mdm_certdb_put(mdm_txn_t *txn, X509 *cert, const char *transaction_id)
{
    mdm_certrec_t r;
    mdm_certrec_t old;
    mdm_buf_t der = MDM_BUF_INIT;
    char subject[1024];
    unsigned char key[MDM_SERIAL_MAX];
    memset(&r, 0, sizeof(r));
    memset(&old, 0, sizeof(old));

    int rc = mdm_cert_serial(cert, r.serial, &r.serial_len);
    if (rc != 0)
        goto out;
    rc = serial_key(r.serial, r.serial_len, key);
    if (rc != 0)
        goto out;
    mdm_serial_format(r.serial, r.serial_len, r.serial_hex);
    if (mdm_cert_sha256(cert, r.sha256) != 0 || mdm_cert_to_der(cert, &der) != 0 ||
        mdm_cert_validity_ms(cert, &r.not_before_ms, &r.not_after_ms) != 0) {
        rc = MDM_ECRYPTO;
        goto out;
    }

    rc = rec_load(txn, key, &old);
    if (rc == 0) {
        /* The same certificate again is not an error (a retried request);
         * a different one under the same serial is. */
        rc = memcmp(old.sha256, r.sha256, 32) == 0 ? 0 : MDM_EEXIST;
        goto out;
    }
    if (rc != MDM_ENOTFOUND)
        goto out;

    /* A cut subject is still a useful label; the DER keeps the truth. */
    (void)mdm_x509_name_oneline(X509_get_subject_name(cert), subject, sizeof(subject));
    r.subject = subject;
    r.transaction_id = (char *)(transaction_id ? transaction_id : "");
    r.enrollment_id = "";
    r.der = (unsigned char *)der.data;
    r.der_len = der.len;
    rc = rec_store(txn, key, &r);
    if (rc != 0)
        goto out;
    unsigned char fk[FP_PREFIX_LEN + 32];
    fp_key(fk, r.sha256);
    rc = mdm_txn_put(txn, MDM_T_INDEX, MDM_VAL(fk, sizeof(fk)), MDM_VAL(r.serial, r.serial_len),
                     0);
out:
    mdm_certrec_free(&old);
    mdm_buf_free(&der);
    return rc;
}

int mdm_certdb_get_by_serial(mdm_txn_t *txn, const unsigned char *serial, size_t len,
                             mdm_certrec_t *out)
{
    unsigned char key[MDM_SERIAL_MAX];
    memset(out, 0, sizeof(*out));
    int rc = serial_key(serial, len, key);
    if (rc != 0)
        return rc;
    return rec_load(txn, key, out);
}

int mdm_certdb_get_by_fingerprint(mdm_txn_t *txn, const unsigned char sha256[32],
                                  mdm_certrec_t *out)
{
    unsigned char fk[FP_PREFIX_LEN + 32];
    unsigned char serial[MDM_SERIAL_MAX];
    mdm_val_t v;
    memset(out, 0, sizeof(*out));
    fp_key(fk, sha256);
    int rc = mdm_txn_get(txn, MDM_T_INDEX, MDM_VAL(fk, sizeof(fk)), &v);
    if (rc != 0)
        return rc;
    if (v.len == 0 || v.len > MDM_SERIAL_MAX)
        return MDM_EPARSE;
    /* Copy out of the store's memory before the next read. */
    size_t n = v.len;
    memcpy(serial, v.data, n);
    rc = mdm_certdb_get_by_serial(txn, serial, n, out);
    if (rc == 0 && memcmp(out->sha256, sha256, 32) != 0) {
        mdm_certrec_free(out);
        rc = MDM_ENOTFOUND;
    }
    return rc;
}

int mdm_certdb_set_enrollment(mdm_txn_t *txn, const unsigned char *serial, size_t len,
                              const char *enrollment_id)
{
    unsigned char key[MDM_SERIAL_MAX];
    mdm_certrec_t r;
    int rc = serial_key(serial, len, key);
    if (rc != 0)
        return rc;
    rc = rec_load(txn, key, &r);
    if (rc != 0)
        return rc;
    mdm_free(r.enrollment_id);
    r.enrollment_id = mdm_strdup(enrollment_id ? enrollment_id : "");
    rc = rec_store(txn, key, &r);
    mdm_certrec_free(&r);
    return rc;
}

int mdm_certdb_revoke(mdm_txn_t *txn, const unsigned char *serial, size_t len, int reason,
                      int64_t now_ms)
{
    unsigned char key[MDM_SERIAL_MAX];
    mdm_certrec_t r;
    /* 7 is unused; 8 (removeFromCRL) belongs in delta CRLs only: in a full
     * CRL it reads as "not revoked" to other verifiers. */
    if (reason < 0 || reason > 10 || reason == 7 || reason == 8)
        return MDM_EINVAL;
    int rc = serial_key(serial, len, key);
    if (rc != 0)
        return rc;
    rc = rec_load(txn, key, &r);
    if (rc != 0)
        return rc;
    if (r.revoked)
        goto out;
    r.revoked = true;
    r.revoked_at_ms = now_ms;
    r.reason = reason;
    rc = rec_store(txn, key, &r);
    if (rc != 0)
        goto out;
    unsigned char rk[REV_PREFIX_LEN + MDM_SERIAL_MAX];
    unsigned char rv[9];
    rev_key(rk, key);
    mdm_be64_put(rv, (uint64_t)now_ms);
    rv[8] = (unsigned char)reason;
    rc = mdm_txn_put(txn, MDM_T_INDEX, MDM_VAL(rk, sizeof(rk)), MDM_VAL(rv, sizeof(rv)), 0);
out:
    mdm_certrec_free(&r);
    return rc;
}

int mdm_certdb_is_revoked(mdm_txn_t *txn, const unsigned char *serial, size_t len, bool *revoked)
{
    unsigned char key[MDM_SERIAL_MAX];
    mdm_val_t v;
    *revoked = false;
    int rc = serial_key(serial, len, key);
    if (rc != 0)
        return rc;
    /* The revocation index answers without decoding the record. */
    unsigned char rk[REV_PREFIX_LEN + MDM_SERIAL_MAX];
    rev_key(rk, key);
    rc = mdm_txn_get(txn, MDM_T_INDEX, MDM_VAL(rk, sizeof(rk)), &v);
    if (rc == 0) {
        *revoked = true;
        return 0;
    }
    if (rc != MDM_ENOTFOUND)
        return rc;
    return mdm_txn_get(txn, MDM_T_CERTS, MDM_VAL(key, MDM_SERIAL_MAX), &v);
}

int mdm_certdb_list(mdm_txn_t *txn, size_t offset, size_t limit, mdm_certrec_fn fn, void *arg)
{
    mdm_cursor_t *c = NULL;
    mdm_val_t k, v;
    size_t seen = 0, given = 0;
    int rc = mdm_cursor_open(txn, MDM_T_CERTS, &c);
    if (rc != 0)
        return rc;
    for (rc = mdm_cursor_seek(c, MDM_VAL(NULL, 0), &k, &v); rc == 0;
         rc = mdm_cursor_next(c, &k, &v)) {
        if (seen++ < offset)
            continue;
        if (limit && given >= limit)
            break;
        mdm_certrec_t r;
        rc = rec_decode(v.data, v.len, &r);
        if (rc != 0)
            break;
        given++;
        rc = fn(&r, arg);
        mdm_certrec_free(&r);
        if (rc != 0)
            break;
    }
    if (rc == MDM_ENOTFOUND)
        rc = 0;
    mdm_cursor_close(c);
    return rc;
}

int mdm_certdb_revoked_list(mdm_txn_t *txn, mdm_revoked_t **out, size_t *n)
{
    mdm_cursor_t *c = NULL;
    mdm_val_t k, v;
    mdm_revoked_t *list = NULL;
    size_t count = 0, cap = 0;
    *out = NULL;
    *n = 0;
    int rc = mdm_cursor_open(txn, MDM_T_INDEX, &c);
    if (rc != 0)
        return rc;
    mdm_val_t prefix = MDM_VAL(REV_PREFIX, REV_PREFIX_LEN);
    for (rc = mdm_cursor_seek(c, prefix, &k, &v); rc == 0; rc = mdm_cursor_next(c, &k, &v)) {
        if (!mdm_val_has_prefix(k, prefix))
            break;
        if (k.len != REV_PREFIX_LEN + MDM_SERIAL_MAX || v.len != 9) {
            rc = MDM_EPARSE;
            break;
        }
        if (count == cap) {
            cap = cap ? cap * 2 : 16;
            list = mdm_realloc(list, cap * sizeof(*list));
        }
        mdm_revoked_t *e = &list[count++];
        memset(e, 0, sizeof(*e));
        serial_from_key((const unsigned char *)k.data + REV_PREFIX_LEN, e->serial,
                        &e->serial_len);
        e->revoked_at_ms = (int64_t)mdm_be64_get(v.data);
        e->reason = ((const unsigned char *)v.data)[8];
    }
    if (rc == MDM_ENOTFOUND)
        rc = 0;
    mdm_cursor_close(c);
    if (rc != 0) {
        mdm_free(list);
        return rc;
    }
    *out = list;
    *n = count;
    return 0;
}

int mdm_certdb_crl_number_next(mdm_txn_t *txn, uint64_t *out)
{
    uint64_t v = 0;
    int rc = mdm_meta_get_u64(txn, "crl_number", &v);
    if (rc != 0 && rc != MDM_ENOTFOUND)
        return rc;
    v++;
    rc = mdm_meta_put_u64(txn, "crl_number", v);
    if (rc == 0)
        *out = v;
    return rc;
}
