/* Tests of the issued-certificate records (crypto/certdb.c) over a real
 * LMDB store in a fresh temporary directory per test, with certificates
 * issued by a real CA (crypto/ca.c). */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "crypto/ca.h"
#include "crypto/certdb.h"
#include "crypto/keys.h"
#include "store/store.h"
#include "util/alloc.h"
#include "util/misc.h"

#define DAY_MS (24LL * 3600 * 1000)

static struct {
    EVP_PKEY *ca_key;
    X509 *ca_cert;
    mdm_ca_t *ca;
    EVP_PKEY *dev_key;
} G;

struct fx {
    char dir[64];
    char path[128];
    mdm_store_t *store;
};

#define assert_rc(expr, want)                                                             \
    do {                                                                                  \
        int g_ = (expr), w_ = (want);                                                     \
        if (g_ != w_)                                                                     \
            fail_msg("%s: got %d (%s), want %d (%s)", #expr, g_, mdm_errname(g_), w_,     \
                     mdm_errname(w_));                                                    \
    } while (0)

static int group_setup(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    /* EC keys keep key generation and signing fast under valgrind. */
    if (mdm_key_generate("ec:P-256", &G.ca_key, &err) != 0 ||
        mdm_key_generate("ec:P-256", &G.dev_key, &err) != 0 ||
        mdm_ca_create_self_signed(G.ca_key, "certdb CA", 365, &G.ca_cert, &err) != 0 ||
        mdm_ca_new(G.ca_cert, G.ca_key, NULL, &G.ca, &err) != 0) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    mdm_ca_free(G.ca);
    X509_free(G.ca_cert);
    EVP_PKEY_free(G.ca_key);
    EVP_PKEY_free(G.dev_key);
    return 0;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static mdm_store_t *open_store(const char *path)
{
    mdm_store_config_t cfg = {
        .path = path, .sync = true, .flags = MDM_STORE_CREATE | MDM_STORE_AUTOFLUSH};
    mdm_store_t *s = NULL;
    mdm_err_t err = {0};
    int rc = mdm_store_open(&mdm_store_lmdb, &cfg, &s, &err);
    if (rc != 0)
        fail_msg("opening %s: %s (%s)", path, mdm_errname(rc), err.msg);
    return s;
}

static int setup(void **state)
{
    struct fx *fx = mdm_calloc(1, sizeof(*fx));
    strcpy(fx->dir, "/tmp/moonmdm-certdb-XXXXXX");
    if (mkdtemp(fx->dir) == NULL) {
        mdm_free(fx);
        return -1;
    }
    snprintf(fx->path, sizeof(fx->path), "%s/db", fx->dir);
    fx->store = open_store(fx->path);
    alarm(110);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    alarm(0);
    mdm_store_close(fx->store);
    nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    mdm_free(fx);
    return 0;
}

static X509 *issue(const char *cn)
{
    X509_NAME *n = X509_NAME_new();
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
    X509 *x = NULL;
    mdm_err_t err = {0};
    mdm_issue_opts_t opts = {.validity_ms = 30 * DAY_MS};
    int rc = mdm_ca_issue_client_cert_for_key(G.ca, G.dev_key, n, &opts, &x, &err);
    X509_NAME_free(n);
    if (rc != 0)
        fail_msg("issue %s: %s", cn, err.msg);
    return x;
}

/* --- transaction functions ------------------------------------------------ */

struct op {
    X509 *cert;
    const char *txid;
    const unsigned char *serial;
    size_t serial_len;
    const unsigned char *fp;
    int reason;
    int64_t now;
    const char *enrollment;
    int fail_after; /* returned after the operation when non-zero */
    mdm_certrec_t rec;
    bool revoked;
    uint64_t number;
    mdm_revoked_t *list;
    size_t n;
};

static int put_fn(mdm_txn_t *t, void *arg)
{
    struct op *op = arg;
    int rc = mdm_certdb_put(t, op->cert, op->txid);
    return rc ? rc : op->fail_after;
}

static int get_serial_fn(mdm_txn_t *t, void *arg)
{
    struct op *op = arg;
    return mdm_certdb_get_by_serial(t, op->serial, op->serial_len, &op->rec);
}

static int get_fp_fn(mdm_txn_t *t, void *arg)
{
    struct op *op = arg;
    return mdm_certdb_get_by_fingerprint(t, op->fp, &op->rec);
}

static int revoke_fn(mdm_txn_t *t, void *arg)
{
    struct op *op = arg;
    return mdm_certdb_revoke(t, op->serial, op->serial_len, op->reason, op->now);
}

static int is_revoked_fn(mdm_txn_t *t, void *arg)
{
    struct op *op = arg;
    return mdm_certdb_is_revoked(t, op->serial, op->serial_len, &op->revoked);
}

static int enroll_fn(mdm_txn_t *t, void *arg)
{
    struct op *op = arg;
    return mdm_certdb_set_enrollment(t, op->serial, op->serial_len, op->enrollment);
}

static int crl_number_fn(mdm_txn_t *t, void *arg)
{
    struct op *op = arg;
    return mdm_certdb_crl_number_next(t, &op->number);
}

static int crl_number_fail_fn(mdm_txn_t *t, void *arg)
{
    struct op *op = arg;
    int rc = mdm_certdb_crl_number_next(t, &op->number);
    return rc ? rc : MDM_EINVAL;
}

static int revoked_list_fn(mdm_txn_t *t, void *arg)
{
    struct op *op = arg;
    return mdm_certdb_revoked_list(t, &op->list, &op->n);
}

static void put(mdm_store_t *s, X509 *x, const char *txid)
{
    struct op op = {.cert = x, .txid = txid};
    assert_rc(mdm_store_update(s, put_fn, &op), 0);
}

static void serial_of(X509 *x, unsigned char out[MDM_SERIAL_MAX], size_t *len)
{
    assert_int_equal(mdm_cert_serial(x, out, len), 0);
}

/* Looks x up by serial; returns the code, the record in *rec. */
static int get_by_serial(mdm_store_t *s, const unsigned char *sn, size_t len, mdm_certrec_t *rec)
{
    struct op op = {.serial = sn, .serial_len = len};
    int rc = mdm_store_view(s, get_serial_fn, &op);
    *rec = op.rec;
    return rc;
}

static void assert_rec_is(const mdm_certrec_t *r, X509 *x, const char *txid)
{
    unsigned char sn[MDM_SERIAL_MAX], fp[32];
    size_t snl = 0;
    serial_of(x, sn, &snl);
    assert_int_equal(r->serial_len, snl);
    assert_memory_equal(r->serial, sn, snl);
    char hex[MDM_SERIAL_HEX_MAX];
    mdm_serial_format(sn, snl, hex);
    assert_string_equal(r->serial_hex, hex);
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *bnhex = BN_bn2hex(bn);
    assert_string_equal(r->serial_hex, bnhex);
    OPENSSL_free(bnhex);
    BN_free(bn);

    char subj[256];
    mdm_x509_name_oneline(X509_get_subject_name(x), subj, sizeof(subj));
    assert_string_equal(r->subject, subj);
    assert_int_equal(mdm_cert_sha256(x, fp), 0);
    assert_memory_equal(r->sha256, fp, 32);
    int64_t nb = 0, na = 0;
    assert_int_equal(mdm_cert_validity_ms(x, &nb, &na), 0);
    assert_int_equal(r->not_before_ms, nb);
    assert_int_equal(r->not_after_ms, na);
    assert_string_equal(r->transaction_id, txid);
    mdm_buf_t der = MDM_BUF_INIT;
    assert_int_equal(mdm_cert_to_der(x, &der), 0);
    assert_int_equal(r->der_len, der.len);
    assert_memory_equal(r->der, der.data, der.len);
    mdm_buf_free(&der);
}

/* --- tests ------------------------------------------------------------------ */

static void test_serial_parse(void **state)
{
    (void)state;
    static const struct {
        const char *text;
        const char *hex; /* NULL: must fail */
    } cases[] = {
        {"0A1B", "0A1B"},
        {"0a:1b", "0A1B"},
        {"a:1b", "0A1B"},
        {"a:b", "0A0B"},
        {"A1B", "0A1B"},
        {"0x0A1B", "0A1B"},
        {"  7f  ", "7F"},
        {"00:00:12", "12"},
        {"0000000000000000000000000000000000000000000000000012", "12"},
        {"0", "00"},
        {"00", "00"},
        {"0a 1b 2c", "0A1B2C"},
        {"4000000000000000000000000000000000000001", "4000000000000000000000000000000000000001"},
        {"014000000000000000000000000000000000000001", NULL}, /* 21 bytes */
        {"", NULL},
        {"0x", NULL},
        {"xyz", NULL},
        {"0a::1b", NULL},
        {"0a:", NULL},
        {"123:45", NULL},
        {"12-34", NULL},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        unsigned char b[MDM_SERIAL_MAX];
        size_t n = 0;
        int rc = mdm_serial_parse(cases[i].text, b, &n);
        if (cases[i].hex == NULL) {
            if (rc != MDM_EINVAL)
                fail_msg("\"%s\": got %s, want EINVAL", cases[i].text, mdm_errname(rc));
            continue;
        }
        if (rc != 0)
            fail_msg("\"%s\": %s", cases[i].text, mdm_errname(rc));
        char hex[MDM_SERIAL_HEX_MAX];
        mdm_serial_format(b, n, hex);
        if (strcmp(hex, cases[i].hex) != 0)
            fail_msg("\"%s\": got %s, want %s", cases[i].text, hex, cases[i].hex);
    }
}

static void test_put_get(void **state)
{
    struct fx *fx = *state;
    X509 *x = issue("device-1");
    put(fx->store, x, "TX-0001");

    unsigned char sn[MDM_SERIAL_MAX];
    size_t snl = 0;
    serial_of(x, sn, &snl);
    mdm_certrec_t r;
    assert_rc(get_by_serial(fx->store, sn, snl, &r), 0);
    assert_rec_is(&r, x, "TX-0001");
    assert_false(r.revoked);
    assert_int_equal(r.revoked_at_ms, 0);
    assert_string_equal(r.enrollment_id, "");
    assert_string_equal(r.subject, "CN=device-1");
    mdm_certrec_free(&r);

    /* A serial typed by a person, with colons, finds it too. */
    char text[3 * MDM_SERIAL_MAX + 1] = "";
    for (size_t i = 0; i < snl; i++)
        snprintf(text + strlen(text), 4, i ? ":%02x" : "%02x", sn[i]);
    unsigned char parsed[MDM_SERIAL_MAX];
    size_t pl = 0;
    assert_int_equal(mdm_serial_parse(text, parsed, &pl), 0);
    assert_rc(get_by_serial(fx->store, parsed, pl, &r), 0);
    mdm_certrec_free(&r);
    /* A leading zero byte does not matter. */
    unsigned char padded[MDM_SERIAL_MAX + 1] = {0};
    memcpy(padded + 1, sn, snl);
    assert_rc(get_by_serial(fx->store, padded, snl + 1, &r), 0);
    mdm_certrec_free(&r);

    /* Putting the same certificate again changes nothing. */
    struct op op = {.cert = x, .txid = "TX-other"};
    assert_rc(mdm_store_update(fx->store, put_fn, &op), 0);
    assert_rc(get_by_serial(fx->store, sn, snl, &r), 0);
    assert_string_equal(r.transaction_id, "TX-0001");
    mdm_certrec_free(&r);

    /* Another certificate under the same serial is refused. */
    X509 *y = issue("device-2");
    X509_set_serialNumber(y, (ASN1_INTEGER *)X509_get0_serialNumber(x));
    assert_true(X509_sign(y, G.ca_key, EVP_sha256()) > 0);
    op.cert = y;
    assert_rc(mdm_store_update(fx->store, put_fn, &op), MDM_EEXIST);
    X509_free(y);

    /* Unknown serials. */
    unsigned char nope[2] = {0x12, 0x34};
    assert_rc(get_by_serial(fx->store, nope, 2, &r), MDM_ENOTFOUND);
    assert_rc(get_by_serial(fx->store, nope, 0, &r), MDM_EINVAL);

    /* The record survives closing and reopening the store. */
    mdm_store_close(fx->store);
    fx->store = open_store(fx->path);
    assert_rc(get_by_serial(fx->store, sn, snl, &r), 0);
    assert_rec_is(&r, x, "TX-0001");
    mdm_certrec_free(&r);
    X509_free(x);
}

static void test_put_rolls_back(void **state)
{
    struct fx *fx = *state;
    X509 *x = issue("rolled-back");
    /* The caller's transaction fails after the put: nothing remains,
     * neither the record nor the fingerprint index. */
    struct op op = {.cert = x, .txid = "", .fail_after = MDM_EINVAL};
    assert_rc(mdm_store_update(fx->store, put_fn, &op), MDM_EINVAL);
    unsigned char sn[MDM_SERIAL_MAX], fp[32];
    size_t snl = 0;
    serial_of(x, sn, &snl);
    mdm_certrec_t r;
    assert_rc(get_by_serial(fx->store, sn, snl, &r), MDM_ENOTFOUND);
    assert_int_equal(mdm_cert_sha256(x, fp), 0);
    struct op g = {.fp = fp};
    assert_rc(mdm_store_view(fx->store, get_fp_fn, &g), MDM_ENOTFOUND);
    X509_free(x);
}

static void test_get_by_fingerprint(void **state)
{
    struct fx *fx = *state;
    X509 *a = issue("fp-a"), *b = issue("fp-b");
    put(fx->store, a, "A");
    put(fx->store, b, "B");
    unsigned char fp[32];
    assert_int_equal(mdm_cert_sha256(b, fp), 0);
    struct op op = {.fp = fp};
    assert_rc(mdm_store_view(fx->store, get_fp_fn, &op), 0);
    assert_rec_is(&op.rec, b, "B");
    mdm_certrec_free(&op.rec);

    fp[0] ^= 0xff;
    assert_rc(mdm_store_view(fx->store, get_fp_fn, &op), MDM_ENOTFOUND);
    X509_free(a);
    X509_free(b);
}

static void test_set_enrollment(void **state)
{
    struct fx *fx = *state;
    X509 *x = issue("bound");
    put(fx->store, x, "");
    unsigned char sn[MDM_SERIAL_MAX];
    size_t snl = 0;
    serial_of(x, sn, &snl);
    struct op op = {.serial = sn, .serial_len = snl, .enrollment = "UDID-1234"};
    assert_rc(mdm_store_update(fx->store, enroll_fn, &op), 0);
    mdm_certrec_t r;
    assert_rc(get_by_serial(fx->store, sn, snl, &r), 0);
    assert_string_equal(r.enrollment_id, "UDID-1234");
    assert_string_equal(r.transaction_id, "");
    assert_rec_is(&r, x, "");
    mdm_certrec_free(&r);
    unsigned char nope[1] = {1};
    op.serial = nope;
    op.serial_len = 1;
    assert_rc(mdm_store_update(fx->store, enroll_fn, &op), MDM_ENOTFOUND);
    X509_free(x);
}

static void test_revoke(void **state)
{
    struct fx *fx = *state;
    X509 *x = issue("to-revoke"), *y = issue("kept");
    put(fx->store, x, "T1");
    put(fx->store, y, "T2");
    unsigned char sn[MDM_SERIAL_MAX], sy[MDM_SERIAL_MAX];
    size_t snl = 0, syl = 0;
    serial_of(x, sn, &snl);
    serial_of(y, sy, &syl);

    struct op op = {.serial = sn, .serial_len = snl};
    assert_rc(mdm_store_view(fx->store, is_revoked_fn, &op), 0);
    assert_false(op.revoked);

    int64_t t1 = 1700000000123;
    op.reason = 1;
    op.now = t1;
    assert_rc(mdm_store_update(fx->store, revoke_fn, &op), 0);
    assert_rc(mdm_store_view(fx->store, is_revoked_fn, &op), 0);
    assert_true(op.revoked);
    mdm_certrec_t r;
    assert_rc(get_by_serial(fx->store, sn, snl, &r), 0);
    assert_true(r.revoked);
    assert_int_equal(r.revoked_at_ms, t1);
    assert_int_equal(r.reason, 1);
    assert_rec_is(&r, x, "T1");
    mdm_certrec_free(&r);

    /* Revoking again keeps the first time and reason. */
    op.reason = 4;
    op.now = t1 + 5000;
    assert_rc(mdm_store_update(fx->store, revoke_fn, &op), 0);
    assert_rc(get_by_serial(fx->store, sn, snl, &r), 0);
    assert_int_equal(r.revoked_at_ms, t1);
    assert_int_equal(r.reason, 1);
    mdm_certrec_free(&r);

    /* The other certificate is untouched. */
    struct op oy = {.serial = sy, .serial_len = syl};
    assert_rc(mdm_store_view(fx->store, is_revoked_fn, &oy), 0);
    assert_false(oy.revoked);

    /* Unknown serials and bad reasons. */
    unsigned char nope[3] = {1, 2, 3};
    struct op on = {.serial = nope, .serial_len = 3, .reason = 0, .now = t1};
    assert_rc(mdm_store_update(fx->store, revoke_fn, &on), MDM_ENOTFOUND);
    assert_rc(mdm_store_view(fx->store, is_revoked_fn, &on), MDM_ENOTFOUND);
    oy.reason = 7;
    assert_rc(mdm_store_update(fx->store, revoke_fn, &oy), MDM_EINVAL);
    oy.reason = 11;
    assert_rc(mdm_store_update(fx->store, revoke_fn, &oy), MDM_EINVAL);
    assert_rc(mdm_store_view(fx->store, is_revoked_fn, &oy), 0);
    assert_false(oy.revoked);
    X509_free(x);
    X509_free(y);
}

struct lister {
    size_t count;
    char hex[32][MDM_SERIAL_HEX_MAX];
    char subj[32][64];
    size_t stop_at; /* return 99 at this record (0: never) */
};

static int list_cb(const mdm_certrec_t *r, void *arg)
{
    struct lister *l = arg;
    if (l->count >= 32)
        return MDM_ELIMIT;
    snprintf(l->hex[l->count], MDM_SERIAL_HEX_MAX, "%s", r->serial_hex);
    snprintf(l->subj[l->count], 64, "%s", r->subject);
    l->count++;
    if (l->stop_at && l->count == l->stop_at)
        return 99;
    return 0;
}

struct list_op {
    size_t offset, limit;
    struct lister *l;
};

static int list_fn(mdm_txn_t *t, void *arg)
{
    struct list_op *op = arg;
    return mdm_certdb_list(t, op->offset, op->limit, list_cb, op->l);
}

static int cmp_hex(const void *a, const void *b)
{
    return strcmp(a, b);
}

static void test_list(void **state)
{
    struct fx *fx = *state;
    enum { N = 10 };
    char want[N][MDM_SERIAL_HEX_MAX];
    for (int i = 0; i < N; i++) {
        char cn[16];
        snprintf(cn, sizeof(cn), "list-%d", i);
        X509 *x = issue(cn);
        put(fx->store, x, cn);
        unsigned char sn[MDM_SERIAL_MAX];
        size_t snl = 0;
        serial_of(x, sn, &snl);
        mdm_serial_format(sn, snl, want[i]);
        X509_free(x);
    }
    /* All our serials have the same length, so hex order is serial order. */
    qsort(want, N, sizeof(want[0]), cmp_hex);

    struct lister l = {0};
    struct list_op op = {.l = &l};
    assert_rc(mdm_store_view(fx->store, list_fn, &op), 0);
    assert_int_equal(l.count, N);
    for (int i = 0; i < N; i++)
        assert_string_equal(l.hex[i], want[i]);

    memset(&l, 0, sizeof(l));
    op.offset = 3;
    op.limit = 4;
    assert_rc(mdm_store_view(fx->store, list_fn, &op), 0);
    assert_int_equal(l.count, 4);
    for (int i = 0; i < 4; i++)
        assert_string_equal(l.hex[i], want[3 + i]);

    memset(&l, 0, sizeof(l));
    op.offset = 8;
    op.limit = 0;
    assert_rc(mdm_store_view(fx->store, list_fn, &op), 0);
    assert_int_equal(l.count, 2);
    memset(&l, 0, sizeof(l));
    op.offset = 20;
    assert_rc(mdm_store_view(fx->store, list_fn, &op), 0);
    assert_int_equal(l.count, 0);

    /* The callback's non-zero return stops the listing and is returned. */
    memset(&l, 0, sizeof(l));
    l.stop_at = 2;
    op.offset = 0;
    assert_rc(mdm_store_view(fx->store, list_fn, &op), 99);
    assert_int_equal(l.count, 2);
}

static void test_list_numeric_order(void **state)
{
    struct fx *fx = *state;
    /* Serials of different lengths: short ones sort first, as numbers. */
    static const char *const serials[] = {"0100", "FF", "01", "7FFFFFFFFFFFFFFF", "0200"};
    static const char *const sorted[] = {"01", "FF", "0100", "0200", "7FFFFFFFFFFFFFFF"};
    for (size_t i = 0; i < 5; i++) {
        X509 *x = issue("ordered");
        BIGNUM *bn = NULL;
        BN_hex2bn(&bn, serials[i]);
        ASN1_INTEGER *ai = BN_to_ASN1_INTEGER(bn, NULL);
        X509_set_serialNumber(x, ai);
        assert_true(X509_sign(x, G.ca_key, EVP_sha256()) > 0);
        put(fx->store, x, "");
        ASN1_INTEGER_free(ai);
        BN_free(bn);
        X509_free(x);
    }
    struct lister l = {0};
    struct list_op op = {.l = &l};
    assert_rc(mdm_store_view(fx->store, list_fn, &op), 0);
    assert_int_equal(l.count, 5);
    for (int i = 0; i < 5; i++)
        assert_string_equal(l.hex[i], sorted[i]);
}

static void test_revoked_list_and_crl(void **state)
{
    struct fx *fx = *state;
    enum { N = 8 };
    X509 *certs[N];
    for (int i = 0; i < N; i++) {
        certs[i] = issue("crl-dev");
        put(fx->store, certs[i], "");
    }
    struct op empty = {0};
    assert_rc(mdm_store_view(fx->store, revoked_list_fn, &empty), 0);
    assert_int_equal(empty.n, 0);
    assert_null(empty.list);

    const int revoke_idx[3] = {1, 4, 6};
    const int reasons[3] = {1, 0, 5};
    int64_t base = mdm_now_ms() - 60000;
    for (int k = 0; k < 3; k++) {
        unsigned char sn[MDM_SERIAL_MAX];
        size_t snl = 0;
        serial_of(certs[revoke_idx[k]], sn, &snl);
        struct op op = {.serial = sn, .serial_len = snl, .reason = reasons[k],
                        .now = base + k * 1000};
        assert_rc(mdm_store_update(fx->store, revoke_fn, &op), 0);
    }

    struct op op = {0};
    assert_rc(mdm_store_view(fx->store, revoked_list_fn, &op), 0);
    assert_int_equal(op.n, 3);
    /* In serial order, each with its time and reason. */
    for (size_t i = 1; i < op.n; i++)
        assert_true(memcmp(op.list[i - 1].serial, op.list[i].serial, 16) < 0);
    for (int k = 0; k < 3; k++) {
        unsigned char sn[MDM_SERIAL_MAX];
        size_t snl = 0;
        serial_of(certs[revoke_idx[k]], sn, &snl);
        bool found = false;
        for (size_t i = 0; i < op.n; i++) {
            if (op.list[i].serial_len == snl && memcmp(op.list[i].serial, sn, snl) == 0) {
                found = true;
                assert_int_equal(op.list[i].revoked_at_ms, base + k * 1000);
                assert_int_equal(op.list[i].reason, reasons[k]);
            }
        }
        if (!found)
            fail_msg("revoked certificate %d missing from the list", revoke_idx[k]);
    }

    /* The list makes a CRL that names exactly the revoked certificates. */
    struct op num = {0};
    assert_rc(mdm_store_update(fx->store, crl_number_fn, &num), 0);
    mdm_buf_t der = MDM_BUF_INIT;
    mdm_err_t err = {0};
    int rc = mdm_ca_crl(G.ca, op.list, op.n, num.number, mdm_now_ms() + DAY_MS, &der, &err);
    if (rc != 0)
        fail_msg("mdm_ca_crl: %s", err.msg);
    const unsigned char *p = (const unsigned char *)der.data;
    X509_CRL *crl = d2i_X509_CRL(NULL, &p, (long)der.len);
    assert_non_null(crl);
    assert_int_equal(X509_CRL_verify(crl, G.ca_key), 1);
    for (int i = 0; i < N; i++) {
        X509_REVOKED *r = NULL;
        bool want = i == 1 || i == 4 || i == 6;
        if ((X509_CRL_get0_by_cert(crl, &r, certs[i]) == 1) != want)
            fail_msg("certificate %d: on the CRL is %d, want %d", i, !want, want);
    }
    X509_CRL_free(crl);
    mdm_buf_free(&der);
    mdm_free(op.list);
    for (int i = 0; i < N; i++)
        X509_free(certs[i]);
}

static void test_crl_number(void **state)
{
    struct fx *fx = *state;
    struct op op = {0};
    for (uint64_t want = 1; want <= 3; want++) {
        assert_rc(mdm_store_update(fx->store, crl_number_fn, &op), 0);
        assert_int_equal(op.number, want);
    }
    /* A failed transaction does not consume a number, and the counter
     * survives a reopen. */
    assert_rc(mdm_store_update(fx->store, crl_number_fail_fn, &op), MDM_EINVAL);
    mdm_store_close(fx->store);
    fx->store = open_store(fx->path);
    assert_rc(mdm_store_update(fx->store, crl_number_fn, &op), 0);
    assert_int_equal(op.number, 4);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_serial_parse),
        cmocka_unit_test_setup_teardown(test_put_get, setup, teardown),
        cmocka_unit_test_setup_teardown(test_put_rolls_back, setup, teardown),
        cmocka_unit_test_setup_teardown(test_get_by_fingerprint, setup, teardown),
        cmocka_unit_test_setup_teardown(test_set_enrollment, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revoke, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list, setup, teardown),
        cmocka_unit_test_setup_teardown(test_list_numeric_order, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revoked_list_and_crl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_crl_number, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
