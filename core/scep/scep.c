/* SCEP pkiMessage parsing and CertRep building. See scep.h.
 *
 * The outer SignedData goes through the CMS API. The pkcsPKIEnvelope is
 * opened by hand over the public PKCS7 structures: CMS_decrypt neither
 * says which content cipher the client used (the reply must use the same
 * one) nor opens single-DES envelopes, which OpenSSL 3 keeps in the legacy
 * provider but which old Go clients still send. Single DES is decrypted as
 * DES-EDE3 with the key repeated three times, which is the same function. */
#include "scep/scep.h"

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pkcs7.h>
#include <openssl/rsa.h>
#include <openssl/x509v3.h>
#include <string.h>

#include "util/alloc.h"
#include "util/misc.h"

/* SCEP attribute OIDs (VeriSign arc, RFC 8894 section 3.2.1). */
#define OID_MESSAGE_TYPE "2.16.840.1.113733.1.9.2"
#define OID_PKI_STATUS "2.16.840.1.113733.1.9.3"
#define OID_FAIL_INFO "2.16.840.1.113733.1.9.4"
#define OID_SENDER_NONCE "2.16.840.1.113733.1.9.5"
#define OID_RECIPIENT_NONCE "2.16.840.1.113733.1.9.6"
#define OID_TRANSACTION_ID "2.16.840.1.113733.1.9.7"

#define SENDER_NONCE_LEN 16

const char *mdm_scep_msgtype_name(int type)
{
    switch (type) {
    case MDM_SCEP_CERTREP: return "CertRep";
    case MDM_SCEP_RENEWALREQ: return "RenewalReq";
    case MDM_SCEP_PKCSREQ: return "PKCSReq";
    case MDM_SCEP_CERTPOLL: return "CertPoll";
    case MDM_SCEP_GETCERT: return "GetCert";
    case MDM_SCEP_GETCRL: return "GetCRL";
    default: return "unknown";
    }
}

const char *mdm_scep_failinfo_name(int fail_info)
{
    switch (fail_info) {
    case MDM_SCEP_NOFAIL: return "none";
    case MDM_SCEP_BADALG: return "badAlg";
    case MDM_SCEP_BADMESSAGECHECK: return "badMessageCheck";
    case MDM_SCEP_BADREQUEST: return "badRequest";
    case MDM_SCEP_BADTIME: return "badTime";
    case MDM_SCEP_BADCERTID: return "badCertId";
    default: return "unknown";
    }
}

const char *mdm_scep_status_name(int status)
{
    switch (status) {
    case MDM_SCEP_SUCCESS: return "SUCCESS";
    case MDM_SCEP_FAILURE: return "FAILURE";
    case MDM_SCEP_PENDING: return "PENDING";
    default: return "unknown";
    }
}

const char *mdm_scep_nid_name(int nid)
{
    const char *s = nid != NID_undef ? OBJ_nid2ln(nid) : NULL;
    return s ? s : "-";
}

void mdm_scep_msg_free(mdm_scep_msg_t *m)
{
    if (m == NULL)
        return;
    X509_free(m->signer);
    X509_REQ_free(m->csr);
    X509_NAME_free(m->poll_issuer);
    X509_NAME_free(m->poll_subject);
    if (m->challenge != NULL) {
        OPENSSL_cleanse(m->challenge, strlen(m->challenge));
        mdm_free(m->challenge);
    }
    memset(m, 0, sizeof(*m));
    m->fail_info = MDM_SCEP_NOFAIL;
}

/* Records the failInfo to answer with and why (the first reason wins). */
static void set_fail(mdm_scep_msg_t *m, int fail_info, const char *reason)
{
    if (m->fail_info != MDM_SCEP_NOFAIL)
        return;
    m->fail_info = fail_info;
    snprintf(m->reason, sizeof(m->reason), "%s", reason);
}

static int parse_error(mdm_scep_msg_t *m, const char *reason)
{
    snprintf(m->reason, sizeof(m->reason), "%s", reason);
    return MDM_EPARSE;
}

/* Finds the single value of a signed attribute. string selects the text
 * types (PrintableString, UTF8String, IA5String) over OCTET STRING.
 * Returns 0, MDM_ENOTFOUND, or MDM_EPARSE for a repeated attribute, a set
 * of several values or another type. */
