#include "crypto/cms.h"

#include <openssl/cms.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>

static int to_der(CMS_ContentInfo *cms, mdm_buf_t *out, mdm_err_t *err)
{
    unsigned char *der = NULL;
    int n = i2d_CMS_ContentInfo(cms, &der);
    if (n <= 0)
        return mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot encode CMS");
    mdm_buf_reset(out);
    mdm_buf_append(out, der, (size_t)n);
    OPENSSL_free(der);
    return 0;
}

int mdm_cms_sign(X509 *signer, EVP_PKEY *key, STACK_OF(X509) *chain, const void *data,
                 size_t len, mdm_buf_t *out, mdm_err_t *err)
{
    BIO *in = BIO_new_mem_buf(data, (int)len);
    int rc = MDM_ECRYPTO;
    CMS_ContentInfo *cms = CMS_sign(NULL, NULL, chain, NULL, CMS_BINARY | CMS_PARTIAL);
    if (cms == NULL ||
        CMS_add1_signer(cms, signer, key, EVP_sha256(), CMS_BINARY | CMS_NOSMIMECAP) == NULL ||
        CMS_final(cms, in, NULL, CMS_BINARY) != 1) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "CMS signing failed");
        goto out;
    }
    rc = to_der(cms, out, err);
out:
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    return rc;
}

int mdm_cms_encrypt(X509 *recipient, const EVP_CIPHER *cipher, const void *data, size_t len,
                    mdm_buf_t *out, mdm_err_t *err)
{
    STACK_OF(X509) *recips = sk_X509_new_null();
    sk_X509_push(recips, recipient);
    BIO *in = BIO_new_mem_buf(data, (int)len);
    int rc = MDM_ECRYPTO;
    CMS_ContentInfo *cms =
        CMS_encrypt(recips, in, cipher ? cipher : EVP_aes_256_cbc(), CMS_BINARY);
    if (cms == NULL) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO,
                             "CMS encryption failed (the recipient needs an RSA or EC key)");
        goto out;
    }
    rc = to_der(cms, out, err);
out:
    CMS_ContentInfo_free(cms);
    BIO_free(in);
    sk_X509_free(recips);
    return rc;
}

int mdm_cms_verify_attached(const void *der, size_t len, X509_STORE *trust, int ignore_time,
                            mdm_buf_t *content, X509 **signer, mdm_err_t *err)
{
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    BIO *outb = BIO_new(BIO_s_mem());
    STACK_OF(X509) *signers = NULL;
    int rc = MDM_EAUTH;
    if (signer)
        *signer = NULL;
    if (cms == NULL || OBJ_obj2nid(CMS_get0_type(cms)) != NID_pkcs7_signed) {
        rc = mdm_err_set(err, MDM_EPARSE, "not a CMS SignedData");
        goto out;
    }
    if (CMS_get0_content(cms) == NULL || *CMS_get0_content(cms) == NULL) {
        rc = mdm_err_set(err, MDM_EPARSE, "the SignedData has no content");
        goto out;
    }
    if (CMS_verify(cms, NULL, NULL, NULL, outb, CMS_BINARY | CMS_NO_SIGNER_CERT_VERIFY) != 1) {
        rc = mdm_err_set_ssl(err, MDM_EAUTH, "the signature does not verify");
        goto out;
    }
    signers = CMS_get0_signers(cms);
    if (signers == NULL || sk_X509_num(signers) != 1) {
        rc = mdm_err_set(err, MDM_EAUTH, "expected exactly one signer");
        goto out;
    }
    X509 *s = sk_X509_value(signers, 0);
    if (trust != NULL) {
        X509_STORE_CTX *ctx = X509_STORE_CTX_new();
        STACK_OF(X509) *untrusted = CMS_get1_certs(cms);
        int ok = X509_STORE_CTX_init(ctx, trust, s, untrusted) == 1;
        if (ok) {
            X509_VERIFY_PARAM *param = X509_STORE_CTX_get0_param(ctx);
            X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_ANY);
            if (ignore_time)
                X509_VERIFY_PARAM_set_flags(param, X509_V_FLAG_NO_CHECK_TIME);
            ok = X509_verify_cert(ctx) == 1;
        }
        if (!ok)
            mdm_err_set(err, MDM_EAUTH, "the signer is not trusted: %s",
                        X509_verify_cert_error_string(X509_STORE_CTX_get_error(ctx)));
        X509_STORE_CTX_free(ctx);
        sk_X509_pop_free(untrusted, X509_free);
        if (!ok)
            goto out;
    }
    char *data;
    long n = BIO_get_mem_data(outb, &data);
    mdm_buf_reset(content);
    if (n > 0)
        mdm_buf_append(content, data, (size_t)n);
    if (signer) {
        X509_up_ref(s);
        *signer = s;
    }
    rc = 0;
out:
    ERR_clear_error();
    sk_X509_free(signers);
    BIO_free(outb);
    CMS_ContentInfo_free(cms);
    return rc;
}

int mdm_cms_decrypt(const void *der, size_t len, X509 *cert, EVP_PKEY *key, mdm_buf_t *out,
                    mdm_err_t *err)
{
    const unsigned char *p = der;
    CMS_ContentInfo *cms = d2i_CMS_ContentInfo(NULL, &p, (long)len);
    BIO *outb = BIO_new(BIO_s_mem());
    int rc = MDM_ECRYPTO;
    if (cms == NULL) {
        rc = mdm_err_set(err, MDM_EPARSE, "not CMS");
        goto out;
    }
    if (CMS_decrypt(cms, key, cert, NULL, outb, CMS_BINARY) != 1) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "CMS decryption failed");
        goto out;
    }
    char *data;
    long n = BIO_get_mem_data(outb, &data);
    mdm_buf_reset(out);
    if (n > 0)
        mdm_buf_append(out, data, (size_t)n);
    rc = 0;
out:
    ERR_clear_error();
    BIO_free(outb);
    CMS_ContentInfo_free(cms);
    return rc;
}
