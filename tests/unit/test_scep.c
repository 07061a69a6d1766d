/* Tests of SCEP: the message layer (scep/scep.c) against requests built
 * here with OpenSSL CMS the way a client builds them, and replies opened
 * the way a client opens them; one-time challenges (scep/challenge.c) over
 * a real LMDB store; and the PKIOperation flow of the service
 * (scep/service.c) on a real libuv loop and thread pool, including the
 * decision seam, renewal, races on one challenge, and the CRL. */
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <setjmp.h>
#include <cmocka.h>

#include <ftw.h>
#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pkcs7.h>
#include <openssl/provider.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>
#include <uv.h>

#include "crypto/ca.h"
#include "crypto/certdb.h"
#include "crypto/keys.h"
#include "mdm/certauth.h"
#include "scep/challenge.h"
#include "scep/scep.h"
#include "scep/service.h"
#include "store/store.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/misc.h"

#define DAY_MS (24LL * 3600 * 1000)

#define OID_MESSAGE_TYPE "2.16.840.1.113733.1.9.2"
#define OID_PKI_STATUS "2.16.840.1.113733.1.9.3"
#define OID_FAIL_INFO "2.16.840.1.113733.1.9.4"
#define OID_SENDER_NONCE "2.16.840.1.113733.1.9.5"
#define OID_RECIPIENT_NONCE "2.16.840.1.113733.1.9.6"
#define OID_TRANSACTION_ID "2.16.840.1.113733.1.9.7"

#define assert_rc(expr, want)                                                             \
    do {                                                                                  \
        int g_ = (expr), w_ = (want);                                                     \
        if (g_ != w_)                                                                     \
            fail_msg("%s: got %d (%s), want %d (%s)", #expr, g_, mdm_errname(g_), w_,     \
                     mdm_errname(w_));                                                    \
    } while (0)

/* Keys and certificates shared by every test (generated once). */
static struct {
    EVP_PKEY *rsa_ca_key;  /* CA-only layout: RSA CA */
    X509 *rsa_ca_cert;
    mdm_ca_t *rsa_ca;
    EVP_PKEY *ec_ca_key;   /* RA layout: EC CA + RSA RA */
    X509 *ec_ca_cert;
    mdm_ca_t *ec_ca;
    EVP_PKEY *ra_key;
    X509 *ra_cert;
    EVP_PKEY *dev_key;     /* a device's key and its self-signed certificate */
    X509 *dev_self;
    EVP_PKEY *dev2_key;
    X509 *dev2_self;
    EVP_PKEY *other_key;   /* an unrelated RSA key and certificate */
    X509 *other_cert;
    OSSL_LIB_CTX *legacy;  /* for single-DES requests */
    OSSL_PROVIDER *prov_legacy, *prov_default;
    EVP_CIPHER *des_cbc;
} G;

static X509 *self_signed(EVP_PKEY *key, const char *cn)
{
    X509 *x = X509_new();
    X509_NAME *n = X509_NAME_new();
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
    ASN1_INTEGER_set(X509_get_serialNumber(x), 7);
    X509_set_version(x, 2);
    X509_set_subject_name(x, n);
    X509_set_issuer_name(x, n);
    X509_gmtime_adj(X509_getm_notBefore(x), -300);
    X509_gmtime_adj(X509_getm_notAfter(x), 3600);
    X509_set_pubkey(x, key);
    X509_sign(x, key, EVP_sha256());
    X509_NAME_free(n);
    return x;
}

static EVP_PKEY *keygen(const char *spec)
{
    EVP_PKEY *k = NULL;
    mdm_err_t err = {0};
    if (mdm_key_generate(spec, &k, &err) != 0)
        fail_msg("keygen %s: %s", spec, err.msg);
    return k;
}

static int group_setup(void **state)
{
    (void)state;
    mdm_err_t err = {0};
    mdm_log_setup(MDM_LOG_ERROR, 2);
    G.rsa_ca_key = keygen("rsa:2048");
    G.ec_ca_key = keygen("ec:P-256");
    G.ra_key = keygen("rsa:2048");
    G.dev_key = keygen("rsa:2048");
    G.dev2_key = keygen("rsa:2048");
    G.other_key = keygen("rsa:2048");
    if (mdm_ca_create_self_signed(G.rsa_ca_key, "RSA CA", 30, &G.rsa_ca_cert, &err) != 0 ||
        mdm_ca_new(G.rsa_ca_cert, G.rsa_ca_key, NULL, &G.rsa_ca, &err) != 0 ||
        mdm_ca_create_self_signed(G.ec_ca_key, "EC CA", 30, &G.ec_ca_cert, &err) != 0 ||
        mdm_ca_new(G.ec_ca_cert, G.ec_ca_key, NULL, &G.ec_ca, &err) != 0 ||
        mdm_scep_ra_create(G.ec_ca, G.ra_key, "EC CA SCEP RA", 30, &G.ra_cert, &err) != 0) {
        fprintf(stderr, "setup: %s\n", err.msg);
        return -1;
    }
    G.dev_self = self_signed(G.dev_key, "device one");
    G.dev2_self = self_signed(G.dev2_key, "device two");
    G.other_cert = self_signed(G.other_key, "somebody else");
    G.legacy = OSSL_LIB_CTX_new();
    G.prov_legacy = OSSL_PROVIDER_load(G.legacy, "legacy");
    G.prov_default = OSSL_PROVIDER_load(G.legacy, "default");
    if (G.prov_legacy != NULL && G.prov_default != NULL)
        G.des_cbc = EVP_CIPHER_fetch(G.legacy, "DES-CBC", NULL);
    ERR_clear_error();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    mdm_ca_free(G.rsa_ca);
    mdm_ca_free(G.ec_ca);
    EVP_PKEY_free(G.rsa_ca_key);
    EVP_PKEY_free(G.ec_ca_key);
    EVP_PKEY_free(G.ra_key);
    EVP_PKEY_free(G.dev_key);
    EVP_PKEY_free(G.dev2_key);
    EVP_PKEY_free(G.other_key);
    X509_free(G.rsa_ca_cert);
    X509_free(G.ec_ca_cert);
    X509_free(G.ra_cert);
    X509_free(G.dev_self);
    X509_free(G.dev2_self);
    X509_free(G.other_cert);
    EVP_CIPHER_free(G.des_cbc);
    if (G.prov_legacy != NULL)
        OSSL_PROVIDER_unload(G.prov_legacy);
    if (G.prov_default != NULL)
        OSSL_PROVIDER_unload(G.prov_default);
    OSSL_LIB_CTX_free(G.legacy);
    /* Join the thread pool now, so that OpenSSL frees its per-thread state
     * (error queues, random generators) of the worker threads while it
     * still can, rather than leaving it to the process exit. */
    uv_library_shutdown();
    return 0;
}

/* ---- a client, written against OpenSSL directly ----------------------- */

static X509_REQ *make_csr(EVP_PKEY *key, const char *cn, const char *challenge,
                          const char *san)
{
    X509_REQ *r = X509_REQ_new();
    X509_NAME *n = X509_NAME_new();
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
    X509_NAME_add_entry_by_txt(n, "O", MBSTRING_UTF8, (const unsigned char *)"test", -1, -1, 0);
    X509_REQ_set_subject_name(r, n);
    X509_REQ_set_pubkey(r, key);
    if (challenge != NULL)
        X509_REQ_add1_attr_by_NID(r, NID_pkcs9_challengePassword, MBSTRING_UTF8,
                                  (const unsigned char *)challenge, -1);
    if (san != NULL) {
        STACK_OF(X509_EXTENSION) *exts = sk_X509_EXTENSION_new_null();
        sk_X509_EXTENSION_push(exts, X509V3_EXT_conf_nid(NULL, NULL, NID_subject_alt_name, san));
        X509_REQ_add_extensions(r, exts);
        sk_X509_EXTENSION_pop_free(exts, X509_EXTENSION_free);
    }
    X509_REQ_sign(r, key, EVP_sha256());
    X509_NAME_free(n);
    return r;
}

struct req_opts {
    int type;                    /* messageType, default PKCSReq */
    const char *type_text;       /* overrides type */
    const char *txid;
    const unsigned char *nonce;  /* 16 bytes; default a fixed pattern */
    const EVP_CIPHER *cipher;    /* default AES-128-CBC */
    const EVP_MD *md;            /* default SHA-256 */
    X509 *signer;                /* default the device's self-signed certificate */
    EVP_PKEY *signer_key;
    X509 *recipient;             /* default the RSA CA */
    X509_REQ *csr;               /* the message data ... */
    const unsigned char *data;   /* ... or these bytes */
    size_t data_len;
    bool omit_txid, omit_nonce, omit_type;
    bool corrupt_signature;
    bool no_envelope;
};

static const unsigned char NONCE[16] = "0123456789abcdef";

static void add_attr(CMS_SignerInfo *si, const char *oid, int type, const void *d, int len)
{
    if (CMS_signed_add1_attr_by_txt(si, oid, type, d, len) != 1)
        fail_msg("adding attribute %s", oid);
}

/* Builds a pkiMessage into out. */
static void build_request(const struct req_opts *o, mdm_buf_t *out)
{
    unsigned char *data = NULL;
    int dlen = 0;
    if (o->data != NULL) {
        data = OPENSSL_memdup(o->data, o->data_len);
        dlen = (int)o->data_len;
    } else if (o->csr != NULL) {
        dlen = i2d_X509_REQ(o->csr, &data);
    }
    mdm_buf_t env = MDM_BUF_INIT;
    if (!o->no_envelope) {
        STACK_OF(X509) *recips = sk_X509_new_null();
        sk_X509_push(recips, o->recipient ? o->recipient : G.rsa_ca_cert);
        BIO *in = BIO_new_mem_buf(data ? (void *)data : "", dlen);
        const EVP_CIPHER *c = o->cipher ? o->cipher : EVP_aes_128_cbc();
        CMS_ContentInfo *e = CMS_encrypt_ex(recips, in, c, CMS_BINARY,
                                            c == G.des_cbc ? G.legacy : NULL, NULL);
        if (e == NULL) {
            ERR_print_errors_fp(stderr);
            fail_msg("CMS_encrypt");
        }
        unsigned char *der = NULL;
        int n = i2d_CMS_ContentInfo(e, &der);
        mdm_buf_append(&env, der, (size_t)n);
        OPENSSL_free(der);
        CMS_ContentInfo_free(e);
        BIO_free(in);
        sk_X509_free(recips);
    }
    CMS_ContentInfo *cms = CMS_sign(NULL, NULL, NULL, NULL, CMS_PARTIAL | CMS_BINARY);
    CMS_SignerInfo *si =
        CMS_add1_signer(cms, o->signer ? o->signer : G.dev_self,
                        o->signer_key ? o->signer_key : G.dev_key, o->md ? o->md : EVP_sha256(),
                        CMS_PARTIAL | CMS_BINARY | CMS_NOSMIMECAP);
    if (si == NULL) {
        ERR_print_errors_fp(stderr);
        fail_msg("CMS_add1_signer");
    }
    char type[16];
    snprintf(type, sizeof(type), "%d", o->type ? o->type : MDM_SCEP_PKCSREQ);
    const char *tt = o->type_text ? o->type_text : type;
    const char *txid = o->txid ? o->txid : "4A2F1C0DE5B6A7980011223344556677";
    if (!o->omit_type)
        add_attr(si, OID_MESSAGE_TYPE, V_ASN1_PRINTABLESTRING, tt, (int)strlen(tt));
    if (!o->omit_txid)
        add_attr(si, OID_TRANSACTION_ID, V_ASN1_PRINTABLESTRING, txid, (int)strlen(txid));
    if (!o->omit_nonce)
        add_attr(si, OID_SENDER_NONCE, V_ASN1_OCTET_STRING, o->nonce ? o->nonce : NONCE, 16);
    BIO *in = BIO_new_mem_buf(env.data ? env.data : "", (int)env.len);
    if (CMS_final(cms, in, NULL, CMS_BINARY) != 1)
        fail_msg("CMS_final");
    unsigned char *der = NULL;
    int n = i2d_CMS_ContentInfo(cms, &der);
    mdm_buf_reset(out);
    mdm_buf_append(out, der, (size_t)n);
    if (o->corrupt_signature)
        out->data[out->len - 1] ^= 0x5a;
    OPENSSL_free(der);
    BIO_free(in);
    CMS_ContentInfo_free(cms);
    mdm_buf_free(&env);
    OPENSSL_free(data);
}