static int signed_attr(CMS_SignerInfo *si, const char *oid, bool string, const unsigned char **data,
                       int *len, int *type)
{
    ASN1_OBJECT *obj = OBJ_txt2obj(oid, 1);
    int rc = MDM_EPARSE;
    if (obj == NULL)
        return MDM_ENOTFOUND;
    int idx = CMS_signed_get_attr_by_OBJ(si, obj, -1);
    if (idx < 0) {
        rc = MDM_ENOTFOUND;
        goto out;
    }
    if (CMS_signed_get_attr_by_OBJ(si, obj, idx) >= 0)
        goto out;
    X509_ATTRIBUTE *attr = CMS_signed_get_attr(si, idx);
    if (attr == NULL || X509_ATTRIBUTE_count(attr) != 1)
        goto out;
    ASN1_TYPE *t = X509_ATTRIBUTE_get0_type(attr, 0);
    if (t == NULL)
        goto out;
    bool ok = string ? (t->type == V_ASN1_PRINTABLESTRING || t->type == V_ASN1_UTF8STRING ||
                        t->type == V_ASN1_IA5STRING)
                     : t->type == V_ASN1_OCTET_STRING;
    if (!ok)
        goto out;
    *data = ASN1_STRING_get0_data(t->value.asn1_string);
    *len = ASN1_STRING_length(t->value.asn1_string);
    if (type != NULL)
        *type = t->type;
    rc = 0;
out:
    ASN1_OBJECT_free(obj);
    ERR_clear_error();
    return rc;
}

/* Reads messageType, transactionID and senderNonce: the least a request
 * must have to be answered with a CertRep. */
static int read_scep_attrs(CMS_SignerInfo *si, mdm_scep_msg_t *m)
{
    const unsigned char *d;
    int n;
    if (signed_attr(si, OID_TRANSACTION_ID, true, &d, &n, &m->txid_type) != 0)
        return parse_error(m, "no readable transactionID attribute");
    if (n < 1 || n > MDM_SCEP_TXID_MAX)
        return parse_error(m, "the transactionID is empty or too long");
    for (int i = 0; i < n; i++)
        if (d[i] < 0x20 || d[i] > 0x7e)
            return parse_error(m, "the transactionID has characters outside printable ASCII");
    memcpy(m->txid, d, (size_t)n);
    m->txid[n] = '\0';

    if (signed_attr(si, OID_SENDER_NONCE, false, &d, &n, NULL) != 0)
        return parse_error(m, "no readable senderNonce attribute");
    if (n < 1 || n > MDM_SCEP_NONCE_MAX)
        return parse_error(m, "the senderNonce is empty or too long");
    memcpy(m->sender_nonce, d, (size_t)n);
    m->sender_nonce_len = (size_t)n;

    if (signed_attr(si, OID_MESSAGE_TYPE, true, &d, &n, NULL) != 0)
        return parse_error(m, "no readable messageType attribute");
    int type = 0;
    if (n < 1 || n > 3)
        return parse_error(m, "the messageType is not a small number");
    for (int i = 0; i < n; i++) {
        if (d[i] < '0' || d[i] > '9')
            return parse_error(m, "the messageType is not a number");
        type = type * 10 + (d[i] - '0');
    }
    m->type = type;
    return 0;
}

/* The cipher objects of the content ciphers we open. Single DES maps to
 * DES-EDE3 (the key is tripled). */
static const EVP_CIPHER *envelope_cipher(int nid)
{
    switch (nid) {
    case NID_aes_128_cbc: return EVP_aes_128_cbc();
    case NID_aes_192_cbc: return EVP_aes_192_cbc();
    case NID_aes_256_cbc: return EVP_aes_256_cbc();
    case NID_des_ede3_cbc: return EVP_des_ede3_cbc();
    case NID_des_cbc: return EVP_des_ede3_cbc();
    default: return NULL;
    }
}

int mdm_scep_reply_cipher(int request_cipher_nid)
{
    switch (request_cipher_nid) {
    case NID_aes_128_cbc:
    case NID_aes_192_cbc:
    case NID_aes_256_cbc:
    case NID_des_ede3_cbc: return request_cipher_nid;
    case NID_des_cbc: return NID_des_ede3_cbc;
    default: return NID_aes_128_cbc;
    }
}

static bool recipient_is(PKCS7_RECIP_INFO *ri, X509 *cert)
{
    if (cert == NULL || ri->issuer_and_serial == NULL)
        return false;
    return X509_NAME_cmp(ri->issuer_and_serial->issuer, X509_get_issuer_name(cert)) == 0 &&
           ASN1_INTEGER_cmp(ri->issuer_and_serial->serial, X509_get0_serialNumber(cert)) == 0;
}

