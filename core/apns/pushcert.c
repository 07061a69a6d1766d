/* Push certificates (see pushcert.h). */
#include "apns/pushcert.h"

#include <openssl/err.h>
#include <openssl/objects.h>
#include <openssl/pem.h>
#include <openssl/pkcs12.h>
#include <openssl/provider.h>
#include <openssl/ssl.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>

#include "crypto/keys.h"
#include "util/alloc.h"
#include "util/buf.h"
#include "util/log.h"
#include "util/misc.h"
#include "util/plist.h"

/* A PKCS#12 file is a few kilobytes; anything much larger is a wrong path. */
#define MAX_P12_FILE (1u << 20)

int mdm_pushcert_topic(X509 *cert, char *out, size_t n)
{
    X509_NAME *name = X509_get_subject_name(cert);
    int idx = name ? X509_NAME_get_index_by_NID(name, NID_userId, -1) : -1;
    if (idx < 0)
        return MDM_ENOTFOUND;
    ASN1_STRING *v = X509_NAME_ENTRY_get_data(X509_NAME_get_entry(name, idx));
    unsigned char *utf8 = NULL;
    int len = ASN1_STRING_to_UTF8(&utf8, v);
    if (len <= 0)
        return MDM_ENOTFOUND;
    int rc = 0;
    if ((size_t)len >= n || memchr(utf8, '\0', (size_t)len) != NULL)
        rc = MDM_ELIMIT;
    else
        memcpy(out, utf8, (size_t)len), out[len] = '\0';
    OPENSSL_free(utf8);
    return rc;
}

static char *bio_to_string(BIO *bio, size_t *len)
{
    char *p = NULL;
    long n = BIO_get_mem_data(bio, &p);
    *len = n > 0 ? (size_t)n : 0;
    char *s = mdm_malloc(*len + 1);
    memcpy(s, p, *len);
    s[*len] = '\0';
    return s;
}

/* Cuts an incomplete UTF-8 character off the end of s (a subject cut to
 * fit its buffer), so that it stays a valid JSON string. */
static void cut_partial_utf8(char *s)
{
    size_t n = strlen(s), i = n;
    while (i > 0 && n - i < 3 && ((unsigned char)s[i - 1] & 0xc0) == 0x80)
        i--;
    if (i == 0)
        return;
    unsigned char lead = (unsigned char)s[i - 1];
    size_t want = lead >= 0xf0 ? 4 : lead >= 0xe0 ? 3 : lead >= 0xc0 ? 2 : 1;
    if (n - (i - 1) < want)
        s[i - 1] = '\0';
}

