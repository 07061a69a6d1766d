/* TLS on memory BIOs, so that libuv owns the socket and OpenSSL only sees
 * bytes: ciphertext goes in with mdm_tls_feed(), plaintext comes out into a
 * buffer, and whatever OpenSSL wants to send is taken with
 * mdm_tls_take_output() and written by the caller. */
#ifndef MDM_TLS_H
#define MDM_TLS_H

#include <openssl/ssl.h>
#include <stdbool.h>
#include <stddef.h>

#include "config.h"
#include "util/buf.h"
#include "util/err.h"

/* Builds the server context from the config: TLS 1.2+ (or 1.3 only), the
 * cipher lists, the certificate with its chain, ALPN http/1.1, and, when
 * tls.request_client_cert is set, a client-certificate request verified
 * against tls.client_ca (a missing certificate is allowed; routes decide).
 * *client_store gets a new X509_STORE over the same CAs, for certificates
 * that arrive in a proxy header. */
int mdm_tls_server_ctx(const mdm_config_t *cfg, SSL_CTX **out, X509_STORE **client_store,
                       mdm_err_t *err);

/* Loads every certificate of the files into a new X509_STORE. */
int mdm_tls_load_ca_store(const mdm_strlist_t *files, X509_STORE **out, mdm_err_t *err);

typedef struct mdm_tls {
    SSL *ssl;
    BIO *rbio;   /* network -> OpenSSL */
    BIO *wbio;   /* OpenSSL -> network */
    bool established;
} mdm_tls_t;

int mdm_tls_init(mdm_tls_t *t, SSL_CTX *ctx);
void mdm_tls_free(mdm_tls_t *t);

enum {
    MDM_TLS_OK = 0,           /* progress made (or nothing to do) */
    MDM_TLS_HANDSHAKE_DONE = 1, /* the handshake finished during this call */
    MDM_TLS_CLOSED = 2,       /* the peer sent close_notify */
};

/* Feeds ciphertext; decrypted bytes are appended to plain. Returns one of
 * the MDM_TLS_* values, or MDM_ECRYPTO on a fatal error (the handshake
 * failed or a record was bad), with a short reason in *why. */
int mdm_tls_feed(mdm_tls_t *t, const void *data, size_t n, mdm_buf_t *plain, const char **why);

/* Encrypts plaintext into the output BIO. */
int mdm_tls_write(mdm_tls_t *t, const void *p, size_t n);

/* Queues a close_notify alert. */
void mdm_tls_shutdown(mdm_tls_t *t);

/* Moves the pending ciphertext to out; returns the number of bytes. */
size_t mdm_tls_take_output(mdm_tls_t *t, mdm_buf_t *out);

/* The verified client certificate (new reference) or NULL. */
X509 *mdm_tls_peer_cert(mdm_tls_t *t);

#endif
