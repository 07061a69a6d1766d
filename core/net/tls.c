#include "net/tls.h"

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <string.h>
#include <sys/stat.h>

#include "util/log.h"

static int alpn_select(SSL *ssl, const unsigned char **out, unsigned char *outlen,
                       const unsigned char *in, unsigned int inlen, void *arg)
{
    /* Only HTTP/1.1 is spoken; a client that offers ALPN without it gets no
     * ALPN answer rather than a failed handshake. */
    for (unsigned i = 0; i < inlen;) {
        unsigned len = in[i];
        if (i + 1 + len > inlen)
            break;
        if (len == 8 && memcmp(in + i + 1, "http/1.1", 8) == 0) {
            *out = in + i + 1;
            *outlen = 8;
            return SSL_TLSEXT_ERR_OK;
        }
        i += 1 + len;
    }
    return SSL_TLSEXT_ERR_NOACK;
}

int mdm_tls_load_ca_store(const mdm_strlist_t *files, X509_STORE **out, mdm_err_t *err)
{
    X509_STORE *store = X509_STORE_new();
    int rc = 0;
    for (size_t i = 0; i < files->n; i++) {
        BIO *bio = BIO_new_file(files->v[i], "r");
        if (bio == NULL) {
            rc = mdm_err_set_ssl(err, MDM_ECONFIG, files->v[i]);
            goto out;
        }
        int count = 0;
        X509 *x;
        while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL) {
            X509_STORE_add_cert(store, x);
            X509_free(x);
            count++;
        }
        ERR_clear_error();
        BIO_free(bio);
        if (count == 0) {
            rc = mdm_err_set(err, MDM_ECONFIG, "%s: no PEM certificate in the file", files->v[i]);
            goto out;
        }
    }
    X509_VERIFY_PARAM *param = X509_STORE_get0_param(store);
    X509_VERIFY_PARAM_set_purpose(param, X509_PURPOSE_ANY);
out:
    if (rc != 0) {
        X509_STORE_free(store);
        return rc;
    }
    *out = store;
    return 0;
}

static int verify_cb(int ok, X509_STORE_CTX *ctx)
{
    if (!ok) {
        int e = X509_STORE_CTX_get_error(ctx);
        mdm_log(MDM_LOG_INFO, NULL, "tls.client_cert_rejected", "reason=\"%s\" depth=%d",
                X509_verify_cert_error_string(e), X509_STORE_CTX_get_error_depth(ctx));
    }
    return ok;
}

int mdm_tls_server_ctx(const mdm_config_t *cfg, SSL_CTX **out, X509_STORE **client_store,
                       mdm_err_t *err)
{
    int rc = 0;
    X509_STORE *store = NULL;
    SSL_CTX *ctx = SSL_CTX_new(TLS_server_method());
    if (ctx == NULL)
        return mdm_err_set_ssl(err, MDM_ECRYPTO, "SSL_CTX_new");

    int minv = strcmp(cfg->tls_min_version, "1.3") == 0 ? TLS1_3_VERSION : TLS1_2_VERSION;
    SSL_CTX_set_min_proto_version(ctx, minv);
    SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION | SSL_OP_CIPHER_SERVER_PREFERENCE |
                                 SSL_OP_NO_COMPRESSION);
    SSL_CTX_set_mode(ctx, SSL_MODE_RELEASE_BUFFERS);
    if (SSL_CTX_set_cipher_list(ctx, cfg->tls_ciphers) != 1) {
        rc = mdm_err_set(err, MDM_ECONFIG, "tls.ciphers: no usable cipher in \"%s\"",
                         cfg->tls_ciphers);
        goto out;
    }
    if (SSL_CTX_set_ciphersuites(ctx, cfg->tls_ciphersuites) != 1) {
        rc = mdm_err_set(err, MDM_ECONFIG, "tls.ciphersuites: no usable suite in \"%s\"",
                         cfg->tls_ciphersuites);
        goto out;
    }
    if (SSL_CTX_use_certificate_chain_file(ctx, cfg->tls_cert) != 1) {
        char what[600];
        snprintf(what, sizeof(what), "tls.cert %s", cfg->tls_cert);
        rc = mdm_err_set_ssl(err, MDM_ECONFIG, what);
        goto out;
    }
    if (cfg->tls_chain != NULL) {
        BIO *bio = BIO_new_file(cfg->tls_chain, "r");
        X509 *x;
        if (bio == NULL) {
            rc = mdm_err_set_ssl(err, MDM_ECONFIG, cfg->tls_chain);
            goto out;
        }
        while ((x = PEM_read_bio_X509(bio, NULL, NULL, NULL)) != NULL)
            SSL_CTX_add0_chain_cert(ctx, x);
        ERR_clear_error();
        BIO_free(bio);
    }
    struct stat st;
    if (stat(cfg->tls_key, &st) == 0 && (st.st_mode & 077) && !cfg->tls_allow_insecure_key_mode) {
        rc = mdm_err_set(err, MDM_ECONFIG,
                         "tls.key %s is readable by group or others (mode %03o): run `chmod 600 "
                         "%s`, or set tls.allow_insecure_key_mode = true",
                         cfg->tls_key, (unsigned)(st.st_mode & 0777), cfg->tls_key);
        goto out;
    }
    if (SSL_CTX_use_PrivateKey_file(ctx, cfg->tls_key, SSL_FILETYPE_PEM) != 1) {
        char what[600];
        snprintf(what, sizeof(what), "tls.key %s", cfg->tls_key);
        rc = mdm_err_set_ssl(err, MDM_ECONFIG, what);
        goto out;
    }
    if (SSL_CTX_check_private_key(ctx) != 1) {
        rc = mdm_err_set(err, MDM_ECONFIG, "tls.key %s does not match tls.cert %s", cfg->tls_key,
                         cfg->tls_cert);
        goto out;
    }
    SSL_CTX_set_alpn_select_cb(ctx, alpn_select, NULL);
    /* One TLS 1.3 session ticket per handshake rather than OpenSSL's two:
     * each carries the client certificate, and a device resumes with one. */
    SSL_CTX_set_num_tickets(ctx, 1);

    if (cfg->tls_client_ca.n > 0) {
        rc = mdm_tls_load_ca_store(&cfg->tls_client_ca, &store, err);
        if (rc != 0)
            goto out;
        if (cfg->tls_request_client_cert) {
            X509_STORE_up_ref(store);
            SSL_CTX_set_cert_store(ctx, store);
            STACK_OF(X509_NAME) *names = sk_X509_NAME_new_null();
            for (size_t i = 0; i < cfg->tls_client_ca.n; i++)
                SSL_add_file_cert_subjects_to_stack(names, cfg->tls_client_ca.v[i]);
            SSL_CTX_set_client_CA_list(ctx, names);
            SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_CLIENT_ONCE, verify_cb);
            X509_VERIFY_PARAM_set_purpose(SSL_CTX_get0_param(ctx), X509_PURPOSE_ANY);
        }
    }
    /* Distinct session id context so that resumed sessions are tied to this
     * server's client-verification settings. */
    static const unsigned char sid[] = "moonmdm";
    SSL_CTX_set_session_id_context(ctx, sid, sizeof(sid) - 1);