int mdm_pushcert_build(X509 *cert, EVP_PKEY *key, STACK_OF(X509) *chain, const char *source,
                       mdm_pushcert_t **out, mdm_err_t *err)
{
    *out = NULL;
    if (cert == NULL || key == NULL)
        return mdm_err_set(err, MDM_EINVAL, "a push certificate needs a certificate and its key");
    if (!mdm_key_matches_cert(key, cert))
        return mdm_err_set(err, MDM_EINVAL,
                           "the private key does not belong to the push certificate");
    mdm_pushcert_t *pc = mdm_calloc(1, sizeof(*pc));
    int rc = mdm_pushcert_topic(cert, pc->topic, sizeof(pc->topic));
    if (rc == MDM_ENOTFOUND) {
        rc = mdm_err_set(err, MDM_EINVAL,
                         "the certificate's subject has no UID attribute (the APNs topic, "
                         "com.apple.mgmt.External.<uuid>): is it an MDM push certificate?");
        goto out;
    }
    if (rc != 0) {
        rc = mdm_err_set(err, MDM_EINVAL, "the certificate's UID attribute (topic) is too long");
        goto out;
    }
    if (pc->topic[0] == '\0') {
        rc = mdm_err_set(err, MDM_EINVAL, "the certificate's UID attribute (topic) is empty");
        goto out;
    }
    /* The topic is sent as the apns-topic header. */
    for (const char *c = pc->topic; *c; c++) {
        if ((unsigned char)*c < 0x20 || *c == 0x7f) {
            rc = mdm_err_set(err, MDM_EINVAL,
                             "the certificate's UID attribute (topic) holds a control character");
            goto out;
        }
    }
    /* MDM push topics are com.apple.mgmt.<...>: another certificate with a
     * UID (a TLS server certificate, another service's push certificate)
     * would be taken as the topic devices are enrolled with. */
    if (strncmp(pc->topic, "com.apple.mgmt.", 15) != 0) {
        rc = mdm_err_set(err, MDM_EINVAL,
                         "the certificate's topic \"%.100s\" is not an MDM push topic "
                         "(com.apple.mgmt.External.<uuid>): is it an MDM push certificate?",
                         pc->topic);
        goto out;
    }
    /* The TLS library must accept the pair as a client identity (key size,
     * signature algorithm), or every push would fail at the handshake. */
    SSL_CTX *probe = SSL_CTX_new(TLS_client_method());
    bool usable = probe != NULL && SSL_CTX_use_certificate(probe, cert) == 1 &&
                  SSL_CTX_use_PrivateKey(probe, key) == 1 && SSL_CTX_check_private_key(probe) == 1;
    SSL_CTX_free(probe);
    if (!usable) {
        rc = mdm_err_set_ssl(err, MDM_EINVAL,
                             "the TLS library refuses this certificate and key as a client "
                             "identity (key too small, or a weak signature?)");
        goto out;
    }
    rc = mdm_cert_validity_ms(cert, &pc->not_before_ms, &pc->not_after_ms);
    if (rc != 0) {
        rc = mdm_err_set(err, MDM_EINVAL, "the certificate's validity dates are unreadable");
        goto out;
    }
    mdm_cert_sha256_hex(cert, pc->sha256);
    if (mdm_x509_name_oneline(X509_get_subject_name(cert), pc->subject, sizeof(pc->subject)) ==
        MDM_ELIMIT)
        cut_partial_utf8(pc->subject);

    BIO *cb = BIO_new(BIO_s_mem());
    int ok = PEM_write_bio_X509(cb, cert);
    for (int i = 0; ok && chain != NULL && i < sk_X509_num(chain); i++) {
        X509 *c = sk_X509_value(chain, i);
        if (X509_cmp(c, cert) != 0)
            ok = PEM_write_bio_X509(cb, c);
    }
    if (ok)
        pc->cert_pem = bio_to_string(cb, &pc->cert_len);
    BIO_free(cb);
    BIO *kb = BIO_new(BIO_s_mem());
    if (ok)
        ok = PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL);
    if (ok)
        pc->key_pem = bio_to_string(kb, &pc->key_len);
    BIO_free(kb);
    if (!ok) {
        rc = mdm_err_set_ssl(err, MDM_ECRYPTO, "cannot encode the push certificate");
        goto out;
    }
    pc->source = source ? source : "api";
    pc->updated_ms = mdm_now_ms();
    *out = pc;
    pc = NULL;
out:
    mdm_pushcert_free(pc);
    return rc;
}

void mdm_pushcert_free(mdm_pushcert_t *pc)
{
    if (pc == NULL)
        return;
    mdm_free(pc->cert_pem);
    if (pc->key_pem != NULL)
        OPENSSL_cleanse(pc->key_pem, pc->key_len);
    mdm_free(pc->key_pem);
    mdm_free(pc);
}

/* Finds the next "-----BEGIN <label>-----" ... "-----END <label>-----" block
 * in [p, end); sets the block bounds and the label. */
