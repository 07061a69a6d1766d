/* Configuration profiles: stored in the store (table profiles), uploaded
 * through the admin API or loaded from profiles.dir, validated, and
 * rendered for a device: content encrypted to the device's identity
 * certificate (EncryptedPayloadContent, CMS EnvelopedData, AES-256-CBC)
 * and the whole signed with the server certificate (CMS SignedData).
 *
 * Record (binary plist): identifier, uuid, display_name, hash (hex SHA-256
 * of the stored bytes), bytes (the XML profile as uploaded or extracted
 * from a signed upload), payload_types (array), uploaded_at, source, and
 * for source "dir" file (its name in profiles.dir). */
#ifndef MDM_PROFILES_H
#define MDM_PROFILES_H

#include <openssl/x509.h>
#include <plist/plist.h>
#include <stdbool.h>
#include <stddef.h>

#include "server.h"
#include "store/store.h"
#include "util/buf.h"

#define MDM_PROFILE_ID_MAX 255

typedef struct mdm_profile_meta {
    char identifier[MDM_PROFILE_ID_MAX + 1];
    char uuid[80];
    char display_name[256];
    char hash[65];
    int64_t uploaded_ms;
    char source[16];
    char file[256];          /* source "dir": the name of its file */
} mdm_profile_meta_t;

/* The signing identity and options for rendering. */
typedef struct mdm_profiles {
    X509 *sign_cert;
    EVP_PKEY *sign_key;
    STACK_OF(X509) *sign_chain;
    bool sign;
    bool encrypt;
    struct mdm_profiles_dir *dir; /* profiles.dir reloads (server only) */
} mdm_profiles_t;

/* Validates a .mobileconfig (XML, binary, or a CMS-signed one whose
 * signature verifies) and normalises it to XML in xml_out. When
 * expect_identifier is not NULL the profile's PayloadIdentifier must equal
 * it. err says what is wrong. */
int mdm_profile_validate(const void *data, size_t len, const char *expect_identifier,
                         mdm_buf_t *xml_out, mdm_profile_meta_t *meta, mdm_err_t *err);

/* Stores a validated profile (replacing one with the same identifier). */
int mdm_profile_put(mdm_txn_t *txn, const mdm_profile_meta_t *meta, const void *xml, size_t len);

/* Reads a profile's metadata (and its XML into xml when not NULL). */
int mdm_profile_get(mdm_txn_t *txn, const char *identifier, mdm_profile_meta_t *meta,
                    mdm_buf_t *xml);

int mdm_profile_delete(mdm_txn_t *txn, const char *identifier);

typedef int (*mdm_profile_fn)(const mdm_profile_meta_t *meta, void *arg);
int mdm_profile_list(mdm_txn_t *txn, mdm_profile_fn fn, void *arg);

/* Renders the profile for a device: encrypted to device_cert when
 * encryption is on (RSA: key transport, EC: ECDH key agreement; no
 * certificate or another key type is an error, never a fallback to the
 * clear), then signed
 * (when signing is on). out gets the bytes for InstallProfile's Payload. */
int mdm_profile_render(const mdm_profiles_t *p, const void *xml, size_t len, X509 *device_cert,
                       mdm_buf_t *out, mdm_err_t *err);

/* Encrypts the PayloadContent of a profile dict to cert, in place
 * (EncryptedPayloadContent replaces PayloadContent, IsEncrypted = true). */
int mdm_profile_encrypt_dict(plist_t profile, X509 *cert, mdm_err_t *err);

/* Loads the signing identity (tls.cert, tls.chain, tls.key) and the
 * options from the config into p; frees with mdm_profiles_signer_free. */
int mdm_profiles_signer_load(const mdm_config_t *cfg, mdm_profiles_t *p, mdm_err_t *err);
void mdm_profiles_signer_free(mdm_profiles_t *p);

/* Server glue: loads the signing identity (tls.cert/tls.key), loads
 * profiles.dir, and adds the /v1/profiles routes. */
int mdm_profiles_service_init(mdm_server_t *s, mdm_err_t *err);
void mdm_profiles_service_free(mdm_server_t *s);

/* The server's profile renderer (NULL before init). */
const mdm_profiles_t *mdm_profiles_of(mdm_server_t *s);

#endif