/* Opens the pkcsPKIEnvelope. Returns MDM_SCEP_NOFAIL with the plaintext
 * in plain, or the failInfo with m->reason set. Every failure after the
 * recipient was found reads the same (badMessageCheck, "cannot decrypt"),
 * and a key that does not decrypt is replaced by a random one so that the
 * work done does not depend on the padding either. */
static int open_envelope(const unsigned char *env, size_t len, const mdm_scep_keys_t *keys,
                         mdm_scep_msg_t *m, mdm_buf_t *plain)
{
    const unsigned char *p = env;
    PKCS7 *p7 = d2i_PKCS7(NULL, &p, (long)len);
    EVP_PKEY_CTX *pctx = NULL;
    EVP_CIPHER_CTX *cctx = NULL;
    unsigned char *cek = NULL;
    size_t cek_len = 0;
    unsigned char key[EVP_MAX_KEY_LENGTH];
    int fail = MDM_SCEP_BADMESSAGECHECK;
    const char *why = "cannot decrypt the pkcsPKIEnvelope";

    if (p7 == NULL || p != env + len) {
        why = "the pkcsPKIEnvelope is not a DER ContentInfo";
        goto out;
    }
    if (!PKCS7_type_is_enveloped(p7) || p7->d.enveloped == NULL ||
        p7->d.enveloped->enc_data == NULL) {
        why = "the pkcsPKIEnvelope is not EnvelopedData";
        goto out;
    }
    PKCS7_ENC_CONTENT *ec = p7->d.enveloped->enc_data;
    int nid = ec->algorithm ? OBJ_obj2nid(ec->algorithm->algorithm) : NID_undef;
    m->cipher_nid = nid;
    const EVP_CIPHER *cipher = envelope_cipher(nid);
    if (cipher == NULL) {
        fail = MDM_SCEP_BADALG;
        why = "the envelope's content cipher is not AES-CBC or DES-EDE3-CBC";
        goto out;
    }
    if (nid == NID_des_cbc && !keys->allow_single_des) {
        fail = MDM_SCEP_BADALG;
        why = "the envelope uses single DES, which is refused (scep.allow_single_des)";
        goto out;
    }
    size_t klen = nid == NID_des_cbc ? 8 : (size_t)EVP_CIPHER_get_key_length(cipher);
    size_t ivlen = (size_t)EVP_CIPHER_get_iv_length(cipher);
    ASN1_TYPE *param = ec->algorithm->parameter;
    if (param == NULL || param->type != V_ASN1_OCTET_STRING ||
        (size_t)ASN1_STRING_length(param->value.octet_string) != ivlen) {
        why = "the envelope's IV is missing or has the wrong length";
        goto out;
    }
    const unsigned char *iv = ASN1_STRING_get0_data(param->value.octet_string);
    if (ec->enc_data == NULL || ASN1_STRING_length(ec->enc_data) <= 0 ||
        ASN1_STRING_length(ec->enc_data) % (int)EVP_CIPHER_get_block_size(cipher) != 0) {
        why = "the envelope's encrypted content is missing or not whole blocks";
        goto out;
    }

    /* The recipient: the RA certificate when there is one, else the CA.
     * With an RA the CA's key decrypts nothing a client sends. */
    STACK_OF(PKCS7_RECIP_INFO) *ris = p7->d.enveloped->recipientinfo;
    PKCS7_RECIP_INFO *ri = NULL;
    EVP_PKEY *pkey = NULL;
    for (int i = 0; i < sk_PKCS7_RECIP_INFO_num(ris) && pkey == NULL; i++) {
        PKCS7_RECIP_INFO *r = sk_PKCS7_RECIP_INFO_value(ris, i);
        if (recipient_is(r, keys->ra_cert)) {
            ri = r;
            pkey = keys->ra_key;
        } else if (keys->ra_cert == NULL && recipient_is(r, keys->ca_cert)) {
            ri = r;
            pkey = keys->ca_key;
        }
    }
    if (ri == NULL || pkey == NULL) {
        why = keys->ra_cert != NULL ? "the envelope is not encrypted to our RA certificate"
                                    : "the envelope is not encrypted to our CA certificate";
        goto out;
    }
    if (!EVP_PKEY_is_a(pkey, "RSA")) {
        fail = MDM_SCEP_BADALG;
        why = "the envelope is encrypted to a certificate whose key is not RSA";
        goto out;
    }
    if (ri->key_enc_algor == NULL ||
        OBJ_obj2nid(ri->key_enc_algor->algorithm) != NID_rsaEncryption) {
        fail = MDM_SCEP_BADALG;
        why = "the envelope's key transport is not rsaEncryption (PKCS #1 v1.5)";
        goto out;
    }
    if (ri->enc_key == NULL || ASN1_STRING_length(ri->enc_key) <= 0)
        goto out;

    /* Key transport. A failure or a key of the wrong length continues with
     * a random key and fails later, in the same way. */
    bool key_ok = false;
    pctx = EVP_PKEY_CTX_new_from_pkey(NULL, pkey, NULL);
    if (pctx != NULL && EVP_PKEY_decrypt_init(pctx) == 1 &&
        EVP_PKEY_CTX_set_rsa_padding(pctx, RSA_PKCS1_PADDING) == 1 &&
        EVP_PKEY_decrypt(pctx, NULL, &cek_len, ASN1_STRING_get0_data(ri->enc_key),
                         (size_t)ASN1_STRING_length(ri->enc_key)) == 1) {
        cek = OPENSSL_malloc(cek_len ? cek_len : 1);
        if (cek != NULL &&
            EVP_PKEY_decrypt(pctx, cek, &cek_len, ASN1_STRING_get0_data(ri->enc_key),
                             (size_t)ASN1_STRING_length(ri->enc_key)) == 1 &&
            cek_len == klen)
            key_ok = true;
    }
    ERR_clear_error();
    if (key_ok) {
        memcpy(key, cek, klen);
    } else {
        mdm_random(key, klen);
    }
    if (nid == NID_des_cbc) {
        memcpy(key + 8, key, 8);
        memcpy(key + 16, key, 8);
    }

    cctx = EVP_CIPHER_CTX_new();
    int outl = 0, finl = 0;
    int inl = ASN1_STRING_length(ec->enc_data);
    mdm_buf_reset(plain);
    mdm_buf_reserve(plain, (size_t)inl + 32);
    bool ok = cctx != NULL && EVP_DecryptInit_ex2(cctx, cipher, key, iv, NULL) == 1 &&
              EVP_DecryptUpdate(cctx, (unsigned char *)plain->data, &outl,
                                ASN1_STRING_get0_data(ec->enc_data), inl) == 1 &&
              EVP_DecryptFinal_ex(cctx, (unsigned char *)plain->data + outl, &finl) == 1;
    ERR_clear_error();
    OPENSSL_cleanse(key, sizeof(key));
    if (!ok || !key_ok) {
        mdm_buf_reset(plain);
        goto out;
    }
    plain->len = (size_t)(outl + finl);
    plain->data[plain->len] = '\0';
    fail = MDM_SCEP_NOFAIL;
out:
    if (fail != MDM_SCEP_NOFAIL)
        set_fail(m, fail, why);
    if (cek != NULL)
        OPENSSL_clear_free(cek, cek_len ? cek_len : 1);
    EVP_CIPHER_CTX_free(cctx);
    EVP_PKEY_CTX_free(pctx);
    PKCS7_free(p7);
    ERR_clear_error();
    return fail;
}