static bool next_pem_block(const char *p, const char *end, const char **bstart,
                           const char **bend, char *label, size_t ln)
{
    static const char begin[] = "-----BEGIN ";
    const char *b = memmem(p, (size_t)(end - p), begin, sizeof(begin) - 1);
    if (b == NULL)
        return false;
    const char *lstart = b + sizeof(begin) - 1;
    const char *lend = memmem(lstart, (size_t)(end - lstart), "-----", 5);
    if (lend == NULL || (size_t)(lend - lstart) >= ln)
        return false;
    snprintf(label, ln, "%.*s", (int)(lend - lstart), lstart);
    char endmark[96];
    snprintf(endmark, sizeof(endmark), "-----END %s-----", label);
    const char *e = memmem(lend, (size_t)(end - lend), endmark, strlen(endmark));
    if (e == NULL)
        return false;
    *bstart = b;
    *bend = e + strlen(endmark);
    return true;
}

static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
    (void)buf, (void)size, (void)rwflag, (void)u;
    return -1;
}

/* Takes the leaf out of certs: the first certificate the key belongs to,
 * or the first one (which the key check then refuses). */
static X509 *take_leaf(STACK_OF(X509) *certs, EVP_PKEY *key)
{
    int n = sk_X509_num(certs);
    for (int i = 0; key != NULL && i < n; i++)
        if (mdm_key_matches_cert(key, sk_X509_value(certs, i)))
            return sk_X509_delete(certs, i);
    return n > 0 ? sk_X509_shift(certs) : NULL;
}

int mdm_pushcert_from_pem(const void *pem, size_t len, const char *source,
                          mdm_pushcert_t **out, mdm_err_t *err)
{
    *out = NULL;
    const char *p = pem, *end = p + len;
    X509 *leaf = NULL;
    EVP_PKEY *key = NULL;
    STACK_OF(X509) *chain = sk_X509_new_null();
    int rc = 0;
    int nkeys = 0;
    const char *bs, *be;
    char label[64];
    while (next_pem_block(p, end, &bs, &be, label, sizeof(label))) {
        BIO *bio = BIO_new_mem_buf(bs, (int)(be - bs));
        if (strcmp(label, "CERTIFICATE") == 0) {
            X509 *x = PEM_read_bio_X509(bio, NULL, no_passphrase, NULL);
            if (x == NULL) {
                BIO_free(bio);
                rc = mdm_err_set_ssl(err, MDM_EPARSE, "a CERTIFICATE block does not parse");
                goto out;
            }
            sk_X509_push(chain, x);
        } else if (strcmp(label, "ENCRYPTED PRIVATE KEY") == 0) {
            BIO_free(bio);
            rc = mdm_err_set(err, MDM_EINVAL,
                             "the private key is encrypted; send it unencrypted "
                             "(openssl pkey -in key.pem -out plain.pem)");
            goto out;
        } else if (strstr(label, "PRIVATE KEY") != NULL) {
            EVP_PKEY *k = PEM_read_bio_PrivateKey(bio, NULL, no_passphrase, NULL);
            nkeys++;
            if (k == NULL) {
                BIO_free(bio);
                rc = mdm_err_set_ssl(err, MDM_EPARSE, "the private key does not parse");
                goto out;
            }
            EVP_PKEY_free(key);
            key = k;
        }
        BIO_free(bio);
        p = be;
    }
    leaf = take_leaf(chain, key);
    ERR_clear_error();
    if (leaf == NULL) {
        rc = mdm_err_set(err, MDM_EINVAL,
                         "no PEM certificate found (send the push certificate and its private "
                         "key, both PEM, concatenated)");
        goto out;
    }
    if (key == NULL) {
        rc = mdm_err_set(err, MDM_EINVAL,
                         "no PEM private key found (send the push certificate and its private "
                         "key, both PEM, concatenated)");
        goto out;
    }
    if (nkeys > 1) {
        rc = mdm_err_set(err, MDM_EINVAL, "more than one private key in the body");
        goto out;
    }
    rc = mdm_pushcert_build(leaf, key, chain, source, out, err);
out:
    X509_free(leaf);
    EVP_PKEY_free(key);
    sk_X509_pop_free(chain, X509_free);
    return rc;
}

