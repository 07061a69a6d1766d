/* Tests of the key and certificate module (crypto/keys.c) and the built-in
 * CA (crypto/ca.c) with real OpenSSL: keys of every accepted kind, PEM files
 * and their modes, the CA, server and device certificate profiles, CSR
 * checks, serial randomness, concurrent issuance, chain verification, CRLs,
 * and a cross-check with the openssl command-line tool. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "crypto/ca.h"
#include "crypto/keys.h"
#include "util/alloc.h"
#include "util/misc.h"

#define DAY_MS (24LL * 3600 * 1000)

/* Keys made once for the whole program: key generation is the slow part. */
static struct {
    EVP_PKEY *ca_key;     /* RSA 2048 */
    X509 *ca_cert;
    mdm_ca_t *ca;
    EVP_PKEY *ec_ca_key;  /* P-256 */
    X509 *ec_ca_cert;
    mdm_ca_t *ec_ca;
    EVP_PKEY *rsa2048;
    EVP_PKEY *rsa1024;
    EVP_PKEY *ec256;
    EVP_PKEY *ec521;
    char dir[64];
} G;

#define assert_ok(expr, err)                                                             \
    do {                                                                                 \
        int rc_ = (expr);                                                                \
        if (rc_ != 0)                                                                    \
            fail_msg("%s: %d (%s): %s", #expr, rc_, mdm_errname(rc_), (err).msg);        \
    } while (0)

#define assert_rc(expr, want, err)                                                       \
    do {                                                                                 \
        int rc_ = (expr), w_ = (want);                                                   \
        if (rc_ != w_)                                                                   \
            fail_msg("%s: got %d (%s), want %d (%s); message: %s", #expr, rc_,           \
                     mdm_errname(rc_), w_, mdm_errname(w_), (err).msg);                  \
    } while (0)

#define assert_contains(hay, needle)                                                     \
    do {                                                                                 \
        if (strstr((hay), (needle)) == NULL)                                             \
            fail_msg("\"%s\" does not contain \"%s\"", (hay), (needle));                 \
    } while (0)

static EVP_PKEY *gen(const char *spec)
{
    EVP_PKEY *k = NULL;
    mdm_err_t err = {0};
    if (mdm_key_generate(spec, &k, &err) != 0)
        fail_msg("mdm_key_generate(%s): %s", spec, err.msg);
    return k;
}

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

static char *tmp_path(const char *name)
{
    return mdm_sprintf("%s/%s", G.dir, name);
}

static int group_setup(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    strcpy(G.dir, "/tmp/moonmdm-ca-XXXXXX");
    if (mkdtemp(G.dir) == NULL)
        return -1;
    G.ca_key = gen("rsa:2048");
    G.ec_ca_key = gen("ec:P-256");
    G.rsa2048 = gen("rsa:2048");
    G.ec256 = gen("ec");
    G.rsa1024 = EVP_PKEY_Q_keygen(NULL, NULL, "RSA", (size_t)1024);
    G.ec521 = EVP_PKEY_Q_keygen(NULL, NULL, "EC", "P-521");
    if (!G.rsa1024 || !G.ec521)
        return -1;
    if (mdm_ca_create_self_signed(G.ca_key, "Test CA", 3650, &G.ca_cert, &err) != 0 ||
        mdm_ca_new(G.ca_cert, G.ca_key, NULL, &G.ca, &err) != 0 ||
        mdm_ca_create_self_signed(G.ec_ca_key, "EC CA", 3650, &G.ec_ca_cert, &err) != 0 ||
        mdm_ca_new(G.ec_ca_cert, G.ec_ca_key, NULL, &G.ec_ca, &err) != 0) {
        fprintf(stderr, "CA setup failed: %s\n", err.msg);
        return -1;
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    mdm_ca_free(G.ca);
    mdm_ca_free(G.ec_ca);
    X509_free(G.ca_cert);
    X509_free(G.ec_ca_cert);
    EVP_PKEY_free(G.ca_key);
    EVP_PKEY_free(G.ec_ca_key);
    EVP_PKEY_free(G.rsa2048);
    EVP_PKEY_free(G.rsa1024);
    EVP_PKEY_free(G.ec256);
    EVP_PKEY_free(G.ec521);
    nftw(G.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* A CSR for key with the given CN (NULL: empty subject) and an optional
 * subjectAltName in OpenSSL's config syntax. */
static X509_REQ *make_csr(EVP_PKEY *key, const char *cn, const char *san)
{
    X509_REQ *req = X509_REQ_new();
    assert_non_null(req);
    assert_int_equal(X509_REQ_set_version(req, 0), 1);
    if (cn) {
        X509_NAME *n = X509_NAME_new();
        assert_int_equal(X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8,
                                                    (const unsigned char *)cn, -1, -1, 0),
                         1);
        assert_int_equal(X509_REQ_set_subject_name(req, n), 1);
        X509_NAME_free(n);
    }
    assert_int_equal(X509_REQ_set_pubkey(req, key), 1);
    if (san) {
        STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
        X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san);
        assert_non_null(e);
        sk_X509_EXTENSION_push(exts, e);
        assert_int_equal(X509_REQ_add_extensions(req, exts), 1);
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    }
    assert_true(X509_REQ_sign(req, key, EVP_sha256()) > 0);
    return req;
}

static int64_t cert_time(const ASN1_TIME *t)
{
    int64_t ms = 0;
    assert_int_equal(mdm_asn1_time_ms(t, &ms), 0);
    return ms;
}

static int serial_bits(X509 *x)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    assert_non_null(bn);
    assert_false(BN_is_negative(bn));
    int bits = BN_num_bits(bn);
    BN_free(bn);
    return bits;
}

static void assert_ski_is_aki(X509 *x, X509 *issuer)
{
    const ASN1_OCTET_STRING *aki = X509_get0_authority_key_id(x);
    const ASN1_OCTET_STRING *ski = X509_get0_subject_key_id(issuer);
    assert_non_null(aki);
    assert_non_null(ski);
    if (ASN1_OCTET_STRING_cmp(aki, ski) != 0)
        fail_msg("AKI of the certificate differs from the issuer's SKI");
}

static bool ext_is_critical(X509 *x, int nid)
{
    int idx = X509_get_ext_by_NID(x, nid, -1);
    assert_true(idx >= 0);
    return X509_EXTENSION_get_critical(X509_get_ext(x, idx)) == 1;
}

/* X509_verify_cert against a store that trusts only ca. */
static int verify_with_store(X509 *ca, X509 *cert, int purpose, int *err_out)
{
    X509_STORE *st = X509_STORE_new();
    X509_STORE_CTX *ctx = X509_STORE_CTX_new();
    X509_STORE_add_cert(st, ca);
    X509_STORE_CTX_init(ctx, st, cert, NULL);
    if (purpose)
        X509_STORE_CTX_set_purpose(ctx, purpose);
    int ok = X509_verify_cert(ctx);
    *err_out = X509_STORE_CTX_get_error(ctx);
    X509_STORE_CTX_free(ctx);
    X509_STORE_free(st);
    return ok;
}

/* --- keys ------------------------------------------------------------------ */

static void test_key_generate_specs(void **state)
{
    (void)state;
    static const struct {
        const char *spec;
        const char *type;
        int bits;
        const char *group;
    } cases[] = {
        {"rsa:2048", "RSA", 2048, NULL},   {"rsa:3072", "RSA", 3072, NULL},
        {"rsa:4096", "RSA", 4096, NULL},   {"RSA", "RSA", 3072, NULL},
        {"ec:P-256", "EC", 256, "prime256v1"}, {"ec:P-384", "EC", 384, "secp384r1"},
        {"ec", "EC", 256, "prime256v1"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        EVP_PKEY *k = gen(cases[i].spec);
        if (!EVP_PKEY_is_a(k, cases[i].type) || EVP_PKEY_get_bits(k) != cases[i].bits)
            fail_msg("%s: got %s %d bits, want %s %d", cases[i].spec, EVP_PKEY_get0_type_name(k),
                     EVP_PKEY_get_bits(k), cases[i].type, cases[i].bits);
        if (cases[i].group) {
            char g[64] = "";
            size_t gl = 0;
            assert_int_equal(EVP_PKEY_get_group_name(k, g, sizeof(g), &gl), 1);
            assert_string_equal(g, cases[i].group);
        }
        EVP_PKEY_free(k);
    }
    char desc[64];
    mdm_key_describe(G.ec256, desc, sizeof(desc));
    assert_string_equal(desc, "EC P-256");
    mdm_key_describe(G.rsa2048, desc, sizeof(desc));
    assert_string_equal(desc, "RSA 2048 bits");
}

static void test_key_generate_bad_spec(void **state)
{
    (void)state;
    static const char *const bad[] = {"rsa:1024", "rsa:2047", "dsa",    "ec:P-521",
                                      "",         "rsa:",     "ed25519"};
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        EVP_PKEY *k = (EVP_PKEY *)1;
        mdm_err_t err = {0};
        assert_rc(mdm_key_generate(bad[i], &k, &err), MDM_EINVAL, err);
        assert_null(k);
        assert_contains(err.msg, "rsa:2048");
        assert_contains(err.msg, "ec:P-256");
    }
}

static mode_t file_mode(const char *path)
{
    struct stat st;
    assert_int_equal(stat(path, &st), 0);
    return st.st_mode & 07777;
}

static size_t count_dir_entries(const char *dir)
{
    char *cmd = mdm_sprintf("ls -A %s | wc -l", dir);
    FILE *p = popen(cmd, "r");
    mdm_free(cmd);
    assert_non_null(p);
    size_t n = 0;
    assert_int_equal(fscanf(p, "%zu", &n), 1);
    pclose(p);
    return n;
}

static void test_pem_roundtrip(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    char *sub = tmp_path("pem");
    assert_int_equal(mkdir(sub, 0700), 0);
    char *kp = mdm_sprintf("%s/k.pem", sub), *cp = mdm_sprintf("%s/c.pem", sub),
         *chp = mdm_sprintf("%s/chain.pem", sub);

    /* A restrictive umask must not take the read bits off certificates. */
    mode_t old = umask(077);
    assert_ok(mdm_key_write_pem(G.ca_key, kp, &err), err);
    assert_ok(mdm_cert_write_pem(G.ca_cert, cp, &err), err);
    umask(old);
    assert_int_equal(file_mode(kp), 0600);
    assert_int_equal(file_mode(cp), 0644);

    /* The key file is PKCS#8. */
    FILE *f = fopen(kp, "r");
    char line[64] = "";
    assert_non_null(fgets(line, sizeof(line), f));
    fclose(f);
    assert_string_equal(line, "-----BEGIN PRIVATE KEY-----\n");

    EVP_PKEY *k = NULL;
    X509 *c = NULL;
    assert_ok(mdm_key_read_pem(kp, false, &k, &err), err);
    assert_ok(mdm_cert_read_pem(cp, &c, &err), err);
    assert_int_equal(EVP_PKEY_eq(k, G.ca_key), 1);
    assert_int_equal(X509_cmp(c, G.ca_cert), 0);
    assert_true(mdm_key_matches_cert(k, c));
    assert_false(mdm_key_matches_cert(G.rsa2048, c));

    /* Overwriting keeps working (rename over an existing file). */
    assert_ok(mdm_cert_write_pem(G.ec_ca_cert, cp, &err), err);
    X509 *c2 = NULL;
    assert_ok(mdm_cert_read_pem(cp, &c2, &err), err);
    assert_int_equal(X509_cmp(c2, G.ec_ca_cert), 0);
    X509_free(c2);
    c2 = NULL;

    /* A chain file holds all its certificates in order. */
    STACK_OF(X509) *chain = sk_X509_new_null();
    sk_X509_push(chain, G.ca_cert);
    sk_X509_push(chain, G.ec_ca_cert);
    assert_ok(mdm_certs_write_pem(chain, chp, &err), err);
    assert_int_equal(file_mode(chp), 0644);
    sk_X509_free(chain);
    STACK_OF(X509) *back = NULL;
    assert_ok(mdm_certs_read_pem(chp, &back, &err), err);
    assert_int_equal(sk_X509_num(back), 2);
    assert_int_equal(X509_cmp(sk_X509_value(back, 0), G.ca_cert), 0);
    assert_int_equal(X509_cmp(sk_X509_value(back, 1), G.ec_ca_cert), 0);
    sk_X509_pop_free(back, X509_free);

    /* No temporary file is left behind. */
    assert_int_equal(count_dir_entries(sub), 3);

    /* A file without certificates, a missing file, a DER file. */
    char *ep = mdm_sprintf("%s/empty.pem", sub);
    f = fopen(ep, "w");
    fputs("nothing here\n", f);
    fclose(f);
    assert_rc(mdm_certs_read_pem(ep, &back, &err), MDM_EPARSE, err);
    assert_contains(err.msg, ep);
    char *mp = mdm_sprintf("%s/missing.pem", sub);
    assert_rc(mdm_cert_read_pem(mp, &c2, &err), MDM_ENOTFOUND, err);
    assert_null(c2);
    mdm_buf_t der = MDM_BUF_INIT;
    assert_int_equal(mdm_cert_to_der(G.ca_cert, &der), 0);
    char *dp = mdm_sprintf("%s/c.der", sub);
    f = fopen(dp, "wb");
    fwrite(der.data, 1, der.len, f);
    fclose(f);
    assert_ok(mdm_cert_read_pem(dp, &c2, &err), err);
    assert_int_equal(X509_cmp(c2, G.ca_cert), 0);

    /* A truncated second PEM block is an error, not a silent one-cert chain. */
    f = fopen(chp, "a");
    fputs("-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n", f);
    fclose(f);
    assert_rc(mdm_certs_read_pem(chp, &back, &err), MDM_EPARSE, err);

    mdm_buf_free(&der);
    X509_free(c);
    X509_free(c2);
    EVP_PKEY_free(k);
    mdm_free(sub);
    mdm_free(kp);
    mdm_free(cp);
    mdm_free(chp);
    mdm_free(ep);
    mdm_free(mp);
    mdm_free(dp);
}

static void test_key_mode_refused(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    char *kp = tmp_path("loose.key");
    assert_ok(mdm_key_write_pem(G.ec256, kp, &err), err);
    assert_int_equal(chmod(kp, 0644), 0);

    EVP_PKEY *k = NULL;
    assert_rc(mdm_key_read_pem(kp, false, &k, &err), MDM_EAUTH, err);
    assert_null(k);
    assert_contains(err.msg, "chmod 600");
    assert_contains(err.msg, kp);
    assert_contains(err.msg, "0644");

    assert_int_equal(chmod(kp, 0640), 0);
    assert_rc(mdm_key_read_pem(kp, false, &k, &err), MDM_EAUTH, err);
    assert_contains(err.msg, "0640");

    /* The escape hatch for setups that manage permissions otherwise. */
    assert_ok(mdm_key_read_pem(kp, true, &k, &err), err);
    assert_int_equal(EVP_PKEY_eq(k, G.ec256), 1);
    EVP_PKEY_free(k);

    assert_int_equal(chmod(kp, 0400), 0);
    k = NULL;
    assert_ok(mdm_key_read_pem(kp, false, &k, &err), err);
    EVP_PKEY_free(k);

    /* A certificate is not a key. */
    char *cp = tmp_path("notakey.pem");
    assert_ok(mdm_cert_write_pem(G.ca_cert, cp, &err), err);
    assert_int_equal(chmod(cp, 0600), 0);
    k = NULL;
    assert_rc(mdm_key_read_pem(cp, false, &k, &err), MDM_EPARSE, err);
    assert_contains(err.msg, cp);

    /* An encrypted key is refused without prompting on the terminal. */
    char *ep = tmp_path("enc.key");
    char *cmd = mdm_sprintf("openssl genpkey -algorithm EC -pkeyopt ec_paramgen_curve:P-256 "
                            "-aes256 -pass pass:secret -out %s 2>/dev/null && chmod 600 %s",
                            ep, ep);
    assert_int_equal(system(cmd), 0);
    assert_rc(mdm_key_read_pem(ep, false, &k, &err), MDM_EPARSE, err);
    assert_null(k);
    mdm_free(cmd);
    mdm_free(ep);
    mdm_free(cp);
    mdm_free(kp);
}

static void test_cert_helpers(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    unsigned char md[32], want[32];
    unsigned int wl = 0;
    assert_int_equal(mdm_cert_sha256(G.ca_cert, md), 0);
    assert_int_equal(X509_digest(G.ca_cert, EVP_sha256(), want, &wl), 1);
    assert_memory_equal(md, want, 32);
    char hex[65];
    assert_int_equal(mdm_cert_sha256_hex(G.ca_cert, hex), 0);
    assert_int_equal(strlen(hex), 64);
    char want_hex[65];
    for (int i = 0; i < 32; i++)
        snprintf(want_hex + 2 * i, 3, "%02x", want[i]);
    assert_string_equal(hex, want_hex);

    mdm_buf_t der = MDM_BUF_INIT;
    assert_int_equal(mdm_cert_to_der(G.ca_cert, &der), 0);
    X509 *x = NULL;
    assert_ok(mdm_cert_from_der(der.data, der.len, &x, &err), err);
    assert_int_equal(X509_cmp(x, G.ca_cert), 0);
    X509_free(x);
    mdm_buf_putc(&der, 0);
    assert_rc(mdm_cert_from_der(der.data, der.len, &x, &err), MDM_EPARSE, err);
    assert_rc(mdm_cert_from_der("junk", 4, &x, &err), MDM_EPARSE, err);
    assert_null(x);
    mdm_buf_free(&der);

    char name[128];
    assert_int_equal(mdm_x509_name_oneline(X509_get_subject_name(G.ca_cert), name, sizeof(name)),
                     0);
    assert_string_equal(name, "CN=Test CA,O=moonmdm");
    char small[8];
    assert_int_equal(mdm_x509_name_oneline(X509_get_subject_name(G.ca_cert), small, sizeof(small)),
                     MDM_ELIMIT);
    assert_string_equal(small, "CN=Test");

    /* Special characters are escaped per RFC 2253; UTF-8 stays readable. */
    X509_NAME *n = X509_NAME_new();
    X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8, (const unsigned char *)"A, B", -1, -1, 0);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"Jürgen's iPad", -1,
                               -1, 0);
    assert_int_equal(mdm_x509_name_oneline(n, name, sizeof(name)), 0);
    assert_string_equal(name, "CN=Jürgen's iPad,O=A\\, B");
    X509_NAME_free(n);

    unsigned char sn[MDM_SERIAL_MAX];
    size_t snl = 0;
    assert_int_equal(mdm_cert_serial(G.ca_cert, sn, &snl), 0);
    assert_int_equal(snl, 16);
    assert_true(sn[0] & 0x40);
    assert_false(sn[0] & 0x80);
}