/* Reads the challengePassword attribute of a CSR, if any, as UTF-8. */
static int csr_challenge(X509_REQ *csr, char **out)
{
    *out = NULL;
    int idx = X509_REQ_get_attr_by_NID(csr, NID_pkcs9_challengePassword, -1);
    if (idx < 0)
        return 0;
    X509_ATTRIBUTE *attr = X509_REQ_get_attr(csr, idx);
    if (attr == NULL || X509_ATTRIBUTE_count(attr) != 1)
        return MDM_EPARSE;
    ASN1_TYPE *t = X509_ATTRIBUTE_get0_type(attr, 0);
    if (t == NULL)
        return MDM_EPARSE;
    switch (t->type) {
    case V_ASN1_UTF8STRING:
    case V_ASN1_PRINTABLESTRING:
    case V_ASN1_IA5STRING:
    case V_ASN1_T61STRING:
    case V_ASN1_BMPSTRING:
    case V_ASN1_UNIVERSALSTRING: break;
    default: return MDM_EPARSE;
    }
    unsigned char *utf8 = NULL;
    int n = ASN1_STRING_to_UTF8(&utf8, t->value.asn1_string);
    if (n < 0) {
        ERR_clear_error();
        return MDM_EPARSE;
    }
    int rc = 0;
    if (memchr(utf8, '\0', (size_t)n) != NULL || n > 1024)
        rc = MDM_EPARSE;
    else
        *out = mdm_strndup((const char *)utf8, (size_t)n);
    OPENSSL_clear_free(utf8, (size_t)n);
    return rc;
}