int mdm_pushcert_from_files(const char *cert_path, const char *key_path,
                            bool allow_insecure_mode, mdm_pushcert_t **out, mdm_err_t *err)
{
    *out = NULL;
    STACK_OF(X509) *certs = NULL;
    EVP_PKEY *key = NULL;
    int rc = mdm_certs_read_pem(cert_path, &certs, err);
    if (rc == 0)
        rc = mdm_key_read_pem(key_path, allow_insecure_mode, &key, err);
    if (rc == 0) {
        X509 *leaf = sk_X509_value(certs, 0);
        rc = mdm_pushcert_build(leaf, key, certs, "config", out, err);
        if (rc != 0) {
            char msg[sizeof(err->msg)];
            snprintf(msg, sizeof(msg), "%s", err ? err->msg : "");
            rc = mdm_err_set(err, rc, "%s: %s", cert_path, msg);
        }
    }
    sk_X509_pop_free(certs, X509_free);
    EVP_PKEY_free(key);
    return rc;
}

static int read_small_file(const char *path, size_t max, unsigned char **data, size_t *len,
                           mdm_err_t *err)
{
    FILE *f = fopen(path, "rb");
    if (f == NULL)
        return mdm_err_set(err, MDM_EIO, "cannot open %s: %m", path);
    mdm_buf_t b = MDM_BUF_INIT;
    char chunk[8192];
    size_t n;
    while ((n = fread(chunk, 1, sizeof(chunk), f)) > 0) {
        mdm_buf_append(&b, chunk, n);
        if (b.len > max) {
            fclose(f);
            mdm_buf_free(&b);
            return mdm_err_set(err, MDM_ELIMIT, "%s is larger than %zu bytes", path, max);
        }
    }
    fclose(f);
    *data = (unsigned char *)mdm_buf_steal(&b, len);
    return 0;
}

/* Parses with the default providers, then once more with the legacy
 * provider loaded (Keychain exports use RC2 and 3DES). */
static int parse_p12(PKCS12 *p12, const char *pass, EVP_PKEY **key, X509 **cert,
                     STACK_OF(X509) **ca)
{
    if (PKCS12_parse(p12, pass, key, cert, ca) == 1)
        return 0;
    OSSL_PROVIDER *legacy = OSSL_PROVIDER_try_load(NULL, "legacy", 1);
    if (legacy == NULL)
        return MDM_ECRYPTO;
    ERR_clear_error();
    int ok = PKCS12_parse(p12, pass, key, cert, ca);
    OSSL_PROVIDER_unload(legacy);
    return ok == 1 ? 0 : MDM_ECRYPTO;
}

int mdm_pushcert_from_p12(const char *path, const char *password, mdm_pushcert_t **out,
                          mdm_err_t *err)
{
    *out = NULL;
    unsigned char *data = NULL;
    size_t len = 0;
    PKCS12 *p12 = NULL;
    EVP_PKEY *key = NULL;
    X509 *cert = NULL;
    STACK_OF(X509) *ca = NULL;
    int rc = read_small_file(path, MAX_P12_FILE, &data, &len, err);
    if (rc != 0)
        return rc;
    const unsigned char *p = data;
    p12 = d2i_PKCS12(NULL, &p, (long)len);
    if (p12 == NULL) {
        rc = mdm_err_set_ssl(err, MDM_EPARSE, "not a PKCS#12 file");
        rc = mdm_err_set(err, rc, "%s: %s", path, err ? err->msg : "");
        goto out;
    }
    if (parse_p12(p12, password ? password : "", &key, &cert, &ca) != 0) {
        ERR_clear_error();
        rc = mdm_err_set(err, MDM_EAUTH,
                         "%s: cannot open the PKCS#12 file (wrong apns.p12_password?)", path);
        goto out;
    }
    rc = mdm_pushcert_build(cert, key, ca, "config", out, err);
    if (rc != 0) {
        char msg[sizeof(err->msg)];
        snprintf(msg, sizeof(msg), "%s", err ? err->msg : "");
        rc = mdm_err_set(err, rc, "%s: %s", path, msg);
    }
out:
    if (data != NULL)
        OPENSSL_cleanse(data, len);
    mdm_free(data);
    PKCS12_free(p12);
    EVP_PKEY_free(key);
    X509_free(cert);
    sk_X509_pop_free(ca, X509_free);
    return rc;
}