out:
    if (rc != 0) {
        SSL_CTX_free(ctx);
        X509_STORE_free(store);
        return rc;
    }
    *out = ctx;
    if (client_store)
        *client_store = store;
    else
        X509_STORE_free(store);
    return 0;
}

int mdm_tls_init(mdm_tls_t *t, SSL_CTX *ctx)
{
    memset(t, 0, sizeof(*t));
    t->ssl = SSL_new(ctx);
    if (t->ssl == NULL)
        return MDM_ECRYPTO;
    t->rbio = BIO_new(BIO_s_mem());
    t->wbio = BIO_new(BIO_s_mem());
    BIO_set_mem_eof_return(t->rbio, -1);
    SSL_set_bio(t->ssl, t->rbio, t->wbio);
    SSL_set_accept_state(t->ssl);
    return 0;
}

void mdm_tls_free(mdm_tls_t *t)
{
    if (t->ssl)
        SSL_free(t->ssl); /* frees both BIOs */
    memset(t, 0, sizeof(*t));
}

int mdm_tls_feed(mdm_tls_t *t, const void *data, size_t n, mdm_buf_t *plain, const char **why)
{
    *why = NULL;
    if (n > 0 && BIO_write(t->rbio, data, (int)n) != (int)n) {
        *why = "BIO_write failed";
        return MDM_ECRYPTO;
    }
    int result = MDM_TLS_OK;
    if (!t->established) {
        int r = SSL_do_handshake(t->ssl);
        if (r != 1) {
            int e = SSL_get_error(t->ssl, r);
            if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
                return MDM_TLS_OK;
            unsigned long ec = ERR_peek_error();
            *why = ec ? ERR_reason_error_string(ec) : "handshake failed";
            if (*why == NULL)
                *why = "handshake failed";
            ERR_clear_error();
            return MDM_ECRYPTO;
        }
        t->established = true;
        result = MDM_TLS_HANDSHAKE_DONE;
    }
    for (;;) {
        mdm_buf_reserve(plain, 16384);
        int space = (int)(plain->cap - plain->len - 1);
        int r = SSL_read(t->ssl, plain->data + plain->len, space);
        if (r > 0) {
            plain->len += (size_t)r;
            plain->data[plain->len] = '\0';
            continue;
        }
        int e = SSL_get_error(t->ssl, r);
        if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
            break;
        if (e == SSL_ERROR_ZERO_RETURN)
            return MDM_TLS_CLOSED;
        unsigned long ec = ERR_peek_error();
        *why = ec ? ERR_reason_error_string(ec) : "TLS read failed";
        if (*why == NULL)
            *why = "TLS read failed";
        ERR_clear_error();
        return MDM_ECRYPTO;
    }
    return result;
}

int mdm_tls_write(mdm_tls_t *t, const void *p, size_t n)
{
    const char *s = p;
    while (n > 0) {
        int chunk = n > (1u << 30) ? (1 << 30) : (int)n;
        int r = SSL_write(t->ssl, s, chunk);
        if (r <= 0) {
            ERR_clear_error();
            return MDM_ECRYPTO;
        }
        s += r;
        n -= (size_t)r;
    }
    return 0;
}

void mdm_tls_shutdown(mdm_tls_t *t)
{
    if (t->established)
        SSL_shutdown(t->ssl);
    ERR_clear_error();
}

size_t mdm_tls_take_output(mdm_tls_t *t, mdm_buf_t *out)
{
    char *p;
    long n = BIO_get_mem_data(t->wbio, &p);
    if (n <= 0)
        return 0;
    mdm_buf_append(out, p, (size_t)n);
    (void)BIO_reset(t->wbio);
    return (size_t)n;
}

X509 *mdm_tls_peer_cert(mdm_tls_t *t)
{
    X509 *x = SSL_get1_peer_certificate(t->ssl);
    if (x != NULL && SSL_get_verify_result(t->ssl) != X509_V_OK) {
        X509_free(x);
        return NULL;
    }
    return x;
}