/* --- the CA ---------------------------------------------------------------- */

static void test_self_signed_ca_fields(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    /* A fresh CA, so that the times are checked against the moment it was
     * made (the group's CA can be minutes old under valgrind). */
    int64_t made = mdm_now_ms();
    X509 *x = NULL;
    assert_ok(mdm_ca_create_self_signed(G.ca_key, "Test CA", 3650, &x, &err), err);
    assert_int_equal(X509_get_version(x), X509_VERSION_3);
    char name[128];
    mdm_x509_name_oneline(X509_get_subject_name(x), name, sizeof(name));
    assert_string_equal(name, "CN=Test CA,O=moonmdm");
    assert_int_equal(X509_NAME_cmp(X509_get_subject_name(x), X509_get_issuer_name(x)), 0);
    assert_int_equal(X509_verify(x, G.ca_key), 1);

    uint32_t flags = X509_get_extension_flags(x);
    assert_true(flags & EXFLAG_CA);
    assert_true(flags & EXFLAG_SS);
    assert_int_equal(X509_get_pathlen(x), 0);
    assert_true(ext_is_critical(x, NID_basic_constraints));
    assert_true(ext_is_critical(x, NID_key_usage));
    uint32_t want = KU_KEY_CERT_SIGN | KU_CRL_SIGN | KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT;
    if (X509_get_key_usage(x) != want)
        fail_msg("key usage 0x%x, want 0x%x", X509_get_key_usage(x), want);
    assert_ski_is_aki(x, x);
    assert_int_equal(ASN1_STRING_length(X509_get0_subject_key_id(x)), 20);

    int bits = serial_bits(x);
    if (bits < 120 || bits > 127)
        fail_msg("CA serial has %d bits", bits);
    assert_int_equal(X509_get_signature_nid(x), NID_sha256WithRSAEncryption);

    int64_t nb = cert_time(X509_get0_notBefore(x)), na = cert_time(X509_get0_notAfter(x));
    if (llabs(nb - (made - MDM_CA_BACKDATE_MS)) > 5000)
        fail_msg("notBefore %lld is not 5 minutes before %lld", (long long)nb, (long long)made);
    if (llabs(na - (made + 3650 * DAY_MS)) > 5000)
        fail_msg("notAfter %lld, want about %lld", (long long)na,
                 (long long)(made + 3650 * DAY_MS));

    /* Two CAs never share a serial. */
    assert_int_not_equal(
        ASN1_INTEGER_cmp(X509_get0_serialNumber(x), X509_get0_serialNumber(G.ca_cert)), 0);
    X509_free(x);
    X509 *y = NULL;
    assert_rc(mdm_ca_create_self_signed(G.ca_key, "", 10, &y, &err), MDM_EINVAL, err);
    assert_rc(mdm_ca_create_self_signed(G.ca_key, "x", 0, &y, &err), MDM_EINVAL, err);
}

