/* Fuzz target: the CMS signatures that devices send.
 *
 * An input that starts with 0x30 (a DER SEQUENCE) is an OTA request body:
 * an attached SignedData, checked as POST /ota/profile does, first as a
 * phase-3 body (signer issued by our CA, time checked), then as a phase-1
 * body (signer from the OTA trust store, time not checked); signed content
 * that verifies is then parsed as the plist dictionary it must be.
 * Any other input is "<Mdm-Signature header value>\n<body>": a detached
 * SignedData in base64 over the body, verified by mdm__verify_signature as
 * for PUT /mdm/checkin and /mdm/connect.
 *
 * The trust store holds the fixed CA of fuzz_keys.h; the seeds that
 * tests/fuzz/make_seeds.py builds are signed by its device identity, so
 * they verify and mutations start from valid signatures. */
#include <openssl/pem.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "crypto/cms.h"
#include "mdm/mdm.h"
#include "mdm/sigcache.h"
#include "util/alloc.h"
#include "util/plist.h"

#include "fuzz_keys.h"

static mdm_server_t server;
static mdm_mdm_t m;
static X509_STORE *trust;

static X509 *pem_cert(const char *pem)
{
    BIO *b = BIO_new_mem_buf(pem, -1);
    X509 *x = PEM_read_bio_X509(b, NULL, NULL, NULL);
    BIO_free(b);
    if (x == NULL)
        abort();
    return x;
}

static void setup(void)
{
    X509 *ca = pem_cert(FUZZ_CA_CERT_PEM);
    trust = X509_STORE_new();
    X509_STORE_add_cert(trust, ca);
    X509_free(ca);
    server.client_ca_store = trust;
    m.server = &server;
    m.sigcache = mdm_sigcache_new(64);
}

static void attached(const uint8_t *data, size_t size)
{
    mdm_buf_t content = MDM_BUF_INIT;
    mdm_err_t err = {0};
    X509 *signer = NULL;
    int rc = mdm_cms_verify_attached(data, size, trust, 0, &content, &signer, NULL);
    if (rc != 0)
        rc = mdm_cms_verify_attached(data, size, trust, 1, &content, &signer, &err);
    if ((rc == 0) != (signer != NULL)) {
        fprintf(stderr, "fuzz_cms: verify returned %d with signer %p\n", rc, (void *)signer);
        abort();
    }
    if (rc == 0) {
        plist_t attrs = NULL;
        if (mdm_plist_load_dict(content.data, content.len, 1 << 20, &attrs) == 0)
            (void)mdm_pl_str(attrs, "UDID");
        plist_free(attrs);
    }
    X509_free(signer);
    mdm_buf_free(&content);
}

static void detached(const uint8_t *data, size_t size)
{
    const uint8_t *nl = memchr(data, '\n', size);
    size_t hlen = nl ? (size_t)(nl - data) : size;
    char *header = mdm_malloc(hlen + 1);
    memcpy(header, data, hlen);
    header[hlen] = '\0';
    const uint8_t *body = nl ? nl + 1 : data + size;
    size_t blen = nl ? size - hlen - 1 : 0;
    /* Each input verifies the chain itself rather than hitting the cache
     * filled by an earlier one; a signature that verified is then checked
     * again, through the fast path of the kept signer. */
    mdm_sigcache_free(m.sigcache);
    m.sigcache = mdm_sigcache_new(64);
    mdm_identity_t id;
    const char *why = NULL;
    int rc = mdm__verify_signature(&m, header, body, blen, &id, &why);
    if (rc == 0 && (id.cert == NULL || !id.owned)) {
        fprintf(stderr, "fuzz_cms: a verified signature without an owned signer\n");
        abort();
    }
    if (rc != 0 && why == NULL) {
        fprintf(stderr, "fuzz_cms: a refused signature without a reason\n");
        abort();
    }
    if (rc == 0) {
        /* The same request again: now through the kept signer. Both paths
         * must agree on the verdict and on the signer. */
        mdm_identity_t again;
        const char *why2 = NULL;
        int rc2 = mdm__verify_signature(&m, header, body, blen, &again, &why2);
        if (rc2 != 0 || X509_cmp(again.cert, id.cert) != 0) {
            fprintf(stderr, "fuzz_cms: the fast path disagrees: %d (%s)\n", rc2,
                    why2 ? why2 : "-");
            abort();
        }
        if (again.owned)
            X509_free(again.cert);
    }
    if (id.owned)
        X509_free(id.cert);
    mdm_free(header);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (trust == NULL)
        setup();
    if (size > 0 && data[0] == 0x30)
        attached(data, size);
    else
        detached(data, size);
    return 0;
}