static void parse_csr(const mdm_buf_t *plain, mdm_scep_msg_t *m)
{
    const unsigned char *p = (const unsigned char *)plain->data;
    X509_REQ *csr = d2i_X509_REQ(NULL, &p, (long)plain->len);
    if (csr == NULL || p != (const unsigned char *)plain->data + plain->len) {
        X509_REQ_free(csr);
        ERR_clear_error();
        set_fail(m, MDM_SCEP_BADREQUEST, "the message data is not a DER PKCS #10 request");
        return;
    }
    m->csr = csr;
    EVP_PKEY *pk = X509_REQ_get0_pubkey(csr);
    if (pk == NULL || X509_REQ_verify(csr, pk) != 1) {
        ERR_clear_error();
        set_fail(m, MDM_SCEP_BADMESSAGECHECK, "the CSR's self-signature does not verify");
        return;
    }
    if (csr_challenge(csr, &m->challenge) != 0) {
        set_fail(m, MDM_SCEP_BADREQUEST, "the CSR's challengePassword is malformed");
        return;
    }
    /* A PKCSReq proves possession of the key it wants certified by being
     * signed with it; the reply is then encrypted to that same key. */
    if (m->type == MDM_SCEP_PKCSREQ && m->signer != NULL) {
        EVP_PKEY *spk = X509_get0_pubkey(m->signer);
        if (spk == NULL || EVP_PKEY_eq(spk, pk) != 1) {
            ERR_clear_error();
            set_fail(m, MDM_SCEP_BADMESSAGECHECK,
                     "the PKCSReq is signed with another key than the one in its CSR");
        }
    }
}

/* IssuerAndSubject ::= SEQUENCE { issuer Name, subject Name } */
static void parse_issuer_and_subject(const mdm_buf_t *plain, mdm_scep_msg_t *m)
{
    const unsigned char *p = (const unsigned char *)plain->data;
    const unsigned char *end = p + plain->len;
    long len = 0;
    int tag = 0, cls = 0;
    int r = ASN1_get_object(&p, &len, &tag, &cls, (long)plain->len);
    if ((r & 0x80) || r != V_ASN1_CONSTRUCTED || tag != V_ASN1_SEQUENCE ||
        cls != V_ASN1_UNIVERSAL || p + len != end)
        goto bad;
    m->poll_issuer = d2i_X509_NAME(NULL, &p, (long)(end - p));
    if (m->poll_issuer == NULL || p >= end)
        goto bad;
    m->poll_subject = d2i_X509_NAME(NULL, &p, (long)(end - p));
    if (m->poll_subject == NULL || p != end)
        goto bad;
    return;
bad:
    ERR_clear_error();
    set_fail(m, MDM_SCEP_BADREQUEST, "the CertPoll message data is not IssuerAndSubject");
}