int mdm_pushcert_check_validity(const mdm_pushcert_t *pc, int64_t now_ms, mdm_err_t *err)
{
    char t[32];
    if (pc->not_after_ms <= now_ms) {
        mdm_time_format(t, pc->not_after_ms);
        return mdm_err_set(err, MDM_EEXPIRED,
                           "the push certificate for %s expired at %s; renew it in the Apple "
                           "Push Certificates Portal",
                           pc->topic, t);
    }
    if (pc->not_before_ms > now_ms) {
        mdm_time_format(t, pc->not_before_ms);
        return mdm_err_set(err, MDM_EEXPIRED,
                           "the push certificate for %s is not valid before %s", pc->topic, t);
    }
    return 0;
}

/* ---- the set ------------------------------------------------------------- */

mdm_pushcert_t *mdm_pushcerts_find(const mdm_pushcerts_t *set, const char *topic)
{
    for (size_t i = 0; i < set->n; i++)
        if (strcmp(set->v[i]->topic, topic) == 0)
            return set->v[i];
    return NULL;
}

void mdm_pushcerts_set(mdm_pushcerts_t *set, mdm_pushcert_t *pc, bool *replaced)
{
    for (size_t i = 0; i < set->n; i++) {
        if (strcmp(set->v[i]->topic, pc->topic) == 0) {
            mdm_pushcert_free(set->v[i]);
            set->v[i] = pc;
            if (replaced)
                *replaced = true;
            return;
        }
    }
    set->v = mdm_realloc(set->v, (set->n + 1) * sizeof(*set->v));
    set->v[set->n++] = pc;
    if (replaced)
        *replaced = false;
}

void mdm_pushcerts_free(mdm_pushcerts_t *set)
{
    for (size_t i = 0; i < set->n; i++)
        mdm_pushcert_free(set->v[i]);
    mdm_free(set->v);
    set->v = NULL;
    set->n = 0;
    OPENSSL_cleanse(&set->secret, sizeof(set->secret));
}

static void seal_aad(char *aad, size_t n, const char *topic)
{
    snprintf(aad, n, "%s%s", MDM_PUSHCERT_KEY_PREFIX, topic);
}

int mdm_pushcert_save(mdm_txn_t *txn, const mdm_secretkey_t *secret, const mdm_pushcert_t *pc)
{
    char key[sizeof(MDM_PUSHCERT_KEY_PREFIX) + MDM_TOPIC_MAX];
    seal_aad(key, sizeof(key), pc->topic);
    mdm_buf_t sealed = MDM_BUF_INIT, bin = MDM_BUF_INIT;
    int rc = mdm_secret_seal(secret, key, pc->key_pem, pc->key_len, &sealed);
    if (rc != 0)
        goto out;
    plist_t d = plist_new_dict();
    mdm_pl_set_str(d, "topic", pc->topic);
    mdm_pl_set_data(d, "cert", pc->cert_pem, pc->cert_len);
    mdm_pl_set_data(d, "key", sealed.data, sealed.len);
    mdm_pl_set_str(d, "source", pc->source);
    mdm_pl_set_int(d, "updated_at", pc->updated_ms);
    mdm_pl_set_int(d, "not_after", pc->not_after_ms);
    mdm_plist_to_bin_buf(d, &bin);
    plist_free(d);
    rc = mdm_txn_put(txn, MDM_T_META, MDM_VAL_STR(key), MDM_VAL(bin.data, bin.len), 0);
out:
    mdm_buf_free(&sealed);
    mdm_buf_free(&bin);
    return rc;
}

struct load_ctx {
    mdm_pushcerts_t *set;
};