/* What a client reads from a CertRep. */
struct reply {
    int status;
    int fail_info;
    char txid[160];
    unsigned char rnonce[64];
    size_t rnonce_len;
    size_t snonce_len;
    int message_type;
    bool has_content;
    int cipher_nid;
    int digest_nid;
    X509 *cert;
    X509 *signer;
};

static void reply_free(struct reply *r)
{
    X509_free(r->cert);
    X509_free(r->signer);
    memset(r, 0, sizeof(*r));
}

static int attr_int(CMS_SignerInfo *si, const char *oid)
{
    ASN1_OBJECT *obj = OBJ_txt2obj(oid, 1);
    ASN1_STRING *s = CMS_signed_get0_data_by_OBJ(si, obj, -3, V_ASN1_PRINTABLESTRING);
    ASN1_OBJECT_free(obj);
    if (s == NULL)
        return -1;
    char buf[16] = "";
    snprintf(buf, sizeof(buf), "%.*s", ASN1_STRING_length(s),
             (const char *)ASN1_STRING_get0_data(s));
    return atoi(buf);
}

/* Verifies a CertRep against trust (the CA) and opens it with the
 * client's key. */
static void parse_reply(const void *der, size_t len, X509 *trust, X509 *client,
                        EVP_PKEY *client_key, struct reply *r)
{
    memset(r, 0, sizeof(*r));
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    if (cms == NULL)
        fail_msg("the CertRep is not CMS (%zu bytes)", len);
    X509_STORE *store = X509_STORE_new();
    X509_STORE_add_cert(store, trust);
    BIO *out = BIO_new(BIO_s_mem());
    BIO *dcont = CMS_is_detached(cms) ? BIO_new_mem_buf("", 0) : NULL;
    if (CMS_verify(cms, NULL, store, dcont, out, CMS_BINARY) != 1) {
        ERR_print_errors_fp(stderr);
        fail_msg("the CertRep does not verify under the CA");
    }
    STACK_OF(X509) *signers = CMS_get0_signers(cms);
    r->signer = X509_dup(sk_X509_value(signers, 0));
    sk_X509_free(signers);
    CMS_SignerInfo *si = sk_CMS_SignerInfo_value(CMS_get0_SignerInfos(cms), 0);
    X509_ALGOR *dig = NULL;
    CMS_SignerInfo_get0_algs(si, NULL, NULL, &dig, NULL);
    r->digest_nid = OBJ_obj2nid(dig->algorithm);
    r->message_type = attr_int(si, OID_MESSAGE_TYPE);
    r->status = attr_int(si, OID_PKI_STATUS);
    r->fail_info = attr_int(si, OID_FAIL_INFO);
    ASN1_OBJECT *obj = OBJ_txt2obj(OID_TRANSACTION_ID, 1);
    ASN1_STRING *s = CMS_signed_get0_data_by_OBJ(si, obj, -3, V_ASN1_PRINTABLESTRING);
    ASN1_OBJECT_free(obj);
    if (s != NULL)
        snprintf(r->txid, sizeof(r->txid), "%.*s", ASN1_STRING_length(s),
                 (const char *)ASN1_STRING_get0_data(s));
    obj = OBJ_txt2obj(OID_RECIPIENT_NONCE, 1);
    s = CMS_signed_get0_data_by_OBJ(si, obj, -3, V_ASN1_OCTET_STRING);
    ASN1_OBJECT_free(obj);
    if (s != NULL && ASN1_STRING_length(s) <= 64) {
        r->rnonce_len = (size_t)ASN1_STRING_length(s);
        memcpy(r->rnonce, ASN1_STRING_get0_data(s), r->rnonce_len);
    }
    obj = OBJ_txt2obj(OID_SENDER_NONCE, 1);
    s = CMS_signed_get0_data_by_OBJ(si, obj, -3, V_ASN1_OCTET_STRING);
    ASN1_OBJECT_free(obj);
    r->snonce_len = s ? (size_t)ASN1_STRING_length(s) : 0;
    r->has_content = !CMS_is_detached(cms);

    if (r->has_content && r->status == 0) {
        char *env = NULL;
        long elen = BIO_get_mem_data(out, &env);
        const unsigned char *q = (const unsigned char *)env;
        PKCS7 *p7 = d2i_PKCS7(NULL, &q, elen);
        assert_non_null(p7);
        r->cipher_nid = OBJ_obj2nid(p7->d.enveloped->enc_data->algorithm->algorithm);
        PKCS7_free(p7);
        q = (const unsigned char *)env;
        CMS_ContentInfo *e = d2i_CMS_ContentInfo(NULL, &q, elen);
        assert_non_null(e);
        BIO *plain = BIO_new(BIO_s_mem());
        if (CMS_decrypt(e, client_key, client, NULL, plain, CMS_BINARY) != 1) {
            ERR_print_errors_fp(stderr);
            fail_msg("the client cannot decrypt the CertRep");
        }
        char *deg = NULL;
        long dlen = BIO_get_mem_data(plain, &deg);
        q = (const unsigned char *)deg;
        CMS_ContentInfo *d = d2i_CMS_ContentInfo(NULL, &q, dlen);
        assert_non_null(d);
        assert_int_equal(sk_CMS_SignerInfo_num(CMS_get0_SignerInfos(d)), 0);
        STACK_OF(X509) *certs = CMS_get1_certs(d);
        assert_int_equal(sk_X509_num(certs), 1);
        r->cert = X509_dup(sk_X509_value(certs, 0));
        sk_X509_pop_free(certs, X509_free);
        CMS_ContentInfo_free(d);
        BIO_free(plain);
        CMS_ContentInfo_free(e);
    }
    BIO_free(out);
    BIO_free(dcont);
    X509_STORE_free(store);
    CMS_ContentInfo_free(cms);
}

static const mdm_scep_keys_t *rsa_keys(void)
{
    static mdm_scep_keys_t k;
    k = (mdm_scep_keys_t){.ca_cert = G.rsa_ca_cert, .ca_key = G.rsa_ca_key};
    return &k;
}

static const mdm_scep_keys_t *ra_keys(void)
{
    static mdm_scep_keys_t k;
    k = (mdm_scep_keys_t){
        .ra_cert = G.ra_cert, .ra_key = G.ra_key, .ca_cert = G.ec_ca_cert, .ca_key = G.ec_ca_key};
    return &k;
}

/* ---- message layer ------------------------------------------------------- */

static void test_names(void **state)
{
    (void)state;
    assert_string_equal(mdm_scep_msgtype_name(19), "PKCSReq");
    assert_string_equal(mdm_scep_msgtype_name(17), "RenewalReq");
    assert_string_equal(mdm_scep_msgtype_name(20), "CertPoll");
    assert_string_equal(mdm_scep_failinfo_name(MDM_SCEP_BADCERTID), "badCertId");
    assert_string_equal(mdm_scep_status_name(MDM_SCEP_PENDING), "PENDING");
    const char *caps = mdm_scep_caps();
    const char *want[] = {"POSTPKIOperation", "SHA-1",        "SHA-256", "SHA-512",
                          "AES",              "SCEPStandard", "DES3",    "Renewal"};
    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++)
        if (strstr(caps, want[i]) == NULL)
            fail_msg("GetCACaps lacks %s:\n%s", want[i], caps);
    assert_null(strstr(caps, "GetNextCACert"));
    assert_int_equal(mdm_scep_reply_cipher(NID_des_cbc), NID_des_ede3_cbc);
    assert_int_equal(mdm_scep_reply_cipher(NID_aes_256_cbc), NID_aes_256_cbc);
}

/* A full round trip with every content cipher and digest, in the CA-only
 * layout: the client's request parses, and the client opens our reply. */
static void test_roundtrip_ciphers_digests(void **state)
{
    (void)state;
    const EVP_CIPHER *ciphers[] = {EVP_aes_128_cbc(), EVP_aes_192_cbc(), EVP_aes_256_cbc(),
                                   EVP_des_ede3_cbc()};
    const EVP_MD *mds[] = {EVP_sha1(), EVP_sha256(), EVP_sha512()};
    X509_REQ *csr = make_csr(G.dev_key, "device one", "s3cret", "DNS:dev.example.org");
    for (size_t c = 0; c < 4; c++) {
        for (size_t d = 0; d < 3; d++) {
            mdm_buf_t msg = MDM_BUF_INIT, rep = MDM_BUF_INIT;
            struct req_opts o = {.cipher = ciphers[c], .md = mds[d], .csr = csr};
            build_request(&o, &msg);
            mdm_scep_msg_t m;
            assert_rc(mdm_scep_parse(msg.data, msg.len, rsa_keys(), &m), 0);
            if (m.fail_info != MDM_SCEP_NOFAIL)
                fail_msg("cipher %s digest %s: %s", EVP_CIPHER_get0_name(ciphers[c]),
                         EVP_MD_get0_name(mds[d]), m.reason);
            assert_int_equal(m.type, MDM_SCEP_PKCSREQ);
            assert_string_equal(m.txid, "4A2F1C0DE5B6A7980011223344556677");
            assert_int_equal(m.sender_nonce_len, 16);
            assert_memory_equal(m.sender_nonce, NONCE, 16);
            assert_int_equal(m.cipher_nid, EVP_CIPHER_get_nid(ciphers[c]));
            assert_int_equal(m.digest_nid, EVP_MD_get_type(mds[d]));
            assert_non_null(m.csr);
            assert_string_equal(m.challenge, "s3cret");
            assert_int_equal(X509_cmp(m.signer, G.dev_self), 0);

            X509 *issued = NULL;
            mdm_err_t err = {0};
            assert_rc(mdm_ca_issue_from_csr(G.rsa_ca, m.csr, NULL, &issued, &err), 0);
            mdm_scep_reply_t r = {
                .signer_cert = G.rsa_ca_cert, .signer_key = G.rsa_ca_key,
                .digest_nid = m.digest_nid, .status = MDM_SCEP_SUCCESS, .txid = m.txid,
                .recipient_nonce = m.sender_nonce, .recipient_nonce_len = m.sender_nonce_len,
                .issued = issued, .recipient = m.signer, .cipher_nid = m.cipher_nid};
            if (mdm_scep_certrep(&r, &rep, &err) != 0)
                fail_msg("certrep: %s", err.msg);
            struct reply got;
            parse_reply(rep.data, rep.len, G.rsa_ca_cert, G.dev_self, G.dev_key, &got);
            assert_int_equal(got.message_type, 3);
            assert_int_equal(got.status, 0);
            assert_int_equal(got.fail_info, -1);
            assert_string_equal(got.txid, m.txid);
            assert_int_equal(got.rnonce_len, 16);
            assert_memory_equal(got.rnonce, NONCE, 16);
            assert_int_equal(got.snonce_len, 16);
            assert_true(got.has_content);
            assert_int_equal(got.cipher_nid, m.cipher_nid);
            assert_int_equal(got.digest_nid, m.digest_nid);
            assert_int_equal(X509_cmp(got.cert, issued), 0);
            assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(got.cert), G.dev_key), 1);
            reply_free(&got);
            X509_free(issued);
            mdm_scep_msg_free(&m);
            mdm_buf_free(&msg);
            mdm_buf_free(&rep);
        }
    }
    X509_REQ_free(csr);
}