int mdm_scep_parse(const void *der, size_t len, const mdm_scep_keys_t *keys, mdm_scep_msg_t *out)
{
    CMS_ContentInfo *cms = NULL;
    BIO *content = NULL;
    STACK_OF(X509) *signers = NULL;
    mdm_buf_t plain = MDM_BUF_INIT;
    int rc = 0;
    memset(out, 0, sizeof(*out));
    out->fail_info = MDM_SCEP_NOFAIL;

    if (len == 0 || len > MDM_SCEP_MSG_MAX) {
        rc = parse_error(out, len == 0 ? "the message is empty" : "the message is too large");
        goto out;
    }
    const unsigned char *p = der;
    cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    if (cms == NULL || p != (const unsigned char *)der + len) {
        rc = parse_error(out, "the message is not a DER CMS ContentInfo");
        goto out;
    }
    if (OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed) {
        rc = parse_error(out, "the message is not SignedData");
        goto out;
    }
    STACK_OF(CMS_SignerInfo) *sis = CMS_get0_SignerInfos(cms);
    if (sk_CMS_SignerInfo_num(sis) != 1) {
        rc = parse_error(out, "the message must have exactly one signer");
        goto out;
    }
    CMS_SignerInfo *si = sk_CMS_SignerInfo_value(sis, 0);
    rc = read_scep_attrs(si, out);
    if (rc != 0)
        goto out;

    X509_ALGOR *dig = NULL, *sig = NULL;
    CMS_SignerInfo_get0_algs(si, NULL, NULL, &dig, &sig);
    out->digest_nid = dig ? OBJ_obj2nid(dig->algorithm) : NID_undef;
    if (out->digest_nid != NID_sha1 && out->digest_nid != NID_sha256 &&
        out->digest_nid != NID_sha512) {
        set_fail(out, MDM_SCEP_BADALG, "the digest is not SHA-1, SHA-256 or SHA-512");
        out->digest_nid = NID_sha256;
        goto out;
    }

    content = BIO_new(BIO_s_mem());
    if (content == NULL ||
        CMS_verify(cms, NULL, NULL, NULL, content, CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY) != 1) {
        set_fail(out, MDM_SCEP_BADMESSAGECHECK,
                 "the signature does not verify with the certificate in the message");
        goto out;
    }
    signers = CMS_get0_signers(cms);
    if (sk_X509_num(signers) != 1) {
        set_fail(out, MDM_SCEP_BADMESSAGECHECK, "the signer's certificate is missing");
        goto out;
    }
    out->signer = sk_X509_value(signers, 0);
    X509_up_ref(out->signer);

    switch (out->type) {
    case MDM_SCEP_PKCSREQ:
    case MDM_SCEP_RENEWALREQ:
    case MDM_SCEP_CERTPOLL: break;
    case MDM_SCEP_GETCERT:
    case MDM_SCEP_GETCRL:
        set_fail(out, MDM_SCEP_BADREQUEST, "GetCert and GetCRL are not supported");
        goto out;
    default: set_fail(out, MDM_SCEP_BADREQUEST, "unknown messageType"); goto out;
    }
    if (OBJ_obj2nid(CMS_get0_eContentType(cms)) != NID_pkcs7_data) {
        set_fail(out, MDM_SCEP_BADMESSAGECHECK, "the signed content type is not id-data");
        goto out;
    }
    char *env = NULL;
    long env_len = BIO_get_mem_data(content, &env);
    if (env_len <= 0) {
        set_fail(out, MDM_SCEP_BADMESSAGECHECK, "the message has no pkcsPKIEnvelope");
        goto out;
    }
    if (open_envelope((const unsigned char *)env, (size_t)env_len, keys, out, &plain) !=
        MDM_SCEP_NOFAIL)
        goto out;
    if (out->type == MDM_SCEP_CERTPOLL)
        parse_issuer_and_subject(&plain, out);
    else
        parse_csr(&plain, out);
out:
    if (plain.data != NULL)
        OPENSSL_cleanse(plain.data, plain.cap);
    mdm_buf_free(&plain);
    sk_X509_free(signers);
    BIO_free(content);
    CMS_ContentInfo_free(cms);
    ERR_clear_error();
    return rc;
}

/* ---- building ------------------------------------------------------------ */

static int append_der_cms(CMS_ContentInfo *cms, mdm_buf_t *out, mdm_err_t *err)
{
    unsigned char *der = NULL;
    int n = i2d_CMS_ContentInfo(cms, &der);
    if (n <= 0)
        return mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot encode the CMS structure");
    mdm_buf_append(out, der, (size_t)n);
    OPENSSL_free(der);
    return 0;
}

int mdm_scep_certs_only(STACK_OF(X509) *certs, mdm_buf_t *out, mdm_err_t *err)
{
    /* CMS_PARTIAL with no signer leaves an empty eContent; detaching
     * removes it, as RFC 8894 and `openssl crl2pkcs7` have it. */
    CMS_ContentInfo *cms = CMS_sign(NULL, NULL, certs, NULL, CMS_PARTIAL | CMS_BINARY);
    int rc = 0;
    if (cms == NULL || CMS_set_detached(cms, 1) != 1) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot build a certs-only SignedData");
        goto out;
    }
    rc = append_der_cms(cms, out, err);
out:
    CMS_ContentInfo_free(cms);
    return rc;
}

static const EVP_MD *digest_of(int nid)
{
    switch (nid) {
    case NID_sha1: return EVP_sha1();
    case NID_sha512: return EVP_sha512();
    default: return EVP_sha256();
    }
}

static int add_attr(CMS_SignerInfo *si, const char *oid, int type, const void *data, int len)
{
    /* An explicit length: with -1 OpenSSL would read data as an
     * ASN1_STRING for these types. */
    return CMS_signed_add1_attr_by_txt(si, oid, type, data, len) == 1 ? 0 : MDM_ECRYPTO;
}