static void test_server_cert_sans(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    const char *sans[] = {"DNS:mdm.example.com", "DNS:*.mdm.example.org", "IP:127.0.0.1",
                          "IP:::1", "IP:[2001:db8::5]"};
    X509 *x = NULL;
    assert_ok(mdm_ca_issue_server_cert(G.ca, G.rsa2048, "mdm.example.com", sans, 5, 825, &x, &err),
              err);

    int verr = 0;
    if (verify_with_store(G.ca_cert, x, X509_PURPOSE_SSL_SERVER, &verr) != 1)
        fail_msg("server cert does not verify: %s", X509_verify_cert_error_string(verr));
    assert_ok(mdm_ca_verify_cert(G.ca, x, NULL, &err), err);

    assert_int_equal(X509_check_host(x, "mdm.example.com", 0, 0, NULL), 1);
    assert_int_equal(X509_check_host(x, "a.mdm.example.org", 0, 0, NULL), 1);
    assert_int_equal(X509_check_host(x, "other.example.com", 0, 0, NULL), 0);
    assert_int_equal(X509_check_ip_asc(x, "127.0.0.1", 0), 1);
    assert_int_equal(X509_check_ip_asc(x, "::1", 0), 1);
    assert_int_equal(X509_check_ip_asc(x, "2001:db8::5", 0), 1);
    assert_int_equal(X509_check_ip_asc(x, "127.0.0.2", 0), 0);

    assert_true(X509_get_extended_key_usage(x) & XKU_SSL_SERVER);
    assert_false(X509_get_extended_key_usage(x) & XKU_SSL_CLIENT);
    assert_int_equal(X509_check_ca(x), 0);
    assert_true(ext_is_critical(x, NID_basic_constraints));
    assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT);
    assert_ski_is_aki(x, G.ca_cert);
    assert_true(mdm_key_matches_cert(G.rsa2048, x));
    int64_t now = mdm_now_ms();
    int64_t na = cert_time(X509_get0_notAfter(x));
    if (llabs(na - (now + 825 * DAY_MS)) > 60000)
        fail_msg("notAfter %lld, want about %lld", (long long)na, (long long)(now + 825 * DAY_MS));
    X509_free(x);

    /* Without SANs the common name is the one name; an IP CN is an IP SAN. */
    assert_ok(mdm_ca_issue_server_cert(G.ca, G.ec256, "10.1.2.3", NULL, 0, 30, &x, &err), err);
    assert_int_equal(X509_check_ip_asc(x, "10.1.2.3", 0), 1);
    assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE);
    X509_free(x);
    assert_ok(mdm_ca_issue_server_cert(G.ca, G.ec256, "localhost", NULL, 0, 30, &x, &err), err);
    assert_int_equal(X509_check_host(x, "localhost", 0, 0, NULL), 1);
    X509_free(x);

    /* Bad names and lifetimes are refused with the reason. */
    const char *bad1[] = {"URI:http://x"};
    x = NULL;
    assert_rc(mdm_ca_issue_server_cert(G.ca, G.ec256, "a", bad1, 1, 30, &x, &err), MDM_EINVAL,
              err);
    assert_contains(err.msg, "URI:http://x");
    assert_null(x);
    const char *bad2[] = {"IP:300.1.1.1"};
    assert_rc(mdm_ca_issue_server_cert(G.ca, G.ec256, "a", bad2, 1, 30, &x, &err), MDM_EINVAL,
              err);
    assert_contains(err.msg, "300.1.1.1");
    const char *bad3[] = {"DNS:a,DNS:evil.com"};
    assert_rc(mdm_ca_issue_server_cert(G.ca, G.ec256, "a", bad3, 1, 30, &x, &err), MDM_EINVAL,
              err);
    assert_rc(mdm_ca_issue_server_cert(G.ca, G.ec256, "a", NULL, 0, 826, &x, &err), MDM_EINVAL,
              err);
    assert_contains(err.msg, "825");
}