/* With an RA, requests are encrypted to the RA and replies signed by it;
 * a request encrypted to someone else is badMessageCheck. */
static void test_ra_layout(void **state)
{
    (void)state;
    X509_REQ *csr = make_csr(G.dev_key, "device one", "pw", NULL);
    mdm_buf_t msg = MDM_BUF_INIT, rep = MDM_BUF_INIT;
    struct req_opts o = {.csr = csr, .recipient = G.ra_cert};
    build_request(&o, &msg);
    mdm_scep_msg_t m;
    assert_rc(mdm_scep_parse(msg.data, msg.len, ra_keys(), &m), 0);
    assert_int_equal(m.fail_info, MDM_SCEP_NOFAIL);
    X509 *issued = NULL;
    mdm_err_t err = {0};
    assert_rc(mdm_ca_issue_from_csr(G.ec_ca, m.csr, NULL, &issued, &err), 0);
    mdm_scep_reply_t r = {.signer_cert = G.ra_cert, .signer_key = G.ra_key, .digest_nid = 0,
                          .status = MDM_SCEP_SUCCESS, .txid = m.txid,
                          .recipient_nonce = m.sender_nonce,
                          .recipient_nonce_len = m.sender_nonce_len, .issued = issued,
                          .recipient = m.signer, .cipher_nid = m.cipher_nid};
    assert_rc(mdm_scep_certrep(&r, &rep, &err), 0);
    struct reply got;
    parse_reply(rep.data, rep.len, G.ec_ca_cert, G.dev_self, G.dev_key, &got);
    assert_int_equal(got.status, 0);
    assert_int_equal(X509_cmp(got.signer, G.ra_cert), 0);
    assert_int_equal(got.digest_nid, NID_sha256);
    reply_free(&got);
    mdm_scep_msg_free(&m);

    /* The same message to a server that has only the RSA CA. */
    assert_rc(mdm_scep_parse(msg.data, msg.len, rsa_keys(), &m), 0);
    assert_int_equal(m.fail_info, MDM_SCEP_BADMESSAGECHECK);
    assert_non_null(strstr(m.reason, "not encrypted to our"));
    mdm_scep_msg_free(&m);

    /* Encrypted to an unrelated certificate. */
    o.recipient = G.other_cert;
    build_request(&o, &msg);
    assert_rc(mdm_scep_parse(msg.data, msg.len, ra_keys(), &m), 0);
    assert_int_equal(m.fail_info, MDM_SCEP_BADMESSAGECHECK);
    mdm_scep_msg_free(&m);

    /* The RA certificate: RSA, digitalSignature + keyEncipherment, no CA,
     * valid under the CA. An EC RA key is refused. */
    uint32_t ku = X509_get_key_usage(G.ra_cert);
    assert_true(ku & KU_DIGITAL_SIGNATURE);
    assert_true(ku & KU_KEY_ENCIPHERMENT);
    assert_false(X509_get_extension_flags(G.ra_cert) & EXFLAG_CA);
    assert_rc(mdm_ca_verify_cert(G.ec_ca, G.ra_cert, NULL, &err), 0);
    X509 *bad = NULL;
    assert_rc(mdm_scep_ra_create(G.ec_ca, G.ec_ca_key, "x", 10, &bad, &err), MDM_EINVAL);
    assert_null(bad);

    X509_free(issued);
    mdm_buf_free(&msg);
    mdm_buf_free(&rep);
    X509_REQ_free(csr);
}

static void expect_fail(const struct req_opts *o, const mdm_scep_keys_t *keys, int fail,
                        const char *reason_part)
{
    mdm_buf_t msg = MDM_BUF_INIT;
    build_request(o, &msg);
    mdm_scep_msg_t m;
    assert_rc(mdm_scep_parse(msg.data, msg.len, keys, &m), 0);
    if (m.fail_info != fail)
        fail_msg("want failInfo %s, got %s (%s)", mdm_scep_failinfo_name(fail),
                 mdm_scep_failinfo_name(m.fail_info), m.reason);
    if (reason_part != NULL && strstr(m.reason, reason_part) == NULL)
        fail_msg("reason \"%s\" lacks \"%s\"", m.reason, reason_part);
    /* Even a failing message yields what a FAILURE reply needs. */
    assert_string_equal(m.txid, o->txid ? o->txid : "4A2F1C0DE5B6A7980011223344556677");
    assert_int_equal(m.sender_nonce_len, 16);
    mdm_scep_msg_free(&m);
    mdm_buf_free(&msg);
}

static void test_fail_infos(void **state)
{
    (void)state;
    X509_REQ *csr = make_csr(G.dev_key, "device one", "pw", NULL);
    X509_REQ *other_csr = make_csr(G.other_key, "other", "pw", NULL);

    /* badAlg: an MD5 digest, a cipher we do not take, single DES when not
     * allowed. */
    expect_fail(&(struct req_opts){.csr = csr, .md = EVP_md5()}, rsa_keys(), MDM_SCEP_BADALG,
                "digest");
    EVP_CIPHER *camellia = EVP_CIPHER_fetch(NULL, "CAMELLIA-128-CBC", NULL);
    if (camellia != NULL)
        expect_fail(&(struct req_opts){.csr = csr, .cipher = camellia}, rsa_keys(),
                    MDM_SCEP_BADALG, "cipher");
    EVP_CIPHER_free(camellia);
    if (G.des_cbc != NULL)
        expect_fail(&(struct req_opts){.csr = csr, .cipher = G.des_cbc}, rsa_keys(),
                    MDM_SCEP_BADALG, "single DES");

    /* badMessageCheck: a broken signature, a request signed with another
     * key than the CSR's, a CSR whose own signature fails, no envelope. */
    expect_fail(&(struct req_opts){.csr = csr, .corrupt_signature = true}, rsa_keys(),
                MDM_SCEP_BADMESSAGECHECK, "signature");
    expect_fail(&(struct req_opts){.csr = other_csr}, rsa_keys(), MDM_SCEP_BADMESSAGECHECK,
                "another key");
    unsigned char *der = NULL;
    int n = i2d_X509_REQ(csr, &der);
    der[n - 3] ^= 0x01; /* inside the CSR's signature */
    expect_fail(&(struct req_opts){.data = der, .data_len = (size_t)n}, rsa_keys(),
                MDM_SCEP_BADMESSAGECHECK, "self-signature");
    OPENSSL_free(der);
    expect_fail(&(struct req_opts){.csr = csr, .no_envelope = true}, rsa_keys(),
                MDM_SCEP_BADMESSAGECHECK, "pkcsPKIEnvelope");

    /* badRequest: unsupported or unknown message types, message data that
     * is no CSR, a CertPoll without IssuerAndSubject. */
    expect_fail(&(struct req_opts){.csr = csr, .type = MDM_SCEP_GETCERT}, rsa_keys(),
                MDM_SCEP_BADREQUEST, "not supported");
    expect_fail(&(struct req_opts){.csr = csr, .type = 99}, rsa_keys(), MDM_SCEP_BADREQUEST,
                "unknown");
    expect_fail(&(struct req_opts){.data = (const unsigned char *)"hello", .data_len = 5},
                rsa_keys(), MDM_SCEP_BADREQUEST, "PKCS #10");
    expect_fail(&(struct req_opts){.csr = csr, .type = MDM_SCEP_CERTPOLL}, rsa_keys(),
                MDM_SCEP_BADREQUEST, "IssuerAndSubject");

    /* FAILURE and PENDING replies: no envelope, the failInfo each time. */
    int fails[] = {MDM_SCEP_BADALG, MDM_SCEP_BADMESSAGECHECK, MDM_SCEP_BADREQUEST,
                   MDM_SCEP_BADTIME, MDM_SCEP_BADCERTID};
    for (size_t i = 0; i < 6; i++) {
        mdm_buf_t rep = MDM_BUF_INIT;
        mdm_err_t err = {0};
        mdm_scep_reply_t r = {.signer_cert = G.ra_cert, .signer_key = G.ra_key,
                              .digest_nid = NID_sha1,
                              .status = i < 5 ? MDM_SCEP_FAILURE : MDM_SCEP_PENDING,
                              .fail_info = i < 5 ? fails[i] : MDM_SCEP_NOFAIL, .txid = "T-1",
                              .recipient_nonce = NONCE, .recipient_nonce_len = 16};
        assert_rc(mdm_scep_certrep(&r, &rep, &err), 0);
        struct reply got;
        parse_reply(rep.data, rep.len, G.ec_ca_cert, NULL, NULL, &got);
        assert_int_equal(got.status, i < 5 ? 2 : 3);
        assert_int_equal(got.fail_info, i < 5 ? fails[i] : -1);
        assert_false(got.has_content);
        assert_string_equal(got.txid, "T-1");
        assert_int_equal(got.digest_nid, NID_sha1);
        reply_free(&got);
        mdm_buf_free(&rep);
    }
    X509_REQ_free(csr);
    X509_REQ_free(other_csr);
}

/* Single DES, when allowed, is opened and answered with DES-EDE3. */
static void test_single_des(void **state)
{
    (void)state;
    if (G.des_cbc == NULL)
        skip();
    X509_REQ *csr = make_csr(G.dev_key, "device one", "pw", NULL);
    mdm_buf_t msg = MDM_BUF_INIT;
    build_request(&(struct req_opts){.csr = csr, .cipher = G.des_cbc, .md = EVP_sha1()}, &msg);
    mdm_scep_keys_t keys = *rsa_keys();
    keys.allow_single_des = true;
    mdm_scep_msg_t m;
    assert_rc(mdm_scep_parse(msg.data, msg.len, &keys, &m), 0);
    assert_int_equal(m.fail_info, MDM_SCEP_NOFAIL);
    assert_int_equal(m.cipher_nid, NID_des_cbc);
    assert_string_equal(m.challenge, "pw");
    assert_int_equal(mdm_scep_reply_cipher(m.cipher_nid), NID_des_ede3_cbc);
    mdm_scep_msg_free(&m);
    mdm_buf_free(&msg);
    X509_REQ_free(csr);
}

/* Input that cannot be answered with a CertRep is MDM_EPARSE, with a
 * reason; so is every truncation and many corruptions of a good message
 * (never a crash: this runs under ASan too). */
