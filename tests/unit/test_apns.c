/* The APNs service without APNs: push certificates (PEM, PKCS#12, the
 * store), request building, the queues, and the service's outcomes that
 * need no answer from APNs (unknown, no token, invalid token, disabled, not
 * configured, coalescing, an unreachable APNs, shutdown). White-box: the
 * service's source is included to reach its static functions. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util/misc.h"

/* The service reads the wall clock through this, so that a test can step
 * it as NTP or a resumed VM does. */
static int64_t clock_step_ms;
static int64_t wall_clock_ms(void);
#define mdm_now_ms wall_clock_ms
#include "../../core/apns/apns.c"
#undef mdm_now_ms

static int64_t wall_clock_ms(void)
{
    return mdm_now_ms() + clock_step_ms;
}

#define TOPIC "com.apple.mgmt.External.11111111-2222-3333-4444-555555555555"
#define DAY_MS (86400LL * 1000)

#define assert_rc(expr, want)                                                             \
    do {                                                                                  \
        int g_ = (expr), w_ = (want);                                                     \
        if (g_ != w_)                                                                     \
            fail_msg("%s: got %d (%s), want %d (%s)", #expr, g_, mdm_errname(g_), w_,     \
                     mdm_errname(w_));                                                    \
    } while (0)

/* ---- certificates made here ----------------------------------------------------- */

static EVP_PKEY *new_key(void)
{
    EVP_PKEY *k = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-256");
    assert_non_null(k);
    return k;
}

/* A self-signed certificate with subject UID=topic (NULL: none), valid
 * from now + nb_days to now + na_days. */
static X509 *make_cert(EVP_PKEY *key, const char *topic, long nb_days, long na_days)
{
    X509 *x = X509_new();
    X509_set_version(x, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 42);
    X509_gmtime_adj(X509_getm_notBefore(x), nb_days * 86400 - 60);
    X509_gmtime_adj(X509_getm_notAfter(x), na_days * 86400);
    X509_NAME *n = X509_get_subject_name(x);
    if (topic != NULL)
        X509_NAME_add_entry_by_NID(n, NID_userId, MBSTRING_UTF8, (const unsigned char *)topic,
                                   -1, -1, 0);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"APSP:test", -1,
                               -1, 0);
    X509_set_issuer_name(x, n);
    X509_set_pubkey(x, key);
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
    return x;
}

static void append_cert(mdm_buf_t *b, X509 *x)
{
    BIO *bio = BIO_new(BIO_s_mem());
    PEM_write_bio_X509(bio, x);
    char *p;
    long n = BIO_get_mem_data(bio, &p);
    mdm_buf_append(b, p, (size_t)n);
    BIO_free(bio);
}

static void append_key(mdm_buf_t *b, EVP_PKEY *k, const char *pass)
{
    BIO *bio = BIO_new(BIO_s_mem());
    if (pass != NULL)
        PEM_write_bio_PKCS8PrivateKey(bio, k, EVP_aes_128_cbc(), pass, (int)strlen(pass), NULL,
                                      NULL);
    else
        PEM_write_bio_PrivateKey(bio, k, NULL, NULL, 0, NULL, NULL);
    char *p;
    long n = BIO_get_mem_data(bio, &p);
    mdm_buf_append(b, p, (size_t)n);
    BIO_free(bio);
}

static mdm_pushcert_t *pushcert(const char *topic, long na_days)
{
    EVP_PKEY *k = new_key();
    X509 *x = make_cert(k, topic, 0, na_days);
    mdm_pushcert_t *pc = NULL;
    mdm_err_t err = {0};
    int rc = mdm_pushcert_build(x, k, NULL, "api", &pc, &err);
    if (rc != 0)
        fail_msg("build: %s", err.msg);
    X509_free(x);
    EVP_PKEY_free(k);
    return pc;
}

/* ---- temporary directories and stores ----------------------------------------------- */

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(p);
}

static void make_tmpdir(char dir[64])
{
    strcpy(dir, "/tmp/moonmdm-apns-XXXXXX");
    assert_non_null(mkdtemp(dir));
}

static mdm_store_t *open_store(const char *dir)
{
    char path[128];
    snprintf(path, sizeof(path), "%s/db", dir);
    mdm_store_config_t cfg = {
        .path = path, .sync = false, .flags = MDM_STORE_CREATE | MDM_STORE_AUTOFLUSH};
    mdm_store_t *s = NULL;
    mdm_err_t err = {0};
    int rc = mdm_store_open(&mdm_store_lmdb, &cfg, &s, &err);
    if (rc != 0)
        fail_msg("opening %s: %s (%s)", path, mdm_errname(rc), err.msg);
    return s;
}

/* ---- push certificates ------------------------------------------------------------ */

static void test_pem_in_any_order(void **state)
{
    (void)state;
    EVP_PKEY *k = new_key();
    X509 *x = make_cert(k, TOPIC, 0, 365);
    X509 *chain = make_cert(k, "com.apple.mgmt.External.chain", 0, 365);
    char want_sha[65];
    mdm_cert_sha256_hex(x, want_sha);
    for (int order = 0; order < 2; order++) {
        mdm_buf_t b = MDM_BUF_INIT;
        if (order == 0) {
            append_cert(&b, x);
            append_key(&b, k, NULL);
            append_cert(&b, chain);
        } else {
            mdm_buf_puts(&b, "some text before\n");
            append_key(&b, k, NULL);
            append_cert(&b, x);
        }
        mdm_pushcert_t *pc = NULL;
        mdm_err_t err = {0};
        int rc = mdm_pushcert_from_pem(b.data, b.len, "api", &pc, &err);
        if (rc != 0)
            fail_msg("order %d: %s", order, err.msg);
        assert_string_equal(pc->topic, TOPIC);
        assert_string_equal(pc->sha256, want_sha);
        assert_non_null(strstr(pc->key_pem, "-----BEGIN PRIVATE KEY-----"));
        /* The leaf comes first; a chain certificate follows it. */
        assert_true(strncmp(pc->cert_pem, "-----BEGIN CERTIFICATE-----", 27) == 0);
        const char *second = strstr(pc->cert_pem + 1, "-----BEGIN CERTIFICATE-----");
        assert_true(order == 0 ? second != NULL : second == NULL);
        assert_non_null(strstr(pc->subject, "CN=APSP:test"));
        assert_true(pc->not_after_ms - mdm_now_ms() > 364 * DAY_MS);
        mdm_pushcert_free(pc);
        mdm_buf_free(&b);
    }
    X509_free(chain);
    X509_free(x);
    EVP_PKEY_free(k);
}

