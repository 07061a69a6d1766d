/* Fuzz target: check-in and command report handling, from the plist bytes
 * through the protocol logic into a real LMDB store. The first input byte
 * chooses check-in (even) or report (odd); the rest is the body. */
#include <openssl/evp.h>
#include <openssl/x509.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "config.h"
#include "crypto/keys.h"
#include "mdm/certauth.h"
#include "mdm/mdm.h"
#include "mdm/sigcache.h"
#include "server.h"
#include "util/alloc.h"
#include "util/plist.h"

#include "fuzz_tmpdir.h"

static mdm_server_t server;
static mdm_config_t cfg;
static mdm_mdm_t m;
static mdm_identity_t id;
static X509 *cert;
static char dir[] = "/tmp/moonmdm-fuzz-mdm-XXXXXX";

static int bind_fn(mdm_txn_t *txn, void *arg)
{
    (void)arg;
    return mdm_certauth_bind(txn, id.fp, "FUZZ-UDID");
}

/* At exit: the store closed (its memory freed) and its directory gone. */
static void teardown(void)
{
    mdm_store_close(server.store);
    mdm_sigcache_free(m.sigcache);
    X509_free(cert);
    fuzz_remove_tree(dir);
}

static void setup(void)
{
    if (mkdtemp(dir) == NULL)
        abort();
    atexit(teardown);
    mdm_config_defaults(&cfg);
    cfg.mdm_bind_on_first_sight = true;
    cfg.mdm_notnow_max = 3;
    mdm_store_config_t sc = {.path = dir, .sync = false,
                             .flags = MDM_STORE_CREATE | MDM_STORE_AUTOFLUSH};
    mdm_err_t err = {0};
    if (mdm_store_open(&mdm_store_lmdb, &sc, &server.store, &err) != 0) {
        fprintf(stderr, "%s\n", err.msg);
        abort();
    }
    server.cfg = &cfg;
    m.server = &server;
    m.sigcache = mdm_sigcache_new(1024);
    memset(m.secret.key, 7, sizeof(m.secret.key));

    EVP_PKEY *key = NULL;
    if (mdm_key_generate("ec:P-256", &key, &err) != 0)
        abort();
    cert = X509_new();
    X509_set_version(cert, 2);
    ASN1_INTEGER_set(X509_get_serialNumber(cert), 42);
    X509_NAME *name = X509_get_subject_name(cert);
    X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC, (const unsigned char *)"fuzz", -1, -1, 0);
    X509_set_issuer_name(cert, name);
    X509_gmtime_adj(X509_getm_notBefore(cert), 0);
    X509_gmtime_adj(X509_getm_notAfter(cert), 3600);
    X509_set_pubkey(cert, key);
    X509_sign(cert, key, EVP_sha256());
    EVP_PKEY_free(key);
    id.cert = cert;
    id.source = "tls";
    mdm_cert_sha256(cert, id.fp);
    mdm_store_update(server.store, bind_fn, NULL);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static int ready;
    if (!ready) {
        setup();
        ready = 1;
    }
    if (size < 1)
        return 0;
    mdm_outcome_t out;
    memset(&out, 0, sizeof(out));
    /* Bit 1: the body parsed ahead, as the server does for large ones. */
    mdm_parsed_t pre = {0}, *prep = NULL;
    if (data[0] & 2) {
        mdm__parse_body(data + 1, size - 1, server.cfg->http_max_body_bytes, data[0] & 1, &pre);
        prep = &pre;
        /* The binary form a report is stored in holds the same message. */
        if (pre.bin.len > 0) {
            plist_t back = NULL;
            if (mdm_plist_load(pre.bin.data, pre.bin.len, &back) != 0)
                abort();
            char *x1 = NULL, *x2 = NULL;
            uint32_t n1 = 0, n2 = 0;
            plist_to_xml(pre.msg, &x1, &n1);
            plist_to_xml(back, &x2, &n2);
            if (x1 == NULL || x2 == NULL || n1 != n2 || memcmp(x1, x2, n1) != 0)
                abort();
            plist_to_xml_free(x1);
            plist_to_xml_free(x2);
            plist_free(back);
        }
    }
    if (data[0] & 1)
        mdm__process_report(&m, &id, data + 1, size - 1, prep, &out);
    else
        mdm__process_checkin(&m, &id, data + 1, size - 1, prep, &out);
    plist_free(pre.msg);
    mdm_buf_free(&pre.bin);
    mdm_buf_free(&out.body);
    return 0;
}