static void test_unparsable(void **state)
{
    (void)state;
    mdm_scep_msg_t m;
    assert_rc(mdm_scep_parse("", 0, rsa_keys(), &m), MDM_EPARSE);
    mdm_scep_msg_free(&m);
    assert_rc(mdm_scep_parse("garbage!", 8, rsa_keys(), &m), MDM_EPARSE);
    assert_non_null(strstr(m.reason, "DER"));
    mdm_scep_msg_free(&m);

    X509_REQ *csr = make_csr(G.dev_key, "device one", "pw", NULL);
    struct {
        struct req_opts o;
        const char *reason;
    } cases[] = {
        {{.csr = csr, .omit_txid = true}, "transactionID"},
        {{.csr = csr, .omit_nonce = true}, "senderNonce"},
        {{.csr = csr, .omit_type = true}, "messageType"},
        {{.csr = csr, .type_text = "PKCSReq"}, "messageType"},
        {{.csr = csr, .txid = "tx\x01id"}, "transactionID"},
    };
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        mdm_buf_t msg = MDM_BUF_INIT;
        build_request(&cases[i].o, &msg);
        assert_rc(mdm_scep_parse(msg.data, msg.len, rsa_keys(), &m), MDM_EPARSE);
        if (strstr(m.reason, cases[i].reason) == NULL)
            fail_msg("case %zu: reason \"%s\" lacks \"%s\"", i, m.reason, cases[i].reason);
        mdm_scep_msg_free(&m);
        mdm_buf_free(&msg);
    }

    /* An EnvelopedData where SignedData belongs. */
    STACK_OF(X509) *recips = sk_X509_new_null();
    sk_X509_push(recips, G.rsa_ca_cert);
    BIO *in = BIO_new_mem_buf("x", 1);
    CMS_ContentInfo *env = CMS_encrypt(recips, in, EVP_aes_128_cbc(), CMS_BINARY);
    unsigned char *der = NULL;
    int n = i2d_CMS_ContentInfo(env, &der);
    assert_rc(mdm_scep_parse(der, (size_t)n, rsa_keys(), &m), MDM_EPARSE);
    assert_non_null(strstr(m.reason, "SignedData"));
    mdm_scep_msg_free(&m);
    OPENSSL_free(der);
    CMS_ContentInfo_free(env);
    BIO_free(in);
    sk_X509_free(recips);

    /* Every truncation of a good message. */
    mdm_buf_t msg = MDM_BUF_INIT;
    build_request(&(struct req_opts){.csr = csr}, &msg);
    for (size_t len = 0; len < msg.len; len++) {
        int rc = mdm_scep_parse(msg.data, len, rsa_keys(), &m);
        if (rc == 0 && m.fail_info == MDM_SCEP_NOFAIL)
            fail_msg("a message cut to %zu of %zu bytes was accepted", len, msg.len);
        mdm_scep_msg_free(&m);
    }
    /* Bit flips all over it: any outcome but a good message. */
    for (size_t i = 0; i < msg.len; i += 7) {
        msg.data[i] ^= 0x10;
        int rc = mdm_scep_parse(msg.data, msg.len, rsa_keys(), &m);
        (void)rc;
        mdm_scep_msg_free(&m);
        msg.data[i] ^= 0x10;
    }
    mdm_buf_free(&msg);
    X509_REQ_free(csr);
}

static void test_certs_only(void **state)
{
    (void)state;
    STACK_OF(X509) *certs = sk_X509_new_null();
    sk_X509_push(certs, G.ra_cert);
    sk_X509_push(certs, G.ec_ca_cert);
    mdm_buf_t out = MDM_BUF_INIT;
    mdm_err_t err = {0};
    assert_rc(mdm_scep_certs_only(certs, &out, &err), 0);
    const unsigned char *p = (const unsigned char *)out.data;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)out.len);
    assert_non_null(cms);
    assert_int_equal(OBJ_obj2nid(CMS_get0_type(cms)), NID_pkcs7_signed);
    assert_int_equal(sk_CMS_SignerInfo_num(CMS_get0_SignerInfos(cms)), 0);
    /* eContent absent, not empty. */
    assert_true(CMS_is_detached(cms));
    STACK_OF(X509) *got = CMS_get1_certs(cms);
    assert_int_equal(sk_X509_num(got), 2);
    /* A SET OF: DER orders it by encoding, whatever order went in. */
    bool ra = false, ca = false;
    for (int i = 0; i < 2; i++) {
        ra = ra || X509_cmp(sk_X509_value(got, i), G.ra_cert) == 0;
        ca = ca || X509_cmp(sk_X509_value(got, i), G.ec_ca_cert) == 0;
    }
    assert_true(ra && ca);
    sk_X509_pop_free(got, X509_free);
    CMS_ContentInfo_free(cms);
    mdm_buf_free(&out);
    sk_X509_free(certs);
}

/* ---- challenges over LMDB ------------------------------------------------ */

static int rm_entry(const char *p, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    return remove(p);
}

struct fx {
    char dir[64];
    char path[128];
    mdm_store_t *store;
    uv_loop_t loop;
    mdm_scep_service_t *svc;
};

static int setup(void **state)
{
    struct fx *fx = mdm_calloc(1, sizeof(*fx));
    strcpy(fx->dir, "/tmp/moonmdm-scep-XXXXXX");
    if (mkdtemp(fx->dir) == NULL) {
        mdm_free(fx);
        return -1;
    }
    snprintf(fx->path, sizeof(fx->path), "%s/db", fx->dir);
    mdm_store_config_t cfg = {
        .path = fx->path, .sync = false, .flags = MDM_STORE_CREATE | MDM_STORE_AUTOFLUSH};
    mdm_err_t err = {0};
    if (mdm_store_open(&mdm_store_lmdb, &cfg, &fx->store, &err) != 0) {
        fprintf(stderr, "store: %s\n", err.msg);
        return -1;
    }
    uv_loop_init(&fx->loop);
    alarm(110);
    *state = fx;
    return 0;
}