/* "chain, leaf, key": the leaf is the certificate the key belongs to, not
 * the first one. */
static void test_pem_leaf_is_the_certificate_of_the_key(void **state)
{
    (void)state;
    EVP_PKEY *k = new_key(), *ca_key = new_key();
    X509 *x = make_cert(k, TOPIC, 0, 365);
    X509 *ca = make_cert(ca_key, "com.apple.mgmt.External.ca", 0, 365);
    char want_sha[65];
    mdm_cert_sha256_hex(x, want_sha);
    mdm_buf_t b = MDM_BUF_INIT;
    append_cert(&b, ca);
    append_cert(&b, x);
    append_key(&b, k, NULL);
    mdm_pushcert_t *pc = NULL;
    mdm_err_t err = {0};
    int rc = mdm_pushcert_from_pem(b.data, b.len, "api", &pc, &err);
    if (rc != 0)
        fail_msg("chain, leaf, key: %s", err.msg);
    assert_string_equal(pc->topic, TOPIC);
    assert_string_equal(pc->sha256, want_sha);
    /* The leaf is written first, then the other certificate. */
    mdm_buf_t leaf_pem = MDM_BUF_INIT;
    append_cert(&leaf_pem, x);
    assert_true(strncmp(pc->cert_pem, leaf_pem.data, leaf_pem.len) == 0);
    assert_non_null(strstr(pc->cert_pem + leaf_pem.len, "-----BEGIN CERTIFICATE-----"));
    mdm_pushcert_free(pc);
    mdm_buf_free(&leaf_pem);
    mdm_buf_free(&b);
    X509_free(ca);
    X509_free(x);
    EVP_PKEY_free(ca_key);
    EVP_PKEY_free(k);
}

/* Which failed transfers mean the push certificate cannot work: curl
 * cannot use it, or APNs sent a TLS alert refusing it (noted on the
 * certificate the request went out with); other failures are retried. */
static void test_tls_refusals(void **state)
{
    (void)state;
    mdm_pushcert_t pc = {.topic = TOPIC, .sha256 = "aa"};
    mdm_pushcert_t *v[1] = {&pc};
    apns_t a = {.certs = {.v = v, .n = 1}};
    push_t p = {.topic = TOPIC, .cert_sha = "aa"};
    char reason[64], what[300];
    assert_true(tls_cert_refusal(&a, &p, CURLE_SSL_CERTPROBLEM, reason, sizeof(reason), what,
                                 sizeof(what)));
    assert_string_equal(reason, "tls:local_certificate_problem");
    assert_false(tls_cert_refusal(&a, &p, CURLE_RECV_ERROR, reason, sizeof(reason), what,
                                  sizeof(what)));
    pc.tls_alert = SSL_AD_CERTIFICATE_REVOKED;
    assert_true(tls_cert_refusal(&a, &p, CURLE_RECV_ERROR, reason, sizeof(reason), what,
                                 sizeof(what)));
    assert_string_equal(reason, "tls:certificate_revoked");
    assert_non_null(strstr(what, "certificate_revoked"));
    /* A request sent with a certificate replaced since is not judged. */
    snprintf(p.cert_sha, sizeof(p.cert_sha), "bb");
    assert_false(tls_cert_refusal(&a, &p, CURLE_RECV_ERROR, reason, sizeof(reason), what,
                                  sizeof(what)));
    /* Alerts that say nothing about the certificate are not noted. */
    assert_null(cert_alert_name(SSL_AD_HANDSHAKE_FAILURE));
    assert_string_equal(cert_alert_name(SSL_AD_UNKNOWN_CA), "unknown_ca");
}

static void expect_refused(const mdm_buf_t *b, int want, const char *words)
{
    mdm_pushcert_t *pc = NULL;
    mdm_err_t err = {0};
    int rc = mdm_pushcert_from_pem(b->data, b->len, "api", &pc, &err);
    if (rc != want || strstr(err.msg, words) == NULL)
        fail_msg("got %s \"%s\", want %s with \"%s\"", mdm_errname(rc), err.msg,
                 mdm_errname(want), words);
    assert_null(pc);
}

static void test_pem_refusals(void **state)
{
    (void)state;
    EVP_PKEY *k = new_key(), *other = new_key();
    X509 *x = make_cert(k, TOPIC, 0, 365);
    X509 *nouid = make_cert(k, NULL, 0, 365);
    mdm_buf_t b = MDM_BUF_INIT;

    append_cert(&b, x);
    expect_refused(&b, MDM_EINVAL, "no PEM private key");
    mdm_buf_reset(&b);
    append_key(&b, k, NULL);
    expect_refused(&b, MDM_EINVAL, "no PEM certificate");
    mdm_buf_reset(&b);
    append_cert(&b, x);
    append_key(&b, other, NULL);
    expect_refused(&b, MDM_EINVAL, "does not belong");
    mdm_buf_reset(&b);
    append_cert(&b, nouid);
    append_key(&b, k, NULL);
    expect_refused(&b, MDM_EINVAL, "UID");
    mdm_buf_reset(&b);
    append_cert(&b, x);
    append_key(&b, k, "secret");
    expect_refused(&b, MDM_EINVAL, "encrypted");
    mdm_buf_reset(&b);
    append_cert(&b, x);
    append_key(&b, k, NULL);
    append_key(&b, k, NULL);
    expect_refused(&b, MDM_EINVAL, "more than one private key");
    mdm_buf_reset(&b);
    mdm_buf_puts(&b, "-----BEGIN CERTIFICATE-----\nbm90IGEgY2VydA==\n-----END CERTIFICATE-----\n");
    expect_refused(&b, MDM_EPARSE, "does not parse");

    mdm_buf_free(&b);
    X509_free(x);
    X509_free(nouid);
    EVP_PKEY_free(k);
    EVP_PKEY_free(other);
}