/* Decodes one stored entry; NULL (logged) when it does not open. */
static mdm_pushcert_t *load_entry(const mdm_pushcerts_t *set, mdm_val_t k, mdm_val_t v)
{
    char key[sizeof(MDM_PUSHCERT_KEY_PREFIX) + MDM_TOPIC_MAX];
    char q[300];
    snprintf(key, sizeof(key), "%.*s", (int)k.len, (const char *)k.data);
    plist_t d = NULL;
    mdm_pushcert_t *pc = NULL;
    mdm_buf_t pem = MDM_BUF_INIT;
    size_t certlen = 0, sealedlen = 0;
    const unsigned char *cert = NULL, *sealed = NULL;
    if (mdm_plist_load(v.data, v.len, &d) != 0 ||
        (cert = mdm_pl_data(d, "cert", &certlen)) == NULL ||
        (sealed = mdm_pl_data(d, "key", &sealedlen)) == NULL) {
        mdm_log(MDM_LOG_ERROR, NULL, "apns.pushcert_unreadable", "key=%s",
                mdm_logq(q, sizeof(q), key));
        goto out;
    }
    mdm_buf_append(&pem, cert, certlen);
    mdm_buf_putc(&pem, '\n');
    if (mdm_secret_open(&set->secret, key, sealed, sealedlen, &pem) != 0) {
        mdm_log(MDM_LOG_ERROR, NULL, "apns.pushcert_unreadable",
                "key=%s reason=\"the private key does not open with this server's secret.key\"",
                mdm_logq(q, sizeof(q), key));
        goto out;
    }
    mdm_err_t err = {0};
    if (mdm_pushcert_from_pem(pem.data, pem.len, "api", &pc, &err) != 0) {
        char q2[600];
        mdm_log(MDM_LOG_ERROR, NULL, "apns.pushcert_unreadable", "key=%s reason=%s",
                mdm_logq(q, sizeof(q), key), mdm_logq(q2, sizeof(q2), err.msg));
        goto out;
    }
    pc->source = "api";
    pc->updated_ms = mdm_pl_int(d, "updated_at", pc->updated_ms);
out:
    if (pem.data != NULL)
        OPENSSL_cleanse(pem.data, pem.len);
    mdm_buf_free(&pem);
    plist_free(d);
    return pc;
}

static int load_fn(mdm_txn_t *txn, void *arg)
{
    struct load_ctx *l = arg;
    mdm_cursor_t *c = NULL;
    int rc = mdm_cursor_open(txn, MDM_T_META, &c);
    if (rc != 0)
        return rc;
    mdm_val_t k, v, prefix = MDM_VAL_STR(MDM_PUSHCERT_KEY_PREFIX);
    for (rc = mdm_cursor_seek(c, prefix, &k, &v); rc == 0 && mdm_val_has_prefix(k, prefix);
         rc = mdm_cursor_next(c, &k, &v)) {
        mdm_pushcert_t *pc = load_entry(l->set, k, v);
        if (pc == NULL)
            continue;
        mdm_pushcert_t *have = mdm_pushcerts_find(l->set, pc->topic);
        if (have != NULL && have->not_after_ms > pc->not_after_ms) {
            char tq[MDM_TOPIC_LOGQ_MAX];
            mdm_log(MDM_LOG_INFO, NULL, "apns.pushcert_stored_older",
                    "topic=%s kept=%s stored=%s", mdm_logq(tq, sizeof(tq), pc->topic),
                    have->source, "api");
            mdm_pushcert_free(pc);
            continue;
        }
        mdm_pushcerts_set(l->set, pc, NULL);
    }
    mdm_cursor_close(c);
    return rc == MDM_ENOTFOUND ? 0 : rc;
}

int mdm_pushcerts_load_store(mdm_pushcerts_t *set, mdm_store_t *store, mdm_err_t *err)
{
    struct load_ctx l = {.set = set};
    int rc = mdm_store_view(store, load_fn, &l);
    if (rc != 0)
        return mdm_err_set(err, rc, "cannot read the stored push certificates: %s",
                           mdm_strerror(rc));
    return 0;
}