static int teardown(void **state)
{
    struct fx *fx = *state;
    alarm(0);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    mdm_scep_service_destroy(fx->svc);
    uv_loop_close(&fx->loop);
    mdm_store_close(fx->store);
    nftw(fx->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    mdm_free(fx);
    return 0;
}

struct ch_op {
    const char *owner;
    const char *udid;
    int version; /* of the value ch_put_old_fn writes: 1 or 2 */
    int purpose; /* 0: MDM_CHALLENGE_SCEP */
    uint64_t ttl;
    const char *text;
    int64_t now;
    mdm_challenge_t c;
    size_t removed;
    size_t listed;
    unsigned char fp[32];
    char buf[300];
};

#define PURPOSE(o) ((o)->purpose ? (o)->purpose : MDM_CHALLENGE_SCEP)

static int ch_create_fn(mdm_txn_t *t, void *a)
{
    struct ch_op *o = a;
    if (o->udid != NULL)
        return mdm_challenge_create_for(t, o->owner, o->udid, PURPOSE(o), o->ttl, &o->c);
    return mdm_challenge_create(t, o->owner, PURPOSE(o), o->ttl, &o->c);
}

static int ch_check_fn(mdm_txn_t *t, void *a)
{
    struct ch_op *o = a;
    return mdm_challenge_check(t, o->text, PURPOSE(o), o->now, &o->c);
}

static int ch_consume_fn(mdm_txn_t *t, void *a)
{
    struct ch_op *o = a;
    return mdm_challenge_consume(t, o->text, PURPOSE(o), o->now, &o->c);
}

static int ch_prune_fn(mdm_txn_t *t, void *a)
{
    struct ch_op *o = a;
    return mdm_challenge_prune(t, o->now, 0, &o->removed);
}

static int ch_count_cb(const mdm_challenge_t *c, void *a)
{
    (void)c;
    ((struct ch_op *)a)->listed++;
    return 0;
}

static int ch_list_fn(mdm_txn_t *t, void *a)
{
    return mdm_challenge_list(t, ch_count_cb, a);
}

static int ch_owner_put_fn(mdm_txn_t *t, void *a)
{
    struct ch_op *o = a;
    return mdm_challenge_owner_record(t, o->fp, o->owner);
}

static int ch_owner_get_fn(mdm_txn_t *t, void *a)
{
    struct ch_op *o = a;
    return mdm_challenge_owner_of_cert(t, o->fp, o->buf, sizeof(o->buf));
}

static int ch_udid_put_fn(mdm_txn_t *t, void *a)
{
    struct ch_op *o = a;
    return mdm_challenge_udid_record(t, o->fp, o->udid);
}

static int ch_udid_get_fn(mdm_txn_t *t, void *a)
{
    struct ch_op *o = a;
    return mdm_challenge_udid_of_cert(t, o->fp, o->buf, sizeof(o->buf));
}

/* Stores o->text as a challenge of layout version o->version (1: no
 * purpose byte; 2: a purpose byte, no UDID) for "vera". */
static int ch_put_old_fn(mdm_txn_t *t, void *a)
{
    struct ch_op *o = a;
    unsigned char key[32], value[18 + 4];
    unsigned int n = 0;
    assert_int_equal(EVP_Digest(o->text, strlen(o->text), key, &n, EVP_sha256(), NULL), 1);
    size_t head = o->version == 1 ? 17 : 18;
    value[0] = (unsigned char)o->version;
    mdm_be64_put(value + 1, (uint64_t)(o->now + 3600 * 1000));
    mdm_be64_put(value + 9, (uint64_t)o->now);
    value[17] = MDM_CHALLENGE_OTA; /* the owner's first byte in version 1 */
    memcpy(value + head, "vera", 4);
    return mdm_txn_put(t, MDM_T_CHALLENGES, MDM_VAL(key, 32), MDM_VAL(value, head + 4), 0);
}

static void test_challenges(void **state)
{
    struct fx *fx = *state;
    struct ch_op a = {.owner = "alice", .ttl = 3600 * 1000};
    assert_rc(mdm_store_update(fx->store, ch_create_fn, &a), 0);
    assert_int_equal(strlen(a.c.text), MDM_CHALLENGE_LEN);
    assert_string_equal(a.c.owner, "alice");
    char text[MDM_CHALLENGE_LEN + 1];
    strcpy(text, a.c.text);
    int64_t now = mdm_now_ms();
    assert_true(a.c.expires_ms - now > 3590 * 1000 && a.c.expires_ms - now <= 3600 * 1000);

    /* The plaintext is stored nowhere: the key is its SHA-256. */
    struct ch_op b = {.text = text, .now = now};
    assert_rc(mdm_store_view(fx->store, ch_check_fn, &b), 0);
    assert_string_equal(b.c.owner, "alice");

    /* Wrong, expired, then consumed once and never again. */
    struct ch_op wrong = {.text = "0123456789abcdef0123456789abcdef", .now = now};
    assert_rc(mdm_store_view(fx->store, ch_check_fn, &wrong), MDM_ENOTFOUND);
    struct ch_op later = {.text = text, .now = now + 3601 * 1000};
    assert_rc(mdm_store_view(fx->store, ch_check_fn, &later), MDM_EEXPIRED);
    assert_rc(mdm_store_update(fx->store, ch_consume_fn, &later), MDM_EEXPIRED);
    assert_rc(mdm_store_update(fx->store, ch_consume_fn, &b), 0);
    assert_string_equal(b.c.owner, "alice");
    assert_rc(mdm_store_update(fx->store, ch_consume_fn, &b), MDM_ENOTFOUND);
    assert_rc(mdm_store_view(fx->store, ch_check_fn, &b), MDM_ENOTFOUND);

    /* Bad arguments. */
    struct ch_op zero = {.owner = "x", .ttl = 0};
    assert_rc(mdm_store_update(fx->store, ch_create_fn, &zero), MDM_EINVAL);
    char longname[400];
    memset(longname, 'n', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    struct ch_op lng = {.owner = longname, .ttl = 1000};
    assert_rc(mdm_store_update(fx->store, ch_create_fn, &lng), MDM_EINVAL);

    /* Prune keeps live ones and drops expired ones. */
    struct ch_op s1 = {.owner = "", .ttl = 1000}, s2 = {.owner = "bob", .ttl = 3600 * 1000};
    assert_rc(mdm_store_update(fx->store, ch_create_fn, &s1), 0);
    assert_rc(mdm_store_update(fx->store, ch_create_fn, &s2), 0);
    struct ch_op cnt = {0};
    assert_rc(mdm_store_view(fx->store, ch_list_fn, &cnt), 0);
    assert_int_equal(cnt.listed, 2);
    struct ch_op pr = {.now = mdm_now_ms() + 2000};
    assert_rc(mdm_store_update(fx->store, ch_prune_fn, &pr), 0);
    assert_int_equal(pr.removed, 1);
    cnt.listed = 0;
    assert_rc(mdm_store_view(fx->store, ch_list_fn, &cnt), 0);
    assert_int_equal(cnt.listed, 1);
    struct ch_op s2c = {.text = s2.c.text, .now = mdm_now_ms()};
    assert_rc(mdm_store_view(fx->store, ch_check_fn, &s2c), 0);

    /* A challenge is good for its purpose only, and the wrong one does not
     * consume it. */
    struct ch_op ota = {.owner = "olga", .purpose = MDM_CHALLENGE_OTA, .ttl = 3600 * 1000};
    assert_rc(mdm_store_update(fx->store, ch_create_fn, &ota), 0);
    struct ch_op as_scep = {.text = ota.c.text, .now = mdm_now_ms()};
    assert_rc(mdm_store_update(fx->store, ch_consume_fn, &as_scep), MDM_EAUTH);
    assert_int_equal(as_scep.c.purpose, MDM_CHALLENGE_OTA);
    struct ch_op as_ota = {.text = ota.c.text, .purpose = MDM_CHALLENGE_OTA, .now = mdm_now_ms()};
    assert_rc(mdm_store_update(fx->store, ch_consume_fn, &as_ota), 0);
    assert_string_equal(as_ota.c.owner, "olga");
    struct ch_op s2o = {.text = s2.c.text, .purpose = MDM_CHALLENGE_OTA, .now = mdm_now_ms()};
    assert_rc(mdm_store_update(fx->store, ch_consume_fn, &s2o), MDM_EAUTH);
    struct ch_op bad = {.purpose = 7, .ttl = 1000};
    assert_rc(mdm_store_update(fx->store, ch_create_fn, &bad), MDM_EINVAL);

    /* A record of version 1 (no purpose) is a SCEP challenge. */
    struct ch_op v1 = {.text = "00112233445566778899aabbccddeeff", .now = mdm_now_ms(),
                       .version = 1};
    assert_rc(mdm_store_update(fx->store, ch_put_old_fn, &v1), 0);
    v1.purpose = MDM_CHALLENGE_OTA;
    assert_rc(mdm_store_view(fx->store, ch_check_fn, &v1), MDM_EAUTH);
    v1.purpose = 0;
    assert_rc(mdm_store_update(fx->store, ch_consume_fn, &v1), 0);
    assert_string_equal(v1.c.owner, "vera");
    assert_int_equal(v1.c.purpose, MDM_CHALLENGE_SCEP);
    assert_string_equal(v1.c.udid, "");

    /* Version 2 (a purpose, no UDID) still reads. */
    struct ch_op v2 = {.text = "ffeeddccbbaa99887766554433221100", .now = mdm_now_ms(),
                       .version = 2, .purpose = MDM_CHALLENGE_OTA};
    assert_rc(mdm_store_update(fx->store, ch_put_old_fn, &v2), 0);
    assert_rc(mdm_store_update(fx->store, ch_consume_fn, &v2), 0);
    assert_string_equal(v2.c.owner, "vera");
    assert_int_equal(v2.c.purpose, MDM_CHALLENGE_OTA);
    assert_string_equal(v2.c.udid, "");

    /* Version 3: a challenge made for one device keeps its UDID and owner. */
    struct ch_op u = {.owner = "ursula", .udid = "00008030-0011223344556677", .ttl = 60000};
    assert_rc(mdm_store_update(fx->store, ch_create_fn, &u), 0);
    assert_string_equal(u.c.udid, "00008030-0011223344556677");
    struct ch_op uc = {.text = u.c.text, .now = mdm_now_ms()};
    assert_rc(mdm_store_update(fx->store, ch_consume_fn, &uc), 0);
    assert_string_equal(uc.c.udid, "00008030-0011223344556677");
    assert_string_equal(uc.c.owner, "ursula");
    assert_int_equal(uc.c.purpose, MDM_CHALLENGE_SCEP);
    /* ... or its UDID alone; and no longer a UDID than a byte counts. */
    struct ch_op un = {.udid = "UDID-ONLY", .ttl = 60000};
    assert_rc(mdm_store_update(fx->store, ch_create_fn, &un), 0);
    struct ch_op unc = {.text = un.c.text, .now = mdm_now_ms()};
    assert_rc(mdm_store_view(fx->store, ch_check_fn, &unc), 0);
    assert_string_equal(unc.c.udid, "UDID-ONLY");
    assert_string_equal(unc.c.owner, "");
    struct ch_op ul = {.udid = longname, .ttl = 60000};
    assert_rc(mdm_store_update(fx->store, ch_create_fn, &ul), MDM_EINVAL);

    /* The owner index of certificates. */
    struct ch_op ow = {.owner = "carol"};
    memset(ow.fp, 0xab, 32);
    assert_rc(mdm_store_view(fx->store, ch_owner_get_fn, &ow), MDM_ENOTFOUND);
    assert_rc(mdm_store_update(fx->store, ch_owner_put_fn, &ow), 0);
    assert_rc(mdm_store_view(fx->store, ch_owner_get_fn, &ow), 0);
    assert_string_equal(ow.buf, "carol");

    /* The UDID index of certificates, apart from the owner's. */
    struct ch_op ud = {.udid = "UDID-OF-CERT"};
    memcpy(ud.fp, ow.fp, 32);
    assert_rc(mdm_store_view(fx->store, ch_udid_get_fn, &ud), MDM_ENOTFOUND);
    assert_rc(mdm_store_update(fx->store, ch_udid_put_fn, &ud), 0);
    assert_rc(mdm_store_view(fx->store, ch_udid_get_fn, &ud), 0);
    assert_string_equal(ud.buf, "UDID-OF-CERT");
    assert_rc(mdm_store_view(fx->store, ch_owner_get_fn, &ow), 0);
    assert_string_equal(ow.buf, "carol");
    ud.udid = "";
    assert_rc(mdm_store_update(fx->store, ch_udid_put_fn, &ud), 0);
    assert_rc(mdm_store_view(fx->store, ch_udid_get_fn, &ud), MDM_ENOTFOUND);
}

/* ---- the service flow ---------------------------------------------------- */

struct result {
    int calls;
    int status;
    char ctype[64];
    mdm_buf_t body;
};

static void done_cb(void *arg, int status, const char *ctype, const void *body, size_t len)
{
    struct result *r = arg;
    r->calls++;
    r->status = status;
    snprintf(r->ctype, sizeof(r->ctype), "%s", ctype ? ctype : "");
    mdm_buf_reset(&r->body);
    mdm_buf_append(&r->body, body, len);
}

static void make_service(struct fx *fx, bool with_ra, const char *static_challenge)
{
    mdm_err_t err = {0};
    mdm_scep_service_opts_t o = {
        .loop = &fx->loop,
        .store = fx->store,
        .ca = with_ra ? G.ec_ca : G.rsa_ca,
        .ra_cert = with_ra ? G.ra_cert : NULL,
        .ra_key = with_ra ? G.ra_key : NULL,
        .static_challenge = static_challenge,
    };
    if (mdm_scep_service_new(&o, &fx->svc, &err) != 0)
        fail_msg("service: %s", err.msg);
}

/* Sends one message through the service and runs the loop until done. */
static void exchange(struct fx *fx, const struct req_opts *o, struct result *r)
{
    mdm_buf_t msg = MDM_BUF_INIT;
    build_request(o, &msg);
    memset(r, 0, sizeof(*r));
    assert_rc(mdm_scep_pkioperation(fx->svc, "test", NULL, msg.data, msg.len, done_cb, r), 0);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    assert_int_equal(r->calls, 1);
    mdm_buf_free(&msg);
}

/* Opens a 200 reply as the client; checks the status and failInfo. */
static void expect_reply(struct result *res, X509 *ca, X509 *client, EVP_PKEY *key, int status,
                         int fail, struct reply *out)
{
    if (res->status != 200)
        fail_msg("HTTP %d: %s", res->status, res->body.data);
    assert_string_equal(res->ctype, "application/x-pki-message");
    struct reply got;
    parse_reply(res->body.data, res->body.len, ca, client, key, &got);
    if (got.status != status || got.fail_info != fail)
        fail_msg("want status %d failInfo %d, got %d %d", status, fail, got.status,
                 got.fail_info);
    if (out != NULL)
        *out = got;
    else
        reply_free(&got);
    mdm_buf_free(&res->body);
}

struct count_ctx {
    uint64_t certs, challenges;
};

static int count_fn(mdm_txn_t *t, void *a)
{
    struct count_ctx *c = a;
    int rc = mdm_txn_count(t, MDM_T_CERTS, &c->certs);
    if (rc == 0)
        rc = mdm_txn_count(t, MDM_T_CHALLENGES, &c->challenges);
    return rc;
}

static struct count_ctx counts(struct fx *fx)
{
    struct count_ctx c = {0};
    assert_rc(mdm_store_view(fx->store, count_fn, &c), 0);
    return c;
}

static void new_challenge(struct fx *fx, const char *owner, uint64_t ttl, char *out)
{
    struct ch_op a = {.owner = owner, .ttl = ttl};
    assert_rc(mdm_store_update(fx->store, ch_create_fn, &a), 0);
    strcpy(out, a.c.text);
}

struct rec_op {
    X509 *cert;
    unsigned char fp[32];
    mdm_certrec_t rec;
    char owner[300];
    char eid[300];
    const char *txid;
};

static int rec_fn(mdm_txn_t *t, void *a)
{
    struct rec_op *o = a;
    mdm_cert_sha256(o->cert, o->fp);
    mdm_certrec_free(&o->rec);
    int rc = mdm_certdb_get_by_fingerprint(t, o->fp, &o->rec);
    if (rc == 0 && mdm_challenge_owner_of_cert(t, o->fp, o->owner, sizeof(o->owner)) != 0)
        o->owner[0] = '\0';
    if (rc == 0 && mdm_certauth_lookup(t, o->fp, o->eid, sizeof(o->eid)) != 0)
        o->eid[0] = '\0';
    return rc;
}

static void test_service_enroll_and_reuse(void **state)
{
    struct fx *fx = *state;
    make_service(fx, true, NULL);
    char ch[64];
    new_challenge(fx, "alice", 3600 * 1000, ch);
    X509_REQ *csr = make_csr(G.dev_key, "device one", ch, "DNS:dev.example.org");
    struct result res;
    struct reply got;
    struct req_opts o = {.csr = csr, .recipient = G.ra_cert, .txid = "TX-ENROLL-1"};
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 0, -1, &got);
    assert_non_null(got.cert);
    mdm_err_t err = {0};
    assert_rc(mdm_ca_verify_cert(G.ec_ca, got.cert, NULL, &err), 0);

    /* Stored with the transaction id and the challenge's owner. */
    struct rec_op r = {.cert = got.cert};
    assert_rc(mdm_store_view(fx->store, rec_fn, &r), 0);
    assert_string_equal(r.rec.transaction_id, "TX-ENROLL-1");
    assert_string_equal(r.owner, "alice");
    assert_int_equal(counts(fx).certs, 1);
    assert_int_equal(counts(fx).challenges, 0);
    mdm_certrec_free(&r.rec);
    reply_free(&got);

    /* Reused: FAILURE badRequest, nothing issued. */
    o.txid = "TX-ENROLL-2";
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 2, MDM_SCEP_BADREQUEST, NULL);
    /* Wrong. */
    X509_REQ *bad = make_csr(G.dev_key, "device one", "not-the-challenge", NULL);
    o.csr = bad;
    o.txid = "TX-ENROLL-3";
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 2, MDM_SCEP_BADREQUEST, NULL);
    /* No challenge at all. */
    X509_REQ *none = make_csr(G.dev_key, "device one", NULL, NULL);
    o.csr = none;
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 2, MDM_SCEP_BADREQUEST, NULL);
    /* Expired. */
    new_challenge(fx, "", 1, ch);
    usleep(5000);
    X509_REQ *exp = make_csr(G.dev_key, "device one", ch, NULL);
    o.csr = exp;
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 2, MDM_SCEP_BADREQUEST, NULL);
    assert_int_equal(counts(fx).certs, 1);

    /* Unparsable input: HTTP 400 and a reason. */
    memset(&res, 0, sizeof(res));
    assert_rc(mdm_scep_pkioperation(fx->svc, "t", NULL, "\x30\x03\x02\x01", 4, done_cb, &res), 0);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    assert_int_equal(res.status, 400);
    assert_non_null(strstr(res.body.data, "bad SCEP message"));
    mdm_buf_free(&res.body);
    assert_rc(mdm_scep_pkioperation(fx->svc, "t", NULL, "", 0, done_cb, &res), MDM_EINVAL);

    X509_REQ_free(csr);
    X509_REQ_free(bad);
    X509_REQ_free(none);
    X509_REQ_free(exp);
}