/* Builds the pkcsPKIEnvelope of a SUCCESS reply. */
static int build_envelope(const mdm_scep_reply_t *r, mdm_buf_t *out, mdm_err_t *err)
{
    STACK_OF(X509) *certs = sk_X509_new_null();
    STACK_OF(X509) *recips = sk_X509_new_null();
    mdm_buf_t degenerate = MDM_BUF_INIT;
    BIO *in = NULL;
    CMS_ContentInfo *env = NULL;
    int rc = 0;
    int nid = mdm_scep_reply_cipher(r->cipher_nid);
    const EVP_CIPHER *cipher = envelope_cipher(nid);
    if (certs == NULL || recips == NULL || r->issued == NULL || r->recipient == NULL ||
        cipher == NULL) {
        rc = mdm_err_set(err, MDM_EINVAL, "a SUCCESS reply needs a certificate and a recipient");
        goto out;
    }
    if (sk_X509_push(certs, r->issued) <= 0 || sk_X509_push(recips, r->recipient) <= 0) {
        rc = mdm_err_set_ssl(err, MDM_ENOMEM, "sk_X509_push");
        goto out;
    }
    rc = mdm_scep_certs_only(certs, &degenerate, err);
    if (rc != 0)
        goto out;
    in = BIO_new_mem_buf(degenerate.data, (int)degenerate.len);
    env = in ? CMS_encrypt(recips, in, cipher, CMS_BINARY) : NULL;
    if (env == NULL) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot encrypt the reply to the requester");
        goto out;
    }
    rc = append_der_cms(env, out, err);
out:
    CMS_ContentInfo_free(env);
    BIO_free(in);
    mdm_buf_free(&degenerate);
    sk_X509_free(certs);
    sk_X509_free(recips);
    return rc;
}

int mdm_scep_certrep(const mdm_scep_reply_t *r, mdm_buf_t *out, mdm_err_t *err)
{
    CMS_ContentInfo *cms = NULL;
    BIO *data = NULL;
    mdm_buf_t envelope = MDM_BUF_INIT;
    int rc = 0;
    if (r->signer_cert == NULL || r->signer_key == NULL || r->txid == NULL ||
        (r->status != MDM_SCEP_SUCCESS && r->status != MDM_SCEP_FAILURE &&
         r->status != MDM_SCEP_PENDING))
        return mdm_err_set(err, MDM_EINVAL, "incomplete CertRep");
    if (r->status == MDM_SCEP_SUCCESS) {
        rc = build_envelope(r, &envelope, err);
        if (rc != 0)
            goto out;
    }

    cms = CMS_sign(NULL, NULL, NULL, NULL, CMS_PARTIAL | CMS_BINARY);
    if (cms == NULL) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "CMS_sign");
        goto out;
    }
    CMS_SignerInfo *si = CMS_add1_signer(cms, r->signer_cert, r->signer_key,
                                         digest_of(r->digest_nid),
                                         CMS_PARTIAL | CMS_BINARY | CMS_NOSMIMECAP);
    if (si == NULL) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot add the CertRep signer");
        goto out;
    }
    char status[16], fail[16];
    snprintf(status, sizeof(status), "%d", r->status);
    snprintf(fail, sizeof(fail), "%d", r->fail_info < 0 ? 2 : r->fail_info);
    unsigned char nonce[SENDER_NONCE_LEN];
    mdm_random(nonce, sizeof(nonce));
    if (add_attr(si, OID_MESSAGE_TYPE, V_ASN1_PRINTABLESTRING, "3", 1) != 0 ||
        add_attr(si, OID_PKI_STATUS, V_ASN1_PRINTABLESTRING, status, (int)strlen(status)) != 0 ||
        (r->status == MDM_SCEP_FAILURE &&
         add_attr(si, OID_FAIL_INFO, V_ASN1_PRINTABLESTRING, fail, (int)strlen(fail)) != 0) ||
        add_attr(si, OID_TRANSACTION_ID, r->txid_type ? r->txid_type : V_ASN1_PRINTABLESTRING,
                 r->txid,
                 (int)strlen(r->txid)) != 0 ||
        add_attr(si, OID_SENDER_NONCE, V_ASN1_OCTET_STRING, nonce, (int)sizeof(nonce)) != 0 ||
        (r->recipient_nonce_len > 0 &&
         add_attr(si, OID_RECIPIENT_NONCE, V_ASN1_OCTET_STRING, r->recipient_nonce,
                  (int)r->recipient_nonce_len) != 0)) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot add the SCEP attributes");
        goto out;
    }
    /* FAILURE and PENDING carry no pkcsPKIEnvelope: eContent absent. */
    if (r->status != MDM_SCEP_SUCCESS && CMS_set_detached(cms, 1) != 1) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "CMS_set_detached");
        goto out;
    }
    data = BIO_new_mem_buf(envelope.data ? envelope.data : "", (int)envelope.len);
    if (data == NULL || CMS_final(cms, data, NULL, CMS_BINARY) != 1) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot sign the CertRep");
        goto out;
    }
    rc = append_der_cms(cms, out, err);