/* x's DER read back into a new object (x is freed); NULL on error. */
static X509 *reread_der(X509 *x)
{
    unsigned char *der = NULL;
    int n = i2d_X509(x, &der);
    X509_free(x);
    if (n <= 0)
        return NULL;
    const unsigned char *p = der;
    X509 *y = d2i_X509(NULL, &p, n);
    OPENSSL_free(der);
    return y;
}

static X509 *issue_csr(mdm_ca_t *ca, X509_REQ *req, const mdm_issue_opts_t *opts)
{
    X509 *x = NULL;
    mdm_err_t err = {0};
    assert_ok(mdm_ca_issue_from_csr(ca, req, opts, &x, &err), err);
    assert_non_null(x);
    /* The issued object carries the key as encoded, not parsed: read the
     * DER back, as a device would, and check it is the CSR's key. */
    assert_null(X509_get0_pubkey(x));
    ERR_clear_error();
    X509 *y = reread_der(x);
    assert_non_null(y);
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(y), X509_REQ_get0_pubkey(req)), 1);
    return y;
}

static void test_csr_rsa2048(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    X509_REQ *req = make_csr(G.rsa2048, "device-1", NULL);
    mdm_issue_opts_t opts = {.validity_ms = 30 * DAY_MS};
    int64_t before = mdm_now_ms();
    X509 *x = issue_csr(G.ca, req, &opts);

    assert_int_equal(X509_get_version(x), X509_VERSION_3);
    assert_int_equal(X509_verify(x, G.ca_key), 1);
    assert_ok(mdm_ca_verify_cert(G.ca, x, NULL, &err), err);
    assert_true(mdm_key_matches_cert(G.rsa2048, x));
    assert_int_equal(X509_NAME_cmp(X509_get_subject_name(x), X509_REQ_get_subject_name(req)), 0);
    assert_int_equal(X509_NAME_cmp(X509_get_issuer_name(x), X509_get_subject_name(G.ca_cert)), 0);

    uint32_t xku = X509_get_extended_key_usage(x);
    if (xku != XKU_SSL_CLIENT)
        fail_msg("extended key usage 0x%x, want clientAuth only", xku);
    assert_int_equal(X509_check_ca(x), 0);
    assert_int_equal(X509_get_ext_by_NID(x, NID_basic_constraints, -1) >= 0, 1);
    assert_true(ext_is_critical(x, NID_basic_constraints));
    assert_true(ext_is_critical(x, NID_key_usage));
    assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT);
    assert_ski_is_aki(x, G.ca_cert);
    assert_non_null(X509_get0_subject_key_id(x));
    assert_int_equal(X509_get_signature_nid(x), NID_sha256WithRSAEncryption);
    /* No CRL distribution point unless configured, no SAN unless asked. */
    assert_int_equal(X509_get_ext_by_NID(x, NID_crl_distribution_points, -1), -1);
    assert_int_equal(X509_get_ext_by_NID(x, NID_subject_alt_name, -1), -1);

    int64_t after = mdm_now_ms();
    int64_t nb = cert_time(X509_get0_notBefore(x)), na = cert_time(X509_get0_notAfter(x));
    if (na < before + 30 * DAY_MS - 1000 || na > after + 30 * DAY_MS)
        fail_msg("notAfter %lld not within [%lld, %lld]", (long long)na,
                 (long long)(before + 30 * DAY_MS), (long long)(after + 30 * DAY_MS));
    if (nb < before - MDM_CA_BACKDATE_MS - 1000 || nb > after - MDM_CA_BACKDATE_MS)
        fail_msg("notBefore %lld is not 5 minutes before issuance", (long long)nb);
    X509_free(x);

    /* The CA's default validity applies when the options give none. */
    G.ca->validity_ms = 7 * DAY_MS;
    x = issue_csr(G.ca, req, NULL);
    na = cert_time(X509_get0_notAfter(x));
    G.ca->validity_ms = MDM_CA_DEFAULT_VALIDITY_MS;
    if (llabs(na - (mdm_now_ms() + 7 * DAY_MS)) > 5000)
        fail_msg("default validity: notAfter %lld", (long long)na);
    X509_free(x);

    /* A device certificate never outlives its CA. */
    opts.validity_ms = 20000 * DAY_MS;
    x = issue_csr(G.ca, req, &opts);
    assert_int_equal(ASN1_TIME_compare(X509_get0_notAfter(x), X509_get0_notAfter(G.ca_cert)), 0);
    X509_free(x);
    X509_REQ_free(req);
}

static void test_csr_rsa1024_refused(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    X509_REQ *req = make_csr(G.rsa1024, "weak", NULL);
    X509 *x = NULL;
    assert_rc(mdm_ca_issue_from_csr(G.ca, req, NULL, &x, &err), MDM_EINVAL, err);
    assert_null(x);
    assert_contains(err.msg, "RSA 1024 bits");
    X509_REQ_free(req);
}

static void test_csr_ec_p256(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    X509_REQ *req = make_csr(G.ec256, "ec-device", NULL);
    X509 *x = issue_csr(G.ca, req, NULL);
    assert_ok(mdm_ca_verify_cert(G.ca, x, NULL, &err), err);
    assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE | KU_KEY_AGREEMENT);
    assert_int_equal(X509_get_extended_key_usage(x), XKU_SSL_CLIENT);
    assert_true(mdm_key_matches_cert(G.ec256, x));
    X509_free(x);
    X509_REQ_free(req);
}