/* The static challenge works any number of times and is never consumed;
 * the CA-only layout signs replies with the CA. */
static void test_service_static_challenge(void **state)
{
    struct fx *fx = *state;
    make_service(fx, false, "static-secret");
    X509_REQ *csr = make_csr(G.dev_key, "device one", "static-secret", NULL);
    for (int i = 0; i < 2; i++) {
        struct result res;
        struct reply got;
        char txid[32];
        snprintf(txid, sizeof(txid), "STATIC-%d", i);
        exchange(fx, &(struct req_opts){.csr = csr, .txid = txid, .cipher = EVP_des_ede3_cbc(),
                                        .md = EVP_sha512()},
                 &res);
        expect_reply(&res, G.rsa_ca_cert, G.dev_self, G.dev_key, 0, -1, &got);
        assert_int_equal(X509_cmp(got.signer, G.rsa_ca_cert), 0);
        assert_int_equal(got.cipher_nid, NID_des_ede3_cbc);
        assert_int_equal(got.digest_nid, NID_sha512);
        struct rec_op r = {.cert = got.cert};
        assert_rc(mdm_store_view(fx->store, rec_fn, &r), 0);
        assert_string_equal(r.owner, "");
        mdm_certrec_free(&r.rec);
        reply_free(&got);
    }
    assert_int_equal(counts(fx).certs, 2);
    X509_REQ_free(csr);
}

/* Two requests with one challenge in flight at once: exactly one wins. */
static void test_service_challenge_race(void **state)
{
    struct fx *fx = *state;
    make_service(fx, true, NULL);
    char ch[64];
    new_challenge(fx, "race", 3600 * 1000, ch);
    X509_REQ *csr1 = make_csr(G.dev_key, "device one", ch, NULL);
    X509_REQ *csr2 = make_csr(G.dev2_key, "device two", ch, NULL);
    mdm_buf_t m1 = MDM_BUF_INIT, m2 = MDM_BUF_INIT;
    build_request(&(struct req_opts){.csr = csr1, .recipient = G.ra_cert, .txid = "RACE-1"}, &m1);
    build_request(&(struct req_opts){.csr = csr2, .recipient = G.ra_cert, .txid = "RACE-2",
                                     .signer = G.dev2_self, .signer_key = G.dev2_key},
                  &m2);
    struct result r1 = {0}, r2 = {0};
    assert_rc(mdm_scep_pkioperation(fx->svc, "a", NULL, m1.data, m1.len, done_cb, &r1), 0);
    assert_rc(mdm_scep_pkioperation(fx->svc, "b", NULL, m2.data, m2.len, done_cb, &r2), 0);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    assert_int_equal(r1.calls, 1);
    assert_int_equal(r2.calls, 1);
    struct reply g1, g2;
    parse_reply(r1.body.data, r1.body.len, G.ec_ca_cert, G.dev_self, G.dev_key, &g1);
    parse_reply(r2.body.data, r2.body.len, G.ec_ca_cert, G.dev2_self, G.dev2_key, &g2);
    if (!((g1.status == 0 && g2.status == 2) || (g1.status == 2 && g2.status == 0)))
        fail_msg("want one SUCCESS and one FAILURE, got %d and %d", g1.status, g2.status);
    assert_int_equal(g1.status == 2 ? g1.fail_info : g2.fail_info, MDM_SCEP_BADREQUEST);
    assert_int_equal(counts(fx).certs, 1);
    reply_free(&g1);
    reply_free(&g2);
    mdm_buf_free(&r1.body);
    mdm_buf_free(&r2.body);
    mdm_buf_free(&m1);
    mdm_buf_free(&m2);
    X509_REQ_free(csr1);
    X509_REQ_free(csr2);
}

/* The decision seam: issue, deny, and pending followed by polls. */
struct decider {
    int answers[8];
    int n;
    int calls;
    int last_type;
    int last_request_type;
    char subject[256];
    char owner[64];
    char txid[64];
    char san0[64];
    size_t nsans;
};

static int decide(void *udata, const mdm_scep_decision_ctx_t *ctx, char *reason, size_t n)
{
    struct decider *d = udata;
    d->last_type = ctx->message_type;
    d->last_request_type = ctx->request_type;
    snprintf(d->subject, sizeof(d->subject), "%s", ctx->subject);
    snprintf(d->owner, sizeof(d->owner), "%s", ctx->owner);
    snprintf(d->txid, sizeof(d->txid), "%s", ctx->transaction_id);
    d->nsans = ctx->nsans;
    snprintf(d->san0, sizeof(d->san0), "%s", ctx->nsans ? ctx->sans[0] : "");
    int a = d->answers[d->calls < d->n ? d->calls : d->n - 1];
    d->calls++;
    if (a == MDM_SCEP_DECIDE_DENY)
        snprintf(reason, n, "not on the list");
    return a;
}

/* The store key of the pending request txid. */
static mdm_val_t pending_key_of(const char *txid, unsigned char key[200])
{
    size_t pl = strlen("sceppend") + 1;
    memcpy(key, "sceppend", pl);
    memcpy(key + pl, txid, strlen(txid));
    return MDM_VAL(key, pl + strlen(txid));
}

static int pending_exists_fn(mdm_txn_t *t, void *a)
{
    const char *txid = a;
    unsigned char key[200];
    mdm_val_t v;
    return mdm_txn_get(t, MDM_T_INDEX, pending_key_of(txid, key), &v);
}

static void test_service_decisions(void **state)
{
    struct fx *fx = *state;
    make_service(fx, true, NULL);
    struct decider d = {.answers = {MDM_SCEP_DECIDE_DENY}, .n = 1};
    mdm_scep_service_set_decision(fx->svc, decide, &d);
    char ch[64];
    new_challenge(fx, "dave", 3600 * 1000, ch);
    X509_REQ *csr = make_csr(G.dev_key, "device one", ch, "DNS:one.example.org");
    struct result res;
    struct reply got;
    struct req_opts o = {.csr = csr, .recipient = G.ra_cert, .txid = "DECIDE-1"};

    /* deny: FAILURE badRequest, nothing issued, the challenge kept. */
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 2, MDM_SCEP_BADREQUEST, NULL);
    assert_int_equal(d.calls, 1);
    assert_int_equal(d.last_type, MDM_SCEP_PKCSREQ);
    assert_string_equal(d.subject, "O=test,CN=device one");
    assert_string_equal(d.owner, "dave");
    assert_string_equal(d.txid, "DECIDE-1");
    assert_int_equal(d.nsans, 1);
    assert_string_equal(d.san0, "DNS:one.example.org");
    assert_int_equal(counts(fx).certs, 0);
    assert_int_equal(counts(fx).challenges, 1);

    /* pending: PENDING, the request stored, the challenge consumed. */
    d = (struct decider){.answers = {MDM_SCEP_DECIDE_PENDING, MDM_SCEP_DECIDE_PENDING,
                                     MDM_SCEP_DECIDE_ISSUE},
                         .n = 3};
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 3, -1, &got);
    assert_false(got.has_content);
    reply_free(&got);
    assert_rc(mdm_store_view(fx->store, pending_exists_fn, (void *)"DECIDE-1"), 0);
    assert_int_equal(counts(fx).challenges, 0);

    /* CertPoll: the decision is asked again (still pending), then issues. */
    X509_NAME *issuer = X509_get_subject_name(G.ec_ca_cert);
    X509_NAME *subj = X509_REQ_get_subject_name(csr);
    unsigned char names[1024], ias[1100], *p = names;
    int body = i2d_X509_NAME(issuer, &p);
    body += i2d_X509_NAME(subj, &p);
    size_t h = 0;
    ias[h++] = 0x30;
    if (body >= 256) {
        ias[h++] = 0x82;
        ias[h++] = (unsigned char)(body >> 8);
    } else if (body >= 128) {
        ias[h++] = 0x81;
    }
    ias[h++] = (unsigned char)body;
    memcpy(ias + h, names, (size_t)body);
    struct req_opts poll = {.type = MDM_SCEP_CERTPOLL, .data = ias, .data_len = h + (size_t)body,
                            .recipient = G.ra_cert, .txid = "DECIDE-1"};
    exchange(fx, &poll, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 3, -1, NULL);
    assert_int_equal(d.calls, 2);
    assert_int_equal(d.last_type, MDM_SCEP_CERTPOLL);
    assert_int_equal(d.last_request_type, MDM_SCEP_PKCSREQ);
    assert_string_equal(d.owner, "dave");
    exchange(fx, &poll, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 0, -1, &got);
    assert_int_equal(d.calls, 3);
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(got.cert), G.dev_key), 1);
    struct rec_op r = {.cert = got.cert};
    assert_rc(mdm_store_view(fx->store, rec_fn, &r), 0);
    assert_string_equal(r.owner, "dave");
    assert_string_equal(r.rec.transaction_id, "DECIDE-1");
    mdm_certrec_free(&r.rec);
    assert_rc(mdm_store_view(fx->store, pending_exists_fn, (void *)"DECIDE-1"), MDM_ENOTFOUND);
    /* The transaction is over: a poll sent again (the reply was lost) gets
     * the same certificate without asking the decision again; signed with
     * another key, it gets nothing. */
    struct reply again;
    exchange(fx, &poll, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 0, -1, &again);
    assert_int_equal(X509_cmp(again.cert, got.cert), 0);
    assert_int_equal(d.calls, 3);
    assert_int_equal(counts(fx).certs, 1);
    reply_free(&again);
    reply_free(&got);
    poll.signer = G.dev2_self;
    poll.signer_key = G.dev2_key;
    exchange(fx, &poll, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev2_self, G.dev2_key, 2, MDM_SCEP_BADCERTID, NULL);
    poll.signer = NULL;
    poll.signer_key = NULL;

    /* A poll signed by another key than the pending request's. */
    new_challenge(fx, "erin", 3600 * 1000, ch);
    X509_REQ *csr2 = make_csr(G.dev_key, "device one", ch, NULL);
    d = (struct decider){.answers = {MDM_SCEP_DECIDE_PENDING, MDM_SCEP_DECIDE_DENY}, .n = 2};
    o.csr = csr2;
    o.txid = "DECIDE-2";
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 3, -1, NULL);
    poll.txid = "DECIDE-2";
    poll.signer = G.dev2_self;
    poll.signer_key = G.dev2_key;
    exchange(fx, &poll, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev2_self, G.dev2_key, 2, MDM_SCEP_BADREQUEST, NULL);
    assert_int_equal(d.calls, 1);
    /* A poll that the decision denies ends the transaction. */
    poll.signer = NULL;
    poll.signer_key = NULL;
    exchange(fx, &poll, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 2, MDM_SCEP_BADREQUEST, NULL);
    assert_int_equal(d.calls, 2);
    assert_rc(mdm_store_view(fx->store, pending_exists_fn, (void *)"DECIDE-2"), MDM_ENOTFOUND);
    assert_int_equal(counts(fx).certs, 1);

    /* A hook that returns nonsense fails closed. */
    d = (struct decider){.answers = {42}, .n = 1};
    new_challenge(fx, "", 3600 * 1000, ch);
    X509_REQ *csr3 = make_csr(G.dev_key, "device one", ch, NULL);
    o.csr = csr3;
    o.txid = "DECIDE-3";
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 2, MDM_SCEP_BADREQUEST, NULL);
    assert_int_equal(counts(fx).certs, 1);

    /* Back to the default: issue. */
    mdm_scep_service_set_decision(fx->svc, NULL, NULL);
    o.txid = "DECIDE-4";
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 0, -1, NULL);
    X509_REQ_free(csr);
    X509_REQ_free(csr2);
    X509_REQ_free(csr3);
}