out:
    BIO_free(data);
    CMS_ContentInfo_free(cms);
    mdm_buf_free(&envelope);
    return rc;
}

/* ---- RA certificate ------------------------------------------------------ */

static int add_conf_ext(X509 *x, X509V3_CTX *ctx, int nid, const char *value)
{
    X509_EXTENSION *ext = X509V3_EXT_conf_nid(NULL, ctx, nid, value);
    if (ext == NULL)
        return MDM_ECRYPTO;
    int ok = X509_add_ext(x, ext, -1);
    X509_EXTENSION_free(ext);
    return ok == 1 ? 0 : MDM_ECRYPTO;
}

int mdm_scep_ra_create(mdm_ca_t *ca, EVP_PKEY *ra_key, const char *cn, int days, X509 **out,
                       mdm_err_t *err)
{
    X509 *x = NULL;
    X509_NAME *name = NULL;
    ASN1_INTEGER *sn = NULL;
    int rc = 0;
    *out = NULL;
    if (ra_key == NULL || !EVP_PKEY_is_a(ra_key, "RSA"))
        return mdm_err_set(err, MDM_EINVAL,
                           "the SCEP RA key must be RSA: clients encrypt requests to it with RSA "
                           "key transport");
    if (days < 1)
        return mdm_err_set(err, MDM_EINVAL, "the RA certificate needs at least one day");
    int64_t now = mdm_now_ms(), ca_na = 0;
    if (mdm_asn1_time_ms(X509_get0_notAfter(ca->cert), &ca_na) != 0)
        return mdm_err_set(err, MDM_ECRYPTO, "the CA certificate has unreadable dates");
    int64_t na = now + (int64_t)days * 24 * 3600 * 1000;
    if (na > ca_na)
        na = ca_na;

    unsigned char serial[16];
    mdm_random(serial, sizeof(serial));
    serial[0] = (unsigned char)((serial[0] & 0x7f) | 0x40);
    x = X509_new();
    name = X509_NAME_new();
    sn = ASN1_INTEGER_new();
    if (x == NULL || name == NULL || sn == NULL ||
        ASN1_STRING_set(sn, serial, sizeof(serial)) != 1 || X509_set_version(x, 2) != 1 ||
        X509_set_serialNumber(x, sn) != 1 ||
        X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_UTF8, (const unsigned char *)cn, -1, -1,
                                   0) != 1 ||
        X509_NAME_add_entry_by_txt(name, "O", MBSTRING_UTF8, (const unsigned char *)"moonmdm", -1,
                                   -1, 0) != 1 ||
        X509_set_subject_name(x, name) != 1 ||
        X509_set_issuer_name(x, X509_get_subject_name(ca->cert)) != 1 ||
        ASN1_TIME_set(X509_getm_notBefore(x), (time_t)((now - 5 * 60 * 1000) / 1000)) == NULL ||
        ASN1_TIME_set(X509_getm_notAfter(x), (time_t)(na / 1000)) == NULL ||
        X509_set_pubkey(x, ra_key) != 1) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot fill in the RA certificate");
        goto out;
    }
    X509V3_CTX ctx;
    X509V3_set_ctx(&ctx, ca->cert, x, NULL, NULL, 0);
    if (add_conf_ext(x, &ctx, NID_basic_constraints, "critical,CA:FALSE") != 0 ||
        add_conf_ext(x, &ctx, NID_key_usage, "critical,digitalSignature,keyEncipherment") != 0 ||
        add_conf_ext(x, &ctx, NID_subject_key_identifier, "hash") != 0 ||
        add_conf_ext(x, &ctx, NID_authority_key_identifier, "keyid:always") != 0) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot add the RA certificate's extensions");
        goto out;
    }
    const EVP_MD *md = EVP_PKEY_is_a(ca->key, "ED25519") || EVP_PKEY_is_a(ca->key, "ED448")
                           ? NULL
                           : EVP_sha256();
    if (X509_sign(x, ca->key, md) <= 0) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot sign the RA certificate");
        goto out;
    }
    *out = x;
    x = NULL;
out:
    X509_free(x);
    X509_NAME_free(name);
    ASN1_INTEGER_free(sn);
    return rc;
}