static void test_csr_p521_refused(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    X509_REQ *req = make_csr(G.ec521, "p521", NULL);
    X509 *x = NULL;
    assert_rc(mdm_ca_issue_from_csr(G.ca, req, NULL, &x, &err), MDM_EINVAL, err);
    assert_contains(err.msg, "P-521");
    assert_null(x);
    X509_REQ_free(req);

    /* Other key types are named too. */
    EVP_PKEY *ed = EVP_PKEY_Q_keygen(NULL, NULL, "ED25519");
    req = X509_REQ_new();
    X509_NAME *n = X509_REQ_get_subject_name(req);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"ed", -1, -1, 0);
    X509_REQ_set_pubkey(req, ed);
    assert_true(X509_REQ_sign(req, ed, NULL) > 0);
    assert_rc(mdm_ca_issue_from_csr(G.ca, req, NULL, &x, &err), MDM_EINVAL, err);
    assert_contains(err.msg, "ED25519");
    X509_REQ_free(req);
    EVP_PKEY_free(ed);
}

static void test_csr_bad_signature(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    X509_REQ *req = make_csr(G.rsa2048, "tampered", NULL);
    unsigned char *der = NULL;
    int len = i2d_X509_REQ(req, &der);
    assert_true(len > 0);
    der[len - 1] ^= 0x01; /* the last byte belongs to the signature */
    const unsigned char *p = der;
    X509_REQ *bad = d2i_X509_REQ(NULL, &p, len);
    assert_non_null(bad);
    X509 *x = NULL;
    assert_rc(mdm_ca_issue_from_csr(G.ca, bad, NULL, &x, &err), MDM_EAUTH, err);
    assert_contains(err.msg, "signature");
    assert_null(x);
    assert_int_equal(ERR_peek_error(), 0);

    /* A CSR whose key was swapped after signing fails the same way. */
    X509_REQ_free(bad);
    bad = make_csr(G.rsa2048, "swapped", NULL);
    X509_REQ_set_pubkey(bad, G.ec256);
    assert_rc(mdm_ca_issue_from_csr(G.ca, bad, NULL, &x, &err), MDM_EAUTH, err);
    X509_REQ_free(bad);
    OPENSSL_free(der);
    X509_REQ_free(req);
}

static void test_csr_subject(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    X509_REQ *req = make_csr(G.rsa2048, "asked-for", NULL);
    X509_NAME *over = X509_NAME_new();
    X509_NAME_add_entry_by_txt(over, "O", MBSTRING_UTF8, (const unsigned char *)"moonmdm", -1, -1,
                               0);
    X509_NAME_add_entry_by_txt(over, "CN", MBSTRING_UTF8,
                               (const unsigned char *)"C02XYZ:enrollment", -1, -1, 0);
    mdm_issue_opts_t opts = {.subject_override = over};
    X509 *x = issue_csr(G.ca, req, &opts);
    char name[128];
    mdm_x509_name_oneline(X509_get_subject_name(x), name, sizeof(name));
    assert_string_equal(name, "CN=C02XYZ:enrollment,O=moonmdm");
    X509_free(x);
    X509_REQ_free(req);

    /* An empty subject is refused, unless the override fills it in. */
    req = make_csr(G.rsa2048, NULL, NULL);
    x = NULL;
    assert_rc(mdm_ca_issue_from_csr(G.ca, req, NULL, &x, &err), MDM_EINVAL, err);
    assert_contains(err.msg, "subject");
    assert_null(x);
    x = issue_csr(G.ca, req, &opts);
    X509_free(x);
    X509_REQ_free(req);
    X509_NAME_free(over);
}

static void test_csr_san_and_crl_url(void **state)
{
    (void)state;
    X509_REQ *req = make_csr(G.ec256, "with-san", "DNS:dev.example.com,email:a@example.com");
    G.ca->crl_url = mdm_strdup("http://mdm.example.com/crl");
    X509 *x = issue_csr(G.ca, req, NULL);
    mdm_free(G.ca->crl_url);
    G.ca->crl_url = NULL;

    assert_int_equal(X509_check_host(x, "dev.example.com", 0, 0, NULL), 1);
    assert_int_equal(X509_check_email(x, "a@example.com", 0, 0), 1);
    STACK_OF(DIST_POINT) *dps = X509_get_ext_d2i(x, NID_crl_distribution_points, NULL, NULL);
    assert_non_null(dps);
    assert_int_equal(sk_DIST_POINT_num(dps), 1);
    DIST_POINT *dp = sk_DIST_POINT_value(dps, 0);
    GENERAL_NAME *gn = sk_GENERAL_NAME_value(dp->distpoint->name.fullname, 0);
    assert_int_equal(gn->type, GEN_URI);
    assert_string_equal((const char *)ASN1_STRING_get0_data(gn->d.uniformResourceIdentifier),
                        "http://mdm.example.com/crl");
    CRL_DIST_POINTS_free(dps);
    X509_free(x);
    X509_REQ_free(req);
}

static void test_csr_cannot_ask_for_ca(void **state)
{
    (void)state;
    /* Requested extensions other than subjectAltName are ignored: a device
     * cannot ask to become a CA or for other key usages. */
    X509_REQ *req = X509_REQ_new();
    X509_NAME *n = X509_REQ_get_subject_name(req);
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)"sneaky", -1, -1,
                               0);
    X509_REQ_set_pubkey(req, G.rsa2048);
    STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
    sk_X509_EXTENSION_push(
        exts, X509V3_EXT_conf_nid(NULL, NULL, NID_basic_constraints, "critical,CA:TRUE"));
    sk_X509_EXTENSION_push(exts, X509V3_EXT_conf_nid(NULL, NULL, NID_key_usage, "keyCertSign"));
    sk_X509_EXTENSION_push(exts, X509V3_EXT_conf_nid(NULL, NULL, NID_ext_key_usage, "serverAuth"));
    X509_REQ_add_extensions(req, exts);
    sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    assert_true(X509_REQ_sign(req, G.rsa2048, EVP_sha256()) > 0);
    X509 *x = issue_csr(G.ca, req, NULL);
    assert_int_equal(X509_check_ca(x), 0);
    assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT);
    assert_int_equal(X509_get_extended_key_usage(x), XKU_SSL_CLIENT);
    assert_int_equal(X509_get_ext_count(x), 5); /* BC, KU, EKU, SKI, AKI */
    X509_free(x);
    X509_REQ_free(req);
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(char *const *)a, *(char *const *)b);
}

static void assert_distinct(char **serials, size_t n)
{
    qsort(serials, n, sizeof(char *), cmp_str);
    for (size_t i = 1; i < n; i++)
        if (strcmp(serials[i - 1], serials[i]) == 0)
            fail_msg("serial %s issued twice", serials[i]);
}

static char *serial_hex(X509 *x)
{
    BIGNUM *bn = ASN1_INTEGER_to_BN(X509_get0_serialNumber(x), NULL);
    char *h = BN_bn2hex(bn);
    char *copy = mdm_strdup(h);
    OPENSSL_free(h);
    BN_free(bn);
    return copy;
}

static void test_serials_distinct(void **state)
{
    (void)state;
    enum { N = 1000 };
    /* ECDSA signs fast, which keeps this quick under valgrind. */
    X509_REQ *req = make_csr(G.ec256, "many", NULL);
    char **serials = mdm_calloc(N, sizeof(char *));
    for (size_t i = 0; i < N; i++) {
        X509 *x = issue_csr(G.ec_ca, req, NULL);
        int bits = serial_bits(x);
        if (bits < 64 || bits > 127)
            fail_msg("serial %zu has %d bits", i, bits);
        serials[i] = serial_hex(x);
        X509_free(x);
    }
    assert_distinct(serials, N);
    for (size_t i = 0; i < N; i++)
        mdm_free(serials[i]);
    mdm_free(serials);
    X509_REQ_free(req);
}