/* Another request of the same transactionID stores its pending record
 * while this one is decided (as a second server on the store could): the
 * first record stays, this one gets FAILURE and keeps its challenge. */
struct racing_decider {
    mdm_store_t *store;
    const char *txid;
};

static int put_pending_fn(mdm_txn_t *t, void *a)
{
    const char *txid = a;
    unsigned char key[200];
    return mdm_txn_put(t, MDM_T_INDEX, pending_key_of(txid, key), MDM_VAL_STR("first"),
                       0);
}

static int get_pending_fn(mdm_txn_t *t, void *a)
{
    char *out = a;
    const char *txid = "RACE-PEND";
    unsigned char key[200];
    mdm_val_t v;
    int rc = mdm_txn_get(t, MDM_T_INDEX, pending_key_of(txid, key), &v);
    if (rc == 0)
        snprintf(out, 64, "%.*s", (int)v.len, (const char *)v.data);
    return rc;
}

static int racing_decide(void *udata, const mdm_scep_decision_ctx_t *ctx, char *reason, size_t n)
{
    struct racing_decider *d = udata;
    (void)ctx;
    (void)reason;
    (void)n;
    assert_rc(mdm_store_update(d->store, put_pending_fn, (void *)d->txid), 0);
    return MDM_SCEP_DECIDE_PENDING;
}

static void test_service_pending_is_not_replaced(void **state)
{
    struct fx *fx = *state;
    make_service(fx, true, NULL);
    struct racing_decider d = {.store = fx->store, .txid = "RACE-PEND"};
    mdm_scep_service_set_decision(fx->svc, racing_decide, &d);
    char ch[64];
    new_challenge(fx, "frank", 3600 * 1000, ch);
    X509_REQ *csr = make_csr(G.dev_key, "device one", ch, NULL);
    struct result res;
    struct req_opts o = {.csr = csr, .recipient = G.ra_cert, .txid = "RACE-PEND"};
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 2, MDM_SCEP_BADREQUEST, NULL);
    char first[64] = "";
    assert_rc(mdm_store_view(fx->store, get_pending_fn, first), 0);
    assert_string_equal(first, "first");
    assert_int_equal(counts(fx).challenges, 1);
    X509_REQ_free(csr);
}

struct bind_op {
    X509 *cert;
    const char *eid;
    bool revoke;
};

static int bind_fn(mdm_txn_t *t, void *a)
{
    struct bind_op *b = a;
    unsigned char fp[32], serial[MDM_SERIAL_MAX];
    size_t slen = 0;
    mdm_cert_sha256(b->cert, fp);
    mdm_cert_serial(b->cert, serial, &slen);
    int rc = mdm_certdb_put(t, b->cert, "");
    if (rc == 0 && b->eid != NULL)
        rc = mdm_certdb_set_enrollment(t, serial, slen, b->eid);
    if (rc == 0 && b->eid != NULL)
        rc = mdm_certauth_bind(t, fp, b->eid);
    if (rc == 0 && b->revoke)
        rc = mdm_scep_revoke(t, serial, slen, 1, mdm_now_ms());
    return rc;
}

static X509 *issue_for(mdm_ca_t *ca, EVP_PKEY *key, const char *cn, int64_t nb, uint64_t validity)
{
    X509_NAME *n = X509_NAME_new();
    X509_NAME_add_entry_by_txt(n, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1, 0);
    mdm_issue_opts_t opts = {.validity_ms = validity, .not_before_ms = nb};
    X509 *x = NULL;
    mdm_err_t err = {0};
    if (mdm_ca_issue_client_cert_for_key(ca, key, n, &opts, &x, &err) != 0)
        fail_msg("issue: %s", err.msg);
    X509_NAME_free(n);
    return x;
}

static void test_service_renewal(void **state)
{
    struct fx *fx = *state;
    make_service(fx, true, NULL);
    X509 *old = issue_for(G.ec_ca, G.dev_key, "device one", 0, 30 * DAY_MS);
    struct bind_op b = {.cert = old, .eid = "UDID-0001"};
    assert_rc(mdm_store_update(fx->store, bind_fn, &b), 0);
    struct ch_op ow = {.owner = "frank"};
    mdm_cert_sha256(old, ow.fp);
    assert_rc(mdm_store_update(fx->store, ch_owner_put_fn, &ow), 0);

    /* A RenewalReq signed by the old certificate, for a new key. */
    X509_REQ *csr = make_csr(G.dev2_key, "device one", NULL, NULL);
    struct result res;
    struct reply got;
    struct req_opts o = {.type = MDM_SCEP_RENEWALREQ, .csr = csr, .signer = old,
                         .signer_key = G.dev_key, .recipient = G.ra_cert, .txid = "RENEW-1"};
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, old, G.dev_key, 0, -1, &got);
    assert_int_equal(EVP_PKEY_eq(X509_get0_pubkey(got.cert), G.dev2_key), 1);
    struct rec_op r = {.cert = got.cert};
    assert_rc(mdm_store_view(fx->store, rec_fn, &r), 0);
    assert_string_equal(r.rec.enrollment_id, "UDID-0001");
    assert_string_equal(r.rec.transaction_id, "RENEW-1");
    assert_string_equal(r.owner, "frank");
    assert_string_equal(r.eid, "UDID-0001");
    mdm_certrec_free(&r.rec);
    /* The old certificate no longer speaks for the enrollment. */
    struct rec_op ro = {.cert = old};
    assert_rc(mdm_store_view(fx->store, rec_fn, &ro), 0);
    assert_string_equal(ro.eid, "");
    mdm_certrec_free(&ro.rec);
    reply_free(&got);

    /* A certificate that was never bound (not yet authenticated) renews
     * too. */
    X509 *unbound = issue_for(G.ec_ca, G.dev_key, "device one", 0, 30 * DAY_MS);
    struct bind_op ub = {.cert = unbound};
    assert_rc(mdm_store_update(fx->store, bind_fn, &ub), 0);
    o.signer = unbound;
    o.txid = "RENEW-2";
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, unbound, G.dev_key, 0, -1, NULL);

    /* Revoked: badCertId. */
    X509 *revoked = issue_for(G.ec_ca, G.dev_key, "device one", 0, 30 * DAY_MS);
    struct bind_op rb = {.cert = revoked, .revoke = true};
    assert_rc(mdm_store_update(fx->store, bind_fn, &rb), 0);
    o.signer = revoked;
    o.txid = "RENEW-3";
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, revoked, G.dev_key, 2, MDM_SCEP_BADCERTID, NULL);

    /* Unknown to certdb: badCertId. */
    X509 *unknown = issue_for(G.ec_ca, G.dev_key, "device one", 0, 30 * DAY_MS);
    o.signer = unknown;
    o.txid = "RENEW-4";
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, unknown, G.dev_key, 2, MDM_SCEP_BADCERTID, NULL);

    /* From another CA: badCertId. */
    X509 *foreign = issue_for(G.rsa_ca, G.dev_key, "device one", 0, 30 * DAY_MS);
    o.signer = foreign;
    o.txid = "RENEW-5";
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, foreign, G.dev_key, 2, MDM_SCEP_BADCERTID, NULL);

    /* Expired: badTime. */
    X509 *expired = issue_for(G.ec_ca, G.dev_key, "device one", mdm_now_ms() - 2 * DAY_MS, DAY_MS);
    struct bind_op eb = {.cert = expired};
    assert_rc(mdm_store_update(fx->store, bind_fn, &eb), 0);
    o.signer = expired;
    o.txid = "RENEW-6";
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, expired, G.dev_key, 2, MDM_SCEP_BADTIME, NULL);

    X509_free(old);
    X509_free(unbound);
    X509_free(revoked);
    X509_free(unknown);
    X509_free(foreign);
    X509_free(expired);
    X509_REQ_free(csr);
}

/* ---- phase-3 slots ------------------------------------------------------ */

static const char SLOT_KEY_PREFIX[] = "scepslot";

struct slot_op {
    X509 *cert;              /* the slot is its SHA-256 */
    mdm_challenge_t c;
    bool present;
    size_t n;
    unsigned char from[32];
    size_t max, removed;
};

static int slot_make_fn(mdm_txn_t *t, void *a)
{
    struct slot_op *o = a;
    unsigned char fp[32];
    mdm_cert_sha256(o->cert, fp);
    return mdm_challenge_create_in_slot(t, fp, "", NULL, MDM_CHALLENGE_SCEP, 3600 * 1000, &o->c);
}

static int slot_count_fn(mdm_txn_t *t, void *a)
{
    struct slot_op *o = a;
    mdm_cursor_t *c = NULL;
    mdm_val_t k, v, prefix = MDM_VAL(SLOT_KEY_PREFIX, sizeof(SLOT_KEY_PREFIX));
    o->n = 0;
    int rc = mdm_cursor_open(t, MDM_T_INDEX, &c);
    if (rc != 0)
        return rc;
    for (rc = mdm_cursor_seek(c, prefix, &k, &v); rc == 0 && mdm_val_has_prefix(k, prefix);
         rc = mdm_cursor_next(c, &k, &v))
        o->n++;
    mdm_cursor_close(c);
    if (o->cert == NULL)
        return 0;
    unsigned char key[sizeof(SLOT_KEY_PREFIX) + 32];
    memcpy(key, SLOT_KEY_PREFIX, sizeof(SLOT_KEY_PREFIX));
    mdm_cert_sha256(o->cert, key + sizeof(SLOT_KEY_PREFIX));
    rc = mdm_txn_get(t, MDM_T_INDEX, MDM_VAL(key, sizeof(key)), &v);
    o->present = rc == 0;
    return rc == 0 || rc == MDM_ENOTFOUND ? 0 : rc;
}