static void test_validity(void **state)
{
    (void)state;
    EVP_PKEY *k = new_key();
    struct {
        long nb, na;
        int want;
        const char *words;
    } cases[] = {
        {0, 365, 0, ""},
        {-400, -1, MDM_EEXPIRED, "expired at"},
        {2, 365, MDM_EEXPIRED, "not valid before"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        X509 *x = make_cert(k, TOPIC, cases[i].nb, cases[i].na);
        mdm_pushcert_t *pc = NULL;
        mdm_err_t err = {0};
        assert_rc(mdm_pushcert_build(x, k, NULL, "api", &pc, &err), 0);
        int rc = mdm_pushcert_check_validity(pc, mdm_now_ms(), &err);
        if (rc != cases[i].want || strstr(err.msg, cases[i].words) == NULL)
            fail_msg("case %zu: got %s \"%s\"", i, mdm_errname(rc), err.msg);
        mdm_pushcert_free(pc);
        X509_free(x);
    }
    EVP_PKEY_free(k);
}

static void test_p12(void **state)
{
    (void)state;
    char dir[64];
    make_tmpdir(dir);
    EVP_PKEY *k = new_key();
    X509 *x = make_cert(k, TOPIC, 0, 365);
    PKCS12 *p12 = PKCS12_create("pw", "push", k, x, NULL, 0, 0, 0, 0, 0);
    assert_non_null(p12);
    char path[128];
    snprintf(path, sizeof(path), "%s/push.p12", dir);
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    i2d_PKCS12_fp(f, p12);
    fclose(f);
    PKCS12_free(p12);

    mdm_pushcert_t *pc = NULL;
    mdm_err_t err = {0};
    int rc = mdm_pushcert_from_p12(path, "pw", &pc, &err);
    if (rc != 0)
        fail_msg("p12: %s", err.msg);
    assert_string_equal(pc->topic, TOPIC);
    assert_string_equal(pc->source, "config");
    mdm_pushcert_free(pc);
    assert_rc(mdm_pushcert_from_p12(path, "wrong", &pc, &err), MDM_EAUTH);
    assert_non_null(strstr(err.msg, "apns.p12_password"));
    assert_null(pc);
    snprintf(path, sizeof(path), "%s/missing.p12", dir);
    assert_rc(mdm_pushcert_from_p12(path, "pw", &pc, &err), MDM_EIO);

    X509_free(x);
    EVP_PKEY_free(k);
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

struct save_args {
    const mdm_secretkey_t *secret;
    mdm_pushcert_t *pc;
};

static int save_txn(mdm_txn_t *txn, void *arg)
{
    struct save_args *a = arg;
    return mdm_pushcert_save(txn, a->secret, a->pc);
}

static int raw_txn(mdm_txn_t *txn, void *arg)
{
    mdm_buf_t *out = arg;
    mdm_val_t v;
    int rc = mdm_txn_get(txn, MDM_T_META, MDM_VAL_STR(MDM_PUSHCERT_KEY_PREFIX TOPIC), &v);
    if (rc == 0)
        mdm_buf_append(out, v.data, v.len);
    return rc;
}

static void test_store_roundtrip(void **state)
{
    (void)state;
    char dir[64];
    make_tmpdir(dir);
    mdm_store_t *store = open_store(dir);
    mdm_pushcerts_t set;
    memset(&set, 0, sizeof(set));
    mdm_random(set.secret.key, sizeof(set.secret.key));
    mdm_pushcert_t *pc = pushcert(TOPIC, 100);
    char sha[65];
    snprintf(sha, sizeof(sha), "%s", pc->sha256);
    struct save_args a = {&set.secret, pc};
    assert_rc(mdm_store_update(store, save_txn, &a), 0);
    mdm_pushcert_free(pc);

    /* The key is sealed at rest. */
    mdm_buf_t raw = MDM_BUF_INIT;
    assert_rc(mdm_store_view(store, raw_txn, &raw), 0);
    assert_null(memmem(raw.data, raw.len, "PRIVATE KEY", 11));
    assert_non_null(memmem(raw.data, raw.len, "BEGIN CERTIFICATE", 17));
    mdm_buf_free(&raw);

    mdm_err_t err = {0};
    assert_rc(mdm_pushcerts_load_store(&set, store, &err), 0);
    assert_int_equal(set.n, 1);
    assert_string_equal(set.v[0]->sha256, sha);
    assert_string_equal(set.v[0]->source, "api");
    assert_non_null(strstr(set.v[0]->key_pem, "PRIVATE KEY"));

    /* A certificate of the same topic that expires later (from the config,
     * say) wins over the stored one; one that expires sooner does not. */
    mdm_pushcerts_t set2;
    memset(&set2, 0, sizeof(set2));
    set2.secret = set.secret;
    mdm_pushcert_t *later = pushcert(TOPIC, 200);
    char later_sha[65];
    snprintf(later_sha, sizeof(later_sha), "%s", later->sha256);
    bool replaced = true;
    mdm_pushcerts_set(&set2, later, &replaced);
    assert_false(replaced);
    assert_rc(mdm_pushcerts_load_store(&set2, store, &err), 0);
    assert_int_equal(set2.n, 1);
    assert_string_equal(set2.v[0]->sha256, later_sha);
    mdm_pushcerts_set(&set2, pushcert(TOPIC, 10), &replaced);
    assert_true(replaced);
    assert_int_equal(set2.n, 1);
    assert_rc(mdm_pushcerts_load_store(&set2, store, &err), 0);
    assert_string_equal(set2.v[0]->sha256, sha);
    mdm_pushcerts_set(&set2, pushcert("com.apple.mgmt.External.other", 10), &replaced);
    assert_false(replaced);
    assert_int_equal(set2.n, 2);
    assert_non_null(mdm_pushcerts_find(&set2, "com.apple.mgmt.External.other"));
    assert_null(mdm_pushcerts_find(&set2, "com.apple.mgmt.External.none"));

    /* Another server's secret key cannot open it: skipped, not fatal. */
    mdm_pushcerts_t set3;
    memset(&set3, 0, sizeof(set3));
    mdm_random(set3.secret.key, sizeof(set3.secret.key));
    assert_rc(mdm_pushcerts_load_store(&set3, store, &err), 0);
    assert_int_equal(set3.n, 0);

    mdm_pushcerts_free(&set);
    mdm_pushcerts_free(&set2);
    mdm_pushcerts_free(&set3);
    mdm_store_close(store);
    nftw(dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
}

/* ---- pieces of the client ---------------------------------------------------------- */

static void test_base_url(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    char *u = base_url_of("production", &err);
    assert_string_equal(u, "https://api.push.apple.com");
    mdm_free(u);
    u = base_url_of("sandbox", &err);
    assert_string_equal(u, "https://api.sandbox.push.apple.com");
    mdm_free(u);
    u = base_url_of("https://127.0.0.1:2197//", &err);
    assert_string_equal(u, "https://127.0.0.1:2197");
    mdm_free(u);
    assert_null(base_url_of("http://api.push.apple.com", &err));
    assert_non_null(strstr(err.msg, "apns.url"));
    assert_null(base_url_of("https://", &err));
}

static void test_request_building(void **state)
{
    (void)state;
    mdm_config_t cfg;
    mdm_config_defaults(&cfg);
    apns_t a;
    memset(&a, 0, sizeof(a));
    a.cfg = &cfg;
    a.base_url = "https://api.push.apple.com";
    push_t p;
    memset(&p, 0, sizeof(p));
    unsigned char token[32];
    for (size_t i = 0; i < sizeof(token); i++)
        token[i] = (unsigned char)(0xA0 + i);
    p.token = token;
    p.token_len = sizeof(token);
    snprintf(p.topic, sizeof(p.topic), "%s", TOPIC);
    int64_t now = 1700000000123;
    char *url = build_request(&a, &p, "MAGIC-\"1\"", now);
    assert_string_equal(url, "https://api.push.apple.com/3/device/"
                             "a0a1a2a3a4a5a6a7a8a9aaabacadaeafb0b1b2b3b4b5b6b7b8b9babbbcbdbebf");
    assert_string_equal(p.body, "{\"mdm\":\"MAGIC-\\\"1\\\"\"}");
    const char *want[] = {"apns-topic: " TOPIC, "apns-push-type: mdm", "apns-priority: 10",
                          "apns-expiration: 1700086400", NULL, "content-type: application/json",
                          "Accept:"};
    size_t i = 0;
    for (struct curl_slist *l = p.headers; l != NULL; l = l->next, i++) {
        assert_true(i < sizeof(want) / sizeof(want[0]));
        if (want[i] == NULL) {
            assert_true(strncmp(l->data, "apns-id: ", 9) == 0);
            assert_string_equal(l->data + 9, p.apns_id);
            assert_int_equal(strlen(p.apns_id), 36);
        } else {
            assert_string_equal(l->data, want[i]);
        }
    }
    assert_int_equal(i, sizeof(want) / sizeof(want[0]));
    mdm_free(url);
    push_clear_request(&p);
    /* apns.expiration = 0: deliver now or drop. */
    cfg.apns_expiration_ms = 0;
    url = build_request(&a, &p, "m", now);
    assert_string_equal(p.headers->next->next->next->data, "apns-expiration: 0");
    mdm_free(url);
    push_clear_request(&p);
    mdm_config_free(&cfg);
}

static void test_reason_parsing(void **state)
{
    (void)state;
    push_t p;
    memset(&p, 0, sizeof(p));
    mdm_buf_puts(&p.resp, "{\"reason\":\"BadDeviceToken\"}");
    parse_reason(&p);
    assert_string_equal(p.reason, "BadDeviceToken");
    assert_true(reason_is(&p, "BadDeviceToken"));
    mdm_buf_reset(&p.resp);
    mdm_buf_puts(&p.resp, "{\"reason\":\"evil \\\"value\\\" with spaces\"}");
    parse_reason(&p);
    assert_string_equal(p.reason, "evil__value__with_spaces");
    mdm_buf_reset(&p.resp);
    mdm_buf_puts(&p.resp, "not json");
    parse_reason(&p);
    assert_string_equal(p.reason, "");
    mdm_buf_free(&p.resp);
}

static void test_heap_and_hash(void **state)
{
    (void)state;
    apns_t a;
    memset(&a, 0, sizeof(a));
    a.nbuckets = 4;
    a.buckets = mdm_calloc(a.nbuckets, sizeof(*a.buckets));
    enum { N = 200 };
    push_t *v[N];
    for (int i = 0; i < N; i++) {
        v[i] = mdm_calloc(1, sizeof(push_t));
        v[i]->eid = mdm_sprintf("device-%d", i);
        v[i]->hash = hash_str(v[i]->eid);
        v[i]->retry_at_ms = (i * 7919) % 1000;
        hash_add(&a, v[i]);
        heap_push(&a, v[i]);
    }
    assert_true(a.nbuckets >= N);
    int64_t last = -1;
    for (int i = 0; i < N; i++) {
        push_t *p = heap_pop(&a);
        assert_true(p->retry_at_ms >= last);
        last = p->retry_at_ms;
    }
    assert_null(heap_pop(&a));
    for (int i = 0; i < N; i += 2)
        hash_del(&a, v[i]);
    for (int i = 0; i < N; i++) {
        push_t *p = hash_find(&a, v[i]->eid, v[i]->hash);
        assert_true(i % 2 ? p == v[i] : p == NULL);
    }
    assert_int_equal(a.nentries, N / 2);
    for (int i = 0; i < N; i++)
        push_free(v[i]);
    mdm_free(a.buckets);
    mdm_free(a.heap);
}

/* apns.max_in_flight split among the topics that can push, and held
 * pushes taken one topic after the other, each topic up to its share. */
static void test_topic_shares(void **state)
{
    (void)state;
    mdm_config_t cfg;
    memset(&cfg, 0, sizeof(cfg));
    cfg.apns_max_in_flight = 9;
    apns_t a;
    memset(&a, 0, sizeof(a));
    a.cfg = &cfg;
    mdm_pushcerts_set(&a.certs, pushcert(TOPIC, 100), NULL);
    assert_int_equal(topic_share(&a), 9);
    mdm_pushcerts_set(&a.certs, pushcert("com.apple.mgmt.External.b", 100), NULL);
    mdm_pushcerts_set(&a.certs, pushcert("com.apple.mgmt.External.c", 100), NULL);
    assert_int_equal(topic_share(&a), 3);
    a.certs.v[2]->blocked = true;
    assert_int_equal(topic_share(&a), 5); /* 9 / 2, rounded up */
    a.certs.v[2]->blocked = false;

    /* Topic 0 has one slot left, topic 1 all three; four held each. */
    topic_slots_t *t0 = topic_slots(&a, TOPIC), *t1 = topic_slots(&a, "com.apple.mgmt.External.b");
    assert_ptr_equal(topic_slots(&a, TOPIC), t0);
    t0->in_flight = 2;
    push_t p[8];
    memset(p, 0, sizeof(p));
    for (int i = 0; i < 8; i++)
        hold(&a, i < 4 ? t0 : t1, &p[i]);
    assert_int_equal(a.nheld, 8);
    prepared_t v[DISPATCH_SLICE];
    size_t n = take_held(&a, v, 0, DISPATCH_SLICE, topic_share(&a));
    assert_int_equal(n, 4);
    push_t *want[] = {&p[0], &p[4], &p[5], &p[6]};
    for (size_t i = 0; i < n; i++)
        if (v[i].p != want[i])
            fail_msg("v[%zu] is push %td, want %td", i, v[i].p - p, want[i] - p);
    assert_int_equal(a.nheld, 4);
    assert_int_equal(t0->picked, 1);
    assert_int_equal(t1->picked, 3);
    /* Nothing more while the picks count; the limit counts too. */
    assert_int_equal(take_held(&a, v, 0, DISPATCH_SLICE, topic_share(&a)), 0);
    t0->picked = t1->picked = 0;
    t0->in_flight = 0;
    assert_int_equal(take_held(&a, v, 0, 2, topic_share(&a)), 2);
    assert_true(held_can_go(&a));
    for (size_t i = 0; i < a.ntopics; i++)
        mdm_free(a.topics[i]);
    mdm_free(a.topics);
    mdm_pushcerts_free(&a.certs);
}

/* ---- the service on a loop, without APNs -------------------------------------------- */

struct svc {
    char dir[64];
    uv_loop_t loop;
    mdm_config_t cfg;
    mdm_server_t s;
    uv_timer_t guard;
    size_t want, got;
    mdm_push_result_t r[16];
    char apns_id[16][40];
    char error[16][300];
};

static struct svc *svc_new(void)
{
    struct svc *v = mdm_calloc(1, sizeof(*v));
    make_tmpdir(v->dir);
    uv_loop_init(&v->loop);
    mdm_config_defaults(&v->cfg);
    mdm_free(v->cfg.data_dir);
    v->cfg.data_dir = mdm_strdup(v->dir);
    mdm_config_finish(&v->cfg);
    v->cfg.apns_retry_delay_ms = 10;
    v->cfg.apns_retry_max = 1;
    v->cfg.apns_timeout_ms = 3000;
    mdm_free(v->cfg.apns_url);
    /* Port 1 on the loopback refuses at once: an unreachable APNs. */
    v->cfg.apns_url = mdm_strdup("https://127.0.0.1:1");
    v->s.loop = &v->loop;
    v->s.cfg = &v->cfg;
    v->s.store = open_store(v->dir);
    mdm_router_init(&v->s.router);
    return v;
}

static void svc_start(struct svc *v)
{
    mdm_err_t err = {0};
    int rc = mdm_apns_service_init(&v->s, &err);
    if (rc != 0)
        fail_msg("service init: %s", err.msg);
}

static void svc_free(struct svc *v)
{
    mdm_apns_service_free(&v->s);
    uv_run(&v->loop, UV_RUN_DEFAULT);
    assert_int_equal(uv_loop_close(&v->loop), 0);
    mdm_store_close(v->s.store);
    mdm_router_free(&v->s.router);
    mdm_config_free(&v->cfg);
    nftw(v->dir, rm_entry, 8, FTW_DEPTH | FTW_PHYS);
    mdm_free(v);
}

struct enr {
    const char *eid;
    bool token, enabled, invalid;
    const char *topic;
};

static int enr_txn(mdm_txn_t *txn, void *arg)
{
    const struct enr *e = arg;
    plist_t d = plist_new_dict();
    mdm_pl_set_str(d, "type", "device");
    if (e->token) {
        unsigned char t[32];
        mdm_random(t, sizeof(t));
        mdm_pl_set_data(d, "token", t, sizeof(t));
        mdm_pl_set_str(d, "push_magic", "MAGIC");
    }
    mdm_pl_set_str(d, "topic", e->topic ? e->topic : TOPIC);
    mdm_pl_set_bool(d, "enabled", e->enabled);
    mdm_pl_set_bool(d, "token_invalid", e->invalid);
    int rc = mdm_enrollment_save(txn, e->eid, d);
    plist_free(d);
    return rc;
}

static void add_enrollment(struct svc *v, struct enr e)
{
    assert_rc(mdm_store_update(v->s.store, enr_txn, &e), 0);
}

static void on_result(void *arg, size_t index, const mdm_push_result_t *r)
{
    struct svc *v = arg;
    assert_true(index < 16);
    v->r[index] = *r;
    if (r->apns_id)
        snprintf(v->apns_id[index], sizeof(v->apns_id[index]), "%s", r->apns_id);
    snprintf(v->error[index], sizeof(v->error[index]), "%s", r->error ? r->error : "");
    v->r[index].apns_id = NULL;
    v->r[index].error = NULL;
    v->r[index].reason = NULL;
    v->got++;
}

static void guard_cb(uv_timer_t *t)
{
    struct svc *v = t->data;
    if (v->got >= v->want)
        uv_stop(&v->loop);
}

/* Pushes and runs the loop until every result is in (or 20 s pass). */
static void push_and_wait(struct svc *v, const char *const *eids, size_t n)
{
    v->want = n;
    v->got = 0;
    memset(v->r, 0, sizeof(v->r));
    assert_rc(mdm_apns_push_batch(&v->s, eids, n, on_result, v), 0);
    assert_int_equal(v->got, 0); /* never before it returns */
    uv_timer_init(&v->loop, &v->guard);
    v->guard.data = v;
    uv_timer_start(&v->guard, guard_cb, 5, 5);
    uint64_t deadline = uv_now(&v->loop) + 20000;
    while (v->got < v->want && uv_now(&v->loop) < deadline)
        uv_run(&v->loop, UV_RUN_DEFAULT);
    uv_close((uv_handle_t *)&v->guard, NULL);
    uv_run(&v->loop, UV_RUN_NOWAIT);
    assert_int_equal(v->got, n);
}

static void test_outcomes_without_apns(void **state)
{
    (void)state;
    struct svc *v = svc_new();
    svc_start(v);
    add_enrollment(v, (struct enr){.eid = "ok", .token = true, .enabled = true});
    add_enrollment(v, (struct enr){.eid = "notoken", .enabled = false});
    add_enrollment(v, (struct enr){.eid = "dead", .token = true, .enabled = true,
                                   .invalid = true});
    add_enrollment(v, (struct enr){.eid = "out", .token = true, .enabled = false});
    add_enrollment(v, (struct enr){.eid = "other", .token = true, .enabled = true,
                                   .topic = "com.apple.mgmt.External.other"});

    /* No certificate at all: not configured. */
    const char *one[] = {"ok"};
    push_and_wait(v, one, 1);
    assert_int_equal(v->r[0].status, MDM_PUSH_NOT_CONFIGURED);
    assert_non_null(strstr(v->error[0], "not configured"));

    mdm_err_t err = {0};
    bool replaced = true;
    assert_rc(mdm_apns_pushcert_install(&v->s, pushcert(TOPIC, 100), "com.apple.mgmt.External.wrong",
                                        &replaced, &err),
              MDM_EINVAL);
    assert_rc(mdm_apns_pushcert_install(&v->s, pushcert(TOPIC, 100), NULL, &replaced, &err), 0);
    assert_false(replaced);
    assert_string_equal(topic_fn(&v->s), TOPIC);

    const char *eids[] = {"nobody", "notoken", "dead", "out", "other", "ok", "ok", "ok"};
    push_and_wait(v, eids, 8);
    int want[] = {MDM_PUSH_UNKNOWN, MDM_PUSH_NO_TOKEN, MDM_PUSH_TOKEN_INVALID,
                  MDM_PUSH_DISABLED, MDM_PUSH_ERROR, MDM_PUSH_ERROR, MDM_PUSH_ERROR,
                  MDM_PUSH_ERROR};
    for (int i = 0; i < 8; i++)
        if (v->r[i].status != want[i])
            fail_msg("%s: got %s (%s), want %s", eids[i], mdm_push_status_name(v->r[i].status),
                     v->error[i], mdm_push_status_name(want[i]));
    assert_non_null(strstr(v->error[4], "no push certificate for the enrollment's topic"));
    /* The three pushes to "ok" became one request, retried once, and all
     * three callers got its answer. */
    for (int i = 5; i < 8; i++) {
        if (strstr(v->error[i], "cannot reach APNs") == NULL ||
            strstr(v->error[i], "gave up after 2 attempts") == NULL)
            fail_msg("%s: %s", eids[i], v->error[i]);
    }
    assert_int_equal(v->r[5].coalesced + v->r[6].coalesced + v->r[7].coalesced, 2);
    apns_t *a = v->s.apns;
    assert_int_equal(mdm_metric_value(a->m_requests), 2);
    assert_int_equal(mdm_metric_value(a->m_retries), 1);
    assert_int_equal(a->nentries, 0);
    assert_int_equal(a->in_flight, 0);
    /* Fire and forget answers how many were queued; they are dropped at
     * shutdown with nobody to tell. */
    assert_int_equal(mdm_apns_push_many(&v->s, eids, 3), 3);
    svc_free(v);
}

/* A service with enrollment "ok" whose one push failed its first attempt
 * and waits for a retry a minute away (the guard timer running; deadline:
 * 10 s from the start of the wait). */
static struct svc *push_waiting_for_retry(uint64_t *deadline)
{
    struct svc *v = svc_new();
    v->cfg.apns_retry_delay_ms = 60000; /* the retry would come much later */
    svc_start(v);
    add_enrollment(v, (struct enr){.eid = "ok", .token = true, .enabled = true});
    mdm_err_t err = {0};
    assert_rc(mdm_apns_pushcert_install(&v->s, pushcert(TOPIC, 100), NULL, NULL, &err), 0);
    const char *one[] = {"ok"};
    v->want = 1;
    assert_rc(mdm_apns_push_batch(&v->s, one, 1, on_result, v), 0);
    apns_t *a = v->s.apns;
    *deadline = uv_now(&v->loop) + 10000;
    uv_timer_init(&v->loop, &v->guard);
    uv_timer_start(&v->guard, guard_cb, 5, 5);
    v->guard.data = v;
    while (a->heap_n == 0 && uv_now(&v->loop) < *deadline)
        uv_run(&v->loop, UV_RUN_ONCE);
    assert_int_equal(a->heap_n, 1);
    return v;
}

static void test_shutdown_answers_waiters(void **state)
{
    (void)state;
    uint64_t deadline;
    struct svc *v = push_waiting_for_retry(&deadline);
    const char *one[] = {"ok"};
    assert_int_equal(v->got, 0);
    uv_close((uv_handle_t *)&v->guard, NULL);
    /* Also one still in the intake. */
    const char *two[] = {"ok"};
    assert_rc(mdm_apns_push_batch(&v->s, two, 1, on_result, v), 0);
    mdm_apns_service_free(&v->s);
    assert_int_equal(v->got, 2);
    assert_int_equal(v->r[0].status, MDM_PUSH_ERROR);
    assert_non_null(strstr(v->error[0], "shutting down"));
    assert_int_equal(mdm_apns_push_batch(&v->s, one, 1, on_result, v), MDM_ESTATE);
    assert_int_equal(mdm_apns_push_many(&v->s, one, 1), MDM_ESTATE);
    svc_free(v);
}

/* A push that a TokenUpdate detached from its enrollment (later requests
 * make a push of their own) still has callers: a shutdown answers them
 * too, and frees it. */
static void test_shutdown_answers_detached_push(void **state)
{
    (void)state;
    uint64_t deadline;
    struct svc *v = push_waiting_for_retry(&deadline);
    const char *one[] = {"ok"};
    apns_t *a = v->s.apns;
    mdm_apns_token_changed(&v->s, "ok");
    /* The next request does not join it. */
    assert_rc(mdm_apns_push_batch(&v->s, one, 1, on_result, v), 0);
    while (a->waiting.n + a->in_flight == 0 && a->intake_head != NULL &&
           uv_now(&v->loop) < deadline)
        uv_run(&v->loop, UV_RUN_ONCE);
    assert_int_equal(v->got, 0);
    uv_close((uv_handle_t *)&v->guard, NULL);
    mdm_apns_service_free(&v->s);
    if (v->got != 2)
        fail_msg("%zu of 2 callers answered at shutdown", v->got);
    assert_int_equal(v->r[0].status, MDM_PUSH_ERROR);
    assert_non_null(strstr(v->error[0], "shutting down"));
    assert_false(v->r[0].coalesced);
    svc_free(v);
}

/* Two topics share two slots, one each: of two pushes for one topic, the
 * second is held until the first has ended, then goes out; a shutdown
 * answers a held push too. */
static void test_held_push_goes_out_then_shutdown_answers_it(void **state)
{
    (void)state;
    struct svc *v = svc_new();
    v->cfg.apns_max_in_flight = 2;
    v->cfg.apns_retry_max = 0;
    svc_start(v);
    add_enrollment(v, (struct enr){.eid = "a", .token = true, .enabled = true});
    add_enrollment(v, (struct enr){.eid = "b", .token = true, .enabled = true});
    mdm_err_t err = {0};
    assert_rc(mdm_apns_pushcert_install(&v->s, pushcert(TOPIC, 100), NULL, NULL, &err), 0);
    assert_rc(mdm_apns_pushcert_install(&v->s, pushcert("com.apple.mgmt.External.other", 100),
                                        NULL, NULL, &err),
              0);
    apns_t *a = v->s.apns;
    int64_t requests = mdm_metric_value(a->m_requests);
    const char *both[] = {"a", "b"};
    push_and_wait(v, both, 2);
    for (int i = 0; i < 2; i++)
        if (strstr(v->error[i], "cannot reach APNs") == NULL)
            fail_msg("%s: %s", both[i], v->error[i]);
    assert_int_equal(mdm_metric_value(a->m_requests) - requests, 2);
    assert_int_equal(a->ntopics, 1);
    assert_int_equal(a->topics[0]->in_flight, 0);
    assert_int_equal(a->nheld, 0);

    /* Again, and shut down while "b" is held. */
    v->want = 2;
    v->got = 0;
    assert_rc(mdm_apns_push_batch(&v->s, both, 2, on_result, v), 0);
    uint64_t deadline = uv_now(&v->loop) + 10000;
    uv_timer_init(&v->loop, &v->guard);
    uv_timer_start(&v->guard, guard_cb, 5, 5);
    v->guard.data = v;
    while (a->nheld == 0 && v->got == 0 && uv_now(&v->loop) < deadline)
        uv_run(&v->loop, UV_RUN_ONCE);
    uv_close((uv_handle_t *)&v->guard, NULL);
    assert_int_equal(a->nheld, 1);
    assert_int_equal(a->topics[0]->in_flight, 1);
    mdm_apns_service_free(&v->s);
    assert_int_equal(v->got, 2);
    for (int i = 0; i < 2; i++)
        assert_non_null(strstr(v->error[i], "shutting down"));
    svc_free(v);
}

/* A retry that ends before a request goes out (here: the topic was
 * blocked meanwhile) shows no APNs answer: the one an earlier attempt got
 * (a 503, say) is not how the push ended. */
static void test_retry_ended_locally_shows_no_old_answer(void **state)
{
    (void)state;
    uint64_t deadline;
    struct svc *v = push_waiting_for_retry(&deadline);
    apns_t *a = v->s.apns;
    push_t *p = a->heap[0];
    p->http_status = 503;
    snprintf(p->reason, sizeof(p->reason), "ServiceUnavailable");
    a->certs.v[0]->blocked = true;
    a->certs.v[0]->blocked_ms = mdm_now_ms();
    snprintf(a->certs.v[0]->blocked_reason, sizeof(a->certs.v[0]->blocked_reason), "Forbidden");
    p->retry_at_ms = mono_ms();
    arm_retry_timer(a);
    while (v->got == 0 && uv_now(&v->loop) < deadline)
        uv_run(&v->loop, UV_RUN_ONCE);
    assert_int_equal(v->got, 1);
    assert_int_equal(v->r[0].status, MDM_PUSH_ERROR);
    assert_non_null(strstr(v->error[0], "refused the push certificate"));
    if (v->r[0].http_status != 0)
        fail_msg("http_status %d, want 0 (no answer for this attempt)", v->r[0].http_status);
    uv_close((uv_handle_t *)&v->guard, NULL);
    svc_free(v);
}

/* The wall clock steps back an hour just after APNs accepted a push: the
 * coalesce window still ends after apns.coalesce_window, and a retry
 * still comes after its delay, not an hour later. */
static void test_clock_step_back(void **state)
{
    (void)state;
    struct svc *v = svc_new();
    v->cfg.apns_coalesce_window_ms = 200;
    svc_start(v);
    add_enrollment(v, (struct enr){.eid = "ok", .token = true, .enabled = true});
    mdm_err_t err = {0};
    assert_rc(mdm_apns_pushcert_install(&v->s, pushcert(TOPIC, 100), NULL, NULL, &err), 0);
    apns_t *a = v->s.apns;
    /* A push to "ok" that APNs accepted. */
    push_t *p = mdm_calloc(1, sizeof(*p));
    p->eid = mdm_strdup("ok");
    p->hash = hash_str(p->eid);
    hash_add(a, p);
    set_error(p, MDM_PUSH_PUSHED, NULL);
    finish(a, p);
    flush_finished(a);
    assert_int_equal(p->state, P_DONE);
    clock_step_ms = -3600 * 1000;
    usleep(300 * 1000);
    /* The window is over: a new request makes a request of its own (which
     * fails, APNs being unreachable), after one retry 10 ms later. */
    const char *one[] = {"ok"};
    uint64_t t0 = uv_now(&v->loop);
    push_and_wait(v, one, 1);
    clock_step_ms = 0;
    uv_update_time(&v->loop);
    if (v->r[0].coalesced || v->r[0].status == MDM_PUSH_PUSHED)
        fail_msg("answered by the push made before the clock stepped back: %s",
                 mdm_push_status_name(v->r[0].status));
    assert_non_null(strstr(v->error[0], "gave up after 2 attempts"));
    assert_true(uv_now(&v->loop) - t0 < 5000);

    /* The clock steps back while a push waits for its retry. */
    v->cfg.apns_retry_delay_ms = 100;
    v->want = 1;
    v->got = 0;
    assert_rc(mdm_apns_push_batch(&v->s, one, 1, on_result, v), 0);
    uv_timer_init(&v->loop, &v->guard);
    v->guard.data = v;
    uv_timer_start(&v->guard, guard_cb, 5, 5);
    uint64_t deadline = uv_now(&v->loop) + 10000;
    while (a->heap_n == 0 && v->got == 0 && uv_now(&v->loop) < deadline)
        uv_run(&v->loop, UV_RUN_ONCE);
    assert_int_equal(a->heap_n, 1);
    clock_step_ms = -3600 * 1000;
    deadline = uv_now(&v->loop) + 5000;
    while (v->got == 0 && uv_now(&v->loop) < deadline)
        uv_run(&v->loop, UV_RUN_ONCE);
    clock_step_ms = 0;
    uv_close((uv_handle_t *)&v->guard, NULL);
    if (v->got != 1)
        fail_msg("the retry did not come within 5 s of its 100 ms delay");
    assert_non_null(strstr(v->error[0], "gave up after 2 attempts"));
    svc_free(v);
}

static void test_config_refusals(void **state)
{
    (void)state;
    struct svc *v = svc_new();
    mdm_free(v->cfg.apns_url);
    v->cfg.apns_url = mdm_strdup("http://plain");
    mdm_err_t err = {0};
    assert_rc(mdm_apns_service_init(&v->s, &err), MDM_ECONFIG);
    assert_non_null(strstr(err.msg, "apns.url"));
    mdm_apns_service_free(&v->s);
    mdm_free(v->cfg.apns_url);
    v->cfg.apns_url = mdm_strdup("production");
    v->cfg.apns_cert = mdm_sprintf("%s/missing.pem", v->dir);
    assert_rc(mdm_apns_service_init(&v->s, &err), MDM_ECONFIG);
    assert_non_null(strstr(err.msg, "apns.cert and apns.key go together"));
    mdm_apns_service_free(&v->s);
    v->cfg.apns_key = mdm_sprintf("%s/missing.key", v->dir);
    assert_rc(mdm_apns_service_init(&v->s, &err), MDM_ECONFIG);
    assert_non_null(strstr(err.msg, "missing.pem"));
    mdm_apns_service_free(&v->s);
    svc_free(v);
}

struct rec_view {
    const char *eid;
    bool invalid;
    char reason[48];
    int64_t last_push_at;
    char last_push_id[40];
    unsigned char token[32];
};

static int rec_fn(mdm_txn_t *txn, void *arg)
{
    struct rec_view *r = arg;
    plist_t e = NULL;
    int rc = mdm_enrollment_load(txn, r->eid, &e);
    if (rc != 0)
        return rc;
    r->invalid = mdm_pl_bool(e, "token_invalid", false);
    snprintf(r->reason, sizeof(r->reason), "%s",
             mdm_pl_str(e, "token_invalid_reason") ? mdm_pl_str(e, "token_invalid_reason") : "");
    r->last_push_at = mdm_pl_int(e, "last_push_at", 0);
    snprintf(r->last_push_id, sizeof(r->last_push_id), "%s",
             mdm_pl_str(e, "last_push_id") ? mdm_pl_str(e, "last_push_id") : "");
    size_t n = 0;
    const unsigned char *t = mdm_pl_data(e, "token", &n);
    if (t != NULL && n == sizeof(r->token))
        memcpy(r->token, t, n);
    plist_free(e);
    return 0;
}

/* A 410 marks the token invalid only while the record still holds that
 * token (a TokenUpdate may have replaced it meanwhile); an accepted push
 * of the sweep records when and which. */
static void test_record_updates(void **state)
{
    (void)state;
    struct svc *v = svc_new();
    add_enrollment(v, (struct enr){.eid = "dev", .token = true, .enabled = true});
    struct rec_view r = {.eid = "dev"};
    assert_rc(mdm_store_view(v->s.store, rec_fn, &r), 0);

    push_t p;
    memset(&p, 0, sizeof(p));
    p.eid = "dev";
    p.status = MDM_PUSH_TOKEN_INVALID;
    p.mark_invalid = true;
    snprintf(p.reason, sizeof(p.reason), "Unregistered");
    unsigned char stale[32] = {1};
    p.token = stale;
    p.token_len = sizeof(stale);
    struct write_ctx w = {.head = &p, .now = 1234};
    assert_rc(mdm_store_update(v->s.store, write_fn, &w), 0);
    assert_rc(mdm_store_view(v->s.store, rec_fn, &r), 0);
    assert_false(r.invalid);

    /* The token pushed, but registered again after the push was made:
     * the verdict is about the registration before. */
    p.token = r.token;
    assert_rc(mdm_store_update(v->s.store, write_fn, &w), 0);
    assert_rc(mdm_store_view(v->s.store, rec_fn, &r), 0);
    assert_false(r.invalid);

    /* The token pushed, made after its last TokenUpdate: invalid. */
    p.token_read_ms = mdm_now_ms() + 60000;
    assert_rc(mdm_store_update(v->s.store, write_fn, &w), 0);
    assert_rc(mdm_store_view(v->s.store, rec_fn, &r), 0);
    assert_true(r.invalid);
    assert_string_equal(r.reason, "Unregistered");
    assert_int_equal(r.last_push_at, 0);

    memset(&p, 0, sizeof(p));
    p.eid = "dev";
    p.status = MDM_PUSH_PUSHED;
    snprintf(p.apns_id, sizeof(p.apns_id), "THE-ID");
    w.now = 5678;
    /* Only the sweep's pushes are recorded. */
    assert_rc(mdm_store_update(v->s.store, write_fn, &w), 0);
    assert_rc(mdm_store_view(v->s.store, rec_fn, &r), 0);
    assert_int_equal(r.last_push_at, 0);
    p.record = true;
    assert_rc(mdm_store_update(v->s.store, write_fn, &w), 0);
    assert_rc(mdm_store_view(v->s.store, rec_fn, &r), 0);
    assert_int_equal(r.last_push_at, 5678);
    assert_string_equal(r.last_push_id, "THE-ID");
    svc_free(v);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_pem_in_any_order),
        cmocka_unit_test(test_pem_refusals),
        cmocka_unit_test(test_pem_leaf_is_the_certificate_of_the_key),
        cmocka_unit_test(test_tls_refusals),
        cmocka_unit_test(test_validity),
        cmocka_unit_test(test_p12),
        cmocka_unit_test(test_store_roundtrip),
        cmocka_unit_test(test_base_url),
        cmocka_unit_test(test_request_building),
        cmocka_unit_test(test_reason_parsing),
        cmocka_unit_test(test_heap_and_hash),
        cmocka_unit_test(test_topic_shares),
        cmocka_unit_test(test_outcomes_without_apns),
        cmocka_unit_test(test_shutdown_answers_waiters),
        cmocka_unit_test(test_shutdown_answers_detached_push),
        cmocka_unit_test(test_retry_ended_locally_shows_no_old_answer),
        cmocka_unit_test(test_held_push_goes_out_then_shutdown_answers_it),
        cmocka_unit_test(test_clock_step_back),
        cmocka_unit_test(test_config_refusals),
        cmocka_unit_test(test_record_updates),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