enum { THREADS = 4, PER_THREAD = 25 };

struct worker {
    const unsigned char *csr_der;
    int csr_len;
    char *serials[PER_THREAD];
    int rc;
    mdm_err_t err;
};

/* Each worker parses its own CSR, as the SCEP handler does, and issues
 * from it with the shared CA. */
static void *issue_worker(void *arg)
{
    struct worker *w = arg;
    const unsigned char *p = w->csr_der;
    X509_REQ *req = d2i_X509_REQ(NULL, &p, w->csr_len);
    if (req == NULL) {
        w->rc = MDM_EPARSE;
        return NULL;
    }
    for (int i = 0; i < PER_THREAD && w->rc == 0; i++) {
        X509 *x = NULL;
        w->rc = mdm_ca_issue_from_csr(G.ca, req, NULL, &x, &w->err);
        if (w->rc == 0 && (x = reread_der(x)) == NULL)
            w->rc = MDM_ECRYPTO;
        if (w->rc == 0) {
            w->rc = mdm_ca_verify_cert(G.ca, x, NULL, &w->err);
            w->serials[i] = serial_hex(x);
        }
        X509_free(x);
    }
    X509_REQ_free(req);
    return NULL;
}

static void test_issue_from_threads(void **state)
{
    (void)state;
    X509_REQ *req = make_csr(G.rsa2048, "threaded", NULL);
    unsigned char *der = NULL;
    int len = i2d_X509_REQ(req, &der);
    struct worker w[THREADS];
    pthread_t th[THREADS];
    memset(w, 0, sizeof(w));
    for (int t = 0; t < THREADS; t++) {
        w[t].csr_der = der;
        w[t].csr_len = len;
        assert_int_equal(pthread_create(&th[t], NULL, issue_worker, &w[t]), 0);
    }
    for (int t = 0; t < THREADS; t++)
        assert_int_equal(pthread_join(th[t], NULL), 0);
    char *all[THREADS * PER_THREAD];
    for (int t = 0; t < THREADS; t++) {
        if (w[t].rc != 0)
            fail_msg("thread %d: %s: %s", t, mdm_errname(w[t].rc), w[t].err.msg);
        for (int i = 0; i < PER_THREAD; i++)
            all[t * PER_THREAD + i] = w[t].serials[i];
    }
    assert_distinct(all, THREADS * PER_THREAD);
    for (int i = 0; i < THREADS * PER_THREAD; i++)
        mdm_free(all[i]);
    OPENSSL_free(der);
    X509_REQ_free(req);
}

static void test_verify_rejects(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    X509_REQ *req = make_csr(G.rsa2048, "dev", NULL);

    /* A certificate from another CA with the same name. */
    EVP_PKEY *other_key = gen("ec");
    X509 *other_cert = NULL;
    mdm_ca_t *other = NULL;
    assert_ok(mdm_ca_create_self_signed(other_key, "Test CA", 30, &other_cert, &err), err);
    assert_ok(mdm_ca_new(other_cert, other_key, NULL, &other, &err), err);
    X509 *x = issue_csr(other, req, NULL);
    assert_rc(mdm_ca_verify_cert(G.ca, x, NULL, &err), MDM_EAUTH, err);
    assert_contains(err.msg, "certificate verification failed");
    assert_ok(mdm_ca_verify_cert(other, x, NULL, &err), err);
    X509_free(x);

    /* An expired one from the right CA. */
    mdm_issue_opts_t opts = {.validity_ms = DAY_MS, .not_before_ms = mdm_now_ms() - 10 * DAY_MS};
    x = issue_csr(G.ca, req, &opts);
    assert_rc(mdm_ca_verify_cert(G.ca, x, NULL, &err), MDM_EEXPIRED, err);
    assert_contains(err.msg, "expired");
    X509_free(x);

    /* The CA itself and a server certificate verify (any purpose). */
    assert_ok(mdm_ca_verify_cert(G.ca, G.ca_cert, NULL, &err), err);

    mdm_ca_free(other);
    X509_free(other_cert);
    EVP_PKEY_free(other_key);
    X509_REQ_free(req);
}

/* Replaces the basicConstraints of x and re-signs it with key. */
static void set_bc_and_sign(X509 *x, const char *bc, X509 *issuer, EVP_PKEY *key)
{
    X509V3_CTX v3;
    X509V3_set_ctx(&v3, issuer, x, NULL, NULL, 0);
    X509_EXTENSION *e = X509V3_EXT_conf_nid(NULL, &v3, NID_basic_constraints, bc);
    assert_non_null(e);
    int idx = X509_get_ext_by_NID(x, NID_basic_constraints, -1);
    X509_EXTENSION_free(X509_delete_ext(x, idx));
    X509_add_ext(x, e, -1);
    X509_EXTENSION_free(e);
    if (issuer != x) {
        X509_set_issuer_name(x, X509_get_subject_name(issuer));
        idx = X509_get_ext_by_NID(x, NID_authority_key_identifier, -1);
        X509_EXTENSION_free(X509_delete_ext(x, idx));
        AUTHORITY_KEYID *ak = AUTHORITY_KEYID_new();
        ak->keyid = ASN1_OCTET_STRING_dup(X509_get0_subject_key_id(issuer));
        X509_add1_ext_i2d(x, NID_authority_key_identifier, ak, 0, 0);
        AUTHORITY_KEYID_free(ak);
    }
    assert_true(X509_sign(x, key, EVP_sha256()) > 0);
}

static void test_intermediate_ca(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    /* root (no path length limit) -> intermediate (moonmdm's CA) -> device. */
    EVP_PKEY *rkey = gen("ec:P-256");
    X509 *rcert = NULL;
    assert_ok(mdm_ca_create_self_signed(rkey, "Root", 30, &rcert, &err), err);
    set_bc_and_sign(rcert, "critical,CA:TRUE", rcert, rkey);
    EVP_PKEY *ikey = gen("ec:P-384");
    X509 *icert = NULL;
    assert_ok(mdm_ca_create_self_signed(ikey, "Intermediate", 30, &icert, &err), err);
    set_bc_and_sign(icert, "critical,CA:TRUE,pathlen:0", rcert, rkey);

    mdm_ca_t *root = NULL, *ica = NULL;
    assert_ok(mdm_ca_new(rcert, rkey, NULL, &root, &err), err);
    STACK_OF(X509) *chain = sk_X509_new_null();
    sk_X509_push(chain, rcert);
    assert_ok(mdm_ca_new(icert, ikey, chain, &ica, &err), err);
    sk_X509_free(chain);

    X509_REQ *req = make_csr(G.ec256, "under-intermediate", NULL);
    X509 *x = issue_csr(ica, req, NULL);
    assert_int_equal(X509_get_signature_nid(x), NID_ecdsa_with_SHA256);
    assert_ski_is_aki(x, icert);
    assert_ok(mdm_ca_verify_cert(ica, x, NULL, &err), err);
    /* The root alone needs the intermediate among the untrusted certs. */
    assert_rc(mdm_ca_verify_cert(root, x, NULL, &err), MDM_EAUTH, err);
    assert_contains(err.msg, "local issuer");
    STACK_OF(X509) *untrusted = sk_X509_new_null();
    sk_X509_push(untrusted, icert);
    assert_ok(mdm_ca_verify_cert(root, x, untrusted, &err), err);
    sk_X509_free(untrusted);

    X509_free(x);
    X509_REQ_free(req);
    mdm_ca_free(ica);
    mdm_ca_free(root);
    X509_free(icert);
    X509_free(rcert);
    EVP_PKEY_free(ikey);
    EVP_PKEY_free(rkey);
}