static size_t slot_count(struct fx *fx, X509 *cert, bool *present)
{
    struct slot_op o = {.cert = cert};
    assert_rc(mdm_store_view(fx->store, slot_count_fn, &o), 0);
    if (present != NULL)
        *present = o.present;
    return o.n;
}

static bool slot_never_live(mdm_txn_t *t, const unsigned char slot[32], void *arg)
{
    (void)t;
    (void)slot;
    (void)arg;
    return false;
}

static int slot_prune_fn(mdm_txn_t *t, void *a)
{
    struct slot_op *o = a;
    return mdm_challenge_slot_prune(t, o->from, o->max, slot_never_live, NULL, &o->removed);
}

/* Revoking a certificate takes its phase-3 challenge away at once: the
 * slot entry and the challenge it names are gone in the same transaction. */
static void test_revoke_clears_the_phase3_challenge(void **state)
{
    struct fx *fx = *state;
    X509 *cert = issue_for(G.ec_ca, G.dev_key, "slot then revoked", 0, 30 * DAY_MS);
    struct bind_op b = {.cert = cert};
    assert_rc(mdm_store_update(fx->store, bind_fn, &b), 0);
    struct slot_op made = {.cert = cert};
    assert_rc(mdm_store_update(fx->store, slot_make_fn, &made), 0);
    struct ch_op check = {.text = made.c.text, .now = mdm_now_ms()};
    assert_rc(mdm_store_view(fx->store, ch_check_fn, &check), 0);
    bool present = false;
    assert_int_equal(slot_count(fx, cert, &present), 1);
    assert_true(present);

    b.revoke = true;
    assert_rc(mdm_store_update(fx->store, bind_fn, &b), 0);
    assert_int_not_equal(mdm_store_view(fx->store, ch_check_fn, &check), 0);
    assert_int_equal(slot_count(fx, cert, &present), 0);
    assert_false(present);
    X509_free(cert);
}

/* A phase-3 slot entry goes with the pruning of challenges once it is of
 * no use: its certificate revoked, expired or unknown, or its challenge
 * used; a live one stays. */
static void test_service_prunes_phase3_slots(void **state)
{
    struct fx *fx = *state;
    make_service(fx, true, NULL);
    int64_t day = DAY_MS;
    X509 *live = issue_for(G.ec_ca, G.dev_key, "slot live", 0, 30 * day);
    X509 *revoked = issue_for(G.ec_ca, G.dev_key, "slot revoked", 0, 30 * day);
    X509 *expired = issue_for(G.ec_ca, G.dev_key, "slot expired", mdm_now_ms() - 2 * day, day);
    X509 *unknown = issue_for(G.ec_ca, G.dev_key, "slot unknown", 0, 30 * day);
    X509 *used = issue_for(G.ec_ca, G.dev_key, "slot used", 0, 30 * day);
    X509 *stored[] = {live, revoked, expired, used};
    for (size_t i = 0; i < 4; i++) {
        struct bind_op b = {.cert = stored[i], .revoke = stored[i] == revoked};
        assert_rc(mdm_store_update(fx->store, bind_fn, &b), 0);
    }
    X509 *all[] = {live, revoked, expired, unknown, used};
    struct slot_op made[5];
    for (size_t i = 0; i < 5; i++) {
        memset(&made[i], 0, sizeof(made[i]));
        made[i].cert = all[i];
        assert_rc(mdm_store_update(fx->store, slot_make_fn, &made[i]), 0);
    }
    struct ch_op use = {.text = made[4].c.text, .now = mdm_now_ms()};
    assert_rc(mdm_store_update(fx->store, ch_consume_fn, &use), 0);
    assert_int_equal(slot_count(fx, NULL, NULL), 5);

    /* Any SCEP request runs the pruning (the first one at once). */
    X509_REQ *csr = make_csr(G.dev_key, "device one", "not-a-challenge", NULL);
    struct req_opts o = {.csr = csr, .recipient = G.ra_cert, .txid = "TX-SLOTS"};
    struct result res;
    exchange(fx, &o, &res);
    expect_reply(&res, G.ec_ca_cert, G.dev_self, G.dev_key, 2, MDM_SCEP_BADREQUEST, NULL);
    bool present = false;
    assert_int_equal(slot_count(fx, live, &present), 1);
    assert_true(present);
    /* The live slot still does its work: a new challenge replaces its old
     * one. The challenges of the dropped slots stay until they expire. */
    struct slot_op again = {.cert = live};
    assert_rc(mdm_store_update(fx->store, slot_make_fn, &again), 0);
    struct ch_op old = {.text = made[0].c.text, .now = mdm_now_ms()};
    assert_rc(mdm_store_view(fx->store, ch_check_fn, &old), MDM_ENOTFOUND);
    struct ch_op kept = {.text = made[1].c.text, .now = mdm_now_ms()};
    assert_rc(mdm_store_view(fx->store, ch_check_fn, &kept), 0);

    /* In batches: each call reads at most max entries and says where the
     * next goes on; the last one wraps around to the first. */
    for (size_t i = 0; i < 4; i++) {
        struct slot_op m = {.cert = all[i + 1]};
        assert_rc(mdm_store_update(fx->store, slot_make_fn, &m), 0);
    }
    assert_int_equal(slot_count(fx, NULL, NULL), 5);
    static const unsigned char zero[32];
    struct slot_op b = {.max = 2};
    size_t calls = 0, total = 0;
    do {
        assert_rc(mdm_store_update(fx->store, slot_prune_fn, &b), 0);
        assert_true(b.removed <= 2);
        total += b.removed;
        calls++;
    } while (memcmp(b.from, zero, 32) != 0 && calls < 10);
    assert_int_equal(calls, 3);
    assert_int_equal(total, 5);
    assert_int_equal(slot_count(fx, NULL, NULL), 0);

    X509_REQ_free(csr);
    for (size_t i = 0; i < 5; i++)
        X509_free(all[i]);
}

static void crl_get(struct fx *fx, struct result *res)
{
    memset(res, 0, sizeof(*res));
    assert_rc(mdm_scep_crl(fx->svc, "crl", done_cb, res), 0);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    assert_int_equal(res->calls, 1);
    assert_int_equal(res->status, 200);
    assert_string_equal(res->ctype, "application/pkix-crl");
}

static X509_CRL *crl_parse(struct result *res)
{
    const unsigned char *p = (const unsigned char *)res->body.data;
    X509_CRL *crl = d2i_X509_CRL(NULL, &p, (long)res->body.len);
    assert_non_null(crl);
    return crl;
}

static void test_service_crl(void **state)
{
    struct fx *fx = *state;
    make_service(fx, true, NULL);
    struct result a, b, c;
    crl_get(fx, &a);
    X509_CRL *crl = crl_parse(&a);
    /* No entries: the list is absent. */
    assert_null(X509_CRL_get_REVOKED(crl));
    assert_int_equal(X509_CRL_verify(crl, X509_get0_pubkey(G.ec_ca_cert)), 1);
    X509_CRL_free(crl);

    /* Cached while nothing changes. */
    crl_get(fx, &b);
    assert_int_equal(a.body.len, b.body.len);
    assert_memory_equal(a.body.data, b.body.data, a.body.len);

    /* A revocation shows in the next CRL. */
    X509 *x = issue_for(G.ec_ca, G.dev_key, "device one", 0, 30 * DAY_MS);
    struct bind_op rb = {.cert = x, .revoke = true};
    assert_rc(mdm_store_update(fx->store, bind_fn, &rb), 0);
    crl_get(fx, &c);
    crl = crl_parse(&c);
    STACK_OF(X509_REVOKED) *revs = X509_CRL_get_REVOKED(crl);
    assert_int_equal(sk_X509_REVOKED_num(revs), 1);
    assert_int_equal(ASN1_INTEGER_cmp(X509_REVOKED_get0_serialNumber(sk_X509_REVOKED_value(revs, 0)),
                                      X509_get0_serialNumber(x)),
                     0);
    X509_CRL_free(crl);
    X509_free(x);
    mdm_buf_free(&a.body);
    mdm_buf_free(&b.body);
    mdm_buf_free(&c.body);
}

static void test_service_limits_and_ra_checks(void **state)
{
    struct fx *fx = *state;
    mdm_err_t err = {0};
    mdm_scep_service_opts_t o = {.loop = &fx->loop, .store = fx->store, .ca = G.ec_ca,
                                 .max_inflight = 1};
    mdm_scep_service_t *svc = NULL;
    /* An RA that is not valid under the CA, an RA whose key does not match,
     * one without a key. */
    o.ra_cert = G.other_cert;
    o.ra_key = G.other_key;
    assert_rc(mdm_scep_service_new(&o, &svc, &err), MDM_ECONFIG);
    assert_non_null(strstr(err.msg, "not valid under the CA"));
    o.ra_cert = G.ra_cert;
    o.ra_key = G.dev_key;
    assert_rc(mdm_scep_service_new(&o, &svc, &err), MDM_ECONFIG);
    o.ra_key = NULL;
    assert_rc(mdm_scep_service_new(&o, &svc, &err), MDM_ECONFIG);
    o.ra_key = G.ra_key;
    assert_rc(mdm_scep_service_new(&o, &svc, &err), 0);
    fx->svc = svc;
    /* Past max_inflight: MDM_ELIMIT and no callback. */
    X509_REQ *csr = make_csr(G.dev_key, "device one", "x", NULL);
    mdm_buf_t msg = MDM_BUF_INIT;
    build_request(&(struct req_opts){.csr = csr, .recipient = G.ra_cert}, &msg);
    struct result r1 = {0}, r2 = {0};
    assert_rc(mdm_scep_pkioperation(svc, "1", NULL, msg.data, msg.len, done_cb, &r1), 0);
    assert_rc(mdm_scep_pkioperation(svc, "2", NULL, msg.data, msg.len, done_cb, &r2), MDM_ELIMIT);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    assert_int_equal(r1.calls, 1);
    assert_int_equal(r2.calls, 0);
    assert_rc(mdm_scep_pkioperation(svc, "3", NULL, msg.data, msg.len, done_cb, &r2), 0);
    uv_run(&fx->loop, UV_RUN_DEFAULT);
    assert_int_equal(r2.calls, 1);
    mdm_buf_free(&r1.body);
    mdm_buf_free(&r2.body);
    mdm_buf_free(&msg);
    X509_REQ_free(csr);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_names),
        cmocka_unit_test(test_roundtrip_ciphers_digests),
        cmocka_unit_test(test_ra_layout),
        cmocka_unit_test(test_fail_infos),
        cmocka_unit_test(test_single_des),
        cmocka_unit_test(test_unparsable),
        cmocka_unit_test(test_certs_only),
        cmocka_unit_test_setup_teardown(test_challenges, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_enroll_and_reuse, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_static_challenge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_challenge_race, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_decisions, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_pending_is_not_replaced, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_renewal, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_prunes_phase3_slots, setup, teardown),
        cmocka_unit_test_setup_teardown(test_revoke_clears_the_phase3_challenge, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_crl, setup, teardown),
        cmocka_unit_test_setup_teardown(test_service_limits_and_ra_checks, setup, teardown),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