static void test_crl(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    X509_REQ *req = make_csr(G.ec256, "revoked", NULL);
    X509 *a = issue_csr(G.ca, req, NULL), *b = issue_csr(G.ca, req, NULL),
         *c = issue_csr(G.ca, req, NULL);
    mdm_revoked_t rev[2];
    memset(rev, 0, sizeof(rev));
    assert_int_equal(mdm_cert_serial(a, rev[0].serial, &rev[0].serial_len), 0);
    rev[0].revoked_at_ms = mdm_now_ms() - 3600 * 1000;
    rev[0].reason = 1; /* keyCompromise */
    assert_int_equal(mdm_cert_serial(b, rev[1].serial, &rev[1].serial_len), 0);
    rev[1].revoked_at_ms = mdm_now_ms();
    rev[1].reason = 0;

    int64_t next = mdm_now_ms() + 7 * DAY_MS;
    mdm_buf_t der = MDM_BUF_INIT;
    assert_ok(mdm_ca_crl(G.ca, rev, 2, 7, next, &der, &err), err);
    const unsigned char *p = (const unsigned char *)der.data;
    X509_CRL *crl = d2i_X509_CRL(NULL, &p, (long)der.len);
    assert_non_null(crl);
    assert_int_equal(X509_CRL_get_version(crl), X509_CRL_VERSION_2);
    assert_int_equal(X509_CRL_verify(crl, G.ca_key), 1);
    assert_int_not_equal(X509_CRL_verify(crl, G.ec_ca_key), 1);
    ERR_clear_error();
    assert_int_equal(X509_NAME_cmp(X509_CRL_get_issuer(crl), X509_get_subject_name(G.ca_cert)),
                     0);
    assert_int_equal(sk_X509_REVOKED_num(X509_CRL_get_REVOKED(crl)), 2);

    X509_REVOKED *r = NULL;
    assert_int_equal(X509_CRL_get0_by_cert(crl, &r, a), 1);
    ASN1_ENUMERATED *reason = X509_REVOKED_get_ext_d2i(r, NID_crl_reason, NULL, NULL);
    assert_non_null(reason);
    assert_int_equal(ASN1_ENUMERATED_get(reason), 1);
    ASN1_ENUMERATED_free(reason);
    assert_int_equal(cert_time(X509_REVOKED_get0_revocationDate(r)) / 1000,
                     rev[0].revoked_at_ms / 1000);
    assert_int_equal(X509_CRL_get0_by_cert(crl, &r, b), 1);
    assert_int_equal(X509_REVOKED_get_ext_by_NID(r, NID_crl_reason, -1), -1);
    assert_int_equal(X509_CRL_get0_by_cert(crl, &r, c), 0);

    ASN1_INTEGER *num = X509_CRL_get_ext_d2i(crl, NID_crl_number, NULL, NULL);
    assert_non_null(num);
    assert_int_equal(ASN1_INTEGER_get(num), 7);
    ASN1_INTEGER_free(num);
    AUTHORITY_KEYID *aki = X509_CRL_get_ext_d2i(crl, NID_authority_key_identifier, NULL, NULL);
    assert_non_null(aki);
    assert_int_equal(ASN1_OCTET_STRING_cmp(aki->keyid, X509_get0_subject_key_id(G.ca_cert)), 0);
    AUTHORITY_KEYID_free(aki);
    assert_int_equal(cert_time(X509_CRL_get0_nextUpdate(crl)) / 1000, next / 1000);
    if (llabs(cert_time(X509_CRL_get0_lastUpdate(crl)) - mdm_now_ms()) > 5000)
        fail_msg("lastUpdate is not now");

    /* OpenSSL's own revocation check sees the entries. */
    X509_STORE *st = X509_STORE_new();
    X509_STORE_add_cert(st, G.ca_cert);
    X509_STORE_add_crl(st, crl);
    X509_STORE_set_flags(st, X509_V_FLAG_CRL_CHECK);
    X509 *certs[3] = {a, b, c};
    int want[3] = {X509_V_ERR_CERT_REVOKED, X509_V_ERR_CERT_REVOKED, X509_V_OK};
    for (int i = 0; i < 3; i++) {
        X509_STORE_CTX *ctx = X509_STORE_CTX_new();
        X509_STORE_CTX_init(ctx, st, certs[i], NULL);
        X509_verify_cert(ctx);
        if (X509_STORE_CTX_get_error(ctx) != want[i])
            fail_msg("cert %d: %s", i,
                     X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
        X509_STORE_CTX_free(ctx);
    }
    X509_STORE_free(st);
    X509_CRL_free(crl);

    /* An empty CRL is fine; a past nextUpdate is not. */
    mdm_buf_reset(&der);
    assert_ok(mdm_ca_crl(G.ca, NULL, 0, 8, next, &der, &err), err);
    assert_rc(mdm_ca_crl(G.ca, NULL, 0, 9, mdm_now_ms() - 1, &der, &err), MDM_EINVAL, err);

    mdm_buf_free(&der);
    X509_free(a);
    X509_free(b);
    X509_free(c);
    X509_REQ_free(req);
}

static void test_ec_ca_issues_rsa(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    X509_REQ *req = make_csr(G.rsa2048, "rsa-under-ec", NULL);
    X509 *x = issue_csr(G.ec_ca, req, NULL);
    assert_int_equal(X509_get_signature_nid(x), NID_ecdsa_with_SHA256);
    assert_int_equal(X509_get_key_usage(x), KU_DIGITAL_SIGNATURE | KU_KEY_ENCIPHERMENT);
    assert_ok(mdm_ca_verify_cert(G.ec_ca, x, NULL, &err), err);
    int verr = 0;
    if (verify_with_store(G.ec_ca_cert, x, 0, &verr) != 1)
        fail_msg("does not verify: %s", X509_verify_cert_error_string(verr));
    assert_rc(mdm_ca_verify_cert(G.ca, x, NULL, &err), MDM_EAUTH, err);

    mdm_buf_t der = MDM_BUF_INIT;
    assert_ok(mdm_ca_crl(G.ec_ca, NULL, 0, 1, mdm_now_ms() + DAY_MS, &der, &err), err);
    const unsigned char *p = (const unsigned char *)der.data;
    X509_CRL *crl = d2i_X509_CRL(NULL, &p, (long)der.len);
    assert_int_equal(X509_CRL_verify(crl, G.ec_ca_key), 1);
    X509_CRL_free(crl);
    mdm_buf_free(&der);
    X509_free(x);
    X509_REQ_free(req);
}

static int run(const char *cmd)
{
    int st = system(cmd);
    return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

static void test_openssl_cli_verify(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    char *ca = tmp_path("cli-ca.pem"), *dev = tmp_path("cli-dev.pem"),
         *srv = tmp_path("cli-srv.pem"), *other = tmp_path("cli-other.pem"),
         *crlp = tmp_path("cli.crl");
    X509_REQ *req = make_csr(G.rsa2048, "cli-device", NULL);
    X509 *x = issue_csr(G.ca, req, NULL);
    const char *sans[] = {"DNS:localhost", "IP:127.0.0.1"};
    X509 *s = NULL;
    assert_ok(mdm_ca_issue_server_cert(G.ca, G.ec256, "localhost", sans, 2, 90, &s, &err), err);
    assert_ok(mdm_cert_write_pem(G.ca_cert, ca, &err), err);
    assert_ok(mdm_cert_write_pem(x, dev, &err), err);
    assert_ok(mdm_cert_write_pem(s, srv, &err), err);
    assert_ok(mdm_cert_write_pem(G.ec_ca_cert, other, &err), err);

    char *cmd = mdm_sprintf("openssl verify -CAfile %s %s >/dev/null 2>&1", ca, dev);
    assert_int_equal(run(cmd), 0);
    mdm_free(cmd);
    cmd = mdm_sprintf("openssl verify -purpose sslclient -CAfile %s %s >/dev/null 2>&1", ca, dev);
    assert_int_equal(run(cmd), 0);
    mdm_free(cmd);
    cmd = mdm_sprintf("openssl verify -purpose sslserver -verify_hostname localhost "
                      "-CAfile %s %s >/dev/null 2>&1",
                      ca, srv);
    assert_int_equal(run(cmd), 0);
    mdm_free(cmd);
    /* The CLI rejects what it should reject, so the passes above mean
     * something. */
    cmd = mdm_sprintf("openssl verify -CAfile %s %s >/dev/null 2>&1", other, dev);
    assert_int_not_equal(run(cmd), 0);
    mdm_free(cmd);

    /* The CLI accepts the CRL and sees the revocation. */
    mdm_revoked_t rev;
    memset(&rev, 0, sizeof(rev));
    assert_int_equal(mdm_cert_serial(x, rev.serial, &rev.serial_len), 0);
    rev.revoked_at_ms = mdm_now_ms();
    rev.reason = 4;
    mdm_buf_t der = MDM_BUF_INIT;
    assert_ok(mdm_ca_crl(G.ca, &rev, 1, 2, mdm_now_ms() + DAY_MS, &der, &err), err);
    FILE *f = fopen(crlp, "wb");
    fwrite(der.data, 1, der.len, f);
    fclose(f);
    mdm_buf_free(&der);
    cmd = mdm_sprintf("openssl crl -inform DER -in %s -CAfile %s -noout 2>&1 | grep -q 'verify OK'",
                      crlp, ca);
    assert_int_equal(run(cmd), 0);
    mdm_free(cmd);
    char *crlpem = tmp_path("cli-crl.pem");
    cmd = mdm_sprintf("openssl crl -inform DER -in %s -out %s && openssl verify -crl_check "
                      "-CAfile %s -CRLfile %s %s 2>&1 | grep -q 'certificate revoked'",
                      crlp, crlpem, ca, crlpem, dev);
    assert_int_equal(run(cmd), 0);
    mdm_free(cmd);

    X509_free(s);
    X509_free(x);
    X509_REQ_free(req);
    mdm_free(ca);
    mdm_free(dev);
    mdm_free(srv);
    mdm_free(other);
    mdm_free(crlp);
    mdm_free(crlpem);
}

static void test_ca_load(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    char *cp = tmp_path("load-ca.pem"), *kp = tmp_path("load-ca.key"),
         *wrong = tmp_path("load-wrong.key"), *srvp = tmp_path("load-srv.pem"),
         *srvk = tmp_path("load-srv.key"), *oldp = tmp_path("load-old.pem");
    assert_ok(mdm_cert_write_pem(G.ca_cert, cp, &err), err);
    assert_ok(mdm_key_write_pem(G.ca_key, kp, &err), err);
    assert_ok(mdm_key_write_pem(G.ec256, wrong, &err), err);

    mdm_ca_t *ca = NULL;
    assert_ok(mdm_ca_load(cp, kp, NULL, false, &ca, &err), err);
    assert_int_equal(X509_cmp(ca->cert, G.ca_cert), 0);
    assert_int_equal(sk_X509_num(ca->chain), 0);
    assert_int_equal(ca->validity_ms, MDM_CA_DEFAULT_VALIDITY_MS);
    assert_null(ca->crl_url);
    X509_REQ *req = make_csr(G.ec256, "loaded", NULL);
    X509 *x = issue_csr(ca, req, NULL);
    assert_ok(mdm_ca_verify_cert(G.ca, x, NULL, &err), err);
    X509_free(x);
    X509_REQ_free(req);
    mdm_ca_free(ca);
    ca = NULL;

    /* A chain file is loaded too. */
    assert_ok(mdm_ca_load(cp, kp, cp, false, &ca, &err), err);
    assert_int_equal(sk_X509_num(ca->chain), 1);
    mdm_ca_free(ca);
    ca = NULL;

    /* A loose key file mode. */
    assert_int_equal(chmod(kp, 0644), 0);
    assert_rc(mdm_ca_load(cp, kp, NULL, false, &ca, &err), MDM_EAUTH, err);
    assert_contains(err.msg, "chmod 600");
    assert_null(ca);
    assert_ok(mdm_ca_load(cp, kp, NULL, true, &ca, &err), err);
    mdm_ca_free(ca);
    ca = NULL;
    assert_int_equal(chmod(kp, 0600), 0);

    /* The wrong key. */
    assert_rc(mdm_ca_load(cp, wrong, NULL, false, &ca, &err), MDM_ECONFIG, err);
    assert_contains(err.msg, "does not match");
    assert_contains(err.msg, wrong);
    assert_contains(err.msg, cp);

    /* A certificate that is not a CA. */
    const char *sans[] = {"DNS:x.example"};
    X509 *srv = NULL;
    assert_ok(mdm_ca_issue_server_cert(G.ca, G.rsa2048, "x.example", sans, 1, 30, &srv, &err),
              err);
    assert_ok(mdm_cert_write_pem(srv, srvp, &err), err);
    assert_ok(mdm_key_write_pem(G.rsa2048, srvk, &err), err);
    assert_rc(mdm_ca_load(srvp, srvk, NULL, false, &ca, &err), MDM_ECONFIG, err);
    assert_contains(err.msg, "not a CA");
    assert_contains(err.msg, srvp);
    X509_free(srv);

    /* An expired CA: the message gives the dates. */
    X509 *old = X509_dup(G.ca_cert);
    int64_t now = mdm_now_ms();
    ASN1_TIME_set(X509_getm_notBefore(old), (time_t)((now - 20 * DAY_MS) / 1000));
    ASN1_TIME_set(X509_getm_notAfter(old), (time_t)((now - 10 * DAY_MS) / 1000));
    assert_true(X509_sign(old, G.ca_key, EVP_sha256()) > 0);
    assert_ok(mdm_cert_write_pem(old, oldp, &err), err);
    assert_rc(mdm_ca_load(oldp, kp, NULL, false, &ca, &err), MDM_EEXPIRED, err);
    char when[32];
    mdm_time_format(when, ((now - 10 * DAY_MS) / 1000) * 1000);
    assert_contains(err.msg, "expired");
    assert_contains(err.msg, when);
    X509_free(old);

    /* Missing files are named. */
    assert_rc(mdm_ca_load("/nonexistent/ca.pem", kp, NULL, false, &ca, &err), MDM_ENOTFOUND, err);
    assert_contains(err.msg, "/nonexistent/ca.pem");

    mdm_free(cp);
    mdm_free(kp);
    mdm_free(wrong);
    mdm_free(srvp);
    mdm_free(srvk);
    mdm_free(oldp);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_key_generate_specs),
        cmocka_unit_test(test_key_generate_bad_spec),
        cmocka_unit_test(test_pem_roundtrip),
        cmocka_unit_test(test_key_mode_refused),
        cmocka_unit_test(test_cert_helpers),
        cmocka_unit_test(test_self_signed_ca_fields),
        cmocka_unit_test(test_server_cert_sans),
        cmocka_unit_test(test_csr_rsa2048),
        cmocka_unit_test(test_csr_rsa1024_refused),
        cmocka_unit_test(test_csr_ec_p256),
        cmocka_unit_test(test_csr_p521_refused),
        cmocka_unit_test(test_csr_bad_signature),
        cmocka_unit_test(test_csr_subject),
        cmocka_unit_test(test_csr_san_and_crl_url),
        cmocka_unit_test(test_csr_cannot_ask_for_ca),
        cmocka_unit_test(test_serials_distinct),
        cmocka_unit_test(test_issue_from_threads),
        cmocka_unit_test(test_verify_rejects),
        cmocka_unit_test(test_intermediate_ca),
        cmocka_unit_test(test_crl),
        cmocka_unit_test(test_ec_ca_issues_rsa),
        cmocka_unit_test(test_openssl_cli_verify),
        cmocka_unit_test(test_ca_load),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
